//! The beds of `bench --overlay`: two hosts, each a network namespace of
//! its own with an interface on an underlay bridge in one more namespace,
//! and between them
//! - `overlay`: netpath's overlay, a tc-mode topology with one container
//!   on each host, the peers from a static peers file;
//! - `vxlan`: the kernel's design as Flannel builds it, on each host a
//!   Linux bridge with the container's veth and a vxlan device as ports,
//!   static FDB entries for the other container's MAC (and the all-zeros
//!   one) to the other host, a static neighbour entry in the container;
//! - `underlay`: nothing, host namespace to host namespace.
//!
//! Every name derives from the bed's (pid-based) name, so a bed is removed
//! from its name and target alone, however far its set-up got.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use log::warn;

use super::{bed::Bed, report::Target};
use crate::{
    host::{
        netlink, netns,
        plumbing::{self, Adopt},
    },
    model::{
        Mac, Mode, Settings, TopologySpec,
        naming::{CONTAINER_IFNAME, port_name},
        overlay::{PeersFile, VXLAN_PORT, container_mtu},
    },
    ops::{
        overlay::{self as overlay_ops, Member},
        topology,
    },
};

/// The two hosts: the client's and the server's.
const SIDES: [usize; 2] = [0, 1];
const UNDERLAY_MTU: u32 = 1500;
/// The bridge in the underlay's namespace, and each host's interface on it.
const UNDERLAY_BRIDGE: &str = "ul";
const UNDERLAY_IF: &str = "underlay";
const UNDERLAY_PREFIX: u8 = 24;
/// The VNI of both overlay designs (each in namespaces of its own).
const VNI: u32 = 4242;
/// The kernel design's devices on each host (Flannel's `cni0` and
/// `flannel.1`), and the host end of its container's veth.
const KERNEL_BRIDGE: &str = "br0";
const KERNEL_VXLAN: &str = "vxlan0";
const KERNEL_VETH: &str = "veth0";
/// The overlay network of both designs; host `side`'s slice is
/// 10.251.(side+1).0/24.
const OVERLAY_NETWORK: &str = "10.251.0.0/16";

fn underlay_ns(bed: &str) -> String {
    format!("{bed}-ul")
}

fn host_ns(bed: &str, side: usize) -> String {
    format!("{bed}-h{}", side_letter(side))
}

fn side_letter(side: usize) -> char {
    ['a', 'b'][side]
}

fn underlay_ip(side: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 250, side as u8 + 1)
}

/// netpath's topology on host `side` of an `overlay` bed.
fn overlay_topology(bed: &str, side: usize) -> String {
    format!("{bed}{}", side_letter(side))
}

fn peers_path(bed: &str) -> PathBuf {
    std::env::temp_dir().join(format!("netpath-bench-{bed}-peers.toml"))
}

/// The container namespace on host `side` of a `vxlan` bed.
fn kernel_container_ns(bed: &str, side: usize) -> String {
    format!("{bed}-c{}", side_letter(side))
}

/// The address of the container on host `side` of a `vxlan` bed: where
/// netpath's IPAM puts the `overlay` bed's, on the whole overlay network as
/// netpath's containers carry theirs, so that both reach the other alike.
fn kernel_container_ip(side: usize) -> IpNet {
    IpNet::new(Ipv4Addr::new(10, 251, side as u8 + 1, 2).into(), 16).expect("a /16 is valid")
}

fn kernel_container_mac(bed: &str, side: usize) -> Mac {
    Mac::derive(&kernel_container_ns(bed, side), |_| false)
}

/// Both designs' containers carry the underlay MTU less the encapsulation.
fn container_mtu_of_bed() -> u32 {
    container_mtu(IpAddr::V4(underlay_ip(0)), UNDERLAY_MTU)
}

/// Builds the bed; on failure removes what it built.
pub(super) fn make_bed(name: String, target: Target) -> Result<Bed> {
    build(&name, target).map_err(|e| {
        if let Err(cleanup) = remove_bed(&name, target) {
            warn!("removing the half-built {target} bed {name}: {cleanup:#}");
        }
        e.context(format!(
            "setting up the {target} bed {name} (removed again)"
        ))
    })
}

fn build(name: &str, target: Target) -> Result<Bed> {
    build_underlay(name)?;
    match target {
        Target::Overlay => build_overlay(name),
        Target::Vxlan => build_kernel_vxlan(name),
        _ => Ok(Bed {
            target,
            name: name.into(),
            client: host_ns(name, 0),
            server: host_ns(name, 1),
            server_ip: underlay_ip(1).to_string(),
            restore: Vec::new(),
            note: None,
        }),
    }
}

/// The underlay's namespace with its bridge, and both hosts plugged in.
fn build_underlay(name: &str) -> Result<()> {
    netns::create(&underlay_ns(name))?;
    for side in SIDES {
        netns::create(&host_ns(name, side))?;
    }
    let owner = name.to_owned();
    netns::run_in(&underlay_ns(name), |h| async move {
        let (bridge, _) =
            plumbing::ensure_bridge(&h, UNDERLAY_BRIDGE, &owner, UNDERLAY_MTU, &[], Adopt::No)
                .await?;
        for side in SIDES {
            let host = host_ns(&owner, side);
            let address = IpNet::new(underlay_ip(side).into(), UNDERLAY_PREFIX)?;
            let port = plumbing::Plug {
                host_veth: &format!("{UNDERLAY_BRIDGE}{side}"),
                netns: &netns::path(&host),
                ifname: UNDERLAY_IF,
                mac: None,
                mtu: UNDERLAY_MTU,
                bridge: Some(bridge.index),
                owner: &owner,
                container: None,
                addresses: &[address],
                gateways: &[],
                source_check: false,
                kind: netlink::PairKind::Veth,
            };
            plumbing::plug(&h, &port)
                .await
                .with_context(|| format!("plugging host namespace {host} into the underlay"))?;
        }
        Ok(())
    })
}

/// A tc-mode topology with one container per host on one overlay, each
/// node knowing the other from the peers file.
fn build_overlay(name: &str) -> Result<Bed> {
    let peers = peers_path(name);
    // `up` programs the peers file's nodes: none yet, as no node is up.
    std::fs::write(&peers, "").with_context(|| format!("writing {}", peers.display()))?;
    let mut specs = Vec::new();
    for side in SIDES {
        let settings = Settings {
            name: Some(overlay_topology(name, side)),
            containers: Some(1),
            subnet: vec![format!("10.251.{}.0/24", side + 1)],
            mode: Some(Mode::Tc),
            mtu: Some(container_mtu_of_bed()),
            vni: Some(VNI),
            underlay: Some(underlay_ip(side).into()),
            overlay_network: vec![OVERLAY_NETWORK.into()],
            peers: Some(peers.clone()),
            ..Default::default()
        };
        let spec = TopologySpec::resolve(settings)?;
        let up = spec.clone();
        netns::run_in(&host_ns(name, side), |h| async move {
            topology::up(&h, up).await.map(drop)
        })
        .with_context(|| {
            format!(
                "bringing the overlay up in host namespace {}",
                host_ns(name, side)
            )
        })?;
        specs.push(spec);
    }
    let members = specs
        .iter()
        .map(Member::of_topology)
        .collect::<Result<Vec<_>>>()?;
    let file = PeersFile {
        nodes: members
            .iter()
            .map(overlay_ops::local_record)
            .collect::<Result<_>>()?,
    };
    std::fs::write(&peers, toml::to_string(&file)?)
        .with_context(|| format!("writing {}", peers.display()))?;
    for member in &members {
        overlay_ops::sync_peers_file(member)?;
    }
    let container = |side: usize| {
        let spec: &TopologySpec = &specs[side];
        (
            port_name(&spec.name, &spec.containers[0].name),
            spec.containers[0].ips[0].addr(),
        )
    };
    Ok(Bed {
        target: Target::Overlay,
        name: name.into(),
        client: container(0).0,
        server: container(1).0,
        server_ip: container(1).1.to_string(),
        restore: Vec::new(),
        note: None,
    })
}

/// Flannel's design with static entries: the bridge sends the remote
/// container's MAC to the vxlan port, the vxlan device sends it (and
/// broadcasts) to the other host, the container knows its neighbour.
fn build_kernel_vxlan(name: &str) -> Result<Bed> {
    let mtu = container_mtu_of_bed();
    for side in SIDES {
        let (container, remote) = (kernel_container_ns(name, side), 1 - side);
        netns::create(&container)?;
        let owner = name.to_owned();
        netns::run_in(&host_ns(name, side), |h| async move {
            let (bridge, _) =
                plumbing::ensure_bridge(&h, KERNEL_BRIDGE, &owner, mtu, &[], Adopt::No).await?;
            let veth = plumbing::Plug {
                host_veth: KERNEL_VETH,
                netns: &netns::path(&container),
                ifname: CONTAINER_IFNAME,
                mac: Some(kernel_container_mac(&owner, side)),
                mtu,
                bridge: Some(bridge.index),
                owner: &owner,
                container: None,
                addresses: &[kernel_container_ip(side)],
                gateways: &[],
                source_check: false,
                kind: netlink::PairKind::Veth,
            };
            plumbing::plug(&h, &veth).await?;
            let underlay = netlink::link_by_name(&h, UNDERLAY_IF)
                .await?
                .with_context(|| format!("{UNDERLAY_IF} is missing"))?;
            let vxlan = netlink::create_vxlan_port(
                &h,
                &netlink::VxlanPort {
                    name: KERNEL_VXLAN,
                    vni: VNI,
                    local: underlay_ip(side),
                    port: VXLAN_PORT,
                    underlay: underlay.index,
                    mtu,
                    bridge: bridge.index,
                },
            )
            .await?;
            let (remote_mac, remote_host) = (
                kernel_container_mac(&owner, remote),
                IpAddr::V4(underlay_ip(remote)),
            );
            netlink::add_vxlan_fdb_entry(&h, vxlan.index, Mac([0; 6]), remote_host).await?;
            netlink::add_vxlan_fdb_entry(&h, vxlan.index, remote_mac, remote_host).await?;
            netlink::add_bridge_static_entry(&h, vxlan.index, remote_mac).await
        })
        .with_context(|| {
            format!(
                "building the kernel's vxlan design in host namespace {}",
                host_ns(name, side)
            )
        })?;
        let remote_ip = kernel_container_ip(remote).addr();
        let remote_mac = kernel_container_mac(name, remote);
        netns::run_in(&kernel_container_ns(name, side), |h| async move {
            let eth0 = netlink::link_by_name(&h, CONTAINER_IFNAME)
                .await?
                .with_context(|| format!("{CONTAINER_IFNAME} is missing"))?;
            netlink::add_static_neighbour(&h, eth0.index, remote_ip, remote_mac).await
        })?;
    }
    Ok(Bed {
        target: Target::Vxlan,
        name: name.into(),
        client: kernel_container_ns(name, 0),
        server: kernel_container_ns(name, 1),
        server_ip: kernel_container_ip(1).addr().to_string(),
        restore: Vec::new(),
        note: None,
    })
}

/// Removes everything a bed of `target` named `name` may have: netpath's
/// topologies first (their records, pins and container namespaces are
/// global), then the namespaces, which take every link in them along.
/// Tries every step; reports the first failure.
pub(super) fn remove_bed(name: &str, target: Target) -> Result<()> {
    let mut steps: Vec<Result<()>> = Vec::new();
    for side in SIDES {
        let host = host_ns(name, side);
        if target == Target::Overlay && netns::exists(&host) {
            let overlay = overlay_topology(name, side);
            steps.push(
                netns::run_in(&host, |h| async move { topology::down(&h, &overlay).await })
                    .map(drop)
                    .with_context(|| {
                        format!(
                            "removing topology {} in host namespace {host}",
                            overlay_topology(name, side)
                        )
                    }),
            );
        }
        if target == Target::Vxlan {
            steps.push(netns::delete(&kernel_container_ns(name, side)).map(drop));
        }
        steps.push(netns::delete(&host).map(drop));
    }
    steps.push(netns::delete(&underlay_ns(name)).map(drop));
    if target == Target::Overlay {
        let peers = peers_path(name);
        steps.push(match std::fs::remove_file(&peers) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", peers.display()))
            }
            _ => Ok(()),
        });
    }
    steps.into_iter().collect()
}

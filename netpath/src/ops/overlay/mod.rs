//! A datapath on an overlay, a topology's or a CNI network's alike (a
//! [`Member`]): joining it (the node's vxlan device, the decap program,
//! the overlay's settings) when the topology comes up or the network's
//! first pod is added, leaving it when the topology goes down or the last
//! pod is deleted, this node's record for the other nodes, and programming
//! what the control plane learned of them: a static peers file (read at
//! `up`, at every CNI ADD, by `overlay sync`, and by `run` when it
//! changes) or etcd (`etcd.rs`, run by `run`).

pub mod etcd;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use log::info;
use netpath_common::OverlayConfig;
use rtnetlink::Handle;
use serde::Serialize;

use super::Named;
use crate::{
    datapath::{
        self,
        hooks::{self, TcMethod},
        overlay::{self as remote, Changes, RemoteRow},
    },
    host::{netlink, vxlan},
    model::{
        TopologySpec,
        overlay::{Endpoint, NodeRecord, OverlaySpec, Peers, PeersFile, container_mtu, peers_of},
    },
    store::{
        cni::NetworkRecord,
        overlay::{self as record, OverlayRecord},
        topology as topology_record,
    },
};

/// A datapath on an overlay, as joining, programming and the control
/// plane see it, whether a topology's or a CNI network's. Its containers
/// come and go: [`local_record`] reads them afresh each time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The topology or CNI network, to read its containers again.
    pub named: Named,
    /// The key of its datapath (pins, locks, overlay record).
    pub datapath: String,
    pub bridge: String,
    pub overlay: OverlaySpec,
}

impl Member {
    /// The topology `spec` on its overlay, or an error naming the fix.
    pub fn of_topology(spec: &TopologySpec) -> Result<Member> {
        let overlay = spec.overlay.clone().with_context(|| {
            format!(
                "topology {} is on no overlay (bring it up with --vni, --underlay, --overlay-network and \
                 --peers or --etcd)",
                spec.name
            )
        })?;
        Ok(Member {
            named: Named::Topology(spec.name.clone()),
            datapath: spec.name.clone(),
            bridge: spec.bridge_name(),
            overlay,
        })
    }

    /// The CNI network on `bridge`, on the overlay its configuration names.
    pub fn of_cni_network(bridge: &str, overlay: OverlaySpec) -> Member {
        let named = Named::CniNetwork {
            bridge: bridge.to_owned(),
        };
        Member {
            datapath: named.datapath(),
            named,
            bridge: bridge.to_owned(),
            overlay,
        }
    }

    /// The member as its record has it now: a topology that is up, or a
    /// CNI network with pods on an overlay.
    pub fn load(named: &Named) -> Result<Member> {
        match named {
            Named::Topology(name) => Member::of_topology(&complete_topology(name)?),
            Named::CniNetwork { bridge } => {
                let overlay = NetworkRecord::load(bridge)?.overlay.with_context(|| {
                    format!(
                        "the CNI network on bridge {bridge} is on no overlay now: it has no pods, or its \
                         conflist names no \"overlay\""
                    )
                })?;
                Ok(Member::of_cni_network(bridge, overlay.spec))
            }
        }
    }

    /// The user's name for it: the topology's, or the CNI bridge's.
    pub fn name(&self) -> &str {
        match &self.named {
            Named::Topology(name) => name,
            Named::CniNetwork { bridge } => bridge,
        }
    }
}

fn complete_topology(name: &str) -> Result<TopologySpec> {
    match topology_record::load(name)? {
        Some(rec) if rec.complete => Ok(rec.spec),
        _ => anyhow::bail!("topology {name} is not up (see `netpath up --help`)"),
    }
}

/// The largest container MTU the underlay at `overlay.underlay` carries.
pub async fn mtu_limit(handle: &Handle, overlay: &OverlaySpec) -> Result<u32> {
    let underlay = vxlan::underlay_mtu(handle, overlay.underlay).await?;
    Ok(container_mtu(overlay.underlay, underlay))
}

/// Puts the member's running datapath, whose containers have MTU `mtu`,
/// on its overlay and programs the peers known so far (a peers file's;
/// etcd's come with `run`). The overlay record it leaves says it joined.
pub async fn join(handle: &Handle, member: &Member, mtu: u32) -> Result<()> {
    let overlay = &member.overlay;
    let limit = mtu_limit(handle, overlay).await?;
    ensure!(
        mtu <= limit,
        "MTU {mtu} is too large for the overlay: its underlay carries container frames of at most {limit} \
         bytes (the underlay's MTU less the VXLAN encapsulation); leave --mtu out or give at most {limit}"
    );
    let device = vxlan::ensure_device(handle, limit).await?;
    let bridge = netlink::link_by_name(handle, &member.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing", member.bridge))?;
    let config = OverlayConfig {
        vni: overlay.vni,
        vxlan_ifindex: device.index,
        bridge_ifindex: bridge.index,
        underlay_ipv6: overlay.underlay.is_ipv6() as u8,
        _pad: [0; 3],
    };
    remote::join(
        &member.datapath,
        config,
        &device.name,
        TcMethod::for_this_kernel(),
    )?;
    info!(
        "{}: on overlay VNI {} as node {} ({}), vxlan device {}",
        member.name(),
        overlay.vni,
        overlay.node,
        overlay.underlay,
        device.name
    );
    match &overlay.peers {
        Peers::File(_) => {
            sync_peers_file(member)?;
        }
        Peers::Etcd(endpoints) => {
            if record::load(&member.datapath)?.is_none() {
                let waiting = OverlayRecord {
                    source: etcd::source(endpoints),
                    ..OverlayRecord::default()
                };
                record::save(&member.datapath, &waiting)?;
            }
        }
    }
    Ok(())
}

/// Whether datapath `datapath` joined its overlay (and has not left it).
pub fn is_joined(datapath: &str) -> bool {
    record::path(datapath).is_ok_and(|path| path.exists())
}

/// Takes datapath `datapath`'s program off the vxlan device and forgets
/// its overlay state; the device goes with the last overlay on the node.
pub async fn leave(handle: &Handle, datapath: &str, overlay: &OverlaySpec) -> Result<()> {
    remote::leave(datapath, vxlan::DEVICE, overlay.vni)?;
    record::remove(datapath)?;
    if let Some(device) = netlink::link_by_name(handle, vxlan::DEVICE).await? {
        let in_use = hooks::vxlan_in_use(handle, &device.name, device.index).await?;
        vxlan::remove_unless(handle, in_use).await?;
    }
    Ok(())
}

/// What this node tells the others: its address, subnets and containers,
/// as the member's record has them now.
pub fn local_record(member: &Member) -> Result<NodeRecord> {
    let (subnets, endpoints) = match &member.named {
        Named::Topology(name) => {
            let spec = complete_topology(name)?;
            let endpoints = spec
                .containers
                .iter()
                .map(|c| Endpoint {
                    mac: c.mac,
                    ips: c.ips.iter().map(|ip| ip.addr()).collect(),
                })
                .collect();
            (spec.subnets, endpoints)
        }
        Named::CniNetwork { bridge } => {
            let rec = NetworkRecord::load(bridge)?;
            let endpoints = rec
                .attachments
                .iter()
                .map(|a| Endpoint {
                    mac: a.mac,
                    ips: a.ips.iter().map(|ip| ip.addr()).collect(),
                })
                .collect();
            (
                rec.overlay.map(|o| o.subnets).unwrap_or_default(),
                endpoints,
            )
        }
    };
    let overlay = &member.overlay;
    Ok(NodeRecord {
        node: overlay.node.clone(),
        vni: overlay.vni,
        underlay: overlay.underlay,
        subnets,
        endpoints,
    })
}

/// Programs the peers of the member's static peers file.
pub fn sync_peers_file(member: &Member) -> Result<Changes> {
    let Peers::File(path) = &member.overlay.peers else {
        anyhow::bail!(
            "{} takes its peers from etcd, not from a file: `netpath run` keeps them",
            member.name()
        );
    };
    let file = PeersFile::read(path)?;
    program(
        member,
        file.nodes,
        format!("peers file {}", path.display()),
        true,
        None,
    )
}

/// Programs the other nodes among `records` into the member's datapath
/// and records them (and the source's state) for `status` and for a
/// restart without the source.
pub fn program(
    member: &Member,
    records: Vec<NodeRecord>,
    source: String,
    connected: bool,
    lease: Option<i64>,
) -> Result<Changes> {
    let peers = peers_of(&member.overlay, records);
    let changes = remote::program(&datapath::reconcile(&member.datapath)?, &peers)?;
    if changes.any() {
        info!(
            "{}: overlay now {} nodes ({changes:?})",
            member.name(),
            peers.len()
        );
    }
    let previous = record::load(&member.datapath)?.unwrap_or_default();
    let programmed_at = if changes.any() || previous.programmed_at == 0 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    } else {
        previous.programmed_at
    };
    record::save(
        &member.datapath,
        &OverlayRecord {
            peers,
            source,
            connected,
            lease,
            programmed_at,
        },
    )?;
    Ok(changes)
}

/// The control plane of a member of an overlay, for `run`: etcd's
/// session, or a watch on the peers file (polled: a file edited in place
/// or replaced alike). Runs until dropped.
pub async fn control_plane(member: Member) {
    match member.overlay.peers.clone() {
        Peers::Etcd(endpoints) => etcd::run(member, endpoints).await,
        Peers::File(path) => {
            let modified =
                |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let mut seen = modified(&path);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = modified(&path);
                if now != seen {
                    seen = now;
                    if let Err(e) = sync_peers_file(&member) {
                        log::warn!("{}: {e:#}; keeping the peers as they were", member.name());
                    }
                }
            }
        }
    }
}

/// Records that the control plane lost (or regained) its source, keeping
/// the peers as programmed. A datapath that left its overlay (the last
/// pod of a CNI network deleted) keeps no record.
pub fn set_connected(datapath: &str, connected: bool, lease: Option<i64>) -> Result<()> {
    let Some(mut rec) = record::load(datapath)? else {
        return Ok(());
    };
    rec.connected = connected;
    rec.lease = lease;
    record::save(datapath, &rec)
}

/// `overlay status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node: NodeRecord,
    pub device: String,
    pub source: String,
    pub connected: bool,
    pub lease: Option<i64>,
    pub programmed_at: u64,
    pub lease_ttl_s: u64,
    pub peers: Vec<NodeRecord>,
    /// Underlay addresses the programs accept frames from.
    pub accepted: Vec<std::net::IpAddr>,
    pub remote: Vec<RemoteRow>,
    pub counters: Vec<(&'static str, u64)>,
}

pub fn status(member: &Member) -> Result<Status> {
    let maps = datapath::maps(&member.datapath)?;
    let rec = record::load(&member.datapath)?.unwrap_or_default();
    Ok(Status {
        node: local_record(member)?,
        device: vxlan::DEVICE.into(),
        source: rec.source,
        connected: rec.connected,
        lease: rec.lease,
        programmed_at: rec.programmed_at,
        lease_ttl_s: member.overlay.lease_ttl_s,
        peers: rec.peers,
        accepted: remote::known_nodes(&maps)?,
        remote: remote::remote_rows(&maps)?,
        counters: remote::counters(&maps)?,
    })
}

/// A remote FDB entry with the name of its node, for `fdb dump`.
#[derive(Clone, Debug)]
pub struct NamedRemote {
    pub row: RemoteRow,
    /// The node's name, as the control plane last programmed it.
    pub node: Option<String>,
    pub device: &'static str,
}

/// The remote entries of datapath `datapath` (none for one on no overlay).
pub fn remote_entries(datapath: &str, maps: &datapath::maps::Maps) -> Result<Vec<NamedRemote>> {
    let peers = record::load(datapath)?.map(|r| r.peers).unwrap_or_default();
    Ok(remote::remote_rows(maps)?
        .into_iter()
        .map(|row| NamedRemote {
            node: peers
                .iter()
                .find(|p| p.underlay == row.node)
                .map(|p| p.node.clone()),
            row,
            device: vxlan::DEVICE,
        })
        .collect())
}

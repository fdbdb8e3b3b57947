//! The throw-away beds measured over: a topology in one of netpath's modes
//! (the bridge mode is the Linux bridge alone), the wire, two namespaces
//! joined by one veth pair, the bridge with a policy in nftables or
//! iptables (`firewalled.rs`), or two hosts on an underlay (`overlay.rs`).

use anyhow::{Context, Result};
use ipnet::IpNet;
use rtnetlink::Handle;

use super::{bed::Bed, firewalled, overlay, policy, report::Target};
use crate::{
    host::{netlink, netns, plumbing},
    model::{Mode, Settings, TopologySpec, naming::port_name, spec::DEFAULT_MTU},
    network::Network,
    ops::{self, topology},
};

pub(super) fn mode_of(target: Target) -> Option<Mode> {
    match target {
        Target::Bridge | Target::BridgeNft | Target::BridgeIptables => Some(Mode::Bridge),
        Target::Xdp => Some(Mode::Xdp),
        Target::Tc | Target::TcPolicy => Some(Mode::Tc),
        Target::Netkit => Some(Mode::Netkit),
        Target::Wire | Target::Overlay | Target::Vxlan | Target::Underlay => None,
    }
}

/// Runs the benchmark; Ctrl-C stops it and still removes every topology.
pub(super) async fn make_bed(
    handle: &Handle,
    name: String,
    target: Target,
    index: usize,
    containers: usize,
    fdb_size: u32,
) -> Result<Bed> {
    if matches!(target, Target::BridgeNft | Target::BridgeIptables) {
        return firewalled::make_bed(name, target, index, fdb_size);
    }
    let subnet = format!("10.250.{index}.0/24");
    let Some(mode) = mode_of(target) else {
        return match target {
            Target::Wire => make_wire(&name, &subnet),
            _ => overlay::make_bed(name, target),
        };
    };
    let settings = Settings {
        name: Some(name.clone()),
        containers: Some(containers),
        subnet: vec![subnet],
        mode: Some(mode),
        fdb_size: Some(fdb_size),
        ..Default::default()
    };
    let spec = TopologySpec::resolve(settings)?;
    let server = &spec.containers[1];
    let bed_client_ip = spec.containers[0].ips[0].addr();
    let bed = Bed {
        target,
        name: name.clone(),
        client: port_name(&name, &spec.containers[0].name),
        server: port_name(&name, &server.name),
        server_ip: server.ips[0].addr().to_string(),
        restore: Vec::new(),
        note: None,
    };
    topology::up(handle, spec).await?;
    if target == Target::TcPolicy {
        let client = &bed_client_ip;
        let started = std::time::Instant::now();
        ops::policy::apply(
            handle,
            &Network::topology(&name)?,
            &policy::realistic_set(client),
        )
        .await?;
        eprintln!(
            "bench: {target}: {} applied and in force in {:.0} ms",
            policy::DESCRIBED,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(bed)
}

/// Two namespaces `NAME-a` and `NAME-b` joined by one veth pair.
pub(super) fn make_wire(name: &str, subnet: &str) -> Result<Bed> {
    let net: IpNet = subnet.parse()?;
    let mut hosts = net.hosts();
    let (a_ip, b_ip) = (
        hosts.next().context("wire subnet")?,
        hosts.next().context("wire subnet")?,
    );
    let (a_ip, b_ip) = (
        IpNet::new(a_ip, net.prefix_len())?,
        IpNet::new(b_ip, net.prefix_len())?,
    );
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let bed = Bed {
        target: Target::Wire,
        name: name.into(),
        client: a.clone(),
        server: b.clone(),
        server_ip: b_ip.addr().to_string(),
        restore: Vec::new(),
        note: None,
    };
    netns::create(&a)?;
    netns::create(&b)?;
    let (a_path, b_path) = (netns::path(&a), netns::path(&b));
    let owner = name.to_owned();
    netns::run_in(&a, move |h| async move {
        let wire = plumbing::Plug {
            host_veth: "eth0",
            netns: &b_path,
            ifname: "eth0",
            mac: None,
            mtu: DEFAULT_MTU,
            bridge: None,
            owner: &owner,
            container: None,
            addresses: &[b_ip],
            gateways: &[],
            source_check: false,
            kind: netlink::PairKind::Veth,
        };
        plumbing::plug(&h, &wire).await.map(drop)
    })?;
    plumbing::configure_inside(&a_path, "eth0", &[a_ip], &[])?;
    Ok(bed)
}

pub(super) async fn remove_bed(handle: &Handle, bed: &Bed) -> Result<()> {
    match bed.target {
        Target::Wire => {
            netns::delete(&bed.client)?;
            netns::delete(&bed.server)?;
            Ok(())
        }
        Target::Overlay | Target::Vxlan | Target::Underlay => {
            overlay::remove_bed(&bed.name, bed.target)
        }
        Target::BridgeNft | Target::BridgeIptables => firewalled::remove_bed(bed),
        Target::Bridge | Target::Xdp | Target::Tc | Target::Netkit | Target::TcPolicy => {
            topology::down(handle, &bed.name).await.map(|_| ())
        }
    }
}

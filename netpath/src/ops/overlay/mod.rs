//! A topology on an overlay: joining it when the topology comes up (the
//! node's vxlan device, the decap program, the overlay's settings),
//! leaving it when it goes down, this node's record for the other nodes,
//! and programming what the control plane learned of them: a static peers
//! file (read at `up`, `overlay sync`, and by `run` when it changes) or
//! etcd (`etcd.rs`, run by `run`).

pub mod etcd;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use log::info;
use netpath_common::OverlayConfig;
use rtnetlink::Handle;
use serde::Serialize;

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
    store::overlay::{self as record, OverlayRecord},
};

/// The overlay of a topology, or an error naming the fix.
pub fn overlay_of(spec: &TopologySpec) -> Result<&OverlaySpec> {
    spec.overlay.as_ref().with_context(|| {
        format!(
            "topology {} is on no overlay (bring it up with --vni, --underlay, --overlay-network and \
             --peers or --etcd)",
            spec.name
        )
    })
}

/// The largest container MTU the underlay at `overlay.underlay` carries.
pub async fn mtu_limit(handle: &Handle, overlay: &OverlaySpec) -> Result<u32> {
    let underlay = vxlan::underlay_mtu(handle, overlay.underlay).await?;
    Ok(container_mtu(overlay.underlay, underlay))
}

/// Puts the topology's running datapath on its overlay and programs the
/// peers known so far (a peers file's; etcd's come with `run`).
pub async fn join(handle: &Handle, spec: &TopologySpec) -> Result<()> {
    let overlay = overlay_of(spec)?;
    let limit = mtu_limit(handle, overlay).await?;
    ensure!(
        spec.mtu <= limit,
        "MTU {} is too large for the overlay: its underlay carries container frames of at most {limit} \
         bytes (the underlay's MTU less the VXLAN encapsulation); leave --mtu out or give at most {limit}",
        spec.mtu
    );
    let device = vxlan::ensure_device(handle, limit).await?;
    let bridge = netlink::link_by_name(handle, &spec.bridge_name())
        .await?
        .with_context(|| format!("bridge {} is missing", spec.bridge_name()))?;
    let config = OverlayConfig {
        vni: overlay.vni,
        vxlan_ifindex: device.index,
        bridge_ifindex: bridge.index,
        underlay_ipv6: overlay.underlay.is_ipv6() as u8,
        _pad: [0; 3],
    };
    remote::join(
        &spec.name,
        config,
        &device.name,
        TcMethod::for_this_kernel(),
    )?;
    info!(
        "{}: on overlay VNI {} as node {} ({}), vxlan device {}",
        spec.name, overlay.vni, overlay.node, overlay.underlay, device.name
    );
    if let Peers::File(_) = overlay.peers {
        sync_peers_file(spec)?;
    }
    Ok(())
}

/// Takes the topology's program off the vxlan device and forgets its
/// overlay state; the device goes with the last overlay on the node.
pub async fn leave(handle: &Handle, spec: &TopologySpec) -> Result<()> {
    let Some(overlay) = &spec.overlay else {
        return Ok(());
    };
    remote::leave(&spec.name, vxlan::DEVICE, overlay.vni)?;
    record::remove(&spec.name)?;
    if let Some(device) = netlink::link_by_name(handle, vxlan::DEVICE).await? {
        let in_use = hooks::vxlan_in_use(handle, &device.name, device.index).await?;
        vxlan::remove_unless(handle, in_use).await?;
    }
    Ok(())
}

/// What this node tells the others: its address, subnets and containers.
pub fn local_record(spec: &TopologySpec) -> Result<NodeRecord> {
    let overlay = overlay_of(spec)?;
    Ok(NodeRecord {
        node: overlay.node.clone(),
        vni: overlay.vni,
        underlay: overlay.underlay,
        subnets: spec.subnets.clone(),
        endpoints: spec
            .containers
            .iter()
            .map(|c| Endpoint {
                mac: c.mac,
                ips: c.ips.iter().map(|ip| ip.addr()).collect(),
            })
            .collect(),
    })
}

/// Programs the peers of the topology's static peers file.
pub fn sync_peers_file(spec: &TopologySpec) -> Result<Changes> {
    let overlay = overlay_of(spec)?;
    let Peers::File(path) = &overlay.peers else {
        anyhow::bail!(
            "topology {} takes its peers from etcd, not from a file: `netpath run` keeps them",
            spec.name
        );
    };
    let file = PeersFile::read(path)?;
    program(
        spec,
        file.nodes,
        format!("peers file {}", path.display()),
        true,
        None,
    )
}

/// Programs the other nodes among `records` into the topology's datapath
/// and records them (and the source's state) for `status` and for a
/// restart without the source.
pub fn program(
    spec: &TopologySpec,
    records: Vec<NodeRecord>,
    source: String,
    connected: bool,
    lease: Option<i64>,
) -> Result<Changes> {
    let overlay = overlay_of(spec)?;
    let peers = peers_of(overlay, records);
    let changes = remote::program(&datapath::maps(&spec.name)?, &peers)?;
    if changes.any() {
        info!(
            "{}: overlay now {} nodes ({changes:?})",
            spec.name,
            peers.len()
        );
    }
    let previous = record::load(&spec.name)?.unwrap_or_default();
    let programmed_at = if changes.any() || previous.programmed_at == 0 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    } else {
        previous.programmed_at
    };
    record::save(
        &spec.name,
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

/// The control plane of a topology on an overlay, for `run`: etcd's
/// session, or a watch on the peers file (polled: a file edited in place
/// or replaced alike). Runs until dropped.
pub async fn control_plane(spec: TopologySpec) {
    let Some(overlay) = spec.overlay.clone() else {
        return;
    };
    match overlay.peers {
        Peers::Etcd(endpoints) => etcd::run(spec, endpoints).await,
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
                    if let Err(e) = sync_peers_file(&spec) {
                        log::warn!("{}: {e:#}; keeping the peers as they were", spec.name);
                    }
                }
            }
        }
    }
}

/// Records that the control plane lost (or regained) its source, keeping
/// the peers as programmed.
pub fn set_connected(topology: &str, connected: bool, lease: Option<i64>) -> Result<()> {
    let mut rec = record::load(topology)?.unwrap_or_default();
    rec.connected = connected;
    rec.lease = lease;
    record::save(topology, &rec)
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

pub fn status(spec: &TopologySpec) -> Result<Status> {
    let overlay = overlay_of(spec)?;
    let maps = datapath::maps(&spec.name)?;
    let rec = record::load(&spec.name)?.unwrap_or_default();
    Ok(Status {
        node: local_record(spec)?,
        device: vxlan::DEVICE.into(),
        source: rec.source,
        connected: rec.connected,
        lease: rec.lease,
        programmed_at: rec.programmed_at,
        lease_ttl_s: overlay.lease_ttl_s,
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
    let peers = match record::path(datapath) {
        Ok(_) => record::load(datapath)?.map(|r| r.peers).unwrap_or_default(),
        Err(_) => Vec::new(), // a CNI datapath's key: no overlay
    };
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

//! A datapath on an overlay: its settings in CONFIG, its program on the
//! node's vxlan device, and the other nodes and their containers in the
//! remote maps, which the control plane (peers file or etcd) keeps equal to
//! what it knows with [`program`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context, Result, ensure};
use netpath_common::{
    FdbKey, NODE_CAPACITY, NodeAddr, OverlayConfig, OverlayCounter, RemoteContainer, programs,
};
use serde::Serialize;

use super::{
    fdb::Fdb,
    hooks::{self, TcMethod},
    maps::Maps,
    object::{self, Programs, pin_dir},
};
use crate::model::{
    Mac,
    overlay::{NodeRecord, sender_policy},
};

/// The underlay address as the programs keep it.
pub fn node_addr(ip: IpAddr) -> NodeAddr {
    let mut node = NodeAddr::default();
    match ip {
        IpAddr::V4(v4) => {
            node.family = 4;
            node.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            node.family = 6;
            node.addr = v6.octets();
        }
    }
    node
}

pub fn ip_of(node: &NodeAddr) -> IpAddr {
    if node.family == 6 {
        IpAddr::from(node.addr)
    } else {
        IpAddr::from([node.addr[0], node.addr[1], node.addr[2], node.addr[3]])
    }
}

/// Whether this kernel's tunnel key takes the outer source address
/// (`local_ipv4`/`local_ipv6` of `struct bpf_tunnel_key`, Linux 6.0), which
/// the programs then set ([`OverlayConfig::pin_local`]).
pub fn kernel_pins_outer_source() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 0, 0))
}

/// The programs a datapath on an overlay has beside its ports' own: the
/// vxlan device's (decap), the flooding program the port program
/// tail-calls, and with `underlay` the underlay's (decap without the vxlan
/// device).
pub fn programs(underlay: bool) -> Vec<&'static str> {
    let mut names = vec![programs::TC_VXLAN, programs::TC_FLOOD];
    if underlay {
        names.push(programs::TC_UNDERLAY);
    }
    names
}

/// Puts a running datapath on an overlay: its settings in CONFIG, its
/// program on the node's vxlan device `device`, and with `underlay` its
/// program on that interface too (the one that holds the underlay
/// address), which takes VXLAN to the local containers before the stack.
pub fn join(
    datapath: &str,
    overlay: OverlayConfig,
    device: &str,
    underlay: Option<&str>,
    tc: TcMethod,
) -> Result<()> {
    let dir = pin_dir(datapath);
    // A datapath joins its first overlay without these programs. Loaded
    // before CONFIG names the overlay: the port program then never meets a
    // broadcast to flood with the flooding slot still empty, and a load the
    // verifier refuses leaves the datapath off any overlay.
    // With a policy in force, the decap program hands frames to its
    // judging variant: loaded with it.
    let wanted = programs(underlay.is_some());
    let needed = object::with_policy_variants(&wanted, object::has_policy_variants(&dir));
    object::load_missing(&dir, &needed)?;
    let maps = Maps::open(&dir)?;
    let mut config = maps.config()?;
    let mut current = config.get(&0, 0).context("reading map CONFIG")?;
    current.overlay = overlay;
    config.set(0, current, 0).context("writing map CONFIG")?;
    let mut programs = Programs::pinned(&dir, &wanted)?
        .with_context(|| format!("datapath {datapath} has no pinned decap program"))?;
    hooks::attach_vxlan(&mut programs, &dir, device, overlay.vni, tc)?;
    if let Some(underlay) = underlay {
        hooks::attach_underlay(&mut programs, &dir, underlay)?;
    }
    Ok(())
}

/// Takes a datapath's programs off the vxlan device and the underlay (its
/// maps go with the datapath).
pub fn leave(datapath: &str, device: &str, vni: u32) -> Result<()> {
    let dir = pin_dir(datapath);
    hooks::detach_underlay(&dir)?;
    hooks::detach_vxlan(&dir, device, vni)
}

/// What [`program`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub entries_added: usize,
    pub entries_removed: usize,
    /// Learned copies of remote containers' MACs forgotten.
    pub learned_flushed: usize,
}

impl Changes {
    pub fn any(&self) -> bool {
        *self != Changes::default()
    }
}

/// Makes the remote maps hold exactly `peers` (the other nodes of the
/// overlay) and their containers. New nodes go in before their containers
/// and leave after them, so no frame is sent to a node that decap would
/// refuse. Containers whose MAC is local are left to the local entry.
pub fn program(maps: &Maps, peers: &[NodeRecord]) -> Result<Changes> {
    ensure!(
        peers.len() <= NODE_CAPACITY as usize,
        "the overlay has {} other nodes; netpath holds at most {NODE_CAPACITY}",
        peers.len()
    );
    let mut changes = Changes::default();
    let want_nodes: Vec<NodeAddr> = peers.iter().map(|p| node_addr(p.tunnel_end())).collect();
    let mut fdb_want: BTreeMap<[u8; 6], RemoteContainer> = BTreeMap::new();
    let mut ipv4_want: BTreeMap<[u8; 4], [u8; 6]> = BTreeMap::new();
    for (peer, node) in peers.iter().zip(&want_nodes) {
        for endpoint in &peer.endpoints {
            // Vetting skipped the records whose containers do not fit.
            let policy = sender_policy(peer, endpoint).map_err(anyhow::Error::msg)?;
            fdb_want.insert(
                endpoint.mac.0,
                RemoteContainer {
                    node: *node,
                    policy,
                },
            );
            for ip in &endpoint.ips {
                if let IpAddr::V4(v4) = ip {
                    ipv4_want.insert(v4.octets(), endpoint.mac.0);
                }
            }
        }
    }

    let mut nodes = maps.nodes()?;
    let have_nodes: BTreeSet<[u8; 20]> = nodes
        .keys()
        .filter_map(Result::ok)
        .map(|n| key_bytes(&n))
        .collect();
    for (index, node) in want_nodes.iter().enumerate() {
        if !have_nodes.contains(&key_bytes(node)) {
            changes.nodes_added += 1;
        }
        nodes
            .insert(*node, index as u32, 0)
            .with_context(|| format!("adding node {} to map NODES", ip_of(node)))?;
    }
    let mut list = maps.node_list()?;
    for index in 0..NODE_CAPACITY {
        let node = want_nodes.get(index as usize).copied().unwrap_or_default();
        list.set(index, node, 0).context("writing map NODE_LIST")?;
    }

    let mut fdb = maps.remote_fdb()?;
    let have_fdb: BTreeMap<[u8; 6], RemoteContainer> = fdb
        .iter()
        .filter_map(Result::ok)
        .map(|(key, remote)| (key.mac, remote))
        .collect();
    for (mac, remote) in &fdb_want {
        if have_fdb.get(mac) != Some(remote) {
            fdb.insert(FdbKey::new(*mac, 0), *remote, 0)
                .with_context(|| {
                    format!(
                        "adding remote FDB entry {} -> {} to map REMOTE_FDB (is it full?)",
                        Mac(*mac),
                        ip_of(&remote.node)
                    )
                })?;
            changes.entries_added += 1;
        }
    }
    // A container here that sent from a remote container's MAC before the
    // control plane named it left a learned copy, which would win over the
    // remote entry (a local port is preferred) and capture that
    // container's traffic until it aged out: the remote entry wins. (The
    // programs refuse to learn a MAC the remote FDB holds.)
    let mut local = Fdb::open(maps)?;
    for mac in fdb_want.keys() {
        if local.forget_learned(Mac(*mac)) {
            changes.learned_flushed += 1;
        }
    }
    let mut ipv4 = maps.remote_ipv4()?;
    for (ip, mac) in &ipv4_want {
        ipv4.insert(*ip, *mac, 0)
            .context("adding a remote address to map REMOTE_IPV4 (is it full?)")?;
    }
    let stale_ips: Vec<[u8; 4]> = ipv4
        .keys()
        .filter_map(Result::ok)
        .filter(|ip| !ipv4_want.contains_key(ip))
        .collect();
    for ip in stale_ips {
        let _ = ipv4.remove(&ip);
    }
    for mac in have_fdb.keys() {
        if !fdb_want.contains_key(mac) {
            let _ = fdb.remove(&FdbKey::new(*mac, 0));
            changes.entries_removed += 1;
        }
    }
    let want: BTreeSet<[u8; 20]> = want_nodes.iter().map(key_bytes).collect();
    for node in have_nodes.iter().filter(|n| !want.contains(*n)) {
        let _ = nodes.remove(&from_key_bytes(node));
        changes.nodes_removed += 1;
    }
    Ok(changes)
}

/// A node address as comparable bytes (NodeAddr is a map key, not Ord).
fn key_bytes(node: &NodeAddr) -> [u8; 20] {
    let mut out = [0; 20];
    out[..16].copy_from_slice(&node.addr);
    out[16] = node.family;
    out
}

fn from_key_bytes(bytes: &[u8; 20]) -> NodeAddr {
    let mut node = NodeAddr::default();
    node.addr.copy_from_slice(&bytes[..16]);
    node.family = bytes[16];
    node
}

/// One remote entry: a container on another node.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteRow {
    pub mac: Mac,
    pub node: IpAddr,
}

/// The remote FDB, sorted by node then MAC.
pub fn remote_rows(maps: &Maps) -> Result<Vec<RemoteRow>> {
    let mut rows: Vec<RemoteRow> = maps
        .remote_fdb()?
        .iter()
        .map(|entry| {
            entry
                .map(|(key, remote)| RemoteRow {
                    mac: Mac(key.mac),
                    node: ip_of(&remote.node),
                })
                .context("reading map REMOTE_FDB")
        })
        .collect::<Result<_>>()?;
    rows.sort_by_key(|r| (r.node, r.mac));
    Ok(rows)
}

/// The nodes the programs accept frames from.
pub fn known_nodes(maps: &Maps) -> Result<Vec<IpAddr>> {
    let mut nodes: Vec<IpAddr> = maps
        .nodes()?
        .keys()
        .map(|k| k.map(|n| ip_of(&n)).context("reading map NODES"))
        .collect::<Result<_>>()?;
    nodes.sort();
    Ok(nodes)
}

/// The vxlan device program's counters, summed over the CPUs, by name.
pub fn counters(maps: &Maps) -> Result<Vec<(&'static str, u64)>> {
    let per_cpu = maps
        .overlay_stats()?
        .get(&0, 0)
        .context("reading map OVERLAY_STATS")?;
    Ok(OverlayCounter::ALL
        .iter()
        .map(|c| {
            (
                c.name(),
                per_cpu.iter().map(|s| s.packets[*c as usize]).sum(),
            )
        })
        .collect())
}

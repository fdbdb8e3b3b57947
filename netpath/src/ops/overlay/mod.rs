//! A network on an overlay, a topology or a CNI network alike (a
//! [`Member`]): joining it (the node's vxlan device, the decap program,
//! the overlay's settings) when the topology comes up or the network's
//! first pod is added, leaving it when the topology goes down or the last
//! pod is deleted, this node's record for the other nodes, and programming
//! what the control plane learned of them: a static peers file (read at
//! `up`, at every CNI ADD, by `overlay sync`, and by `run` when it
//! changes) or etcd (`etcd.rs`, run by `run`).

pub mod etcd;

use std::{
    net::{IpAddr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use log::{info, warn};
use netpath_common::NODE_CAPACITY;
use netpath_common::OverlayConfig;
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath::{
        self,
        hooks::{self, TcMethod},
        overlay::{self as remote, Changes, RemoteRow},
    },
    host::{netlink, netns, vxlan, wireguard},
    model::{
        TopologySpec, ipam,
        naming::{owner_alias, wireguard_device_name},
        overlay::{
            Endpoint, Local, NodeRecord, OverlaySpec, Peers, PeersFile, Skipped, WireguardEnd,
            WireguardSpec, decode_key, vet_peers, wireguard_mtu,
        },
        spec::DEFAULT_MTU,
    },
    network::Network,
    store::overlay::{self as record, OverlayRecord},
};

/// A network on an overlay, as joining, programming and the control
/// plane see it. Its containers come and go: [`local_record`] reads them
/// afresh each time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub network: Network,
    pub overlay: OverlaySpec,
}

impl Member {
    pub fn new(network: Network, overlay: OverlaySpec) -> Member {
        Member { network, overlay }
    }

    /// The topology `spec` on the overlay it names, or an error naming the
    /// fix.
    pub fn of_topology(spec: &TopologySpec) -> Result<Member> {
        let network = Network::topology(&spec.name)?;
        let overlay = spec.overlay.clone().with_context(|| {
            format!(
                "topology {} is on no overlay (bring it up with --vni, --underlay, --overlay-network and \
                 --peers or --etcd)",
                spec.name
            )
        })?;
        Ok(Member::new(network, overlay))
    }

    /// The network on the overlay its record names now, or an error naming
    /// the fix.
    pub fn load(network: &Network) -> Result<Member> {
        Ok(Member::new(network.clone(), network.overlay()?.spec))
    }

    /// The key of its datapath (pins, locks, overlay record).
    pub fn datapath(&self) -> String {
        self.network.datapath()
    }

    /// The user's name for it: the topology's, or the CNI bridge's.
    pub fn name(&self) -> &str {
        self.network.name()
    }
}

/// The MTU of a network's containers: the one asked for, else on an
/// overlay the largest its underlay carries, else the default.
pub async fn network_mtu(
    handle: &Handle,
    overlay: Option<&OverlaySpec>,
    asked: Option<u32>,
) -> Result<u32> {
    match (asked, overlay) {
        (Some(mtu), _) => Ok(mtu),
        (None, Some(overlay)) => mtu_limit(handle, overlay).await,
        (None, None) => Ok(DEFAULT_MTU),
    }
}

/// The largest container MTU the underlay at `overlay.underlay` carries.
pub async fn mtu_limit(handle: &Handle, overlay: &OverlaySpec) -> Result<u32> {
    let underlay = vxlan::underlay_mtu(handle, overlay.underlay).await?;
    Ok(overlay.container_mtu(underlay))
}

/// Refuses, before anything is made, an overlay this host cannot carry:
/// over WireGuard, a kernel without it or a key file that holds no key.
pub async fn preflight(overlay: &OverlaySpec) -> Result<()> {
    if let Some(wg) = &overlay.wireguard {
        wireguard::probe().await?;
        wireguard::PrivateKey::load_or_make(&wg.key_file)?;
    }
    Ok(())
}

/// The member's tunnel end (see [`NodeRecord::tunnel_end`]): over
/// WireGuard its tunnel address, the gateway of its slice of the tunnel
/// network (an address on its bridge, which no container is given), else
/// its underlay address.
pub fn tunnel_end(member: &Member) -> Result<IpAddr> {
    let overlay = &member.overlay;
    if overlay.wireguard.is_none() {
        return Ok(overlay.underlay);
    }
    let network = overlay.tunnel_network();
    let slices = local_claims_subnets(member)?;
    let slice = slices
        .iter()
        .find(|s| network.is_some_and(|n| n.contains(*s)))
        .with_context(|| {
            format!(
                "{}: over WireGuard the node needs a subnet in overlay network {} (its gateway is                  the node's tunnel address)",
                member.name(),
                network.map_or("(none)".into(), |n| n.to_string())
            )
        })?;
    Ok(ipam::gateway(*slice).addr())
}

/// The member's WireGuard device: its name, and the owner mark it carries.
fn wireguard_device(member: &Member) -> (String, String) {
    (
        wireguard_device_name(&member.datapath()),
        owner_alias(&member.datapath()),
    )
}

/// Makes the member's WireGuard device (key, port, MTU) and the guard
/// that keeps tunnel traffic to it.
async fn join_wireguard(handle: &Handle, member: &Member, wg: &WireguardSpec) -> Result<()> {
    let overlay = &member.overlay;
    let key = wireguard::PrivateKey::load_or_make(&wg.key_file)?;
    let underlay = vxlan::underlay_mtu(handle, overlay.underlay).await?;
    let (name, alias) = wireguard_device(member);
    wireguard::ensure_device(
        handle,
        &name,
        &alias,
        wireguard_mtu(overlay.underlay, underlay),
        &key,
        wg.port,
    )
    .await?;
    let network = overlay
        .tunnel_network()
        .context("the overlay has no network")?;
    wireguard::guard(&name, network)
}

/// Makes the member's WireGuard peers the vetted `peers`.
fn program_wireguard(member: &Member, peers: &[NodeRecord]) -> Result<()> {
    let local = tunnel_end(member)?;
    let wanted: Vec<wireguard::Peer> = peers
        .iter()
        .filter_map(|record| {
            let end = record.wireguard.as_ref()?;
            Some(wireguard::Peer {
                // Vetting took only records whose key decodes.
                public_key: decode_key(&end.public_key).ok()?,
                endpoint: SocketAddr::new(record.underlay, end.port),
                tunnel: end.tunnel,
            })
        })
        .collect();
    let (name, _) = wireguard_device(member);
    netns::run_here(|handle| async move {
        let device = netlink::link_by_name(&handle, &name)
            .await?
            .with_context(|| format!("WireGuard device {name} is missing"))?;
        wireguard::set_peers(&handle, &device, local, &wanted).await
    })
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
    if let Some(wg) = &overlay.wireguard {
        join_wireguard(handle, member, wg).await?;
    }
    let device = vxlan::ensure_device(handle, limit).await?;
    let bridge_name = member.network.bridge();
    let bridge = netlink::link_by_name(handle, &bridge_name)
        .await?
        .with_context(|| format!("bridge {bridge_name} of {} is missing", member.network))?;
    let pin_local = remote::kernel_pins_outer_source();
    // Over WireGuard the routes to the tunnel addresses name the source.
    if !pin_local && overlay.wireguard.is_none() {
        warn_if_not_the_route_source(handle, member).await?;
    }
    let tunnel = tunnel_end(member)?;
    let config = OverlayConfig {
        vni: overlay.vni,
        vxlan_ifindex: device.index,
        bridge_ifindex: bridge.index,
        underlay_ipv6: tunnel.is_ipv6() as u8,
        pin_local: pin_local as u8,
        _pad: [0; 2],
        local: remote::node_addr(tunnel).addr,
    };
    let underlay = underlay_hook_device(handle, member, tunnel).await?;
    remote::join(
        &member.datapath(),
        config,
        &device.name,
        underlay.as_deref(),
        TcMethod::chosen(),
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
            if record::load(&member.datapath())?.is_none() {
                let waiting = OverlayRecord {
                    source: etcd::source(endpoints),
                    ..OverlayRecord::default()
                };
                record::save(&member.datapath(), &waiting)?;
            }
        }
    }
    Ok(())
}

/// `off` keeps a datapath's underlay hook off: VXLAN then goes up the
/// stack to the vxlan device, through the host's netfilter hooks, which the
/// underlay hook's packets pass by.
pub const UNDERLAY_DECAP_ENV: &str = "NETPATH_UNDERLAY_DECAP";

/// The interface that gets the datapath's underlay hook (see
/// `datapath::overlay::join`): the one that holds the tunnel address
/// `tunnel`, or None, the log saying why (the vxlan device's hook then
/// decapsulates everything, as it does what the underlay hook leaves).
async fn underlay_hook_device(
    handle: &Handle,
    member: &Member,
    tunnel: IpAddr,
) -> Result<Option<String>> {
    let name = member.name();
    let unsupported = if std::env::var(UNDERLAY_DECAP_ENV).as_deref() == Ok("off") {
        Some(format!("{UNDERLAY_DECAP_ENV}=off"))
    } else if member.overlay.wireguard.is_some() {
        Some("the overlay runs over WireGuard".to_string())
    } else if tunnel.is_ipv6() {
        Some("the underlay is IPv6".to_string())
    } else if !TcMethod::kernel_has_tcx() {
        Some("this kernel has no tcx links (Linux 6.6)".to_string())
    } else {
        None
    };
    let link = match unsupported {
        Some(_) => None,
        None => netlink::link_with_address(handle, tunnel).await?,
    };
    let why_not = match (&unsupported, &link) {
        (Some(why), _) => why.clone(),
        (None, None) => format!("no interface holds {tunnel}"),
        (None, Some(link)) if link.mac.is_none() => {
            format!("{} carries no Ethernet header", link.name)
        }
        (None, Some(link)) => {
            info!(
                "{name}: VXLAN to its containers decapsulated at {}'s tc ingress (tcx), \
                 before the stack; the rest by the vxlan device",
                link.name
            );
            return Ok(Some(link.name.clone()));
        }
    };
    info!("{name}: VXLAN decapsulated by the vxlan device alone ({why_not})");
    Ok(None)
}

/// Before Linux 6.0 the outer source address is the route's choice: the
/// first address of the underlay's family on its interface, as a rule.
/// Warns if `--underlay` is another one, as the other nodes would drop
/// everything this node sends (they know it by `--underlay`).
async fn warn_if_not_the_route_source(handle: &Handle, member: &Member) -> Result<()> {
    let underlay = member.overlay.underlay;
    let Some(link) = netlink::link_with_address(handle, underlay).await? else {
        return Ok(()); // joining fails on it with its own error
    };
    let first = netlink::addresses(handle, link.index)
        .await?
        .into_iter()
        .find(|a| a.addr().is_ipv4() == underlay.is_ipv4());
    if let Some(first) = first.filter(|first| first.addr() != underlay) {
        warn!(
            "{}: this kernel cannot pin the outer source address (Linux 6.0 can): VXLAN leaves {} \
             from the route's source address, likely {}, and the other nodes drop what does not come \
             from --underlay {underlay}; give --underlay {} or make {underlay} the route's source",
            member.name(),
            link.name,
            first.addr(),
            first.addr()
        );
    }
    Ok(())
}

/// Whether datapath `datapath` joined its overlay and is on it still: its
/// overlay record says it joined, and its pinned settings name a VNI (a
/// datapath whose pins vanished and that was loaded again has none, though
/// the record in /run survived: it must join again).
pub fn is_joined(datapath: &str) -> bool {
    record::path(datapath).is_ok_and(|path| path.exists())
        && datapath::pinned_config(datapath)
            .is_ok_and(|config| config.is_some_and(|c| c.overlay.vni != 0))
}

/// Fails, naming what is missing, unless the member's datapath is on its
/// overlay as joining put it: its settings (VNI, the vxlan device, its
/// bridge) in the pinned CONFIG and its decap program on the device.
pub async fn check_joined(handle: &Handle, member: &Member) -> Result<()> {
    let datapath = member.datapath();
    let config = datapath::pinned_config(&datapath)?
        .with_context(|| format!("datapath {datapath} has no pins"))?
        .overlay;
    ensure!(
        config.vni == member.overlay.vni,
        "datapath {datapath} is on VNI {} (0: none), not on VNI {}",
        config.vni,
        member.overlay.vni
    );
    let device = netlink::link_by_name(handle, vxlan::DEVICE)
        .await?
        .with_context(|| format!("the node's vxlan device {} is missing", vxlan::DEVICE))?;
    let bridge_name = member.network.bridge();
    let bridge = netlink::link_by_name(handle, &bridge_name)
        .await?
        .with_context(|| format!("bridge {bridge_name} is missing"))?;
    ensure!(
        config.vxlan_ifindex == device.index && config.bridge_ifindex == bridge.index,
        "datapath {datapath} sends to ifindex {} and floods into ifindex {}, but {} is {} and {bridge_name} is {}",
        config.vxlan_ifindex,
        config.bridge_ifindex,
        device.name,
        device.index,
        bridge.index
    );
    ensure!(
        hooks::vxlan_attached(
            handle,
            &datapath::object::pin_dir(&datapath),
            &device.name,
            device.index
        )
        .await?,
        "the decap program of datapath {datapath} is not on {}",
        device.name
    );
    Ok(())
}

/// Takes datapath `datapath`'s program (on VNI `vni`) off the vxlan
/// device and forgets its overlay state; the device goes with the last
/// overlay on the node.
pub async fn leave(handle: &Handle, datapath: &str, vni: u32) -> Result<()> {
    remote::leave(datapath, vxlan::DEVICE, vni)?;
    record::remove(datapath)?;
    wireguard::remove(
        handle,
        &wireguard_device_name(datapath),
        &owner_alias(datapath),
    )
    .await?;
    let in_use = match netlink::link_by_name(handle, vxlan::DEVICE).await? {
        Some(device) => hooks::vxlan_in_use(handle, &device.name, device.index).await?,
        None => false,
    };
    vxlan::remove_unless(handle, in_use).await
}

/// What this node tells the others: its address, subnets and containers,
/// as the member's record has them now.
pub fn local_record(member: &Member) -> Result<NodeRecord> {
    let view = member.network.load()?;
    let endpoints = view
        .containers
        .iter()
        .map(|container| Endpoint {
            mac: container.port.mac,
            ips: container.port.addresses.clone(),
            source_check: container.port.source_check,
            identity: container.identity.clone(),
        })
        .collect();
    let overlay = &member.overlay;
    let wireguard = match &overlay.wireguard {
        Some(wg) => Some(WireguardEnd {
            public_key: wireguard::PrivateKey::load_or_make(&wg.key_file)?.public(),
            port: wg.port,
            tunnel: tunnel_end(member)?,
        }),
        None => None,
    };
    Ok(NodeRecord {
        node: overlay.node.clone(),
        vni: overlay.vni,
        underlay: overlay.underlay,
        subnets: view.overlay.map(|on| on.subnets).unwrap_or_default(),
        wireguard,
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
        Vec::new(),
        format!("peers file {}", path.display()),
        true,
        None,
    )
}

/// What this node holds that no other may claim, as the member's record
/// has it now (a topology still coming up included), and the room in its
/// maps.
fn local_claims(member: &Member) -> Result<Local> {
    let view = member.network.view()?;
    Ok(Local {
        subnets: local_claims_subnets(member)?,
        macs: view.iter().flat_map(|v| v.ports().map(|p| p.mac)).collect(),
        max_nodes: NODE_CAPACITY as usize,
        max_endpoints: datapath::fdb_size(&member.datapath())? as usize,
        tunnel_end: Some(tunnel_end(member)?),
    })
}

/// The member's slices of the overlay's networks, as its record has them
/// now (a topology still coming up included).
fn local_claims_subnets(member: &Member) -> Result<Vec<IpNet>> {
    Ok(member
        .network
        .view()?
        .and_then(|v| v.overlay)
        .map(|o| o.subnets)
        .unwrap_or_default())
}

/// Programs the other nodes among `records` into the member's datapath
/// and records them (and the source's state) for `status` and for a
/// restart without the source. Each record is vetted first
/// ([`vet_peers`]): one that claims what is not its node's is skipped,
/// logged and shown by `overlay status`, and the rest are programmed.
/// `rejected`: records the source could not even read as a node's.
pub fn program(
    member: &Member,
    records: Vec<NodeRecord>,
    rejected: Vec<Skipped>,
    source: String,
    connected: bool,
    lease: Option<i64>,
) -> Result<Changes> {
    let vetted = vet_peers(&member.overlay, &local_claims(member)?, records);
    let peers = vetted.peers;
    let mut skipped = rejected;
    skipped.extend(vetted.skipped);
    // The tunnels before the maps: no frame goes to a node the device
    // cannot reach yet.
    if member.overlay.wireguard.is_some() {
        program_wireguard(member, &peers)?;
    }
    let changes = remote::program(&datapath::reconcile(&member.datapath())?, &peers)?;
    if changes.any() {
        info!(
            "{}: overlay now {} nodes ({changes:?})",
            member.name(),
            peers.len()
        );
    }
    let previous = record::load(&member.datapath())?.unwrap_or_default();
    for refused in skipped.iter().filter(|s| !previous.skipped.contains(s)) {
        warn!(
            "{}: skipping the record of node {}: {}",
            member.name(),
            refused.node,
            refused.reason
        );
    }
    let programmed_at = if changes.any() || previous.programmed_at == 0 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    } else {
        previous.programmed_at
    };
    record::save(
        &member.datapath(),
        &OverlayRecord {
            peers,
            source,
            connected,
            lease,
            programmed_at,
            skipped,
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
                        warn!("{}: {e:#}; keeping the peers as they were", member.name());
                    } else if let Err(e) = super::policy::refresh(&member.network) {
                        warn!("{e:#}; the policies allow the peers as they were");
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
    /// The interface whose tc ingress decapsulates VXLAN to the containers
    /// before the stack (the underlay hook), or None: the vxlan device
    /// decapsulates all.
    pub underlay_hook: Option<String>,
    pub source: String,
    pub connected: bool,
    pub lease: Option<i64>,
    pub programmed_at: u64,
    pub lease_ttl_s: u64,
    pub peers: Vec<NodeRecord>,
    /// Records the control plane offered and this node did not take.
    pub skipped: Vec<Skipped>,
    /// Underlay addresses the programs accept frames from.
    pub accepted: Vec<std::net::IpAddr>,
    pub remote: Vec<RemoteRow>,
    pub counters: Vec<(&'static str, u64)>,
}

pub fn status(member: &Member) -> Result<Status> {
    let maps = datapath::maps(&member.datapath())?;
    let rec = record::load(&member.datapath())?.unwrap_or_default();
    Ok(Status {
        node: local_record(member)?,
        device: vxlan::DEVICE.into(),
        underlay_hook: underlay_hook_interface(member)?,
        source: rec.source,
        connected: rec.connected,
        lease: rec.lease,
        programmed_at: rec.programmed_at,
        lease_ttl_s: member.overlay.lease_ttl_s,
        peers: rec.peers,
        skipped: rec.skipped,
        accepted: remote::known_nodes(&maps)?,
        remote: remote::remote_rows(&maps)?,
        counters: {
            let mut counters = remote::counters(&maps)?;
            // The node's, not the datapath's: no overlay took them.
            counters.push(("drop_unclaimed", vxlan::unclaimed_packets()?));
            if member.overlay.wireguard.is_some() {
                let (device, _) = wireguard_device(member);
                counters.push((
                    "drop_unauthenticated",
                    wireguard::unauthenticated_packets(&device)?,
                ));
            }
            counters
        },
    })
}

/// The interface that has the datapath's underlay hook: the one that holds
/// its tunnel address (the link's own record holds no name to read).
fn underlay_hook_interface(member: &Member) -> Result<Option<String>> {
    let pins = datapath::object::pin_dir(&member.datapath());
    if !hooks::Hook::Underlay.dir(&pins).exists() {
        return Ok(None);
    }
    let tunnel = tunnel_end(member)?;
    let holder = nix::ifaddrs::getifaddrs()
        .context("listing the interfaces' addresses")?
        .find(|entry| {
            let address = entry.address.as_ref();
            let v4 = address
                .and_then(|a| a.as_sockaddr_in())
                .map(|a| IpAddr::from(a.ip()));
            let v6 = address
                .and_then(|a| a.as_sockaddr_in6())
                .map(|a| IpAddr::from(a.ip()));
            v4.or(v6) == Some(tunnel)
        })
        .map(|entry| entry.interface_name);
    Ok(Some(holder.unwrap_or_else(|| {
        format!("(no interface holds {tunnel})")
    })))
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
                .find(|p| p.tunnel_end() == row.node)
                .map(|p| p.node.clone()),
            row,
            device: vxlan::DEVICE,
        })
        .collect())
}

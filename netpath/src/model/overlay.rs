//! An overlay across nodes, as plain data: this node's identity on it
//! (underlay address, VNI, the overlay-wide networks its container subnets
//! are slices of), where the other nodes are learned from (a static peers
//! file or etcd), and the record every node publishes about itself.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use netpath_common::PortPolicy;

use super::{Mac, policy::Identity, source::source_policy};

/// Largest VNI (24 bits). VNI 0 means "no overlay" to the programs.
pub const MAX_VNI: u32 = (1 << 24) - 1;
pub use netpath_common::VXLAN_PORT;
/// Seconds a node's etcd lease lives without a keep-alive.
pub const DEFAULT_LEASE_TTL_S: u64 = 10;

/// Bytes VXLAN adds in front of a frame over an IPv4 underlay: outer IPv4
/// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
pub const OVERHEAD_IPV4: u32 = 50;
/// Over IPv6: a 40-byte outer header instead of 20.
pub const OVERHEAD_IPV6: u32 = 70;

/// The largest container MTU an underlay of `underlay_mtu` carries.
pub fn container_mtu(underlay: IpAddr, underlay_mtu: u32) -> u32 {
    let overhead = if underlay.is_ipv4() {
        OVERHEAD_IPV4
    } else {
        OVERHEAD_IPV6
    };
    underlay_mtu.saturating_sub(overhead)
}

/// Bytes WireGuard adds in front of a packet over an IPv4 underlay: outer
/// IPv4 (20), UDP (8), its data header (16) and authentication tag (16).
pub const WIREGUARD_OVERHEAD_IPV4: u32 = 60;
/// Over IPv6: a 40-byte outer header instead of 20.
pub const WIREGUARD_OVERHEAD_IPV6: u32 = 80;

/// The MTU of a WireGuard device over an underlay of MTU `underlay_mtu`.
pub fn wireguard_mtu(underlay: IpAddr, underlay_mtu: u32) -> u32 {
    let overhead = if underlay.is_ipv4() {
        WIREGUARD_OVERHEAD_IPV4
    } else {
        WIREGUARD_OVERHEAD_IPV6
    };
    underlay_mtu.saturating_sub(overhead)
}

/// Where the other nodes of an overlay are learned from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Peers {
    /// A TOML file of node records (see [`PeersFile`]), re-read when it changes.
    File(PathBuf),
    /// etcd v3 endpoints, e.g. `http://10.0.0.5:2379`.
    Etcd(Vec<String>),
}

/// This node on one overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// Node name, unique in the overlay.
    pub node: String,
    pub vni: u32,
    /// This node's address on the underlay: the vxlan tunnels' end.
    pub underlay: IpAddr,
    /// The overlay-wide networks (one per family): the containers of every
    /// node are on them, so they reach each other on one Ethernet segment;
    /// each node's `--subnet` is its slice of one.
    pub networks: Vec<IpNet>,
    pub peers: Peers,
    /// Seconds the node's etcd registration outlives its last keep-alive.
    pub lease_ttl_s: u64,
    /// How this node and etcd prove who they are (none: plain HTTP).
    #[serde(default)]
    pub etcd_access: EtcdAccess,
    /// WireGuard between the nodes (none: VXLAN straight over the underlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardSpec>,
}

/// UDP port of WireGuard unless told otherwise (the one `wg` documents).
pub const WIREGUARD_PORT: u16 = 51820;

/// WireGuard between the nodes: this node's private key, and the UDP port
/// its peers reach it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireguardSpec {
    /// Base64, as `wg genkey` writes it; made (mode 0600) if missing.
    pub key_file: PathBuf,
    #[serde(default = "wireguard_port")]
    pub port: u16,
}

fn wireguard_port() -> u16 {
    WIREGUARD_PORT
}

/// A WireGuard key (32 bytes) from its base64 text, as `wg` writes it.
pub fn decode_key(text: &str) -> Result<[u8; 32]> {
    use base64::{Engine, prelude::BASE64_STANDARD};
    let bytes = BASE64_STANDARD
        .decode(text)
        .context("the key is not base64")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("the key has {} bytes, not 32", b.len()))
}

/// How a node and etcd prove who they are to each other: TLS (the CA that
/// signed etcd's certificate, and this node's certificate and key if etcd
/// asks clients for one) and an etcd user, whose password is read from a
/// file (a command line is visible to every user through `ps`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdAccess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// Refuses halves: a certificate without its key, a user without a
    /// password file, TLS settings without TLS endpoints.
    pub fn validate(&self, endpoints: &[String]) -> Result<()> {
        ensure!(
            self.cert.is_some() == self.key.is_some(),
            "etcd: give the client certificate and its key together (--etcd-cert and --etcd-key)"
        );
        ensure!(
            self.user.is_some() == self.password_file.is_some(),
            "etcd: give the user and the file with its password together (--etcd-user and \
             --etcd-password-file)"
        );
        let tls = self.ca.is_some() || self.cert.is_some();
        if let Some(plain) = endpoints.iter().find(|e| tls != e.starts_with("https://")) {
            bail!(
                "etcd endpoint {plain}: {}",
                if tls {
                    "with TLS settings every endpoint is https://"
                } else {
                    "an https:// endpoint needs --etcd-ca (the CA that signed etcd's certificate)"
                }
            );
        }
        Ok(())
    }
}

impl OverlaySpec {
    /// Checks the overlay against the node's container subnets.
    pub fn validate(&self, subnets: &[IpNet]) -> Result<()> {
        ensure!(
            (1..=MAX_VNI).contains(&self.vni),
            "VNI {} is out of range (1..={MAX_VNI})",
            self.vni
        );
        ensure!(
            !self.node.is_empty() && self.node.len() <= 63,
            "the node name must have 1 to 63 bytes"
        );
        ensure!(
            self.lease_ttl_s >= 2,
            "the lease TTL must be at least 2 seconds"
        );
        for subnet in subnets {
            let Some(network) = self.network_of(subnet.addr()) else {
                bail!(
                    "subnet {subnet} is in no overlay network ({}): give --overlay-network with the overlay-wide \
                     network this node's subnet is a slice of, e.g. 10.88.0.0/16 for 10.88.1.0/24",
                    list(&self.networks)
                );
            };
            ensure!(
                network.contains(subnet),
                "subnet {subnet} is not inside overlay network {network}"
            );
        }
        if let Peers::Etcd(endpoints) = &self.peers {
            ensure!(!endpoints.is_empty(), "give at least one etcd endpoint");
        }
        Ok(())
    }

    /// Over WireGuard, the overlay network the nodes' tunnel addresses are
    /// in: the one of the underlay's family, else the other.
    pub fn tunnel_network(&self) -> Option<IpNet> {
        self.network_of(self.underlay)
            .or_else(|| self.networks.first().copied())
    }

    /// The largest container MTU an underlay of `underlay_mtu` carries: the
    /// VXLAN encapsulation off it, and over WireGuard its own too.
    pub fn container_mtu(&self, underlay_mtu: u32) -> u32 {
        match (&self.wireguard, self.tunnel_network()) {
            (Some(_), Some(tunnels)) => {
                container_mtu(tunnels.addr(), wireguard_mtu(self.underlay, underlay_mtu))
            }
            _ => container_mtu(self.underlay, underlay_mtu),
        }
    }

    /// The overlay network of `addr`'s family.
    pub fn network_of(&self, addr: IpAddr) -> Option<IpNet> {
        self.networks
            .iter()
            .find(|n| n.addr().is_ipv4() == addr.is_ipv4())
            .copied()
    }

    /// A container address as the container carries it: on the whole
    /// overlay network, so every container of every node is on-link.
    pub fn on_overlay(&self, address: IpNet) -> IpNet {
        match self.network_of(address.addr()) {
            Some(network) => IpNet::new(address.addr(), network.prefix_len()).unwrap_or(address),
            None => address,
        }
    }
}

fn list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none given".into();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One container as other nodes need to know it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub mac: Mac,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// false: the container routes for others (its port does not check
    /// its sources), so it may send from its node's subnets, not only its
    /// own addresses. Records without it are of containers that check.
    #[serde(default = "checks", skip_serializing_if = "is_checked")]
    pub source_check: bool,
    /// Its namespace, labels and named ports, which the other nodes'
    /// network policies select it by (records without them: namespace
    /// default, no labels).
    #[serde(flatten)]
    pub identity: Identity,
}

fn checks() -> bool {
    true
}

fn is_checked(source_check: &bool) -> bool {
    *source_check
}

/// What a container on another node may send, checked on every frame
/// decapsulated from it: its own MAC, and its own addresses with its
/// link-local one, or for one that routes its node's subnets; an error
/// if they do not fit the check's slots.
pub fn sender_policy(record: &NodeRecord, endpoint: &Endpoint) -> Result<PortPolicy, String> {
    let allowed: Vec<IpNet> = if endpoint.source_check {
        endpoint.ips.iter().map(|ip| IpNet::from(*ip)).collect()
    } else {
        record.subnets.clone()
    };
    source_policy(endpoint.mac, endpoint.source_check, allowed)
}

/// What a node publishes about itself (its etcd value, or its entry in a
/// peers file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub vni: u32,
    pub underlay: IpAddr,
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    /// Its WireGuard end, on an overlay over WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardEnd>,
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<Endpoint>,
}

/// A node's end of the WireGuard tunnels: its public key, its port (on
/// its underlay address), and its tunnel address, the one address it
/// sends VXLAN from and takes it at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireguardEnd {
    pub public_key: String,
    pub port: u16,
    pub tunnel: IpAddr,
}

impl NodeRecord {
    /// Where its VXLAN goes and comes from: its tunnel address over
    /// WireGuard, else its underlay address.
    pub fn tunnel_end(&self) -> IpAddr {
        self.wireguard
            .as_ref()
            .map_or(self.underlay, |wireguard| wireguard.tunnel)
    }
}

/// A static peers file: every node's record (this node's may be there too;
/// it is skipped), for every overlay (records of other VNIs are skipped).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeRecord>,
}

impl PeersFile {
    pub fn read(path: &Path) -> Result<PeersFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading peers file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "parsing peers file {} (a list of [[node]] tables, as `netpath overlay export` prints them)",
                path.display()
            )
        })
    }
}

/// A record the control plane offered that this node did not take, and
/// why: `overlay status` shows them, and the other records are programmed
/// all the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The node the record names (or its etcd key, for one that names none).
    pub node: String,
    pub reason: String,
}

/// What belongs to this node, which no other node's record may claim, and
/// how much the maps hold.
#[derive(Clone, Debug, Default)]
pub struct Local {
    /// This node's slices of the overlay networks.
    pub subnets: Vec<IpNet>,
    /// Its containers' MACs.
    pub macs: HashSet<Mac>,
    /// Most other nodes the maps hold.
    pub max_nodes: usize,
    /// Most remote containers the maps hold (the remote FDB's size).
    pub max_endpoints: usize,
    /// This node's tunnel end (see [`NodeRecord::tunnel_end`]): the
    /// programs take one family of outer addresses.
    pub tunnel_end: Option<IpAddr>,
}

/// The other nodes of overlay `me` among `records`, checked one by one:
/// what they may be programmed as, and what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vetted {
    pub peers: Vec<NodeRecord>,
    pub skipped: Vec<Skipped>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The other nodes of overlay `me` among `records`: same VNI, another
/// node and underlay address; a node listed twice counts once (the last
/// record). Each is taken only if it claims nothing it may not: its slices
/// inside the overlay's networks and apart from this node's and every
/// other node's, its containers' addresses inside its own slices, their
/// MACs unicast and no container's of this node or another node's, and
/// it fits the maps. Anything else is skipped, never failing the rest.
pub fn vet_peers(
    me: &OverlaySpec,
    local: &Local,
    records: impl IntoIterator<Item = NodeRecord>,
) -> Vetted {
    // A later record of a node, or of its underlay address, replaces the
    // earlier one.
    let mut by_node: BTreeMap<String, NodeRecord> = BTreeMap::new();
    let mut node_at: HashMap<IpAddr, String> = HashMap::new();
    for record in records {
        if record.vni != me.vni || record.underlay == me.underlay || record.node == me.node {
            continue;
        }
        if let Some(earlier) = node_at.remove(&record.underlay) {
            by_node.remove(&earlier);
        }
        if let Some(earlier) = by_node.remove(&record.node) {
            node_at.remove(&earlier.underlay);
        }
        node_at.insert(record.underlay, record.node.clone());
        by_node.insert(record.node.clone(), record);
    }
    // In node order, each against those taken before it: the MACs taken
    // in a map, so a large overlay is vetted in linear time.
    let mut vetted = Vetted::default();
    let mut taken = Taken::default();
    for record in by_node.into_values() {
        match refusal(me, local, &vetted.peers, &taken, &record) {
            None => {
                taken.endpoints += record.endpoints.len();
                for endpoint in &record.endpoints {
                    taken.macs.insert(endpoint.mac, record.node.clone());
                }
                if let Some(wireguard) = &record.wireguard {
                    taken
                        .keys
                        .insert(wireguard.public_key.clone(), record.node.clone());
                }
                vetted.peers.push(record);
            }
            Some(reason) => vetted.skipped.push(Skipped {
                node: record.node,
                reason,
            }),
        }
    }
    vetted
}

/// What the records taken so far hold.
#[derive(Default)]
struct Taken {
    endpoints: usize,
    /// Their containers' MACs, with the node of each.
    macs: HashMap<Mac, String>,
    /// Their WireGuard public keys, with the node of each.
    keys: HashMap<String, String>,
}

/// Why `record` may not be taken beside `taken` (None: it may).
fn refusal(
    me: &OverlaySpec,
    local: &Local,
    peers: &[NodeRecord],
    taken: &Taken,
    record: &NodeRecord,
) -> Option<String> {
    let endpoints = taken.endpoints;
    if peers.len() >= local.max_nodes {
        return Some(format!(
            "the overlay has more nodes than the {} netpath holds",
            local.max_nodes
        ));
    }
    if endpoints + record.endpoints.len() > local.max_endpoints {
        return Some(format!(
            "its {} containers do not fit the remote FDB ({} entries, {endpoints} taken)",
            record.endpoints.len(),
            local.max_endpoints
        ));
    }
    if let Some(reason) = tunnel_refusal(me, local, taken, record) {
        return Some(reason);
    }
    for slice in &record.subnets {
        if !me.networks.iter().any(|n| n.contains(slice)) {
            return Some(format!(
                "its subnet {slice} is not inside the overlay's networks ({})",
                list(&me.networks)
            ));
        }
        if let Some(mine) = local.subnets.iter().find(|s| overlaps(s, slice)) {
            return Some(format!("its subnet {slice} overlaps this node's {mine}"));
        }
        if let Some(other) = peers
            .iter()
            .find(|p| p.subnets.iter().any(|s| overlaps(s, slice)))
        {
            return Some(format!("its subnet {slice} overlaps node {}'s", other.node));
        }
    }
    for endpoint in &record.endpoints {
        let mac = endpoint.mac;
        if !mac.is_unicast() {
            return Some(format!("its container MAC {mac} is not unicast"));
        }
        if local.macs.contains(&mac) {
            return Some(format!("it claims MAC {mac}, a container's of this node"));
        }
        if let Some(other) = taken.macs.get(&mac) {
            return Some(format!("it claims MAC {mac}, node {other}'s"));
        }
        if let Some(ip) = endpoint
            .ips
            .iter()
            .find(|ip| !record.subnets.iter().any(|s| s.contains(*ip)))
        {
            return Some(format!(
                "it claims address {ip}, outside its subnets ({})",
                list(&record.subnets)
            ));
        }
        if let Err(reason) = sender_policy(record, endpoint) {
            return Some(reason);
        }
        if let Err(reason) = endpoint.identity.validate() {
            return Some(format!("its container {mac}: {reason}"));
        }
    }
    None
}

/// Why `record`'s tunnel end may not be taken (None: it may): over
/// WireGuard on both sides or on neither, one family of tunnel addresses,
/// a tunnel address inside its own subnets, a key of its own.
fn tunnel_refusal(
    me: &OverlaySpec,
    local: &Local,
    taken: &Taken,
    record: &NodeRecord,
) -> Option<String> {
    match (&me.wireguard, &record.wireguard) {
        (None, None) => {}
        (Some(_), None) => {
            return Some(
                "it offers no WireGuard end, and this node's overlay runs over WireGuard".into(),
            );
        }
        (None, Some(_)) => {
            return Some(
                "it runs the overlay over WireGuard, and this node does not (give --wireguard-key)"
                    .into(),
            );
        }
        (Some(_), Some(wireguard)) => {
            if let Err(e) = decode_key(&wireguard.public_key) {
                return Some(format!("its WireGuard public key: {e:#}"));
            }
            if let Some(other) = taken.keys.get(&wireguard.public_key) {
                return Some(format!("its WireGuard public key is node {other}'s"));
            }
            if !record.subnets.iter().any(|s| s.contains(&wireguard.tunnel)) {
                return Some(format!(
                    "its tunnel address {} is outside its subnets ({})",
                    wireguard.tunnel,
                    list(&record.subnets)
                ));
            }
        }
    }
    let end = record.tunnel_end();
    match local.tunnel_end {
        Some(mine) if mine.is_ipv4() != end.is_ipv4() => Some(format!(
            "its tunnel end {end} is of another family than this node's ({mine})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> OverlaySpec {
        OverlaySpec {
            node: "a".into(),
            vni: 42,
            underlay: "192.168.100.1".parse().unwrap(),
            networks: vec!["10.88.0.0/16".parse().unwrap()],
            peers: Peers::File("/x".into()),
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            etcd_access: EtcdAccess::default(),
            wireguard: None,
        }
    }

    #[test]
    fn mtu_leaves_room_for_the_encapsulation() {
        assert_eq!(container_mtu("10.0.0.1".parse().unwrap(), 1500), 1450);
        assert_eq!(container_mtu("fd00::1".parse().unwrap(), 1500), 1430);
    }

    #[test]
    fn subnets_must_be_slices_of_the_overlay_network() {
        let spec = me();
        spec.validate(&["10.88.3.0/24".parse().unwrap()]).unwrap();
        let e = spec
            .validate(&["10.77.0.0/24".parse().unwrap()])
            .unwrap_err();
        assert!(e.to_string().contains("not inside"), "{e}");
        let e = spec.validate(&["fd00::/64".parse().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("--overlay-network"), "{e}");
        let mut bad = me();
        bad.vni = 1 << 24;
        assert!(bad.validate(&[]).is_err());
        assert_eq!(
            spec.on_overlay("10.88.3.7/24".parse().unwrap()).to_string(),
            "10.88.3.7/16"
        );
    }

    #[test]
    fn peers_file_parses_and_skips_self_and_other_overlays() {
        let text = r#"
[[node]]
node = "a"
vni = 42
underlay = "192.168.100.1"
[[node]]
node = "b"
vni = 42
underlay = "192.168.100.2"
subnets = ["10.88.2.0/24"]
[[node.endpoint]]
mac = "02:00:00:00:00:02"
ips = ["10.88.2.2"]
[[node]]
node = "c"
vni = 7
underlay = "192.168.100.3"
"#;
        let file: PeersFile = toml::from_str(text).unwrap();
        let peers = vet_peers(&me(), &room(), file.nodes).peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node, "b");
        assert_eq!(peers[0].endpoints[0].ips[0].to_string(), "10.88.2.2");
        assert!(toml::from_str::<PeersFile>("colour = 1").is_err());
    }

    fn room() -> Local {
        Local {
            subnets: vec!["10.88.1.0/24".parse().unwrap()],
            macs: HashSet::from(["02:00:00:00:00:01".parse().unwrap()]),
            max_nodes: 3,
            max_endpoints: 4,
            tunnel_end: Some("192.168.100.1".parse().unwrap()),
        }
    }

    fn node(name: &str, n: u8, subnet: &str, endpoints: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            node: name.into(),
            vni: 42,
            underlay: format!("192.168.100.{n}").parse().unwrap(),
            subnets: vec![subnet.parse().unwrap()],
            wireguard: None,
            endpoints: endpoints
                .iter()
                .map(|(mac, ip)| Endpoint {
                    mac: mac.parse().unwrap(),
                    ips: vec![ip.parse().unwrap()],
                    source_check: true,
                    identity: Identity::default(),
                })
                .collect(),
        }
    }

    /// What a remote container may send: its own addresses, or its node's
    /// subnets if it routes; never more than the check's slots.
    /// 200 nodes of 250 containers (the control plane's records at
    /// scale): each MAC is looked up once, not against every container
    /// taken before it. The last node claims a MAC of the first and is
    /// skipped, naming it.
    #[test]
    fn a_large_overlay_is_vetted_whole() {
        let record = |n: u32| NodeRecord {
            node: format!("n{n:03}"),
            vni: 42,
            underlay: IpAddr::from([192, 168, (n >> 8) as u8 + 101, n as u8]),
            subnets: vec![IpNet::new(IpAddr::from([10, 88, n as u8 + 2, 0]), 24).unwrap()],
            wireguard: None,
            endpoints: (0..250u32)
                .map(|e| Endpoint {
                    mac: Mac([2, 0, 0, (n >> 8) as u8, n as u8, e as u8]),
                    ips: vec![IpAddr::from([10, 88, n as u8 + 2, e as u8 + 2])],
                    source_check: true,
                    identity: Identity::default(),
                })
                .collect(),
        };
        let mut records: Vec<NodeRecord> = (0..200).map(record).collect();
        records[199].endpoints[0].mac = records[0].endpoints[0].mac;
        let local = Local {
            macs: HashSet::new(),
            max_nodes: 256,
            max_endpoints: 65536,
            ..room()
        };
        let started = std::time::Instant::now();
        let vetted = vet_peers(&me(), &local, records);
        let took = started.elapsed();
        assert_eq!(vetted.peers.len(), 199);
        assert_eq!(vetted.skipped.len(), 1);
        assert!(
            vetted.skipped[0].reason.contains("node n000's"),
            "{:?}",
            vetted.skipped
        );
        eprintln!("vetted 200 nodes of 250 containers in {took:?}");
    }

    /// Over WireGuard a record is taken only with a WireGuard end of its
    /// own: a key that decodes and no other node's, a tunnel address in
    /// its own subnets of this node's family; and WireGuard on both sides.
    #[test]
    fn wireguard_ends_are_vetted() {
        let wireguard = Some(WireguardSpec {
            key_file: "/k".into(),
            port: WIREGUARD_PORT,
        });
        let sealed = OverlaySpec { wireguard, ..me() };
        let local = Local {
            tunnel_end: Some("10.88.1.1".parse().unwrap()),
            ..room()
        };
        let key = |byte: u8| {
            use base64::{Engine, prelude::BASE64_STANDARD};
            BASE64_STANDARD.encode([byte; 32])
        };
        let end = |public_key: String, tunnel: &str| WireguardEnd {
            public_key,
            port: WIREGUARD_PORT,
            tunnel: tunnel.parse().unwrap(),
        };
        let over = |name: &str, n: u8, wireguard: Option<WireguardEnd>| NodeRecord {
            wireguard,
            ..node(name, n, &format!("10.88.{n}.0/24"), &[])
        };
        let vetted = vet_peers(
            &sealed,
            &local,
            [
                over("b", 2, Some(end(key(2), "10.88.2.1"))),
                over("c", 3, Some(end(key(2), "10.88.3.1"))),
                over("d", 4, Some(end(key(4), "10.88.2.9"))),
                over("e", 5, Some(end("short".into(), "10.88.5.1"))),
                over("f", 6, None),
            ],
        );
        assert_eq!(vetted.peers.len(), 1, "{:?}", vetted.skipped);
        assert_eq!(vetted.peers[0].tunnel_end().to_string(), "10.88.2.1");
        let reasons: Vec<&str> = vetted.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].contains("node b's"), "{reasons:?}");
        assert!(reasons[1].contains("outside its subnets"), "{reasons:?}");
        assert!(reasons[2].contains("public key"), "{reasons:?}");
        assert!(
            reasons[3].contains("offers no WireGuard end"),
            "{reasons:?}"
        );
        let plain = vet_peers(
            &me(),
            &room(),
            [over("b", 2, Some(end(key(2), "10.88.2.1")))],
        );
        assert!(plain.skipped[0].reason.contains("give --wireguard-key"));
        assert_eq!(sealed.container_mtu(1500), 1390);
    }

    #[test]
    fn etcd_access_is_refused_by_halves() {
        let https = ["https://10.0.0.5:2379".to_owned()];
        let http = ["http://10.0.0.5:2379".to_owned()];
        let tls = EtcdAccess {
            ca: Some("/ca.pem".into()),
            ..EtcdAccess::default()
        };
        assert!(tls.validate(&https).is_ok());
        assert!(EtcdAccess::default().validate(&http).is_ok());
        let error = |access: EtcdAccess, endpoints: &[String]| {
            access.validate(endpoints).unwrap_err().to_string()
        };
        assert!(error(tls.clone(), &http).contains("every endpoint is https://"));
        assert!(error(EtcdAccess::default(), &https).contains("needs --etcd-ca"));
        let half_identity = EtcdAccess {
            cert: Some("/node.pem".into()),
            ..tls.clone()
        };
        assert!(error(half_identity, &https).contains("--etcd-key"));
        let no_password = EtcdAccess {
            user: Some("root".into()),
            ..tls
        };
        assert!(error(no_password, &https).contains("--etcd-password-file"));
    }

    #[test]
    fn a_sender_may_send_from_its_own_addresses_or_its_nodes_subnets() {
        let mut record = node(
            "b",
            2,
            "10.88.2.0/24",
            &[("02:00:00:00:00:02", "10.88.2.2")],
        );
        let endpoint = record.endpoints[0].clone();
        let policy = sender_policy(&record, &endpoint).unwrap();
        assert_eq!(policy.flags, netpath_common::PORT_SOURCE_CHECK);
        assert_eq!(policy.mac, endpoint.mac.0);
        let ipv4 = policy.ipv4.map(|s| s.prefix());
        assert_eq!(
            (ipv4[0], ipv4.iter().flatten().count()),
            (Some(([10, 88, 2, 2], 32)), 1)
        );
        let ipv6 = policy.ipv6.map(|s| s.prefix());
        let link_local = endpoint.mac.ipv6_link_local().octets();
        assert_eq!(
            (ipv6[0], ipv6.iter().flatten().count()),
            (Some((link_local, 128)), 1)
        );

        let router = Endpoint {
            source_check: false,
            ..endpoint.clone()
        };
        let policy = sender_policy(&record, &router).unwrap();
        assert_eq!(policy.flags, 0);
        let ipv4 = policy.ipv4.map(|s| s.prefix());
        assert_eq!(
            (ipv4[0], ipv4.iter().flatten().count()),
            (Some(([10, 88, 2, 0], 24)), 1)
        );

        let crowded = Endpoint {
            ips: (2..7)
                .map(|i| format!("10.88.2.{i}").parse().unwrap())
                .collect(),
            ..endpoint
        };
        record.endpoints = vec![crowded.clone()];
        let reason = sender_policy(&record, &crowded).unwrap_err();
        let vetted = vet_peers(&me(), &room(), vec![record]);
        assert_eq!(vetted.skipped[0].reason, reason);
    }

    #[test]
    fn a_record_that_claims_what_is_not_its_own_is_skipped_alone() {
        let good = node(
            "b",
            2,
            "10.88.2.0/24",
            &[("02:00:00:00:00:02", "10.88.2.2")],
        );
        let records = vec![
            good.clone(),
            // This node's slice, and its gateway with it.
            node(
                "c",
                3,
                "10.88.1.0/24",
                &[("02:00:00:00:00:03", "10.88.1.1")],
            ),
            // An address outside its own slice (this node's container's).
            node(
                "d",
                4,
                "10.88.4.0/24",
                &[("02:00:00:00:00:04", "10.88.1.5")],
            ),
            // A MAC of this node's container.
            node(
                "e",
                5,
                "10.88.5.0/24",
                &[("02:00:00:00:00:01", "10.88.5.2")],
            ),
            // Outside the overlay, overlapping b, a multicast MAC.
            node("f", 6, "10.99.0.0/24", &[]),
            node("g", 7, "10.88.2.128/25", &[]),
            node(
                "h",
                8,
                "10.88.8.0/24",
                &[("03:00:00:00:00:08", "10.88.8.2")],
            ),
            // Another node's MAC.
            node(
                "i",
                9,
                "10.88.9.0/24",
                &[("02:00:00:00:00:02", "10.88.9.2")],
            ),
        ];
        let vetted = vet_peers(&me(), &room(), records);
        assert_eq!(vetted.peers, [good]);
        let skipped: Vec<&str> = vetted.skipped.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(skipped, ["c", "d", "e", "f", "g", "h", "i"]);
        let reason = |node: &str| {
            vetted
                .skipped
                .iter()
                .find(|s| s.node == node)
                .unwrap()
                .reason
                .clone()
        };
        assert!(
            reason("c").contains("overlaps this node's 10.88.1.0/24"),
            "{}",
            reason("c")
        );
        assert!(
            reason("d").contains("outside its subnets"),
            "{}",
            reason("d")
        );
        assert!(
            reason("e").contains("a container's of this node"),
            "{}",
            reason("e")
        );
        assert!(reason("g").contains("node b's"), "{}", reason("g"));
    }

    #[test]
    fn records_beyond_what_the_maps_hold_are_skipped_not_fatal() {
        let many: Vec<NodeRecord> = (2..8)
            .map(|n| node(&format!("n{n}"), n, &format!("10.88.{n}.0/24"), &[]))
            .collect();
        let vetted = vet_peers(&me(), &room(), many);
        assert_eq!(vetted.peers.len(), 3);
        assert_eq!(vetted.skipped.len(), 3);
        let crowded = vec![
            node(
                "b",
                2,
                "10.88.2.0/24",
                &[
                    ("02:00:00:00:00:12", "10.88.2.2"),
                    ("02:00:00:00:00:22", "10.88.2.3"),
                    ("02:00:00:00:00:32", "10.88.2.4"),
                ],
            ),
            node(
                "c",
                3,
                "10.88.3.0/24",
                &[
                    ("02:00:00:00:00:13", "10.88.3.2"),
                    ("02:00:00:00:00:23", "10.88.3.3"),
                ],
            ),
            node(
                "d",
                4,
                "10.88.4.0/24",
                &[("02:00:00:00:00:14", "10.88.4.2")],
            ),
        ];
        let vetted = vet_peers(&me(), &room(), crowded);
        let peers: Vec<&str> = vetted.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(peers, ["b", "d"]);
        assert!(
            vetted.skipped[0].reason.contains("remote FDB"),
            "{:?}",
            vetted.skipped
        );
    }
}

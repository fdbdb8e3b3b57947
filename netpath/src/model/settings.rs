//! The settings of a topology, written once: clap derives the flags of `up`
//! and `run` from this type, serde the keys of the TOML config file. Flags
//! win over the file; what neither sets takes the defaults of [`spec`].
//!
//! [`spec`]: super::spec

use std::{fmt, path::PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::one_or_many;

/// How frames between containers are forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP on the host-side veth ends, redirect through a devmap.
    Xdp,
    /// tc ingress on the host-side veth ends, bpf_redirect_peer.
    Tc,
    /// Containers plugged through netkit pairs (Linux 6.7+ with
    /// CONFIG_NETKIT) instead of veth, the tc program on the netkit peer
    /// hook (it runs as the container transmits).
    Netkit,
    /// No programs: the Linux bridge forwards everything.
    Bridge,
}

impl Mode {
    /// A spec's mode where its settings name none. Only the benches' and
    /// tests' specs keep it: `up` and `run` put the kernel's default there
    /// (`ops::default_mode`: netkit where the kernel has it).
    pub const DEFAULT: Mode = Mode::Tc;

    /// Whether its containers are plugged through netkit pairs, not veth.
    pub fn uses_netkit(self) -> bool {
        self == Mode::Netkit
    }

    /// Whether a container's frames meet the tc forwarding program (tc and
    /// netkit: the same program, at tc ingress or netkit's peer hook).
    pub fn forwards_in_tc(self) -> bool {
        matches!(self, Mode::Tc | Mode::Netkit)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
            Mode::Netkit => "netkit",
            Mode::Bridge => "bridge",
        })
    }
}

/// The flags of `up`/`run` and the keys of the config file.
#[derive(Clone, Debug, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Topology name [default: np]: prefix of every object netpath creates.
    #[arg(long)]
    pub name: Option<String>,
    /// Number of containers (network namespaces) [default: 2].
    #[arg(long)]
    pub containers: Option<usize>,
    /// Subnet, IPv4 or IPv6; give it twice for dual-stack (one of each). The
    /// bridge gets each subnet's first address [default: 10.77.0.0/24].
    #[arg(long)]
    #[serde(default, deserialize_with = "one_or_many")]
    pub subnet: Vec<String>,
    /// Datapath mode [default: netkit where the kernel has it, else tc].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Forward and masquerade the subnets to the outside (IPv4 and IPv6);
    /// removed on down.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub nat: Option<bool>,
    /// Seconds before a learned FDB entry ages out [default: 300].
    #[arg(long)]
    pub ageing: Option<u64>,
    /// Capacity of the FDB map in entries [default: 65536].
    #[arg(long)]
    pub fdb_size: Option<u32>,
    /// Most FDB entries a container without a source check may have
    /// learned at once; frames from further new MACs are dropped, counted
    /// [default: 64].
    #[arg(long)]
    pub learn_limit: Option<u32>,
    /// MTU of the bridge and every veth [default: 1500; xdp mode: at most 3506].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Join an overlay across nodes with this VXLAN network identifier
    /// (1..16777215); needs --underlay, --overlay-network and --peers or --etcd.
    #[arg(long)]
    pub vni: Option<u32>,
    /// This node's underlay address (an address of this host): the end of
    /// the VXLAN tunnels.
    #[arg(long)]
    pub underlay: Option<std::net::IpAddr>,
    /// Overlay-wide network of which --subnet is this node's slice (one per
    /// family), e.g. 10.88.0.0/16 for --subnet 10.88.1.0/24.
    #[arg(long)]
    #[serde(default, deserialize_with = "one_or_many")]
    pub overlay_network: Vec<String>,
    /// The overlay's other nodes from a static TOML file of node records
    /// (`netpath overlay export` prints this node's).
    #[arg(long, conflicts_with = "etcd")]
    pub peers: Option<PathBuf>,
    /// The overlay's nodes from etcd (v3) at these endpoints, e.g.
    /// http://10.0.0.5:2379 (give it more than once for a cluster).
    #[arg(long)]
    #[serde(default, deserialize_with = "one_or_many")]
    pub etcd: Vec<String>,
    /// The CA that signed etcd's certificate: etcd is spoken to over TLS
    /// (https:// endpoints).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// This node's client certificate for etcd (PEM; with --etcd-key).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user this node authenticates as (with --etcd-password-file).
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (its first line).
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// Run the overlay over WireGuard between the nodes, with this node's
    /// private key from this file (base64, as `wg genkey` writes it; made,
    /// mode 0600, if missing). Every node of the overlay needs one.
    #[arg(long)]
    pub wireguard_key: Option<PathBuf>,
    /// UDP port of this node's WireGuard end [default: 51820].
    #[arg(long)]
    pub wireguard_port: Option<u16>,
    /// This node's name on the overlay [default: the topology name].
    #[arg(long)]
    pub node: Option<String>,
    /// Seconds this node's etcd registration outlives it [default: 10].
    #[arg(long)]
    pub lease_ttl: Option<u64>,
    /// TOML file with the same settings and per-container names, IPs, MACs.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Containers described one by one (`[[container]]`, file only).
    #[arg(skip)]
    #[serde(default, rename = "container")]
    pub containers_listed: Vec<ContainerSettings>,
}

/// One `[[container]]` of the config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSettings {
    pub name: String,
    /// One address per subnet family, e.g. `"10.77.0.9"` or
    /// `["10.77.0.9/24", "fd00:77::9"]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub ip: Vec<String>,
    pub mac: Option<String>,
    /// false: the container routes or bridges for others, so it may send
    /// from any MAC and address (and learns, up to `learn_limit`).
    pub source_check: Option<bool>,
    /// What network policies select it by: its namespace [default:
    /// "default"] and labels, as a Kubernetes pod's.
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The ports it declares by name, which policies' named ports mean,
    /// e.g. `[{ name = "http", port = 80 }]` (protocol TCP unless given).
    #[serde(default)]
    pub named_ports: Vec<crate::model::policy::NamedPort>,
}

impl Settings {
    /// These settings (the flags) over the file they name, if any.
    pub fn with_file(self) -> Result<Settings> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let file: Settings = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        Ok(self.over(file))
    }

    /// Each setting given here wins over the one in `base`.
    pub fn over(self, base: Settings) -> Settings {
        Settings {
            name: self.name.or(base.name),
            containers: self.containers.or(base.containers),
            subnet: if self.subnet.is_empty() {
                base.subnet
            } else {
                self.subnet
            },
            mode: self.mode.or(base.mode),
            nat: self.nat.or(base.nat),
            ageing: self.ageing.or(base.ageing),
            fdb_size: self.fdb_size.or(base.fdb_size),
            learn_limit: self.learn_limit.or(base.learn_limit),
            mtu: self.mtu.or(base.mtu),
            vni: self.vni.or(base.vni),
            underlay: self.underlay.or(base.underlay),
            overlay_network: if self.overlay_network.is_empty() {
                base.overlay_network
            } else {
                self.overlay_network
            },
            peers: self.peers.or(base.peers),
            etcd: if self.etcd.is_empty() {
                base.etcd
            } else {
                self.etcd
            },
            etcd_ca: self.etcd_ca.or(base.etcd_ca),
            etcd_cert: self.etcd_cert.or(base.etcd_cert),
            etcd_key: self.etcd_key.or(base.etcd_key),
            etcd_user: self.etcd_user.or(base.etcd_user),
            etcd_password_file: self.etcd_password_file.or(base.etcd_password_file),
            wireguard_key: self.wireguard_key.or(base.wireguard_key),
            wireguard_port: self.wireguard_port.or(base.wireguard_port),
            node: self.node.or(base.node),
            lease_ttl: self.lease_ttl.or(base.lease_ttl),
            config: self.config.or(base.config),
            containers_listed: if self.containers_listed.is_empty() {
                base.containers_listed
            } else {
                self.containers_listed
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_lists_take_one_or_many() {
        let file: Settings = toml::from_str(
            "name = \"f\"\nsubnet = [\"10.1.0.0/24\", \"fd00::/64\"]\nnat = true\n[[container]]\nname = \"a\"\nip = \"10.1.0.9\"\n",
        )
        .unwrap();
        assert_eq!(file.subnet.len(), 2);
        assert_eq!(file.containers_listed[0].ip, ["10.1.0.9"]);
        let flags = Settings {
            name: Some("x".into()),
            nat: Some(false),
            ..Default::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.name.as_deref(), Some("x"));
        assert_eq!(merged.nat, Some(false));
        assert_eq!(merged.subnet, ["10.1.0.0/24", "fd00::/64"]);
        assert!(
            toml::from_str::<Settings>("config = \"x\"\n").is_err(),
            "config is a flag, not a key"
        );
        assert!(toml::from_str::<Settings>("colour = 1\n").is_err());
    }
}

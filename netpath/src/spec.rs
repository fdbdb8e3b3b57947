//! What a topology should look like: parsed from flags and a TOML file,
//! filled in with defaults, and validated before anything is created.

use std::{collections::HashSet, fmt, net::Ipv4Addr, path::Path, str::FromStr};

use anyhow::{Context, Result, bail, ensure};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
pub const DEFAULT_NAME: &str = "np";
pub const DEFAULT_SUBNET: &str = "10.77.0.0/24";
pub const DEFAULT_CONTAINERS: usize = 2;
/// Ageing time of learned FDB entries, as the Linux bridge's default.
pub const DEFAULT_AGEING_S: u64 = 300;
pub const MIN_FDB_SIZE: u32 = 16;
/// The port maps hold 1024 ports; leave room for ports added later.
pub const MAX_CONTAINERS: usize = 1000;
pub const DEFAULT_MTU: u32 = 1500;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;
/// Largest MTU a veth accepts while an XDP program without multi-buffer
/// support is attached to its peer: one page less XDP headroom and
/// skb_shared_info, less the Ethernet header.
pub const XDP_MAX_MTU: u32 = 3506;
pub const MAX_FDB_SIZE: u32 = 4 * 1024 * 1024;

/// How frames between containers are forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP on the host-side veth ends, redirect through a devmap.
    Xdp,
    /// tc ingress on the host-side veth ends, bpf_redirect_peer.
    Tc,
    /// No programs: the Linux bridge forwards everything.
    Bridge,
}

impl Mode {
    pub const DEFAULT: Mode = Mode::Tc;
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
            Mode::Bridge => "bridge",
        })
    }
}

/// A MAC address, written `02:00:5e:10:00:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        ensure!(parts.len() == 6, "MAC address {s:?} must be six hex bytes separated by ':'");
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(&parts) {
            ensure!(part.len() == 2, "MAC address {s:?}: each byte is two hex digits");
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC address {s:?}: {part:?} is not hex"))?;
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Mac {
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

/// The TOML config file: the same settings as the flags, plus containers
/// described one by one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: Option<String>,
    pub containers: Option<usize>,
    pub subnet: Option<String>,
    pub mode: Option<Mode>,
    pub nat: Option<bool>,
    /// Seconds before a learned FDB entry ages out.
    pub ageing: Option<u64>,
    /// Capacity of the FDB map (entries).
    pub fdb_size: Option<u32>,
    /// MTU of the bridge and of both ends of every veth.
    pub mtu: Option<u32>,
    #[serde(default, rename = "container")]
    pub container_list: Vec<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// Settings given on the command line; each one set overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    pub containers: Option<usize>,
    pub subnet: Option<String>,
    pub mode: Option<Mode>,
    pub nat: bool,
    pub ageing: Option<u64>,
    pub fdb_size: Option<u32>,
    pub mtu: Option<u32>,
}

/// One container: a namespace with `eth0`, and its host-side veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Short name, unique in the topology (e.g. `c0`).
    pub name: String,
    /// Address with the subnet's prefix length, e.g. `10.77.0.2/24`.
    pub ip: Ipv4Net,
    pub mac: Mac,
}

/// A whole topology, complete and valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySpec {
    pub name: String,
    pub mode: Mode,
    pub subnet: Ipv4Net,
    pub nat: bool,
    /// Seconds before a learned FDB entry ages out.
    pub ageing_s: u64,
    /// Capacity of the FDB map (entries).
    pub fdb_size: u32,
    /// MTU of the bridge and of both ends of every veth.
    pub mtu: u32,
    pub containers: Vec<ContainerSpec>,
}

impl TopologySpec {
    pub fn bridge_name(&self) -> String {
        bridge_name(&self.name)
    }

    /// The bridge's address: the subnet's first host address.
    pub fn gateway(&self) -> Ipv4Net {
        gateway(self.subnet)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Builds the spec from an optional file and the flags, then validates it.
    pub fn resolve(file: Option<&Path>, flags: &Overrides) -> Result<Self> {
        let config = match file {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let name = flags.name.clone().or(config.name).unwrap_or_else(|| DEFAULT_NAME.into());
        validate_topology_name(&name)?;
        let subnet_text = flags.subnet.clone().or(config.subnet).unwrap_or_else(|| DEFAULT_SUBNET.into());
        let subnet = parse_subnet(&subnet_text)?;
        let mode = flags.mode.or(config.mode).unwrap_or(Mode::DEFAULT);
        let nat = flags.nat || config.nat.unwrap_or(false);
        let ageing_s = flags.ageing.or(config.ageing).unwrap_or(DEFAULT_AGEING_S);
        ensure!(ageing_s > 0, "the ageing time must be at least 1 second");
        let fdb_size = flags.fdb_size.or(config.fdb_size).unwrap_or(netpath_common::FDB_CAPACITY);
        ensure!(
            (MIN_FDB_SIZE..=MAX_FDB_SIZE).contains(&fdb_size),
            "the FDB size must be between {MIN_FDB_SIZE} and {MAX_FDB_SIZE} entries"
        );
        let listed = config.container_list.len();
        let count = flags.containers.or(config.containers).unwrap_or(listed.max(DEFAULT_CONTAINERS));
        ensure!(count > 0, "--containers must be at least 1");
        ensure!(count <= MAX_CONTAINERS, "--containers must be at most {MAX_CONTAINERS}");
        ensure!(
            count >= listed,
            "the config file describes {listed} containers but {count} were asked for"
        );

        let mtu = flags.mtu.or(config.mtu).unwrap_or(DEFAULT_MTU);
        let mut spec = TopologySpec { name, mode, subnet, nat, ageing_s, fdb_size, mtu, containers: Vec::new() };
        for entry in config.container_list {
            let ip = entry.ip.as_deref().map(|ip| parse_container_ip(ip, subnet)).transpose()?;
            let mac = entry.mac.as_deref().map(str::parse).transpose()?;
            spec.push_container(&entry.name, ip, mac)?;
        }
        let mut index = 0;
        while spec.containers.len() < count {
            let name = format!("c{index}");
            index += 1;
            if spec.container(&name).is_none() {
                spec.push_container(&name, None, None)?;
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Adds a container, choosing a free address and a MAC when not given.
    pub fn push_container(&mut self, name: &str, ip: Option<Ipv4Net>, mac: Option<Mac>) -> Result<()> {
        validate_container_name(&self.name, name)?;
        ensure!(self.container(name).is_none(), "container name {name:?} is used twice");
        let ip = match ip {
            Some(ip) => ip,
            None => self.free_address().with_context(|| {
                format!("subnet {} is too small: no free address left for container {name:?}", self.subnet)
            })?,
        };
        let mac = mac.unwrap_or_else(|| derived_mac(&self.name, ip.addr()));
        self.containers.push(ContainerSpec { name: name.into(), ip, mac });
        Ok(())
    }

    fn free_address(&self) -> Option<Ipv4Net> {
        let used: HashSet<Ipv4Addr> = self.containers.iter().map(|c| c.ip.addr()).collect();
        let gateway = self.gateway().addr();
        self.subnet
            .hosts()
            .find(|a| *a != gateway && !used.contains(a))
            .map(|a| Ipv4Net::new(a, self.subnet.prefix_len()).expect("prefix from a valid net"))
    }

    /// Checks everything that can be checked without touching the machine.
    pub fn validate(&self) -> Result<()> {
        validate_topology_name(&self.name)?;
        validate_mtu(self.mode, self.mtu)?;
        let hosts = (1u64 << (32 - self.subnet.prefix_len())) - 2;
        ensure!(
            hosts > self.containers.len() as u64,
            "subnet {} has {} host addresses: too small for the bridge and {} containers",
            self.subnet,
            hosts,
            self.containers.len()
        );
        let gateway = self.gateway().addr();
        let mut names = HashSet::new();
        let mut ips = HashSet::new();
        let mut macs = HashSet::new();
        for c in &self.containers {
            validate_container_name(&self.name, &c.name)?;
            ensure!(names.insert(&c.name), "container name {:?} is used twice", c.name);
            ensure!(
                self.subnet.contains(&c.ip.addr()) && c.ip.prefix_len() == self.subnet.prefix_len(),
                "address {} of container {:?} is not in subnet {}",
                c.ip,
                c.name,
                self.subnet
            );
            ensure!(
                c.ip.addr() != gateway,
                "address {} of container {:?} is the bridge's address",
                c.ip.addr(),
                c.name
            );
            ensure!(
                c.ip.addr() != self.subnet.network() && c.ip.addr() != self.subnet.broadcast(),
                "address {} of container {:?} is the subnet's network or broadcast address",
                c.ip.addr(),
                c.name
            );
            ensure!(ips.insert(c.ip.addr()), "address {} is used by two containers", c.ip.addr());
            ensure!(c.mac.is_unicast(), "MAC {} of container {:?} is not a unicast address", c.mac, c.name);
            ensure!(macs.insert(c.mac), "MAC {} is used by two containers", c.mac);
        }
        Ok(())
    }
}

/// Refuses MTUs the kernel would refuse, before anything is created.
pub fn validate_mtu(mode: Mode, mtu: u32) -> Result<()> {
    ensure!((MIN_MTU..=MAX_MTU).contains(&mtu), "MTU {mtu} is out of range ({MIN_MTU}..={MAX_MTU})");
    ensure!(
        mode != Mode::Xdp || mtu <= XDP_MAX_MTU,
        "xdp mode carries frames up to MTU {XDP_MAX_MTU} on veth (its program is single-buffer); \
         use --mode tc (or bridge) for MTU {mtu}"
    );
    Ok(())
}

pub fn bridge_name(topology: &str) -> String {
    format!("{topology}-br")
}

/// Host-side veth of a container; also the name of its network namespace.
pub fn port_name(topology: &str, container: &str) -> String {
    format!("{topology}-{container}")
}

pub fn gateway(subnet: Ipv4Net) -> Ipv4Net {
    let first = subnet.hosts().next().expect("validated subnets have hosts");
    Ipv4Net::new(first, subnet.prefix_len()).expect("prefix from a valid net")
}

fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

pub fn validate_topology_name(name: &str) -> Result<()> {
    ensure!(
        is_simple_name(name),
        "topology name {name:?} must be non-empty, start with a letter or digit, and use only letters, digits, '-' and '_'"
    );
    let bridge = bridge_name(name);
    ensure!(
        bridge.len() <= IFNAME_MAX,
        "topology name {name:?} is too long: bridge name {bridge:?} would exceed {IFNAME_MAX} bytes"
    );
    Ok(())
}

pub fn validate_container_name(topology: &str, name: &str) -> Result<()> {
    ensure!(
        is_simple_name(name),
        "container name {name:?} must be non-empty, start with a letter or digit, and use only letters, digits, '-' and '_'"
    );
    let port = port_name(topology, name);
    ensure!(
        port.len() <= IFNAME_MAX,
        "interface name {port:?} (topology {topology:?} + container {name:?}) is longer than {IFNAME_MAX} bytes; use shorter names"
    );
    Ok(())
}

pub fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = text
        .parse()
        .with_context(|| format!("subnet {text:?} is not an IPv4 CIDR like 10.77.0.0/24"))?;
    if net.network() != net.addr() {
        bail!("subnet {text:?} has host bits set; did you mean {}?", net.trunc());
    }
    ensure!(net.prefix_len() <= 30, "subnet {text:?} is too small: use a prefix of /30 or shorter");
    Ok(net)
}

/// Accepts `10.77.0.9` or `10.77.0.9/24`; the prefix must be the subnet's.
pub fn parse_container_ip(text: &str, subnet: Ipv4Net) -> Result<Ipv4Net> {
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::new(addr, subnet.prefix_len())?);
    }
    let net: Ipv4Net =
        text.parse().with_context(|| format!("address {text:?} is not an IPv4 address or CIDR"))?;
    ensure!(
        net.prefix_len() == subnet.prefix_len(),
        "address {text:?} has prefix /{} but the subnet {subnet} is /{}",
        net.prefix_len(),
        subnet.prefix_len()
    );
    Ok(net)
}

/// A locally administered MAC that is stable for a topology and address.
fn derived_mac(topology: &str, ip: Ipv4Addr) -> Mac {
    let hash = topology.bytes().fold(0x5au8, |h, b| h.rotate_left(3) ^ b);
    let o = ip.octets();
    Mac([0x02, hash, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(containers: usize) -> Overrides {
        Overrides { name: Some("t".into()), containers: Some(containers), ..Default::default() }
    }

    #[test]
    fn defaults_fill_addresses_after_the_gateway() {
        let spec = TopologySpec::resolve(None, &flags(3)).unwrap();
        assert_eq!(spec.gateway().to_string(), "10.77.0.1/24");
        let ips: Vec<String> = spec.containers.iter().map(|c| c.ip.to_string()).collect();
        assert_eq!(ips, ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24"]);
        assert_eq!(spec.containers[1].name, "c1");
    }

    #[test]
    fn rejects_bad_input() {
        let mut f = flags(0);
        assert!(TopologySpec::resolve(None, &f).unwrap_err().to_string().contains("at least 1"));
        f.containers = Some(7);
        f.subnet = Some("10.0.0.0/29".into());
        assert!(TopologySpec::resolve(None, &f).unwrap_err().to_string().contains("too small"));
        f.subnet = Some("10.0.0.0/33".into());
        assert!(TopologySpec::resolve(None, &f).is_err());
        f.subnet = None;
        f.name = Some("a-very-long-name".into());
        assert!(TopologySpec::resolve(None, &f).unwrap_err().to_string().contains("15 bytes"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 3000, ..Default::default() })]

        #[test]
        fn parsers_never_panic(text in "(?s).{0,48}") {
            let _ = text.parse::<Mac>();
            let _ = parse_subnet(&text);
            let _ = parse_container_ip(&text, "10.0.0.0/24".parse().unwrap());
            let _ = toml::from_str::<ConfigFile>(&text);
        }

        #[test]
        fn macs_round_trip(bytes in proptest::prelude::any::<[u8; 6]>()) {
            let mac = Mac(bytes);
            proptest::prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
        }

        #[test]
        fn configs_resolve_or_fail_cleanly(
            containers in 0usize..40,
            prefix in 20u8..33,
            listed in proptest::collection::vec(("[a-z0-9_-]{0,12}", 0u8..=255, proptest::prelude::any::<[u8; 6]>()), 0..5),
            unknown in proptest::option::of("[a-z]{1,8}"),
        ) {
            let mut text = format!("containers = {containers}\nsubnet = \"10.9.0.0/{prefix}\"\n");
            if let Some(key) = unknown {
                text.push_str(&format!("{key} = 1\n"));
            }
            for (name, host, mac) in &listed {
                text.push_str(&format!(
                    "[[container]]\nname = \"{name}\"\nip = \"10.9.0.{host}\"\nmac = \"{}\"\n",
                    Mac(*mac)
                ));
            }
            let dir = std::env::temp_dir().join(format!("netpath-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("c.toml");
            std::fs::write(&path, &text).unwrap();
            // Either a spec that passes validation, or an error: never a panic.
            if let Ok(spec) = TopologySpec::resolve(Some(&path), &Overrides::default()) {
                proptest::prop_assert!(spec.validate().is_ok());
                proptest::prop_assert_eq!(spec.containers.len(), containers);
            }
        }
    }

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: Mac = "02:AB:00:00:00:01".parse().unwrap();
        assert_eq!(mac.to_string(), "02:ab:00:00:00:01");
        for bad in ["", "02:ab", "02:ab:00:00:00:zz", "002:ab:00:00:00:01"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}

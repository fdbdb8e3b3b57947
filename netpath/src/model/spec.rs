//! What a topology should look like: resolved from [`Settings`], filled in
//! with defaults, and validated before anything is created.

use std::collections::HashSet;

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Mac, Mode, Settings, ipam,
    naming::{bridge_name, validate_container_name, validate_topology_name},
    overlay::{DEFAULT_LEASE_TTL_S, EtcdAccess, OverlaySpec, Peers, WIREGUARD_PORT, WireguardSpec},
    policy::Identity,
};

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
/// IPv6 needs links of at least 1280 bytes.
pub const MIN_MTU_IPV6: u32 = 1280;
pub const MAX_MTU: u32 = 65535;
/// Largest MTU a veth accepts while an XDP program without multi-buffer
/// support is attached to its peer: one page less XDP headroom and
/// skb_shared_info, less the Ethernet header.
pub const XDP_MAX_MTU: u32 = 3506;
pub const MAX_FDB_SIZE: u32 = 4 * 1024 * 1024;

/// One container: a namespace with `eth0`, and its host-side veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Short name, unique in the topology (e.g. `c0`).
    pub name: String,
    /// One address per subnet, with the subnet's prefix length.
    pub ips: Vec<IpNet>,
    pub mac: Mac,
    /// Frames from it must carry its own MAC and addresses (off for a
    /// container that routes or bridges for others).
    #[serde(default = "enabled")]
    pub source_check: bool,
    /// Its namespace and labels, which network policies select it by.
    #[serde(flatten)]
    pub identity: Identity,
}

fn enabled() -> bool {
    true
}

fn default_learn_limit() -> u32 {
    netpath_common::DEFAULT_LEARN_LIMIT
}

/// A whole topology, complete and valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologySpec {
    pub name: String,
    pub mode: Mode,
    /// One IPv4 and/or one IPv6 subnet.
    pub subnets: Vec<IpNet>,
    pub nat: bool,
    /// Seconds before a learned FDB entry ages out.
    pub ageing_s: u64,
    /// Capacity of each FDB map (entries).
    pub fdb_size: u32,
    /// Most learned FDB entries per port.
    #[serde(default = "default_learn_limit")]
    pub learn_limit: u32,
    /// MTU of the bridge and of both ends of every veth.
    pub mtu: u32,
    pub containers: Vec<ContainerSpec>,
    /// The overlay across nodes this topology's containers are on.
    #[serde(default)]
    pub overlay: Option<OverlaySpec>,
}

impl TopologySpec {
    pub fn bridge_name(&self) -> String {
        bridge_name(&self.name)
    }

    /// The bridge's addresses: each subnet's first host address.
    pub fn gateways(&self) -> Vec<IpNet> {
        self.subnets.iter().map(|s| ipam::gateway(*s)).collect()
    }

    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// A container's addresses as it carries them: on an overlay, with the
    /// overlay network's prefix (every node's containers are on-link).
    pub fn container_addresses(&self, c: &ContainerSpec) -> Vec<IpNet> {
        match &self.overlay {
            Some(overlay) => c.ips.iter().map(|ip| overlay.on_overlay(*ip)).collect(),
            None => c.ips.clone(),
        }
    }

    /// Builds the spec from settings (flags over file), then validates it.
    pub fn resolve(settings: Settings) -> Result<Self> {
        let settings = settings.with_file()?;
        let name = settings.name.clone().unwrap_or_else(|| DEFAULT_NAME.into());
        validate_topology_name(&name)?;
        let overlay = overlay_of(&name, &settings)?;
        let subnet_texts = if settings.subnet.is_empty() {
            vec![DEFAULT_SUBNET.into()]
        } else {
            settings.subnet
        };
        let subnets = ipam::parse_subnets(&subnet_texts)?;
        let ageing_s = settings.ageing.unwrap_or(DEFAULT_AGEING_S);
        ensure!(ageing_s > 0, "the ageing time must be at least 1 second");
        let fdb_size = settings.fdb_size.unwrap_or(netpath_common::FDB_CAPACITY);
        ensure!(
            (MIN_FDB_SIZE..=MAX_FDB_SIZE).contains(&fdb_size),
            "the FDB size must be between {MIN_FDB_SIZE} and {MAX_FDB_SIZE} entries"
        );
        let learn_limit = settings
            .learn_limit
            .unwrap_or(netpath_common::DEFAULT_LEARN_LIMIT);
        ensure!(
            learn_limit <= fdb_size,
            "the learn limit ({learn_limit}) cannot exceed the FDB size ({fdb_size})"
        );
        let listed = settings.containers_listed.len();
        let count = settings
            .containers
            .unwrap_or(listed.max(DEFAULT_CONTAINERS));
        ensure!(count > 0, "--containers must be at least 1");
        ensure!(
            count <= MAX_CONTAINERS,
            "--containers must be at most {MAX_CONTAINERS}"
        );
        ensure!(
            count >= listed,
            "the config file describes {listed} containers but {count} were asked for"
        );

        let mut spec = TopologySpec {
            name,
            mode: settings.mode.unwrap_or(Mode::DEFAULT),
            subnets,
            nat: settings.nat.unwrap_or(false),
            ageing_s,
            fdb_size,
            learn_limit,
            mtu: settings.mtu.unwrap_or(DEFAULT_MTU),
            containers: Vec::new(),
            overlay,
        };
        for entry in settings.containers_listed {
            let mac = entry.mac.as_deref().map(str::parse).transpose()?;
            let identity = Identity {
                namespace: entry
                    .namespace
                    .unwrap_or_else(|| Identity::default().namespace),
                labels: entry.labels,
                named_ports: entry.named_ports,
            };
            identity
                .validate()
                .map_err(|e| anyhow::anyhow!("container {:?}: {e}", entry.name))?;
            spec.push_container(
                &entry.name,
                &entry.ip,
                mac,
                entry.source_check.unwrap_or(true),
                identity,
            )?;
        }
        let mut index = 0;
        while spec.containers.len() < count {
            let name = format!("c{index}");
            index += 1;
            if spec.container(&name).is_none() {
                spec.push_container(&name, &[], None, true, Identity::default())?;
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Adds a container; addresses (per family) and MAC not given are chosen.
    pub fn push_container(
        &mut self,
        name: &str,
        ips: &[String],
        mac: Option<Mac>,
        source_check: bool,
        identity: Identity,
    ) -> Result<()> {
        validate_container_name(&self.name, name)?;
        ensure!(
            self.container(name).is_none(),
            "container name {name:?} is used twice"
        );
        let overlay: Vec<IpNet> = self
            .overlay
            .iter()
            .flat_map(|o| o.networks.clone())
            .collect();
        let given: Vec<IpNet> = ips
            .iter()
            .map(|ip| ipam::parse_address(ip, &self.subnets, &overlay))
            .collect::<Result<_>>()?;
        let mut chosen = Vec::new();
        for subnet in &self.subnets {
            let mut of_family = given
                .iter()
                .filter(|ip| ip.addr().is_ipv4() == subnet.addr().is_ipv4());
            let ip = match (of_family.next(), of_family.next()) {
                (Some(_), Some(_)) => {
                    anyhow::bail!("container {name:?} has two addresses of one family")
                }
                (Some(ip), None) => *ip,
                (None, _) => {
                    let used: HashSet<_> = self
                        .containers
                        .iter()
                        .flat_map(|c| c.ips.iter().map(|i| i.addr()))
                        .collect();
                    ipam::allocate(*subnet, |a| used.contains(&a)).with_context(|| {
                        format!("subnet {subnet} is too small: no free address left for container {name:?}")
                    })?
                }
            };
            chosen.push(ip);
        }
        let mac = match mac {
            Some(mac) => mac,
            None => {
                let taken: HashSet<Mac> = self.containers.iter().map(|c| c.mac).collect();
                Mac::derive(&format!("{}/{}", self.name, chosen[0].addr()), |m| {
                    taken.contains(&m)
                })
            }
        };
        self.containers.push(ContainerSpec {
            name: name.into(),
            ips: chosen,
            mac,
            source_check,
            identity,
        });
        Ok(())
    }

    /// Checks everything that can be checked without touching the machine.
    pub fn validate(&self) -> Result<()> {
        validate_topology_name(&self.name)?;
        validate_mtu(self.mode, self.mtu, &self.subnets)?;
        if let Some(overlay) = &self.overlay {
            ensure!(
                self.mode.forwards_in_tc(),
                "an overlay needs --mode tc or netkit: only tc programs can set the tunnel key of \
                 a frame (XDP cannot), and bridge mode has no programs"
            );
            overlay.validate(&self.subnets)?;
        }
        for subnet in &self.subnets {
            ensure!(
                ipam::capacity(*subnet) >= self.containers.len() as u128,
                "subnet {} has {} container addresses: too small for {} containers",
                subnet,
                ipam::capacity(*subnet),
                self.containers.len()
            );
        }
        let (mut names, mut ips, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
        for c in &self.containers {
            validate_container_name(&self.name, &c.name)?;
            ensure!(
                names.insert(&c.name),
                "container name {:?} is used twice",
                c.name
            );
            ensure!(
                c.ips.len() == self.subnets.len(),
                "container {:?} needs one address per subnet",
                c.name
            );
            for (subnet, ip) in self.subnets.iter().zip(&c.ips) {
                ipam::check_container_address(*subnet, *ip)
                    .with_context(|| format!("container {:?}", c.name))?;
                ensure!(
                    ips.insert(ip.addr()),
                    "address {} is used by two containers",
                    ip.addr()
                );
            }
            ensure!(
                c.mac.is_unicast(),
                "MAC {} of container {:?} is not a unicast address",
                c.mac,
                c.name
            );
            ensure!(
                macs.insert(c.mac),
                "MAC {} is used by two containers",
                c.mac
            );
        }
        Ok(())
    }

    /// What differs between this (running) spec and a wanted one, in words.
    pub fn differences(&self, want: &TopologySpec) -> Vec<String> {
        let mut out = Vec::new();
        let list = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let settings = [
            ("mode", self.mode.to_string(), want.mode.to_string()),
            ("subnet", list(&self.subnets), list(&want.subnets)),
            ("nat", self.nat.to_string(), want.nat.to_string()),
            (
                "ageing",
                format!("{} s", self.ageing_s),
                format!("{} s", want.ageing_s),
            ),
            ("MTU", self.mtu.to_string(), want.mtu.to_string()),
            (
                "FDB size",
                self.fdb_size.to_string(),
                want.fdb_size.to_string(),
            ),
            (
                "learn limit",
                self.learn_limit.to_string(),
                want.learn_limit.to_string(),
            ),
            (
                "overlay",
                format!("{:?}", self.overlay),
                format!("{:?}", want.overlay),
            ),
        ];
        for (what, have, want) in settings {
            if have != want {
                out.push(format!("{what} is {have} (asked {want})"));
            }
        }
        if self.containers.len() != want.containers.len() {
            out.push(format!(
                "{} containers (asked {})",
                self.containers.len(),
                want.containers.len()
            ));
        }
        for (h, w) in self.containers.iter().zip(&want.containers) {
            if h != w {
                out.push(format!(
                    "container {} {} {} (asked {} {} {})",
                    h.name,
                    list(&h.ips),
                    h.mac,
                    w.name,
                    list(&w.ips),
                    w.mac
                ));
            }
        }
        out
    }
}

/// The overlay settings, if any were given, checked for completeness.
fn overlay_of(topology: &str, settings: &Settings) -> Result<Option<OverlaySpec>> {
    let given = settings.vni.is_some()
        || settings.underlay.is_some()
        || !settings.overlay_network.is_empty()
        || settings.peers.is_some()
        || !settings.etcd.is_empty();
    if !given {
        return Ok(None);
    }
    let missing = |flag: &str| format!("an overlay needs {flag} (see `netpath up --help`)");
    let peers = match (&settings.peers, settings.etcd.is_empty()) {
        (Some(file), true) => Peers::File(file.clone()),
        (None, false) => Peers::Etcd(settings.etcd.clone()),
        (Some(_), false) => anyhow::bail!("give --peers or --etcd, not both"),
        (None, true) => anyhow::bail!(missing("--peers FILE or --etcd URL")),
    };
    let etcd_access = EtcdAccess {
        ca: settings.etcd_ca.clone(),
        cert: settings.etcd_cert.clone(),
        key: settings.etcd_key.clone(),
        user: settings.etcd_user.clone(),
        password_file: settings.etcd_password_file.clone(),
    };
    etcd_access.validate(&settings.etcd)?;
    let wireguard = match (&settings.wireguard_key, settings.wireguard_port) {
        (Some(key_file), port) => Some(WireguardSpec {
            // The record keeps it for `run`, which may start elsewhere.
            key_file: std::path::absolute(key_file)
                .with_context(|| format!("WireGuard key file {}", key_file.display()))?,
            port: port.unwrap_or(WIREGUARD_PORT),
        }),
        (None, Some(_)) => anyhow::bail!("--wireguard-port needs --wireguard-key"),
        (None, None) => None,
    };
    Ok(Some(OverlaySpec {
        node: settings.node.clone().unwrap_or_else(|| topology.to_owned()),
        vni: settings.vni.with_context(|| missing("--vni"))?,
        underlay: settings.underlay.with_context(|| missing("--underlay"))?,
        networks: ipam::parse_subnets(&settings.overlay_network)
            .with_context(|| missing("--overlay-network"))?,
        peers,
        lease_ttl_s: settings.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_S),
        etcd_access,
        wireguard,
    }))
}

/// Refuses MTUs the kernel would refuse, before anything is created.
pub fn validate_mtu(mode: Mode, mtu: u32, subnets: &[IpNet]) -> Result<()> {
    ensure!(
        (MIN_MTU..=MAX_MTU).contains(&mtu),
        "MTU {mtu} is out of range ({MIN_MTU}..={MAX_MTU})"
    );
    ensure!(
        mtu >= MIN_MTU_IPV6 || subnets.iter().all(|s| s.addr().is_ipv4()),
        "MTU {mtu} is below IPv6's minimum of {MIN_MTU_IPV6}; drop the IPv6 subnet or raise --mtu"
    );
    ensure!(
        mode != Mode::Xdp || mtu <= XDP_MAX_MTU,
        "xdp mode carries frames up to MTU {XDP_MAX_MTU} on veth (its program is single-buffer); \
         use --mode tc (or bridge) for MTU {mtu}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(containers: usize) -> Settings {
        Settings {
            name: Some("t".into()),
            containers: Some(containers),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_addresses_after_the_gateway() {
        let spec = TopologySpec::resolve(flags(3)).unwrap();
        assert_eq!(spec.gateways()[0].to_string(), "10.77.0.1/24");
        let ips: Vec<String> = spec
            .containers
            .iter()
            .map(|c| c.ips[0].to_string())
            .collect();
        assert_eq!(ips, ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24"]);
        assert_eq!(spec.containers[1].name, "c1");
    }

    #[test]
    fn dual_stack_gives_every_container_one_address_per_family() {
        let mut f = flags(2);
        f.subnet = vec!["10.9.0.0/24".into(), "fd00:9::/64".into()];
        let spec = TopologySpec::resolve(f).unwrap();
        assert_eq!(
            spec.gateways()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.9.0.1/24", "fd00:9::1/64"]
        );
        assert_eq!(
            spec.containers[1]
                .ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.9.0.3/24", "fd00:9::3/64"]
        );
        let mut low = spec.clone();
        low.mtu = 1000;
        assert!(low.validate().unwrap_err().to_string().contains("IPv6"));
    }

    #[test]
    fn rejects_bad_input() {
        let mut f = flags(0);
        assert!(
            TopologySpec::resolve(f.clone())
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        f.containers = Some(7);
        f.subnet = vec!["10.0.0.0/29".into()];
        assert!(
            TopologySpec::resolve(f.clone())
                .unwrap_err()
                .to_string()
                .contains("too small")
        );
        f.subnet = vec!["10.0.0.0/33".into()];
        assert!(TopologySpec::resolve(f.clone()).is_err());
        f.subnet = vec![];
        f.name = Some("a-very-long-name".into());
        assert!(
            TopologySpec::resolve(f)
                .unwrap_err()
                .to_string()
                .contains("15 bytes")
        );
    }

    #[test]
    fn differences_name_each_changed_setting() {
        let a = TopologySpec::resolve(flags(2)).unwrap();
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.mode = Mode::Xdp;
        b.mtu = 9000;
        b.containers.pop();
        let d = a.differences(&b);
        assert_eq!(
            d,
            [
                "mode is tc (asked xdp)",
                "MTU is 1500 (asked 9000)",
                "2 containers (asked 1)"
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 3000, ..Default::default() })]

        #[test]
        fn config_files_never_panic(text in "(?s).{0,48}") {
            let _ = toml::from_str::<Settings>(&text);
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
            if let Ok(spec) = TopologySpec::resolve(Settings { config: Some(path), ..Default::default() }) {
                proptest::prop_assert!(spec.validate().is_ok());
                proptest::prop_assert_eq!(spec.containers.len(), containers);
            }
        }
    }
}

//! What a container runtime hands the CNI plugin: the network configuration
//! on stdin, the CNI_* environment, and the spec's error codes. Parsing and
//! validation only; the commands themselves are in `ops::cni`.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Mac, Mode,
    bandwidth::Bandwidth,
    ipam, naming, one_or_many,
    overlay::{DEFAULT_LEASE_TTL_S, EtcdAccess, OverlaySpec, Peers},
    policy::Identity,
};

/// Oldest first: the last is the newest, which VERSION reports.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version that brought STATUS, GC and `mtu` in results.
pub const VERSION_1_1: &str = "1.1.0";

/// A CNI error: printed as the spec's error JSON on stdout.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: and the containers attached already may lack connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn io(e: anyhow::Error) -> Self {
        CniError {
            code: Self::IO_FAILURE,
            msg: format!("{e}"),
            details: format!("{e:#}"),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

pub type CniResult<T> = std::result::Result<T, CniError>;

/// The network configuration the runtime passes on stdin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The version the runtime speaks; may be left out when `cniVersions`
    /// lists what the configuration supports (CNI 1.1).
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub bridge: String,
    /// Use `bridge` even if it exists and netpath did not make it (it is
    /// never removed then).
    #[serde(default)]
    pub adopt_bridge: bool,
    #[serde(default)]
    pub mode: Option<Mode>,
    pub ipam: Ipam,
    /// CHECK: the result of the ADD, to compare with what is there.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still uses; every other goes.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// The overlay across nodes this node's pods are on, if any.
    #[serde(default)]
    pub overlay: Option<OverlayConf>,
    /// The runtime's capabilities (`ips`, `mac`), as CNI's conventions
    /// pass them.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// `args.cni`: the same, the older way (`ips`, `mac`).
    #[serde(default)]
    pub args: Option<Value>,
}

/// `runtimeConfig`: what the runtime asks for this container.
#[derive(Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The `ips` capability: addresses, with or without a prefix.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The `mac` capability.
    #[serde(default)]
    pub mac: Option<String>,
    /// containerd's `io.kubernetes.cri.pod-annotations` capability: the
    /// pod's annotations, of which [`LABELS_ANNOTATION`] carries labels.
    #[serde(default, rename = "io.kubernetes.cri.pod-annotations")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The `bandwidth` capability: the container's rate limits.
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
}

/// The pod annotation whose value gives a pod's labels to network policy
/// (`app=web,tier=front`): containerd hands a CNI plugin the annotations,
/// never the labels, and there is no API server here to ask.
pub const LABELS_ANNOTATION: &str = "netpath.io/labels";

/// What the runtime asked the container's interface to have, from
/// `runtimeConfig`, else `args.cni`, else CNI_ARGS (`IP=`, `MAC=`), the
/// order of CNI's conventions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub ips: Vec<IpAddr>,
    pub mac: Option<Mac>,
}

/// `"overlay"`: this node on an overlay across nodes, e.g. `{"node": "n1",
/// "vni": 42, "underlay": "192.168.77.1", "network": "10.88.0.0/16",
/// "peers": "/etc/netpath/peers.toml"}` or with `"etcd": ["http://..."]`
/// instead of `"peers"`. The IPAM subnet is this node's slice of `network`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayConf {
    pub node: String,
    pub vni: u32,
    /// This node's underlay address: the end of the VXLAN tunnels.
    pub underlay: IpAddr,
    /// The overlay-wide networks (one per family).
    #[serde(deserialize_with = "one_or_many")]
    pub network: Vec<String>,
    /// A static peers file (`[[node]]` records).
    #[serde(default)]
    pub peers: Option<PathBuf>,
    /// Or etcd v3 endpoints; `netpath run --cni --name BRIDGE` keeps the
    /// node registered and its peers programmed.
    #[serde(default, deserialize_with = "one_or_many")]
    pub etcd: Vec<String>,
    /// Seconds the node's etcd registration outlives it [default: 10].
    #[serde(default)]
    pub lease_ttl: Option<u64>,
    /// TLS and user for etcd: `{"ca": FILE, "cert": FILE, "key": FILE,
    /// "user": NAME, "passwordFile": FILE}`, each optional.
    #[serde(default)]
    pub etcd_access: EtcdAccess,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Ipam {
    /// netpath's own allocator over one IPv4 and/or one IPv6 subnet; each
    /// subnet's first address is the gateway.
    Netpath {
        #[serde(deserialize_with = "one_or_many")]
        subnet: Vec<String>,
    },
    /// Delegated to the standard host-local plugin found in CNI_PATH.
    HostLocal(Value),
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> CniResult<Self> {
        let mut conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                CniError::DECODING_FAILURE,
                format!("network configuration: {e}"),
            )
        })?;
        if conf.cni_version.is_empty() {
            // The newest version both sides speak.
            conf.cni_version = SUPPORTED_VERSIONS
                .iter()
                .rev()
                .find(|v| conf.cni_versions.iter().any(|c| c == *v))
                .map(|v| v.to_string())
                .unwrap_or_default();
        }
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} (cniVersions {:?}) is not supported (supported: {})",
                    conf.cni_version,
                    conf.cni_versions,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
        naming::validate_ifname("bridge", &conf.bridge).map_err(|e| invalid(format!("{e:#}")))?;
        if conf.mode == Some(Mode::Xdp) {
            return Err(invalid(
                "mode xdp is not offered by the CNI plugin: XDP between veths needs TSO and transmit \
                 checksumming off inside every pod (more CPU per byte for every pod's TCP) and a \
                 program on the pod's own interface, which other plugins in a chain do not expect; \
                 use mode tc (the same fast path with the offloads kept) or bridge"
                    .into(),
            ));
        }
        conf.subnets()
            .map_err(|e| invalid(format!("ipam: {e:#}")))?;
        conf.overlay_spec()
            .map_err(|e| invalid(format!("overlay: {e:#}")))?;
        Ok(conf)
    }

    /// What the runtime asked for (see [`Requested`]), checked: addresses
    /// that parse, a unicast MAC.
    pub fn requested(&self, env: &Env) -> CniResult<Requested> {
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
        let args = self.args.as_ref().map(|a| &a["cni"]);
        let listed = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let cni_arg = |key: &str| {
            env.args
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let ips: Vec<String> = [
            self.runtime_config.ips.clone(),
            listed(args.map(|a| &a["ips"])),
            cni_arg("IP")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        ]
        .into_iter()
        .find(|ips| !ips.is_empty())
        .unwrap_or_default();
        let ips = ips
            .iter()
            .map(|ip| {
                let address = ip.split('/').next().unwrap_or_default();
                address
                    .parse::<IpAddr>()
                    .map_err(|_| invalid(format!("requested address {ip:?} is no IP address")))
            })
            .collect::<CniResult<Vec<_>>>()?;
        let mac = self
            .runtime_config
            .mac
            .clone()
            .or_else(|| args.and_then(|a| a["mac"].as_str().map(str::to_owned)))
            .or_else(|| cni_arg("MAC"))
            .map(|m| {
                let mac: Mac = m
                    .parse()
                    .map_err(|_| invalid(format!("requested MAC {m:?} is no MAC address")))?;
                if mac.is_unicast() {
                    Ok(mac)
                } else {
                    Err(invalid(format!(
                        "requested MAC {mac} is not a unicast address: a container cannot send from it"
                    )))
                }
            })
            .transpose()?;
        Ok(Requested { ips, mac })
    }

    /// The pod's namespace, labels and name, which network policies select
    /// it by, checked as Kubernetes checks them:
    /// - the namespace and name from CNI_ARGS `K8S_POD_NAMESPACE` and
    ///   `K8S_POD_NAME`, as kubelet's runtimes pass them (namespace
    ///   `default` without);
    /// - labels from `args.cni.labels` (`[{"key": "app", "value": "web"}]`,
    ///   CNI's conventions for labels in the configuration) and from the
    ///   pod annotation [`LABELS_ANNOTATION`] (containerd's
    ///   `io.kubernetes.cri.pod-annotations` capability), the annotation's
    ///   winning a key both give.
    pub fn pod_identity(&self, env: &Env) -> CniResult<(Identity, Option<String>)> {
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
        let mut labels: Vec<String> = self
            .args
            .as_ref()
            .and_then(|a| a["cni"]["labels"].as_array())
            .into_iter()
            .flatten()
            .map(
                |label| match (label["key"].as_str(), label["value"].as_str()) {
                    (Some(key), Some(value)) => Ok(format!("{key}={value}")),
                    _ => Err(invalid(format!(
                        "args.cni.labels: {label} is not {{\"key\": ..., \"value\": ...}}"
                    ))),
                },
            )
            .collect::<CniResult<_>>()?;
        if let Some(annotation) = self.runtime_config.pod_annotations.get(LABELS_ANNOTATION) {
            labels.extend(
                annotation
                    .split(',')
                    .map(str::trim)
                    .filter(|label| !label.is_empty())
                    .map(str::to_owned),
            );
        }
        let identity = Identity::new(env.arg("K8S_POD_NAMESPACE"), &labels, &[])
            .map_err(|e| invalid(format!("the pod's identity: {e}")))?;
        Ok((identity, env.arg("K8S_POD_NAME").map(str::to_owned)))
    }

    /// The overlay the pods are on, checked: complete, peers or etcd,
    /// mode tc, and the IPAM subnets slices of the overlay's networks.
    pub fn overlay_spec(&self) -> anyhow::Result<Option<OverlaySpec>> {
        let Some(conf) = &self.overlay else {
            return Ok(None);
        };
        let peers = match (&conf.peers, conf.etcd.is_empty()) {
            (Some(file), true) => Peers::File(file.clone()),
            (None, false) => Peers::Etcd(conf.etcd.clone()),
            (Some(_), false) => bail!("give \"peers\" or \"etcd\", not both"),
            (None, true) => bail!(
                "give \"peers\" (a static peers file) or \"etcd\" (endpoints) to learn the other nodes from"
            ),
        };
        conf.etcd_access.validate(&conf.etcd)?;
        if !self.mode().forwards_in_tc() {
            bail!(
                "an overlay needs mode tc or netkit: only tc programs can set the tunnel key of a \
                 frame (mode {})",
                self.mode()
            );
        }
        let spec = OverlaySpec {
            node: conf.node.clone(),
            vni: conf.vni,
            underlay: conf.underlay,
            networks: ipam::parse_subnets(&conf.network).context("network")?,
            peers,
            lease_ttl_s: conf.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_S),
            etcd_access: conf.etcd_access.clone(),
            // Not offered to CNI networks yet (README: limits).
            wireguard: None,
        };
        let subnets = self.ipam_subnets()?;
        if subnets.is_empty() {
            bail!(
                "the IPAM configuration names no subnet: give ipam \"subnet\" (this node's slice of {})",
                conf.network.join(", ")
            );
        }
        spec.validate(&subnets).map_err(|e| {
            anyhow::anyhow!("{e:#} (\"network\" is the overlay-wide network, the ipam subnet this node's slice of it)")
        })?;
        Ok(Some(spec))
    }

    /// The subnets pods get addresses from, whichever IPAM gives them:
    /// netpath's, or host-local's `subnet` and `ranges`.
    pub fn ipam_subnets(&self) -> anyhow::Result<Vec<IpNet>> {
        let Ipam::HostLocal(config) = &self.ipam else {
            return self.subnets();
        };
        let ranges = config["ranges"].as_array().into_iter().flatten();
        let listed = ranges
            .flat_map(|set| set.as_array().into_iter().flatten())
            .chain([config])
            .filter_map(|range| range["subnet"].as_str());
        listed
            .map(|s| {
                s.parse::<IpNet>()
                    .with_context(|| format!("ipam subnet {s:?} is no CIDR"))
            })
            .collect()
    }

    /// Whether the runtime speaks CNI 1.1 (STATUS, GC, `mtu`).
    pub fn is_1_1(&self) -> bool {
        self.cni_version == VERSION_1_1
    }

    /// The container's rate limits (the `bandwidth` capability), refused
    /// (code 7) where the datapath cannot hold them.
    pub fn bandwidth(&self) -> CniResult<Bandwidth> {
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
        let bandwidth = self.runtime_config.bandwidth.unwrap_or_default();
        bandwidth.validate().map_err(invalid)?;
        if bandwidth.limits() && self.mode() == Mode::Bridge {
            return Err(invalid(format!(
                "bandwidth ({}): bridge mode attaches no program to hold a rate limit: use \"mode\": \"tc\" \
                 or \"xdp\", or chain the reference bandwidth plugin after netpath-cni",
                bandwidth.describe()
            )));
        }
        Ok(bandwidth)
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Tc)
    }

    /// The datapath's pin and lock key.
    pub fn datapath_name(&self) -> String {
        naming::cni_datapath(&self.bridge)
    }

    /// The subnets of netpath's own IPAM (none when delegated).
    pub fn subnets(&self) -> anyhow::Result<Vec<IpNet>> {
        match &self.ipam {
            Ipam::Netpath { subnet } => ipam::parse_subnets(subnet),
            Ipam::HostLocal(_) => Ok(Vec::new()),
        }
    }
}

/// Longest container ID taken: the pod's host veth carries it in its alias
/// (`naming::pod_alias`), which the kernel cuts at 255 bytes, and the
/// owner's mark, the bridge and the interface need 45 of them.
pub const CONTAINER_ID_MAX: usize = 200;

/// The spec's container ID: alphanumerics, '_', '-' and '.' (so an alias
/// `OWNER ID/IFNAME` reads back unambiguously), and short enough for the
/// alias.
fn validate_container_id(id: &str) -> CniResult<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if id.len() > CONTAINER_ID_MAX || !id.chars().all(allowed) {
        return Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!(
                "CNI_CONTAINERID {:?} is not a container ID: 1 to {CONTAINER_ID_MAX} of \
                 A-Z, a-z, 0-9, '_', '-', '.'",
                id.chars().take(40).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// The CNI_* environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: Vec<PathBuf>,
    /// CNI_ARGS: `KEY=VALUE` pairs separated by `;`.
    pub args: Vec<(String, String)>,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> CniResult<Self> {
        let missing =
            |v: &str| CniError::new(CniError::INVALID_ENVIRONMENT, format!("{v} is not set"));
        let command = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?;
        let needs_container = matches!(command.as_str(), "ADD" | "DEL" | "CHECK");
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if needs_container && container_id.is_empty() {
            return Err(missing("CNI_CONTAINERID"));
        }
        validate_container_id(&container_id)?;
        if needs_container {
            naming::validate_ifname("CNI_IFNAME", &ifname)
                .map_err(|e| CniError::new(CniError::INVALID_ENVIRONMENT, format!("{e:#}")))?;
        }
        let netns = get("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from);
        if matches!(command.as_str(), "ADD" | "CHECK") && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let path = get("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
                None => Err(CniError::new(
                    CniError::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS has {pair:?}, which is no KEY=VALUE pair"),
                )),
            })
            .collect::<CniResult<_>>()?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            path,
            args,
        })
    }

    /// The value of `key` in CNI_ARGS, if the runtime passed it.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: Value) -> Vec<u8> {
        let mut c = json!({"cniVersion": "1.0.0", "name": "n", "type": "netpath-cni", "bridge": "cni0",
                           "ipam": {"type": "netpath", "subnet": "10.0.0.0/24"}});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&c).unwrap()
    }

    #[test]
    fn configs_map_to_the_spec_codes() {
        assert!(NetConf::parse(&conf(json!({}))).is_ok());
        let code = |extra: Value| NetConf::parse(&conf(extra)).unwrap_err().code;
        assert_eq!(
            code(json!({"cniVersion": "9.9.9"})),
            CniError::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code(json!({"bridge": "a-bridge-name-too-long"})),
            CniError::INVALID_CONFIG
        );
        assert_eq!(code(json!({"bridge": "../x"})), CniError::INVALID_CONFIG);
        // The kernel's name template would make a new bridge on every ADD.
        assert_eq!(code(json!({"bridge": "np%d"})), CniError::INVALID_CONFIG);
        assert_eq!(code(json!({"mode": "xdp"})), CniError::INVALID_CONFIG);
        assert_eq!(code(json!({"mode": "warp"})), CniError::DECODING_FAILURE);
        assert_eq!(
            code(json!({"ipam": {"type": "netpath", "subnet": "10.0.0.1/24"}})),
            CniError::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(b"{").unwrap_err().code,
            CniError::DECODING_FAILURE
        );
        let dual = NetConf::parse(&conf(
            json!({"ipam": {"type": "netpath", "subnet": ["10.0.0.0/24", "fd00::/64"]}}),
        ))
        .unwrap();
        assert_eq!(dual.subnets().unwrap().len(), 2);
    }

    #[test]
    fn an_overlay_is_checked_before_anything_changes() {
        let overlay = |extra: Value| {
            let mut o = json!({"node": "n1", "vni": 42, "underlay": "192.168.77.1",
                               "network": "10.88.0.0/16", "peers": "/etc/peers.toml"});
            o.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            o
        };
        let on = |o: Value, subnet: &str| {
            conf(json!({"overlay": o, "ipam": {"type": "netpath", "subnet": subnet}}))
        };
        let parsed = NetConf::parse(&on(overlay(json!({})), "10.88.1.0/24")).unwrap();
        let spec = parsed.overlay_spec().unwrap().unwrap();
        assert_eq!((spec.vni, spec.node.as_str()), (42, "n1"));
        assert_eq!(spec.peers, Peers::File("/etc/peers.toml".into()));
        let etcd = json!({"peers": null, "etcd": "http://10.0.0.5:2379"});
        let parsed = NetConf::parse(&on(overlay(etcd), "10.88.1.0/24")).unwrap();
        assert!(
            matches!(parsed.overlay_spec().unwrap().unwrap().peers, Peers::Etcd(e) if e.len() == 1)
        );

        let refused = |bytes: Vec<u8>| NetConf::parse(&bytes).unwrap_err();
        let e = refused(on(overlay(json!({})), "10.77.1.0/24"));
        assert_eq!(e.code, CniError::INVALID_CONFIG);
        assert!(
            e.msg.contains("10.77.1.0/24") && e.msg.contains("network"),
            "{}",
            e.msg
        );
        let e = refused(on(
            overlay(json!({"etcd": ["http://x:2379"]})),
            "10.88.1.0/24",
        ));
        assert!(e.msg.contains("not both"), "{}", e.msg);
        let e = refused(on(overlay(json!({"peers": null})), "10.88.1.0/24"));
        assert!(e.msg.contains("\"etcd\""), "{}", e.msg);
        let e = refused(on(overlay(json!({"vni": 0})), "10.88.1.0/24"));
        assert!(e.msg.contains("VNI"), "{}", e.msg);
        let mut bridge_mode: Value =
            serde_json::from_slice(&on(overlay(json!({})), "10.88.1.0/24")).unwrap();
        bridge_mode["mode"] = json!("bridge");
        let e = refused(serde_json::to_vec(&bridge_mode).unwrap());
        assert!(e.msg.contains("mode tc"), "{}", e.msg);
        assert_eq!(
            refused(on(overlay(json!({"colour": 1})), "10.88.1.0/24")).code,
            CniError::DECODING_FAILURE
        );

        // host-local's ranges are slices of the overlay's network too.
        let host_local = |subnet: &str| {
            conf(json!({"overlay": overlay(json!({})),
                        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}}))
        };
        assert!(NetConf::parse(&host_local("10.88.2.0/24")).is_ok());
        assert!(
            refused(host_local("10.99.2.0/24"))
                .msg
                .contains("10.99.2.0/24")
        );
    }

    #[test]
    fn the_environment_is_checked() {
        fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        }
        assert_eq!(
            Env::from_vars(vars(&[])).unwrap_err().code,
            CniError::INVALID_ENVIRONMENT
        );
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(
            Env::from_vars(vars(&add))
                .unwrap_err()
                .msg
                .contains("CNI_NETNS")
        );
        assert!(Env::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
        let bad = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "../../x"),
        ];
        assert_eq!(
            Env::from_vars(vars(&bad)).unwrap_err().code,
            CniError::INVALID_ENVIRONMENT
        );
    }

    fn env(args: Option<&str>) -> Env {
        let vars = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_owned()),
            "CNI_CONTAINERID" => Some("c1".to_owned()),
            "CNI_IFNAME" => Some("eth0".to_owned()),
            "CNI_NETNS" => Some("/run/netns/x".to_owned()),
            "CNI_ARGS" => args.map(str::to_owned),
            _ => None,
        };
        Env::from_vars(vars).unwrap()
    }

    #[test]
    fn the_pods_identity_comes_from_cni_args_the_labels_arg_and_the_annotation() {
        let identity = |extra: Value, args: Option<&str>| {
            NetConf::parse(&conf(extra))
                .unwrap()
                .pod_identity(&env(args))
                .map_err(|e| (e.code, e.msg))
        };
        let (none, pod) = identity(json!({}), None).unwrap();
        assert_eq!((none, pod), (Identity::default(), None));
        let (pod, name) = identity(
            json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"},
                                               {"key": "tier", "value": "front"}]}},
                   "runtimeConfig": {"io.kubernetes.cri.pod-annotations":
                                     {"netpath.io/labels": "tier=back, team=a", "other": "x"}}}),
            Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0"),
        )
        .unwrap();
        assert_eq!(pod.namespace, "prod");
        assert_eq!(name.as_deref(), Some("web-0"));
        let labels: Vec<(&str, &str)> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("app", "web"), ("team", "a"), ("tier", "back")]);
        let (code, msg) = identity(json!({}), Some("K8S_POD_NAMESPACE=Not_A_Label")).unwrap_err();
        assert_eq!(code, CniError::INVALID_CONFIG);
        assert!(msg.contains("Not_A_Label"), "{msg}");
        let (_, msg) =
            identity(json!({"args": {"cni": {"labels": ["app=web"]}}}), None).unwrap_err();
        assert!(msg.contains("args.cni.labels"), "{msg}");
    }

    #[test]
    fn requested_addresses_and_mac_come_from_runtime_config_then_args_then_cni_args() {
        let requested = |extra: Value, args: Option<&str>| {
            NetConf::parse(&conf(extra))
                .unwrap()
                .requested(&env(args))
                .map_err(|e| e.code)
        };
        assert_eq!(requested(json!({}), None), Ok(Requested::default()));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mac = |s: &str| Some(s.parse::<Mac>().unwrap());
        assert_eq!(
            requested(
                json!({}),
                Some("IgnoreUnknown=1;IP=10.0.0.9;MAC=02:00:00:00:00:09")
            ),
            Ok(Requested {
                ips: vec![ip("10.0.0.9")],
                mac: mac("02:00:00:00:00:09")
            })
        );
        assert_eq!(
            requested(
                json!({"args": {"cni": {"ips": ["10.0.0.8"], "mac": "02:00:00:00:00:08"}}}),
                Some("IP=10.0.0.9")
            ),
            Ok(Requested {
                ips: vec![ip("10.0.0.8")],
                mac: mac("02:00:00:00:00:08")
            })
        );
        assert_eq!(
            requested(
                json!({"runtimeConfig": {"ips": ["10.0.0.7/24"], "mac": "02:00:00:00:00:07"},
                       "args": {"cni": {"ips": ["10.0.0.8"]}}}),
                None
            ),
            Ok(Requested {
                ips: vec![ip("10.0.0.7")],
                mac: mac("02:00:00:00:00:07")
            })
        );
        let bad = CniError::INVALID_CONFIG;
        assert_eq!(
            requested(json!({"runtimeConfig": {"ips": ["ten"]}}), None),
            Err(bad)
        );
        // A multicast MAC: no container can send from it.
        assert_eq!(
            requested(json!({"runtimeConfig": {"mac": "03:00:00:00:00:01"}}), None),
            Err(bad)
        );
        let no_pair = Env::from_vars(|k| {
            (k == "CNI_ARGS")
                .then(|| "IP".to_owned())
                .or_else(|| match k {
                    "CNI_COMMAND" => Some("DEL".to_owned()),
                    "CNI_CONTAINERID" => Some("c1".to_owned()),
                    "CNI_IFNAME" => Some("eth0".to_owned()),
                    _ => None,
                })
        });
        assert_eq!(no_pair.unwrap_err().code, CniError::INVALID_ENVIRONMENT);
    }

    #[test]
    fn container_ids_are_the_specs_and_fit_the_alias() {
        let id = |id: String| {
            Env::from_vars(|k| match k {
                "CNI_COMMAND" => Some("DEL".to_owned()),
                "CNI_CONTAINERID" => Some(id.clone()),
                "CNI_IFNAME" => Some("eth0".to_owned()),
                _ => None,
            })
            .map(|_| ())
            .map_err(|e| e.code)
        };
        assert_eq!(id("a".repeat(64)), Ok(()));
        assert_eq!(id("pod_1.two-3".into()), Ok(()));
        assert_eq!(id("a".repeat(CONTAINER_ID_MAX)), Ok(()));
        let bad = Err(CniError::INVALID_ENVIRONMENT);
        assert_eq!(id("a".repeat(CONTAINER_ID_MAX + 1)), bad);
        assert_eq!(id("a b".into()), bad);
        assert_eq!(id("../x".into()), bad);
        assert_eq!(id("x/eth0".into()), bad);
        // The longest ID, bridge and interface still fit the kernel's alias.
        let alias = naming::pod_alias(
            &naming::cni_datapath(&"b".repeat(naming::IFNAME_MAX)),
            &"a".repeat(CONTAINER_ID_MAX),
            &"e".repeat(naming::IFNAME_MAX),
        );
        assert!(alias.len() <= 255, "{} bytes", alias.len());
    }
}

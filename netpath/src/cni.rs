//! netpath as a CNI plugin (spec 1.0.0): containers that a runtime creates
//! are plugged into a bridge with netpath's datapath, one datapath shared by
//! every container the plugin attaches to that bridge on this host.

use std::{
    fs::File,
    io::Write,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    datapath::{self, Datapath, Port},
    lock::{Lock, Purpose},
    netlink, netns,
    spec::{self, Mac, Mode},
    state::STATE_DIR,
};

pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

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

    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    fn io(e: anyhow::Error) -> Self {
        CniError { code: Self::IO_FAILURE, msg: format!("{e}"), details: format!("{e:#}") }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

type CniResult<T> = std::result::Result<T, CniError>;

/// The network configuration the runtime passes on stdin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub bridge: String,
    #[serde(default)]
    pub mode: Option<Mode>,
    pub ipam: Ipam,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Ipam {
    /// netpath's own allocator: the gateway is the subnet's first address.
    Netpath { subnet: String },
    /// Delegated to the standard host-local plugin found in CNI_PATH.
    HostLocal(Value),
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> CniResult<Self> {
        let conf: NetConf = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(CniError::DECODING_FAILURE, format!("network configuration: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported (supported: {})", conf.cni_version, SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
        if conf.bridge.is_empty() || conf.bridge.len() > spec::IFNAME_MAX || conf.bridge.contains(['/', ' ', '.']) {
            return Err(invalid(format!("bridge {:?} is not a valid interface name", conf.bridge)));
        }
        if conf.mode == Some(Mode::Xdp) {
            // xdp mode needs the offload changes inside each container that
            // only `netpath up` makes; keep the plugin to what it can prove.
            return Err(invalid("the CNI plugin supports mode tc and bridge".into()));
        }
        if let Ipam::Netpath { subnet } = &conf.ipam {
            spec::parse_subnet(subnet).map_err(|e| invalid(format!("ipam: {e:#}")))?;
        }
        Ok(conf)
    }

    fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Tc)
    }

    /// The datapath's pin key; topology names cannot start with '_'.
    fn datapath_name(&self) -> String {
        format!("_cni-{}", self.bridge)
    }
}

/// The CNI_* environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: Vec<PathBuf>,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> CniResult<Self> {
        let missing = |v: &str| CniError::new(CniError::INVALID_ENVIRONMENT, format!("{v} is not set"));
        let command = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?;
        let needs_container = matches!(command.as_str(), "ADD" | "DEL" | "CHECK");
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if needs_container && container_id.is_empty() {
            return Err(missing("CNI_CONTAINERID"));
        }
        if needs_container && (ifname.is_empty() || ifname.len() > spec::IFNAME_MAX) {
            return Err(CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_IFNAME {ifname:?} is not a valid interface name")));
        }
        let netns = get("CNI_NETNS").filter(|n| !n.is_empty()).map(PathBuf::from);
        if matches!(command.as_str(), "ADD" | "CHECK") && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let path = get("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        Ok(Env { command, container_id, netns, ifname, path })
    }
}

/// One container the plugin attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_veth: String,
    pub mac: Mac,
    pub ip: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// What the plugin keeps per bridge, under /run/netpath/cni/.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkState {
    /// The plugin created the bridge (and so removes it with the last DEL).
    pub bridge_created: bool,
    pub attachments: Vec<Attachment>,
}

fn state_path(bridge: &str) -> PathBuf {
    Path::new(STATE_DIR).join("cni").join(format!("{bridge}.json"))
}

impl NetworkState {
    pub fn load(bridge: &str) -> Result<Self> {
        match std::fs::read(state_path(bridge)) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("parsing the CNI state"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).context("reading the CNI state"),
        }
    }

    fn save(&self, bridge: &str) -> Result<()> {
        let path = state_path(bridge);
        std::fs::create_dir_all(path.parent().unwrap())?;
        if self.attachments.is_empty() && !self.bridge_created {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).context("saving the CNI state")
    }

    fn find(&self, env: &Env) -> Option<usize> {
        self.attachments.iter().position(|a| a.container_id == env.container_id && a.ifname == env.ifname)
    }
}

/// Host-side veth name for a container: short, stable, unique per
/// (container, interface).
fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("np{:08x}", fnv1a(format!("{container_id}/{ifname}").as_bytes()) as u32)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

fn take_lock(datapath: &str) -> CniResult<Lock> {
    // Runtimes call the plugin for many containers at once: wait our turn.
    let started = Instant::now();
    loop {
        match Lock::acquire(datapath, Purpose::Change) {
            Ok(lock) => return Ok(lock),
            Err(_) if started.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(CniError::new(CniError::TRY_AGAIN_LATER, format!("{e:#}"))),
        }
    }
}

fn datapath_of(conf: &NetConf, state: &NetworkState) -> Datapath {
    Datapath {
        name: conf.datapath_name(),
        bridge: conf.bridge.clone(),
        mode: conf.mode(),
        ageing_s: spec::DEFAULT_AGEING_S,
        fdb_size: netpath_common::FDB_CAPACITY,
        ports: state.attachments.iter().map(port_of).collect(),
    }
}

fn port_of(a: &Attachment) -> Port {
    Port { name: a.host_veth.clone(), netns: a.netns.clone(), ifname: a.ifname.clone(), mac: a.mac }
}

/// Runs the delegated IPAM plugin (host-local) with the same environment.
fn delegate_ipam(conf_bytes: &[u8], env: &Env, kind: &str, command: &str) -> CniResult<Value> {
    let plugin = env
        .path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::new(CniError::INVALID_CONFIG, format!("IPAM plugin {kind} not found in CNI_PATH")))?;
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(anyhow!("running {}: {e}", plugin.display())))?;
    child.stdin.take().unwrap().write_all(conf_bytes).map_err(|e| CniError::io(e.into()))?;
    let out = child.wait_with_output().map_err(|e| CniError::io(e.into()))?;
    let result: Value = if out.stdout.is_empty() { Value::Null } else {
        serde_json::from_slice(&out.stdout).map_err(|e| CniError::io(anyhow!("{kind} printed no JSON: {e}")))?
    };
    if !out.status.success() {
        let msg = result.get("msg").and_then(Value::as_str).unwrap_or("failed").to_owned();
        let code = result.get("code").and_then(Value::as_u64).unwrap_or(CniError::IO_FAILURE as u64) as u32;
        return Err(CniError::new(code, format!("{kind}: {msg}")));
    }
    Ok(result)
}

/// (address, gateway) for a new attachment.
fn allocate(conf: &NetConf, conf_bytes: &[u8], env: &Env, state: &NetworkState) -> CniResult<(Ipv4Net, Option<Ipv4Addr>)> {
    match &conf.ipam {
        Ipam::Netpath { subnet } => {
            let subnet = spec::parse_subnet(subnet).map_err(|e| CniError::new(CniError::INVALID_CONFIG, format!("{e:#}")))?;
            let gateway = spec::gateway(subnet).addr();
            let address = subnet
                .hosts()
                .find(|a| *a != gateway && !state.attachments.iter().any(|x| x.ip.addr() == *a))
                .ok_or_else(|| CniError::new(CniError::TRY_AGAIN_LATER, format!("subnet {subnet} has no free address")))?;
            Ok((Ipv4Net::new(address, subnet.prefix_len()).unwrap(), Some(gateway)))
        }
        Ipam::HostLocal(_) => {
            let result = delegate_ipam(conf_bytes, env, "host-local", "ADD")?;
            let ip = &result["ips"][0];
            let address: Ipv4Net = ip["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| CniError::io(anyhow!("host-local returned no IPv4 address: {result}")))?;
            let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok());
            Ok((address, gateway))
        }
    }
}

fn release(conf: &NetConf, conf_bytes: &[u8], env: &Env) -> CniResult<()> {
    if let Ipam::HostLocal(_) = conf.ipam {
        delegate_ipam(conf_bytes, env, "host-local", "DEL")?;
    }
    Ok(())
}

/// The spec's success result for an attachment.
fn result_json(conf: &NetConf, a: &Attachment, host_mac: Option<Mac>) -> Value {
    let mut ip = json!({"address": a.ip.to_string(), "interface": 1});
    if let Some(gw) = a.gateway {
        ip["gateway"] = json!(gw.to_string());
    }
    if conf.cni_version != "1.0.0" {
        ip["version"] = json!("4");
    }
    let routes: Vec<Value> = a.gateway.iter().map(|gw| json!({"dst": "0.0.0.0/0", "gw": gw.to_string()})).collect();
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": a.host_veth, "mac": host_mac.map(|m| m.to_string()).unwrap_or_default()},
            {"name": a.ifname, "mac": a.mac.to_string(), "sandbox": a.netns},
        ],
        "ips": [ip],
        "routes": routes,
        "dns": {},
    })
}

/// A MAC no other attachment has, derived from the container.
fn pick_mac(env: &Env, state: &NetworkState) -> Mac {
    let mut seed = fnv1a(env.container_id.as_bytes()) ^ fnv1a(env.ifname.as_bytes());
    loop {
        let b = seed.to_be_bytes();
        let mac = Mac([0x02, b[3], b[4], b[5], b[6], b[7]]);
        if !state.attachments.iter().any(|a| a.mac == mac) {
            return mac;
        }
        seed = seed.wrapping_mul(0x100000001b3).wrapping_add(1);
    }
}

pub async fn add(handle: &Handle, conf: &NetConf, conf_bytes: &[u8], env: &Env) -> CniResult<Value> {
    let netns_path = env.netns.clone().expect("checked by Env");
    let ns = File::open(&netns_path)
        .map_err(|e| CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_NETNS {}: {e}", netns_path.display())))?;
    let _lock = take_lock(&conf.datapath_name())?;
    let mut state = NetworkState::load(&conf.bridge).map_err(CniError::io)?;
    if let Some(i) = state.find(env) {
        let a = state.attachments[i].clone();
        let host = netlink::link_by_name(handle, &a.host_veth).await.map_err(CniError::io)?;
        return Ok(result_json(conf, &a, host.and_then(|h| h.mac)));
    }
    let (ip, gateway) = allocate(conf, conf_bytes, env, &state)?;
    let attachment = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns_path,
        host_veth: host_veth_name(&env.container_id, &env.ifname),
        mac: pick_mac(env, &state),
        ip,
        gateway,
    };
    match plug(handle, conf, &mut state, &attachment, ns.as_raw_fd()).await {
        Ok(host_mac) => Ok(result_json(conf, &attachment, host_mac)),
        Err(e) => {
            // Undo what this ADD made: the veth (and so its peer) and the address.
            if let Ok(Some(link)) = netlink::link_by_name(handle, &attachment.host_veth).await {
                let _ = netlink::delete_link(handle, link.index).await;
            }
            let _ = release(conf, conf_bytes, env);
            Err(CniError::io(e))
        }
    }
}

/// Creates the bridge if needed, the veth pair, the container's addressing,
/// and adds the port to the shared datapath.
async fn plug(handle: &Handle, conf: &NetConf, state: &mut NetworkState, a: &Attachment, ns_fd: i32) -> Result<Option<Mac>> {
    let bridge = match netlink::link_by_name(handle, &conf.bridge).await? {
        Some(bridge) => bridge,
        None => {
            let bridge =
                netlink::create_bridge(handle, &conf.bridge, &netlink::owner_alias(&conf.datapath_name()), spec::DEFAULT_MTU)
                    .await?;
            state.bridge_created = true;
            state.save(&conf.bridge)?;
            bridge
        }
    };
    if let Some(gateway) = a.gateway {
        let on_bridge = netlink::ipv4_addresses(handle, bridge.index).await?;
        if !on_bridge.iter().any(|n| n.addr() == gateway) {
            netlink::add_address(handle, bridge.index, Ipv4Net::new(gateway, a.ip.prefix_len())?).await?;
        }
    }
    let peer = netlink::VethPeer { netns_fd: ns_fd, name: &a.ifname, mac: Some(a.mac) };
    let host = netlink::create_veth(handle, &a.host_veth, Some(bridge.index), spec::DEFAULT_MTU, peer).await?;
    netlink::set_alias(handle, &host, &netlink::owner_alias(&conf.datapath_name())).await?;
    let (ifname, ip, gateway) = (a.ifname.clone(), a.ip, a.gateway);
    netns::run_in_path(&a.netns, move |h| async move {
        let link = netlink::link_by_name(&h, &ifname).await?.context("interface vanished in the container")?;
        netlink::add_address(&h, link.index, ip).await?;
        netlink::set_up(&h, link.index).await?;
        if let Some(lo) = netlink::link_by_name(&h, "lo").await? {
            netlink::set_up(&h, lo.index).await?;
        }
        match gateway {
            Some(gw) => netlink::add_default_route(&h, gw).await,
            None => Ok(()),
        }
    })?;
    state.attachments.push(a.clone());
    state.save(&conf.bridge)?;
    datapath::ensure(handle, &datapath_of(conf, state)).await?;
    Ok(host.mac)
}

pub async fn del(handle: &Handle, conf: &NetConf, conf_bytes: &[u8], env: &Env) -> CniResult<()> {
    let _lock = take_lock(&conf.datapath_name())?;
    let mut state = NetworkState::load(&conf.bridge).map_err(CniError::io)?;
    let Some(i) = state.find(env) else {
        // DEL is idempotent: nothing (left) to remove. Release the address
        // anyway, in case an earlier DEL stopped after the veth.
        return release(conf, conf_bytes, env);
    };
    let a = state.attachments[i].clone();
    let host = netlink::link_by_name(handle, &a.host_veth).await.map_err(CniError::io)?;
    datapath::forget_port(&conf.datapath_name(), &port_of(&a), host.as_ref().map(|h| h.index)).map_err(CniError::io)?;
    if let Some(host) = host {
        netlink::delete_link(handle, host.index).await.map_err(CniError::io)?;
    }
    release(conf, conf_bytes, env)?;
    state.attachments.remove(i);
    if state.attachments.is_empty() {
        // The last container left: remove what the first one's ADD made.
        datapath::remove(&conf.datapath_name()).map_err(CniError::io)?;
        if state.bridge_created {
            if let Some(bridge) = netlink::link_by_name(handle, &conf.bridge).await.map_err(CniError::io)? {
                netlink::delete_link(handle, bridge.index).await.map_err(CniError::io)?;
            }
            state.bridge_created = false;
        }
    }
    state.save(&conf.bridge).map_err(CniError::io)
}

pub async fn check(handle: &Handle, conf: &NetConf, env: &Env) -> CniResult<()> {
    let state = NetworkState::load(&conf.bridge).map_err(CniError::io)?;
    let a = state
        .find(env)
        .map(|i| state.attachments[i].clone())
        .ok_or_else(|| CniError::new(CniError::UNKNOWN_CONTAINER, format!("container {} is not attached", env.container_id)))?;
    let bad = |msg: String| CniError::new(CniError::IO_FAILURE, msg);
    let host = netlink::link_by_name(handle, &a.host_veth).await.map_err(CniError::io)?;
    let bridge = netlink::link_by_name(handle, &conf.bridge).await.map_err(CniError::io)?;
    match (host, bridge) {
        (Some(h), Some(b)) if h.controller == Some(b.index) => {}
        _ => return Err(bad(format!("{} is missing or not on bridge {}", a.host_veth, conf.bridge))),
    }
    let (ifname, netns) = (a.ifname.clone(), a.netns.clone());
    let (mac, ips) = netns::run_in_path(&netns, move |h| async move {
        let link = netlink::link_by_name(&h, &ifname).await?.context("interface missing")?;
        Ok((link.mac, netlink::ipv4_addresses(&h, link.index).await?))
    })
    .map_err(|e| bad(format!("{} in {}: {e:#}", a.ifname, a.netns.display())))?;
    if mac != Some(a.mac) || !ips.contains(&a.ip) {
        return Err(bad(format!("{} has {mac:?} {ips:?}, expected {} {}", a.ifname, a.mac, a.ip)));
    }
    Ok(())
}

pub fn version() -> Value {
    json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command; returns what to print on stdout and the exit code.
pub async fn run(env_vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (Value, i32) {
    let env = match Env::from_vars(&env_vars) {
        Ok(env) => env,
        Err(e) => return (e.to_json("1.0.0"), 1),
    };
    if env.command == "VERSION" {
        return (version(), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return (e.to_json("1.0.0"), 1),
    };
    let version = conf.cni_version.clone();
    let handle = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            tokio::spawn(connection);
            handle
        }
        Err(e) => return (CniError::io(e.into()).to_json(&version), 1),
    };
    let outcome = match env.command.as_str() {
        "ADD" => add(&handle, &conf, stdin, &env).await,
        "DEL" => del(&handle, &conf, stdin, &env).await.map(|()| Value::Null),
        "CHECK" => check(&handle, &conf, &env).await.map(|()| Value::Null),
        other => Err(CniError::new(CniError::INVALID_ENVIRONMENT, format!("CNI_COMMAND {other} is not supported"))),
    };
    match outcome {
        Ok(value) => (value, 0),
        Err(e) => (e.to_json(&version), 1),
    }
}

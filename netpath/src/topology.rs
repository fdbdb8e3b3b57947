//! Building and removing topologies: namespaces, veth pairs, the bridge,
//! addresses and routes, transactionally.

use std::{fs::File, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use log::{info, warn};
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath,
    lock::{Lock, Purpose},
    nat, netlink, netns,
    spec::{ContainerSpec, Mac, Mode, TopologySpec, port_name},
    state::{self, TopologyState},
};

/// Name of the container-side veth end inside each namespace.
pub const CONTAINER_IFNAME: &str = "eth0";

pub enum UpOutcome {
    Created,
    AlreadyUp,
}

/// Creates the topology, or does nothing if an identical one is up. On any
/// failure, everything this call created is removed again.
pub async fn up(handle: &Handle, spec: TopologySpec) -> Result<UpOutcome> {
    let _lock = Lock::acquire(&spec.name, Purpose::Change)?;
    if let Some(existing) = state::load(&spec.name)? {
        if existing.complete {
            let differences = differences(&existing.spec, &spec);
            if differences.is_empty() {
                datapath::ensure(handle, &(&existing.spec).into()).await?;
                return Ok(UpOutcome::AlreadyUp);
            }
            bail!(
                "topology {} is already up and differs from what was asked: {}\n\
                 (run `netpath down --name {}` first, or `netpath mode` to change the mode)",
                spec.name,
                differences.join("; "),
                spec.name
            );
        }
        warn!("topology {}: finishing the cleanup of an interrupted `up`", spec.name);
        teardown(handle, &existing).await?;
    }
    check_names_free(handle, &spec, &spec.containers).await?;

    let mut record = TopologyState { spec: spec.clone(), complete: false, ip_forward_before: None };
    state::save(&record)?;
    match build(handle, &mut record).await {
        Ok(()) => {
            record.complete = true;
            state::save(&record)?;
            Ok(UpOutcome::Created)
        }
        Err(e) => {
            if let Err(cleanup) = teardown(handle, &record).await {
                warn!("rolling back topology {}: {cleanup:#}", spec.name);
            }
            Err(e.context(format!("creating topology {} (rolled back)", spec.name)))
        }
    }
}

async fn build(handle: &Handle, record: &mut TopologyState) -> Result<()> {
    let spec = record.spec.clone();
    let alias = netlink::owner_alias(&spec.name);
    let bridge = netlink::create_bridge(handle, &spec.bridge_name(), &alias, spec.mtu).await?;
    netlink::add_address(handle, bridge.index, spec.gateway())
        .await
        .with_context(|| format!("addressing bridge {}", spec.bridge_name()))?;
    for (done, container) in spec.containers.iter().enumerate() {
        inject_fault(done)?;
        create_container(handle, &spec, bridge.index, container).await?;
        if spec.containers.len() >= 16 && (done + 1) % 16 == 0 {
            info!("topology {}: {}/{} containers", spec.name, done + 1, spec.containers.len());
        }
    }
    if spec.nat {
        record.ip_forward_before = nat::enable(&spec)?;
        state::save(record)?;
    }
    datapath::ensure(handle, &(&spec).into()).await
}

/// Test hook: `up` fails before the container with this (0-based) index,
/// so the tests can prove that a failure halfway rolls everything back.
pub const FAULT_ENV: &str = "NETPATH_FAIL_AT_CONTAINER";

fn inject_fault(index: usize) -> Result<()> {
    if std::env::var(FAULT_ENV).ok().and_then(|v| v.parse::<usize>().ok()) == Some(index) {
        bail!("injected fault before container {index} ({FAULT_ENV})");
    }
    Ok(())
}

async fn create_container(handle: &Handle, spec: &TopologySpec, bridge: u32, c: &ContainerSpec) -> Result<()> {
    let port = port_name(&spec.name, &c.name);
    netns::create(&port)?;
    let ns = File::open(netns::path(&port)).with_context(|| format!("opening namespace {port}"))?;
    let peer = netlink::VethPeer { netns_fd: ns.as_raw_fd(), name: CONTAINER_IFNAME, mac: Some(c.mac) };
    let host = netlink::create_veth(handle, &port, Some(bridge), spec.mtu, peer)
        .await
        .with_context(|| format!("container {}", c.name))?;
    netlink::set_alias(handle, &host, &netlink::owner_alias(&spec.name)).await?;
    let (ip, gateway) = (c.ip, spec.gateway().addr());
    netns::run_in(&port, move |h| async move {
        let lo = netlink::link_by_name(&h, "lo").await?.context("namespace has no lo")?;
        netlink::set_up(&h, lo.index).await?;
        let eth0 = netlink::link_by_name(&h, CONTAINER_IFNAME)
            .await?
            .context("eth0 missing in the namespace")?;
        netlink::add_address(&h, eth0.index, ip).await?;
        netlink::set_up(&h, eth0.index).await?;
        netlink::add_default_route(&h, gateway).await
    })
    .with_context(|| format!("configuring {CONTAINER_IFNAME} in namespace {port}"))
}

/// Whether a link may be deleted: it carries the topology's mark, or the
/// record is of an `up` that was interrupted between creating the link and
/// marking it (its names were checked free before anything was created).
fn owned(link: &netlink::Link, topology: &str, interrupted: bool) -> bool {
    link.alias.as_deref() == Some(netlink::owner_alias(topology).as_str()) || (interrupted && link.alias.is_none())
}

/// Removes a container's host veth (and so its pair) and namespace, if they
/// are netpath's.
async fn remove_container(handle: &Handle, topology: &str, container: &str, interrupted: bool) -> Result<()> {
    let port = port_name(topology, container);
    if let Some(link) = netlink::link_by_name(handle, &port).await? {
        if owned(&link, topology, interrupted) {
            netlink::delete_link(handle, link.index).await?;
        } else {
            warn!("not deleting link {port}: netpath did not create it");
        }
    }
    netns::delete(&port)?;
    Ok(())
}

/// Removes everything the record names that still exists, then the record.
async fn teardown(handle: &Handle, record: &TopologyState) -> Result<()> {
    let spec = &record.spec;
    let interrupted = !record.complete;
    datapath::remove(&spec.name)?;
    for container in &spec.containers {
        remove_container(handle, &spec.name, &container.name, interrupted).await?;
    }
    if let Some(bridge) = netlink::link_by_name(handle, &spec.bridge_name()).await?
        && owned(&bridge, &spec.name, interrupted) {
            netlink::delete_link(handle, bridge.index).await?;
        }
    nat::disable(&spec.name, record.ip_forward_before.as_deref())?;
    state::remove(&spec.name)
}

/// Removes the topology. Returns false if there was nothing to remove.
pub async fn down(handle: &Handle, topology: &str) -> Result<bool> {
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    // A `run` killed with SIGKILL left its lock file; taking and dropping
    // the lock removes it (a live `run` keeps its own).
    drop(Lock::acquire(topology, Purpose::Run));
    if let Some(record) = state::load(topology)? {
        teardown(handle, &record).await?;
        return Ok(true);
    }
    // No record: still remove links that carry this topology's mark.
    let alias = netlink::owner_alias(topology);
    let mut found = false;
    for link in netlink::links(handle).await? {
        if link.alias.as_deref() == Some(alias.as_str()) {
            netlink::delete_link(handle, link.index).await?;
            found = true;
        }
    }
    Ok(found)
}

/// Fails if any interface or namespace the containers (and the bridge, for
/// a new topology) would use already exists.
async fn check_names_free(handle: &Handle, spec: &TopologySpec, containers: &[ContainerSpec]) -> Result<()> {
    let mut links: Vec<String> = containers.iter().map(|c| port_name(&spec.name, &c.name)).collect();
    let namespaces = links.clone();
    if state::load(&spec.name)?.is_none() {
        links.push(spec.bridge_name());
    }
    for name in &links {
        if let Some(link) = netlink::link_by_name(handle, name).await? {
            let owner = match link.alias.as_deref().and_then(|a| a.strip_prefix("netpath:")) {
                Some(other) => format!("netpath topology {other:?}"),
                None => "something other than netpath".into(),
            };
            bail!("interface {name} already exists (created by {owner}); choose another topology or container name");
        }
    }
    for name in &namespaces {
        if netns::exists(name) {
            bail!("network namespace {name} already exists; choose another topology or container name");
        }
    }
    Ok(())
}

fn differences(have: &TopologySpec, want: &TopologySpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |what: &str, have: String, want: String| {
        if have != want {
            out.push(format!("{what} is {have} (asked {want})"));
        }
    };
    compare("mode", have.mode.to_string(), want.mode.to_string());
    compare("subnet", have.subnet.to_string(), want.subnet.to_string());
    compare("nat", have.nat.to_string(), want.nat.to_string());
    compare("ageing", format!("{} s", have.ageing_s), format!("{} s", want.ageing_s));
    compare("MTU", have.mtu.to_string(), want.mtu.to_string());
    compare("FDB size", have.fdb_size.to_string(), want.fdb_size.to_string());
    if have.containers.len() != want.containers.len() {
        out.push(format!("{} containers (asked {})", have.containers.len(), want.containers.len()));
    }
    for (h, w) in have.containers.iter().zip(&want.containers) {
        if h != w {
            out.push(format!("container {} {} {} (asked {} {} {})", h.name, h.ip, h.mac, w.name, w.ip, w.mac));
        }
    }
    out
}

fn load_complete(topology: &str) -> Result<TopologyState> {
    match state::load(topology)? {
        Some(s) if s.complete => Ok(s),
        Some(_) => bail!("topology {topology} is half built; run `netpath down --name {topology}` or `up` again"),
        None => bail!("topology {topology} is not up (see `netpath up --help`)"),
    }
}

/// Plugs one more container into a running topology.
pub async fn port_add(
    handle: &Handle,
    topology: &str,
    container: &str,
    ip: Option<&str>,
    mac: Option<Mac>,
) -> Result<ContainerSpec> {
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut record = load_complete(topology)?;
    let ip = ip.map(|ip| crate::spec::parse_container_ip(ip, record.spec.subnet)).transpose()?;
    record.spec.push_container(container, ip, mac)?;
    record.spec.validate()?;
    let added = record.spec.containers.last().expect("just pushed").clone();
    check_names_free(handle, &record.spec, std::slice::from_ref(&added)).await?;
    let bridge = netlink::link_by_name(handle, &record.spec.bridge_name())
        .await?
        .with_context(|| format!("bridge {} of topology {topology} is missing", record.spec.bridge_name()))?;
    let result = async {
        create_container(handle, &record.spec, bridge.index, &added).await?;
        datapath::ensure(handle, &(&record.spec).into()).await?;
        state::save(&record)
    }
    .await;
    if let Err(e) = result {
        if let Err(cleanup) = remove_container(handle, topology, container, true).await {
            warn!("rolling back port {container}: {cleanup:#}");
        }
        return Err(e.context(format!("adding port {container} (rolled back)")));
    }
    Ok(added)
}

/// Accepts a container name or its host-side veth name.
pub fn container_of<'a>(topology: &str, port: &'a str) -> &'a str {
    port.strip_prefix(topology).and_then(|p| p.strip_prefix('-')).unwrap_or(port)
}

/// The ifindex of a port of the topology, by container or veth name.
pub async fn port_ifindex(handle: &Handle, topology: &str, port: &str) -> Result<u32> {
    let record = load_complete(topology)?;
    let container = container_of(topology, port);
    if record.spec.container(container).is_none() {
        bail!("topology {topology} has no port {port}");
    }
    let name = port_name(topology, container);
    Ok(netlink::link_by_name(handle, &name).await?.with_context(|| format!("port {name} is missing"))?.index)
}

/// Switches the datapath of a running topology; the new mode's programs are
/// attached before the old ones are detached.
pub async fn set_mode(handle: &Handle, topology: &str, mode: Mode) -> Result<()> {
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut record = load_complete(topology)?;
    crate::spec::validate_mtu(mode, record.spec.mtu)?;
    record.spec.mode = mode;
    datapath::ensure(handle, &(&record.spec).into()).await?;
    state::save(&record)
}

/// Unplugs a container and removes its namespace.
pub async fn port_del(handle: &Handle, topology: &str, container: &str) -> Result<()> {
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut record = load_complete(topology)?;
    let container = container_of(topology, container).to_owned();
    let Some(index) = record.spec.containers.iter().position(|c| c.name == container) else {
        bail!("topology {topology} has no port {container}");
    };
    let removed = record.spec.containers.remove(index);
    let port = datapath::Port::of_container(&record.spec, &removed);
    let ifindex = netlink::link_by_name(handle, &port.name).await?.map(|l| l.index);
    datapath::forget_port(topology, &port, ifindex)?;
    remove_container(handle, topology, &container, false).await?;
    state::save(&record)
}

/// Forgets a port whose host-side veth disappeared without netpath (its
/// namespace was deleted, e.g. by a crashed runtime): its FDB entries, maps,
/// links, namespace and record go. Returns false if it was not a port.
pub async fn forget_vanished_port(handle: &Handle, topology: &str, port: &str, ifindex: u32) -> Result<bool> {
    let container = container_of(topology, port).to_owned();
    let mut attempts = 0;
    let _lock = loop {
        match Lock::acquire(topology, Purpose::Change) {
            Ok(lock) => break lock,
            // Someone else is changing the topology (maybe deleting this
            // very port): wait for them, then look again.
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let Some(mut record) = state::load(topology)?.filter(|r| r.complete) else { return Ok(false) };
    let Some(index) = record.spec.containers.iter().position(|c| c.name == container) else {
        return Ok(false);
    };
    if netlink::link_by_name(handle, port).await?.is_some() {
        return Ok(false); // re-created meanwhile: not vanished
    }
    let removed = record.spec.containers.remove(index);
    let gone = datapath::Port::of_container(&record.spec, &removed);
    datapath::forget_port(topology, &gone, Some(ifindex))?;
    netns::delete(port)?;
    state::save(&record)?;
    Ok(true)
}

#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub ip: Option<Ipv4Net>,
    pub ifindex: Option<u32>,
    pub mac: Option<Mac>,
}

#[derive(Debug, Serialize)]
pub struct PortStatus {
    /// Host-side veth.
    pub name: String,
    pub ifindex: Option<u32>,
    pub netns: String,
    pub ifname: String,
    pub mac: Option<Mac>,
    pub ip: Option<Ipv4Net>,
    /// BPF programs on the host-side veth (`xdp:NAME`, `tc:NAME`) and on
    /// the container's interface (`peer-xdp:NAME`).
    pub programs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub mode: Mode,
    /// What carries the traffic in this mode.
    pub datapath: &'static str,
    pub subnet: Ipv4Net,
    pub nat: bool,
    pub bridge: BridgeStatus,
    pub ports: Vec<PortStatus>,
}

/// The topology as the machine has it now (not as it was asked for).
pub async fn status(handle: &Handle, topology: &str) -> Result<Status> {
    let record = load_complete(topology)?;
    let spec = &record.spec;
    let bridge_link = netlink::link_by_name(handle, &spec.bridge_name()).await?;
    let bridge_ip = match &bridge_link {
        Some(l) => netlink::ipv4_addresses(handle, l.index).await?.into_iter().next(),
        None => None,
    };
    let mut ports = Vec::new();
    for c in &spec.containers {
        let name = port_name(&spec.name, &c.name);
        let host = netlink::link_by_name(handle, &name).await?;
        let (mac, ip, peer_xdp) = if netns::exists(&name) {
            netns::run_in(&name, |h| async move {
                let Some(eth0) = netlink::link_by_name(&h, CONTAINER_IFNAME).await? else {
                    return Ok((None, None, None));
                };
                let ip = netlink::ipv4_addresses(&h, eth0.index).await?.into_iter().next();
                Ok((eth0.mac, ip, eth0.xdp_prog_id))
            })?
        } else {
            (None, None, None)
        };
        let mut programs = match &host {
            Some(link) => datapath::programs_on(&name, link.xdp_prog_id),
            None => Vec::new(),
        };
        programs.extend(peer_xdp.map(|id| format!("peer-xdp:{}", datapath::program_name(id))));
        ports.push(PortStatus {
            programs,
            ifindex: host.map(|l| l.index),
            netns: name.clone(),
            name,
            ifname: CONTAINER_IFNAME.into(),
            mac,
            ip,
        });
    }
    Ok(Status {
        name: spec.name.clone(),
        mode: spec.mode,
        datapath: datapath::describe(spec.mode),
        subnet: spec.subnet,
        nat: spec.nat,
        bridge: BridgeStatus {
            name: spec.bridge_name(),
            ip: bridge_ip,
            ifindex: bridge_link.as_ref().map(|l| l.index),
            mac: bridge_link.and_then(|l| l.mac),
        },
        ports,
    })
}

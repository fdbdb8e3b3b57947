//! Building and removing topologies: namespaces, veth pairs, the bridge,
//! addresses and routes, transactionally.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use log::{info, warn};
use rtnetlink::Handle;

use super::{
    fault::{self, Point},
    overlay,
};
use crate::{
    datapath,
    host::{nat, netlink, netns, plumbing},
    model::{
        ContainerSpec, Mac, Mode, TopologySpec,
        naming::{
            CONTAINER_IFNAME, OWNER_ALIAS_PREFIX, container_of, owner_alias, port_name,
            validate_topology_name,
        },
        policy::Identity,
        spec::validate_mtu,
    },
    network::topology::{datapath as datapath_of, load_complete, port as port_of},
    store::{
        self,
        lock::{Lock, Purpose},
        topology::{self as record, TopologyRecord},
    },
};

pub enum UpOutcome {
    Created,
    AlreadyUp,
}

/// Creates the topology, or does nothing if an identical one is up. On any
/// failure, everything this call created is removed again.
pub async fn up(handle: &Handle, spec: TopologySpec) -> Result<UpOutcome> {
    let _lock = Lock::acquire(&spec.name, Purpose::Change)?;
    if let Some(existing) = record::load(&spec.name)? {
        if existing.complete {
            let differences = existing.differences_from_asked(&spec);
            if differences.is_empty() {
                let changed = existing.spec.differences(&spec);
                if !changed.is_empty() {
                    info!(
                        "topology {}: adopted as it is, with what `port add` and `port del` changed \
                         since it was brought up: {}",
                        spec.name,
                        changed.join("; ")
                    );
                }
                datapath::ensure(handle, &datapath_of(&existing.spec)?).await?;
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
        warn!(
            "topology {}: finishing the cleanup of an interrupted `up`",
            spec.name
        );
        teardown(handle, &existing).await?;
    }
    check_names_free(handle, &spec, &spec.containers).await?;
    super::require_mode(handle, &spec.name, spec.mode).await?;
    if let Some(on) = &spec.overlay {
        overlay::preflight(on).await?;
    }

    let mut rec = TopologyRecord::asked(spec.clone());
    record::save(&rec)?;
    match build(handle, &rec).await {
        Ok(()) => {
            rec.complete = true;
            record::save(&rec)?;
            Ok(UpOutcome::Created)
        }
        Err(e) => {
            if let Err(cleanup) = teardown(handle, &rec).await {
                warn!("rolling back topology {}: {cleanup:#}", spec.name);
            }
            Err(e.context(format!("creating topology {} (rolled back)", spec.name)))
        }
    }
}

async fn build(handle: &Handle, rec: &TopologyRecord) -> Result<()> {
    let spec = rec.spec.clone();
    fault::at(Point::Record)?;
    let (bridge, _) = plumbing::ensure_bridge(
        handle,
        &spec.bridge_name(),
        &spec.name,
        spec.mtu,
        &spec.gateways(),
        plumbing::Adopt::No,
    )
    .await?;
    fault::at(Point::Bridge)?;
    for (done, container) in spec.containers.iter().enumerate() {
        create_container(handle, &spec, bridge.index, container).await?;
        fault::at(Point::Container(done))?;
        if spec.containers.len() >= 16 && (done + 1) % 16 == 0 {
            info!(
                "topology {}: {}/{} containers",
                spec.name,
                done + 1,
                spec.containers.len()
            );
        }
    }
    if spec.nat {
        nat::enable(&spec.name, &spec.subnets)?;
        fault::at(Point::Nat)?;
    }
    datapath::ensure_reporting(handle, &datapath_of(&spec)?, |step| {
        fault::at(match step {
            datapath::Step::MapsFilled => Point::Maps,
            datapath::Step::PortAttached(n) => Point::Attached(n),
        })
    })
    .await?;
    if spec.overlay.is_some() {
        overlay::join(handle, &overlay::Member::of_topology(&spec)?, spec.mtu).await?;
    }
    fault::at(Point::Built)
}

async fn create_container(
    handle: &Handle,
    spec: &TopologySpec,
    bridge: u32,
    c: &ContainerSpec,
) -> Result<()> {
    let port = port_name(&spec.name, &c.name);
    netns::create(&port)?;
    let gateways: Vec<_> = spec.gateways().iter().map(|g| g.addr()).collect();
    plumbing::plug(
        handle,
        &plumbing::Plug {
            host_veth: &port,
            netns: &netns::path(&port),
            ifname: CONTAINER_IFNAME,
            mac: Some(c.mac),
            mtu: spec.mtu,
            bridge: Some(bridge),
            owner: &spec.name,
            container: None,
            addresses: &spec.container_addresses(c),
            gateways: &gateways,
            source_check: c.source_check,
            kind: netlink::PairKind::of(spec.mode),
        },
    )
    .await
    .with_context(|| format!("container {}", c.name))?;
    Ok(())
}

/// Removes a container's host veth (and so its pair), if netpath's, and
/// its namespace.
async fn remove_container(
    handle: &Handle,
    topology: &str,
    container: &str,
    interrupted: bool,
) -> Result<()> {
    let port = port_name(topology, container);
    plumbing::unplug(handle, &port, topology, interrupted).await?;
    netns::delete(&port)?;
    Ok(())
}

/// Removes everything the record names that still exists, then the record.
async fn teardown(handle: &Handle, rec: &TopologyRecord) -> Result<()> {
    let spec = &rec.spec;
    let interrupted = !rec.complete;
    if let Some(on) = &spec.overlay {
        overlay::leave(handle, &spec.name, on.vni).await?;
    }
    datapath::remove(&spec.name)?;
    for container in &spec.containers {
        remove_container(handle, &spec.name, &container.name, interrupted).await?;
    }
    plumbing::unplug(handle, &spec.bridge_name(), &spec.name, interrupted).await?;
    nat::disable(&spec.name)?;
    store::policy::remove(&spec.name)?;
    record::remove(&spec.name)
}

/// Removes the topology. Returns false if there was nothing to remove.
pub async fn down(handle: &Handle, topology: &str) -> Result<bool> {
    validate_topology_name(topology)?;
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    // A `run` killed with SIGKILL left its lock file; taking and dropping
    // the lock removes it (a live `run` keeps its own).
    drop(Lock::acquire(topology, Purpose::Run));
    if let Some(rec) = record::load(topology)? {
        teardown(handle, &rec).await?;
        return Ok(true);
    }
    // No record (the state directory lost, the pins still there): remove
    // what carries this topology's name. Its datapath's pins, and with
    // them its programs (on the vxlan device too: the pinned config names
    // the VNI), the links with its mark and its NAT table; the forwarding
    // sysctls are restored if the NAT record survived. Its containers'
    // namespaces stay: without the record nothing says which are its own.
    let mut found = false;
    if let Some(config) = datapath::pinned_config(topology)? {
        if config.overlay.vni != 0 {
            overlay::leave(handle, topology, config.overlay.vni).await?;
        }
        datapath::remove(topology)?;
        found = true;
    }
    let alias = owner_alias(topology);
    for link in netlink::links(handle).await? {
        if link.alias.as_deref() == Some(alias.as_str()) {
            netlink::delete_link(handle, link.index).await?;
            found = true;
        }
    }
    found |= nat::table_exists(topology);
    nat::disable(topology)?;
    store::policy::remove(topology)?;
    Ok(found)
}

/// Fails if any interface or namespace the containers (and the bridge, for
/// a new topology) would use already exists.
async fn check_names_free(
    handle: &Handle,
    spec: &TopologySpec,
    containers: &[ContainerSpec],
) -> Result<()> {
    let mut links: Vec<String> = containers
        .iter()
        .map(|c| port_name(&spec.name, &c.name))
        .collect();
    let namespaces = links.clone();
    if record::load(&spec.name)?.is_none() {
        links.push(spec.bridge_name());
    }
    for name in &links {
        if let Some(link) = netlink::link_by_name(handle, name).await? {
            let owner = match link
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(OWNER_ALIAS_PREFIX))
            {
                Some(other) => format!("netpath topology {other:?}"),
                None => "something other than netpath".into(),
            };
            bail!(
                "interface {name} already exists (created by {owner}); choose another topology or container name"
            );
        }
    }
    for name in &namespaces {
        if netns::exists(name) {
            bail!(
                "network namespace {name} already exists; choose another topology or container name"
            );
        }
    }
    Ok(())
}

/// Plugs one more container into a running topology.
pub async fn port_add(
    handle: &Handle,
    topology: &str,
    container: &str,
    ips: &[String],
    mac: Option<Mac>,
    source_check: bool,
    identity: Identity,
) -> Result<ContainerSpec> {
    validate_topology_name(topology)?;
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut rec = load_complete(topology)?;
    rec.spec
        .push_container(container, ips, mac, source_check, identity)?;
    rec.spec.validate()?;
    let added = rec.spec.containers.last().expect("just pushed").clone();
    check_names_free(handle, &rec.spec, std::slice::from_ref(&added)).await?;
    let bridge = netlink::link_by_name(handle, &rec.spec.bridge_name())
        .await?
        .with_context(|| {
            format!(
                "bridge {} of topology {topology} is missing",
                rec.spec.bridge_name()
            )
        })?;
    let result = async {
        create_container(handle, &rec.spec, bridge.index, &added).await?;
        datapath::ensure(handle, &datapath_of(&rec.spec)?).await?;
        record::save(&rec)
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

/// Switches the datapath of a running topology; the new mode's programs are
/// attached before the old ones are detached.
pub async fn set_mode(handle: &Handle, topology: &str, mode: Mode) -> Result<()> {
    validate_topology_name(topology)?;
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut rec = load_complete(topology)?;
    validate_mtu(mode, rec.spec.mtu, &rec.spec.subnets)?;
    if rec.spec.mode.uses_netkit() != mode.uses_netkit() {
        bail!(
            "topology {topology} has {} pairs, and mode {mode} needs {}: a mode switch keeps the \
             containers' devices; take it down and up with --mode {mode}",
            if rec.spec.mode.uses_netkit() {
                "netkit"
            } else {
                "veth"
            },
            if mode.uses_netkit() {
                "netkit pairs"
            } else {
                "veth pairs"
            },
        );
    }
    if rec.spec.overlay.is_some() && !mode.forwards_in_tc() {
        bail!(
            "topology {topology} is on an overlay, which needs tc mode (only tc programs set tunnel keys); \
             take it down and up without the overlay to use mode {mode}"
        );
    }
    let before = rec.spec.mode;
    rec.spec.mode = mode;
    if let Err(e) = datapath::ensure(handle, &datapath_of(&rec.spec)?).await {
        rec.spec.mode = before;
        if let Err(back) = datapath::ensure(handle, &datapath_of(&rec.spec)?).await {
            warn!("topology {topology}: going back to mode {before}: {back:#}");
        }
        return Err(e.context(format!(
            "switching topology {topology} to mode {mode} (back in mode {before})"
        )));
    }
    record::save(&rec)
}

/// Unplugs a container and removes its namespace.
pub async fn port_del(handle: &Handle, topology: &str, container: &str) -> Result<()> {
    validate_topology_name(topology)?;
    let _lock = Lock::acquire(topology, Purpose::Change)?;
    let mut rec = load_complete(topology)?;
    let container = container_of(topology, container).to_owned();
    let Some(index) = rec.spec.containers.iter().position(|c| c.name == container) else {
        bail!("topology {topology} has no port {container}");
    };
    let removed = rec.spec.containers.remove(index);
    let port = port_of(&rec.spec, &removed);
    let ifindex = netlink::link_by_name(handle, &port.name)
        .await?
        .map(|l| l.index);
    datapath::forget_port(topology, &port, ifindex)?;
    remove_container(handle, topology, &container, false).await?;
    if datapath::is_running(topology) {
        datapath::reconcile(topology)?;
        // Its addresses leave the policies' rules, as allowed peers too.
        datapath::refresh_policy(&datapath_of(&rec.spec)?)?;
    }
    record::save(&rec)
}

/// Forgets a port whose host-side veth disappeared without netpath (its
/// namespace was deleted, e.g. by a crashed runtime): its FDB entries, maps,
/// links, namespace and record go. Returns false if it was not a port.
pub async fn forget_vanished_port(
    handle: &Handle,
    topology: &str,
    port: &str,
    ifindex: u32,
) -> Result<bool> {
    let container = container_of(topology, port).to_owned();
    // Someone else may be changing the topology (maybe deleting this very
    // port): wait for them, then look again.
    let _lock = Lock::acquire_waiting(topology, Purpose::Change, Duration::from_secs(5))?;
    let Some(mut rec) = record::load(topology)?.filter(|r| r.complete) else {
        return Ok(false);
    };
    let Some(index) = rec.spec.containers.iter().position(|c| c.name == container) else {
        return Ok(false);
    };
    if netlink::link_by_name(handle, port).await?.is_some() {
        return Ok(false); // re-created meanwhile: not vanished
    }
    let removed = rec.spec.containers.remove(index);
    datapath::forget_port(topology, &port_of(&rec.spec, &removed), Some(ifindex))?;
    netns::delete(port)?;
    record::save(&rec)?;
    Ok(true)
}

//! The BPF datapath of a set of ports sharing one bridge (a topology, or a
//! CNI network): the object and its pins, the hooks, the typed maps, the
//! FDB and the counters, and `ensure`, which makes the kernel match.

pub mod counters;
pub mod fdb;
pub mod hooks;
pub mod maps;
pub mod memlock;
mod netkit;
pub mod object;
pub mod overlay;
pub mod policy;

use std::{
    collections::HashSet,
    fs,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::PathBuf,
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    maps::{MapError, PerCpuValues},
    util::nr_cpus,
};
use ipnet::IpNet;
use log::{debug, info};
use netpath_common::{DatapathConfig, PortPolicy, PortState, programs};
use rtnetlink::Handle;

use self::{
    hooks::Hook,
    maps::Maps,
    object::{Programs, ensure_bpffs, pin_dir},
};
use crate::{
    host::netlink,
    model::{
        Mac, Mode, bandwidth::Bandwidth, naming, policy::EndpointRules, source::source_policy,
    },
};

/// BPF_NOEXIST: create, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// One container port of a datapath.
#[derive(Clone, Debug)]
pub struct Port {
    /// Host-side veth.
    pub name: String,
    /// The container's network namespace (a bind mount or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// The container-side interface inside it.
    pub ifname: String,
    /// The container's MAC: its static FDB entry.
    pub mac: Mac,
    /// The container's addresses (its IPv6 link-local one is derived).
    pub addresses: Vec<IpAddr>,
    /// Frames must come from `mac` and `addresses` (off for containers
    /// that route or bridge for others: those learn, up to a limit).
    pub source_check: bool,
    /// The container's rate limits (pods: the CNI `bandwidth` capability).
    pub bandwidth: Bandwidth,
}

/// Everything the datapath needs: a set of ports sharing one bridge, one
/// FDB and one pin directory.
#[derive(Clone, Debug)]
pub struct Datapath {
    /// Key of the pin directory: a topology name or a CNI datapath name.
    pub name: String,
    pub bridge: String,
    pub mode: Mode,
    pub ageing_s: u64,
    pub fdb_size: u32,
    /// Whether any port may ever learn (see `object::MapSizes::new`).
    pub learning: bool,
    /// Whether it joins an overlay (when it is made: see
    /// `object::MapSizes::new`).
    pub overlay: bool,
    /// Most learned FDB entries per port.
    pub learn_limit: u32,
    /// How the tc mode's program is attached to new ports.
    pub tc: hooks::TcMethod,
    pub ports: Vec<Port>,
    /// The network policies applied to it, compiled for its ports'
    /// containers (none: no policy selects any of them).
    pub policy: Vec<EndpointRules>,
}

/// The pinned maps of a running datapath, as they are: opening them changes
/// nothing, so every read (`status`, `fdb dump`, `stats`, `trace`,
/// `monitor`, metrics, CNI STATUS) is pure. A port whose device vanished
/// keeps its entries until the reconciler ([`reconcile`]) runs; the
/// programs already pass frames for it to the bridge, counted.
pub fn maps(datapath: &str) -> Result<Maps> {
    Maps::open(&pin_dir(datapath)).with_context(|| {
        format!(
            "is {} up in xdp or tc mode?",
            naming::describe_datapath(datapath)
        )
    })
}

/// The reconciler: the maps of a datapath about to change, after removing
/// the state and FDB entries of every port whose device is gone (namespace
/// deleted, runtime crashed) and recounting each port's learned entries. Called with the datapath's lock held, by the
/// commands that change a datapath and by `netpath run`'s sweep; never by
/// a read.
pub fn reconcile(datapath: &str) -> Result<Maps> {
    let maps = maps(datapath)?;
    forget_vanished_ports(&maps)?;
    let wrong = fdb::Fdb::open(&maps)?.recount()?;
    if wrong > 0 {
        debug!("{datapath}: {wrong} learned counts put right");
    }
    Ok(maps)
}

/// The kernel took a vanished port out of the devmap, which the programs
/// already treat as "not there"; its other entries go here.
fn forget_vanished_ports(maps: &Maps) -> Result<()> {
    let devmap = maps.ports()?;
    let live: HashSet<u32> = devmap
        .iter()
        .filter_map(Result::ok)
        .map(|(ifindex, _)| ifindex)
        .collect();
    let vanished: Vec<u32> = maps
        .port_state()?
        .keys()
        .filter_map(Result::ok)
        .filter(|ifindex| !live.contains(ifindex))
        // A port that joins meanwhile has its state written after its
        // devmap slot, but its device exists.
        .filter(|ifindex| !has_device(*ifindex))
        .collect();
    for ifindex in vanished {
        let entries = drop_port_entries(maps, ifindex)?;
        info!("forgot vanished port {ifindex} and its {entries} FDB entries");
    }
    Ok(())
}

/// Whether a device has the index `ifindex` (in this namespace). nix's
/// `if_indextoname` gives an empty name, not an error, for none.
fn has_device(ifindex: u32) -> bool {
    nix::net::if_::if_indextoname(ifindex).is_ok_and(|name| !name.is_empty())
}

/// Removes every entry of the port `ifindex` (its FDB entries, devmap
/// slot, state and learned count). Returns the number of FDB entries.
fn drop_port_entries(maps: &Maps, ifindex: u32) -> Result<usize> {
    let entries = fdb::Fdb::open(maps)?.remove_port(ifindex)?;
    let _ = maps.ports()?.remove(ifindex);
    let _ = maps.port_state()?.remove(&ifindex);
    let _ = maps.port_learned()?.remove(&ifindex);
    let _ = maps.rate_limits()?.remove(&ifindex);
    Ok(entries)
}

/// A step of [`ensure_reporting`] that is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The maps are loaded, pinned and filled; no program is attached yet.
    MapsFilled,
    /// The programs of port N (in `Datapath::ports` order) are attached.
    PortAttached(usize),
}

/// Makes the datapath match: programs of its mode attached to every port,
/// the other modes' programs detached, maps filled. New links are attached
/// before old ones go, so switching modes keeps forwarding.
pub async fn ensure(handle: &Handle, dp: &Datapath) -> Result<()> {
    ensure_reporting(handle, dp, |_| Ok(())).await
}

/// [`ensure()`], telling `step_done` after each step; an error from it stops
/// `ensure` there (`up`'s fault points, see `ops::fault`).
pub async fn ensure_reporting(
    handle: &Handle,
    dp: &Datapath,
    mut step_done: impl FnMut(Step) -> Result<()>,
) -> Result<()> {
    let policing = isolates(&dp.policy);
    if dp.mode == Mode::Bridge && !policing {
        // Detach port by port first: that restores the containers' offloads
        // after xdp mode and removes clsact filters, which no pin holds.
        let dir = pin_dir(&dp.name);
        for port in &dp.ports {
            for hook in Hook::per_port() {
                hooks::detach(&dir, port, hook)?;
            }
        }
        return remove(&dp.name);
    }
    ensure_bpffs()?;
    let dir = pin_dir(&dp.name);
    // Pinned maps hold the FDB: only root may read or change them.
    for hook in Hook::per_port() {
        let hook_dir = hook.dir(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&hook_dir)
            .with_context(|| format!("creating {}", hook_dir.display()))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;

    let wanted = programs_wanted(dp);
    let sizes = object::MapSizes::new(dp.fdb_size, dp.learning, dp.overlay)?;
    let mut ebpf = object::load(Some(&dir), sizes, &wanted)?;
    let bridge = netlink::link_by_name(handle, &dp.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing", dp.bridge))?;

    let ports = port_indexes(dp)?;
    let maps = Maps::open(&dir)?;
    forget_vanished_ports(&maps)?;
    let config = DatapathConfig {
        bridge_mac: bridge.mac.map(|m| m.0).unwrap_or_default(),
        learning: 1,
        ageing_ns: dp.ageing_s * 1_000_000_000,
        netkit: u8::from(dp.mode == Mode::Netkit),
        ..Default::default()
    };
    fill_maps(&maps, config, dp.learn_limit, &ports)?;
    // In force before any program attaches: a new port's container is
    // never reachable where its policy says it is not.
    install_policy(&maps, dp, &ports)?;
    // Pinned last: pinned programs say the datapath is running (see
    // `is_running`), and ports may join it.
    object::pin_programs(&mut ebpf, &dir, &wanted, true)?;
    let mut programs =
        Programs::pinned(&dir, &wanted)?.context("the programs just pinned are not there")?;
    step_done(Step::MapsFilled)?;

    if dp.mode == Mode::Tc && dp.tc == hooks::TcMethod::Tcx {
        info!(
            "{}: the tc programs attach as tcx links ({}=tcx; Linux 6.6+), one RCU grace period \
             per port",
            dp.name,
            hooks::TC_METHOD_ENV
        );
    }
    attach_hooks(handle, &mut programs, dp, &ports, step_done).await?;
    info!("{}: datapath {} on {} ports", dp.name, dp.mode, ports.len());
    Ok(())
}

/// Puts a changed policy in force in a running datapath: the maps (see
/// `policy::install`), then the hooks the policy needs, with the programs
/// pinned when the datapath was made. Nothing is loaded or verified but,
/// for the first policy that isolates a container, the policy's own
/// program, so a change is in force in milliseconds, not after the
/// verifier has gone through every program again. A datapath with no
/// programs pinned (bridge mode without a policy until now), and bridge
/// mode losing its last policy (its programs go), go through [`ensure()`].
pub async fn enforce_policy(handle: &Handle, dp: &Datapath) -> Result<()> {
    let dir = pin_dir(&dp.name);
    let running = !Programs::pinned_names(&dir).is_empty();
    if !running || (dp.mode == Mode::Bridge && !isolates(&dp.policy)) {
        return ensure(handle, dp).await;
    }
    let needed = programs_wanted(dp);
    object::load_missing(&dir, &needed)?;
    let mut programs =
        Programs::pinned(&dir, &needed)?.context("the programs just pinned are not there")?;
    let ports = port_indexes(dp)?;
    let maps = Maps::open(&dir)?;
    // Before the hooks: a policy-only hook that attaches finds its rules.
    install_policy(&maps, dp, &ports)?;
    // Hooks already there with these programs are left as they are (a
    // query each, no attach): most changes only needed the maps.
    attach_hooks(handle, &mut programs, dp, &ports, |_| Ok(())).await
}

/// Puts `dp`'s compiled policy in force in the maps alone, for a change
/// that isolates no other container here: the overlay's other nodes and
/// their containers changed, so the same policies allow other remote
/// addresses. (Whether a container is isolated depends on the policies
/// that select it, never on a peer, so the hooks stay as they are.)
pub fn refresh_policy(dp: &Datapath) -> Result<()> {
    if dp.mode == Mode::Bridge && !isolates(&dp.policy) {
        return Ok(()); // no programs, and nothing to enforce
    }
    // A port that vanished (`port del` of another one runs this) has no
    // traffic to judge; its entries went with it.
    let present: Vec<(&Port, u32)> = dp
        .ports
        .iter()
        .filter_map(|port| Some((port, ifindex_of(port).ok()?)))
        .collect();
    let maps = Maps::open(&pin_dir(&dp.name))?;
    install_policy(&maps, dp, &present)
}

/// Each port of `dp` with the ifindex of its host veth (in the caller's
/// network namespace); every port must be there.
fn port_indexes(dp: &Datapath) -> Result<Vec<(&Port, u32)>> {
    dp.ports
        .iter()
        .map(|port| {
            let ifindex = ifindex_of(port).with_context(|| {
                format!(
                    "{}: port {} is missing (run `netpath status` to see which ports exist)",
                    dp.name, port.name
                )
            })?;
            Ok((port, ifindex))
        })
        .collect()
}

fn ifindex_of(port: &Port) -> nix::Result<u32> {
    nix::net::if_::if_nametoindex(port.name.as_str())
}

/// Attaches the hooks of `dp`'s mode and policy to every port, new links
/// before old ones go, then detaches every other hook and removes the
/// links of ports that left.
async fn attach_hooks(
    handle: &Handle,
    programs: &mut Programs,
    dp: &Datapath,
    ports: &[(&Port, u32)],
    mut step_done: impl FnMut(Step) -> Result<()>,
) -> Result<()> {
    let dir = pin_dir(&dp.name);
    // Bridge mode with a policy has the policy's programs alone.
    let isolating = isolates(&dp.policy);
    let wanted: Vec<Vec<Hook>> = ports
        .iter()
        .map(|(port, _)| Hook::for_port(dp.mode, isolating, port))
        .collect();
    for (n, ((port, ifindex), port_hooks)) in ports.iter().zip(&wanted).enumerate() {
        for &hook in port_hooks {
            hooks::attach(handle, programs, &dir, port, *ifindex, hook, dp.tc).await?;
        }
        step_done(Step::PortAttached(n))?;
    }
    for ((port, _), wanted) in ports.iter().zip(&wanted) {
        for hook in Hook::per_port().filter(|h| !wanted.contains(h)) {
            hooks::detach(&dir, port, hook)?;
        }
    }
    let names: HashSet<String> = ports.iter().map(|(p, _)| p.name.clone()).collect();
    hooks::remove_stale(&dir, &names)
}

/// The programs of the hooks `dp`'s ports have in its mode, with its
/// policy and its containers' rate limits, and the judging variants of
/// those that have one while a policy isolates a container: the ones its
/// ports need.
fn programs_needed(dp: &Datapath) -> Vec<&'static str> {
    let limited = dp.ports.iter().any(|p| p.bandwidth.limits_ingress());
    let isolating = isolates(&dp.policy);
    object::with_policy_variants(
        &hooks::programs_of(&Hook::for_mode(dp.mode, isolating || limited)),
        isolating,
    )
}

/// The programs `dp` loads: its ports' (see [`programs_needed`]), and the
/// decap (vxlan device and underlay) and flooding programs of an overlay
/// it is on (see `overlay::join`), with the decap program's judging
/// variant.
fn programs_wanted(dp: &Datapath) -> Vec<&'static str> {
    let mut wanted = programs_needed(dp);
    let pinned = Programs::pinned_names(&pin_dir(&dp.name));
    let overlay: Vec<&str> = overlay::programs(true)
        .into_iter()
        .filter(|name| pinned.contains(name))
        .collect();
    wanted.extend(object::with_policy_variants(&overlay, isolates(&dp.policy)));
    wanted
}

/// Whether any rule isolates a container (an empty policy restricts
/// nothing, and bridge mode can carry it).
pub fn isolates(rules: &[EndpointRules]) -> bool {
    rules
        .iter()
        .any(|r| r.ingress.is_some() || r.egress.is_some())
}

/// Puts the datapath's compiled policy in force (see `policy::install`).
fn install_policy(maps: &Maps, dp: &Datapath, ports: &[(&Port, u32)]) -> Result<()> {
    let port_of = |address: IpAddr| {
        ports
            .iter()
            .find(|(port, _)| port.addresses.contains(&address))
            .map(|(_, ifindex)| *ifindex)
    };
    let tables = policy::install(maps, &dp.policy, port_of)
        .with_context(|| format!("{}: putting its network policies in force", dp.name))?;
    let (containers, peers, ports) = tables.sizes();
    if containers > 0 {
        info!(
            "{}: network policy isolates {containers} container addresses ({peers} peer prefixes, \
             {ports} port prefixes)",
            dp.name
        );
    }
    Ok(())
}

fn fill_maps(
    maps: &Maps,
    config: DatapathConfig,
    learn_limit: u32,
    ports: &[(&Port, u32)],
) -> Result<()> {
    let mut config_map = maps.config()?;
    // A `netpath trace` running meanwhile keeps its frames coming, and an
    // overlay stays joined (its settings are the overlay's, see `overlay`).
    let running = config_map.get(&0, 0).unwrap_or_default();
    config_map
        .set(
            0,
            DatapathConfig {
                trace_until_ns: running.trace_until_ns,
                overlay: running.overlay,
                ..config
            },
            0,
        )
        .context("writing map CONFIG")?;

    let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    for (port, ifindex) in ports {
        fill_port(maps, learn_limit, port, *ifindex, cpus)?;
    }
    Ok(())
}

/// One port's entries: in the devmap, its learned count (kept if there),
/// its policy (its counters kept if there), its container's static FDB entry.
fn fill_port(maps: &Maps, learn_limit: u32, port: &Port, ifindex: u32, cpus: usize) -> Result<()> {
    maps.ports()?
        .insert(ifindex, ifindex, None, 0)
        .with_context(|| format!("adding port {} (ifindex {ifindex}) to map PORTS", port.name))?;
    // NOEXIST: a port that is already there keeps its count.
    match maps.port_learned()?.insert(ifindex, 0, BPF_NOEXIST) {
        Ok(()) => {}
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("adding port {} to map PORT_LEARNED", port.name));
        }
    }
    let mut port_state = maps.port_state()?;
    let policy = policy_of(port, learn_limit)?;
    let mut states: Vec<PortState> = match port_state.get(&ifindex, 0) {
        Ok(existing) => existing.iter().copied().collect(),
        Err(_) => vec![PortState::default(); cpus],
    };
    if states.len() != cpus || states.iter().any(|s| s.policy != policy) {
        states.iter_mut().for_each(|s| s.policy = policy);
        port_state
            .insert(ifindex, PerCpuValues::try_from(states)?, 0)
            .with_context(|| {
                format!(
                    "adding port {} (ifindex {ifindex}) to map PORT_STATE",
                    port.name
                )
            })?;
    }
    fill_rates(maps, port, ifindex)?;
    fdb::Fdb::open(maps)?.add_static(port.mac, ifindex)
}

/// The port's rate limits, in force before its static FDB entry sends it
/// anything; the programs look them up once CONFIG says some port has
/// one (never unset: a lookup that misses costs little).
fn fill_rates(maps: &Maps, port: &Port, ifindex: u32) -> Result<()> {
    let mut limits = maps.rate_limits()?;
    if !port.bandwidth.limits() {
        let _ = limits.remove(&ifindex);
        return Ok(());
    }
    limits
        .insert(ifindex, port.bandwidth.rates(), 0)
        .with_context(|| {
            format!(
                "adding port {} (ifindex {ifindex}) to map RATE_LIMITS",
                port.name
            )
        })?;
    let mut config = maps.config()?;
    let mut value = config.get(&0, 0).context("reading map CONFIG")?;
    if value.rate_limits == 0 {
        value.rate_limits = 1;
        config.set(0, value, 0).context("writing map CONFIG")?;
    }
    info!("{}: rate limits {}", port.name, port.bandwidth.describe());
    Ok(())
}

/// Adds one port to a running datapath: its map entries, and its links
/// (unless [`attach_early`] attached them), with the programs pinned when
/// the datapath was made, so no object is loaded or verified and no other
/// port is looked at. A datapath that is not running yet (or whose
/// programs are not pinned) is made with [`ensure()`] over `dp`'s ports,
/// which must include `port`.
pub async fn add_port(
    handle: &Handle,
    dp: &Datapath,
    port: &Port,
    ifindex: u32,
    attached: bool,
) -> Result<()> {
    if dp.mode == Mode::Bridge {
        return Ok(());
    }
    let dir = pin_dir(&dp.name);
    let programs = if attached {
        None
    } else {
        match Programs::pinned(&dir, &programs_needed(dp))? {
            Some(programs) => Some(programs),
            None => return ensure(handle, dp).await,
        }
    };
    let maps = Maps::open(&dir)?;
    // The kernel may hand a vanished port's ifindex to this one: it starts
    // with none of that port's counters or learned MACs.
    if maps.port_state()?.get(&ifindex, 0).is_ok() {
        drop_port_entries(&maps, ifindex)?;
    }
    let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    fill_port(&maps, dp.learn_limit, port, ifindex, cpus)?;
    let wanted = Hook::for_port(dp.mode, isolates(&dp.policy), port);
    if let Some(mut programs) = programs {
        for hook in wanted {
            hooks::attach(handle, &mut programs, &dir, port, ifindex, hook, dp.tc).await?;
        }
    } else {
        // What attach_early could not know: the hook of the port's own
        // ingress rate, whose program a datapath loads with the first
        // container that has one (under the network's lock, as here).
        let early = Hook::for_mode(dp.mode, isolates(&dp.policy));
        let late: Vec<Hook> = wanted.into_iter().filter(|h| !early.contains(h)).collect();
        if !late.is_empty() {
            let needed = hooks::programs_of(&late);
            object::load_missing(&dir, &needed)?;
            let mut programs = Programs::pinned(&dir, &needed)?
                .context("the programs just pinned are not there")?;
            for hook in late {
                hooks::attach(handle, &mut programs, &dir, port, ifindex, hook, dp.tc).await?;
            }
        }
    }
    info!("{}: port {} joined ({} mode)", dp.name, port.name, dp.mode);
    Ok(())
}

/// Whether the datapath `name` is running: its programs pinned, which its
/// making does last, after its maps are pinned and filled.
pub fn is_running(name: &str) -> bool {
    !Programs::pinned_names(&pin_dir(name)).is_empty()
}

/// Makes a datapath that does not exist, with no port yet: its object
/// loaded and verified, its maps and programs pinned, for the ports to join
/// with [`attach_early`] and [`add_port`]. One that exists (running, or made
/// by an older netpath that did not pin its programs, which [`add_port`]
/// completes) is left alone. The caller makes sure nobody else loads it at
/// the same time.
pub async fn load_if_absent(handle: &Handle, dp: &Datapath) -> Result<bool> {
    let made = pin_dir(&dp.name)
        .join(netpath_common::maps::CONFIG)
        .exists();
    if dp.mode == Mode::Bridge || made {
        return Ok(false);
    }
    let empty = Datapath {
        ports: Vec::new(),
        ..dp.clone()
    };
    ensure(handle, &empty).await?;
    Ok(true)
}

/// Attaches the programs of a running datapath to a new port before its
/// map entries exist, so that the attach overlaps the allocation of the
/// port's addresses and needs no lock. Until [`add_port`] fills its
/// entries, the port's frames go to the bridge, which learns nothing from
/// it. Returns whether anything was attached: a datapath that is not
/// running yet is made by `add_port`.
pub async fn attach_early(
    handle: &Handle,
    dp: &Datapath,
    port: &Port,
    ifindex: u32,
) -> Result<bool> {
    let dir = pin_dir(&dp.name);
    let Some(mut programs) = (dp.mode != Mode::Bridge)
        .then(|| Programs::pinned(&dir, &programs_needed(dp)))
        .transpose()?
        .flatten()
    else {
        return Ok(false);
    };
    for hook in Hook::for_mode(dp.mode, isolates(&dp.policy)) {
        hooks::attach(handle, &mut programs, &dir, port, ifindex, hook, dp.tc).await?;
    }
    Ok(true)
}

/// What the programs enforce for `port`.
fn policy_of(port: &Port, learn_limit: u32) -> Result<PortPolicy> {
    let own = port.addresses.iter().map(|ip| IpNet::from(*ip));
    let policy = source_policy(port.mac, port.source_check, own)
        .map_err(|e| anyhow::anyhow!("port {}: {e}", port.name))?;
    Ok(PortPolicy {
        learn_limit,
        ..policy
    })
}

/// What carries container-to-container traffic in each mode, for `status`.
pub fn describe(mode: Mode) -> &'static str {
    match mode {
        Mode::Tc => {
            "tc ingress + bpf_redirect_peer on every host-side veth; carries all unicast between containers, GSO packets included"
        }
        Mode::Xdp => {
            "XDP + devmap redirect; carries all unicast between containers, with TSO and tx checksum offload off in the containers (XDP on veth cannot pass GSO packets or pending checksums), so TCP costs more CPU than in tc mode"
        }
        Mode::Netkit => {
            "netkit pairs, the tc program on each pair's peer hook (as the container transmits) + bpf_redirect out of the destination's primary device; carries all unicast between containers, GSO packets included"
        }
        Mode::Bridge => "no programs: the Linux bridge forwards everything",
    }
}

/// The addresses the datapath's ports send from (their containers' own,
/// as the source check holds them), read from its pins: an IPAM whose
/// record was lost must not hand them out again. Empty without pins.
pub fn held_addresses(datapath: &str) -> Result<HashSet<IpAddr>> {
    let mut held = HashSet::new();
    // No pins, or pins still being made by a concurrent first ADD: no
    // port holds an address yet.
    let Ok(maps) = maps(datapath) else {
        return Ok(held);
    };
    let Ok(ports) = maps.port_state() else {
        return Ok(held);
    };
    for entry in ports.iter() {
        let (_, per_cpu) =
            entry.with_context(|| format!("reading map PORT_STATE of {datapath}"))?;
        // The loader writes one policy to every CPU's copy.
        let Some(policy) = per_cpu.iter().next().map(|state| state.policy) else {
            continue;
        };
        let ipv4 = policy.ipv4.iter().filter_map(|s| s.prefix());
        let ipv6 = policy.ipv6.iter().filter_map(|s| s.prefix());
        held.extend(
            ipv4.filter(|(_, len)| *len == 32)
                .map(|(a, _)| IpAddr::from(a)),
        );
        held.extend(
            ipv6.filter(|(_, len)| *len == 128)
                .map(|(a, _)| IpAddr::from(a)),
        );
    }
    Ok(held)
}

/// The datapath's config as its pins hold it, or None if it has no pins.
pub fn pinned_config(datapath: &str) -> Result<Option<DatapathConfig>> {
    if !pin_dir(datapath).exists() {
        return Ok(None);
    }
    maps(datapath)?.current_config().map(Some)
}

/// Detaches everything and removes the datapath's pins.
pub fn remove(datapath: &str) -> Result<()> {
    let dir = pin_dir(datapath);
    if !dir.exists() {
        return Ok(());
    }
    hooks::remove_stale(&dir, &HashSet::new())?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing pins in {}", dir.display()))
}

/// Deletes the FDB entry for `mac`, static or learned; returns false if
/// there was none. Frames to it then go through the bridge until the
/// entry is back (`fdb add`, or learned again on a port without a source
/// check; a port's own container MAC is never learned).
pub fn forget_mac(datapath: &str, mac: Mac) -> Result<bool> {
    fdb::Fdb::open(&reconcile(datapath)?)?.remove(mac)
}

/// Removes a port that is leaving the datapath from the maps (`ifindex`:
/// its device's, if it had one) and unpins its links. Called after the
/// device is deleted, unpinning is cheap: the kernel detached the links
/// with the device, so none waits for an RCU grace period. A port whose device
/// is gone already (namespace deleted) loses its entries as every vanished
/// port does, see [`reconcile`].
pub fn forget_port(datapath: &str, port: &Port, ifindex: Option<u32>) -> Result<()> {
    unpin_port(datapath, port)?;
    forget_port_entries(datapath, ifindex)
}

/// Detaches and unpins a leaving port's links; a datapath or a port that
/// is gone already is no error. Touches no map.
pub fn unpin_port(datapath: &str, port: &Port) -> Result<()> {
    let dir = pin_dir(datapath);
    if !dir.exists() {
        return Ok(());
    }
    for hook in Hook::per_port() {
        hooks::detach(&dir, port, hook)?;
    }
    Ok(())
}

/// Removes a leaving port's map entries; a port whose device is gone
/// already (`ifindex` None) is found by sweeping every vanished port's.
pub fn forget_port_entries(datapath: &str, ifindex: Option<u32>) -> Result<()> {
    if !pin_dir(datapath).exists() {
        return Ok(());
    }
    match ifindex {
        Some(ifindex) => drop_port_entries(&Maps::open(&pin_dir(datapath))?, ifindex).map(drop),
        None => reconcile(datapath).map(drop),
    }
}

/// The FDB size the running datapath `datapath` was made with (its static
/// and remote FDBs hold as many entries).
pub fn fdb_size(datapath: &str) -> Result<u32> {
    Ok(object::MapSizes::pinned(&pin_dir(datapath))?.fdb)
}

/// Gives every port of a running datapath this binary's programs, each
/// replaced in place and atomically (see [`hooks::attach`]): a datapath
/// made by an older netpath is upgraded under traffic, without a frame
/// going astray. Pins of another map layout are refused (see
/// [`maps::check_layout`]). `force`: replace programs with the same
/// instructions too (a freshly loaded copy). Returns the number of ports.
pub async fn upgrade(handle: &Handle, datapath: &str, force: bool) -> Result<usize> {
    let dir = pin_dir(datapath);
    let live = reconcile(datapath)?;
    // The programs it has, this binary's instead.
    let names = Programs::pinned_names(&dir);
    let mut ebpf = object::load(Some(&dir), object::MapSizes::pinned(&dir)?, &names)?;
    object::pin_programs(&mut ebpf, &dir, &names, false)?;
    let mut programs =
        Programs::pinned(&dir, &names)?.context("the programs just pinned are not there")?;
    let ports: Vec<u32> = live
        .ports()?
        .iter()
        .filter_map(Result::ok)
        .map(|(ifindex, _)| ifindex)
        .collect();
    for ifindex in &ports {
        let name = nix::net::if_::if_indextoname(*ifindex)
            .with_context(|| format!("port {ifindex} of datapath {datapath} has no name"))?;
        hooks::upgrade(
            handle,
            &mut programs,
            &dir,
            &name.to_string_lossy(),
            *ifindex,
            force,
        )
        .await?;
    }
    // The decap program on the node's vxlan device, on an overlay.
    let overlay = live.current_config()?.overlay;
    if overlay.vni != 0 {
        let device = nix::net::if_::if_indextoname(overlay.vxlan_ifindex).with_context(|| {
            format!(
                "the vxlan device (ifindex {}) of datapath {datapath} has no name",
                overlay.vxlan_ifindex
            )
        })?;
        hooks::upgrade_vxlan(
            &mut programs,
            &dir,
            &device.to_string_lossy(),
            overlay.vni,
            force,
        )?;
        hooks::upgrade_underlay(&mut programs, &dir, force)?;
    }
    info!(
        "{datapath}: {} ports run this netpath's programs",
        ports.len()
    );
    Ok(ports.len())
}

/// The port `host` forwards on the fast path: the forwarding program of
/// `mode` is on it (as the kernel reports it: tcx link, clsact filter or
/// XDP), and `mac`, its container's, has its static FDB entry pointing at it.
pub async fn check_port(
    handle: &Handle,
    datapath: &str,
    mode: Mode,
    host: &netlink::Link,
    mac: Mac,
) -> Result<()> {
    let wanted = match mode {
        Mode::Bridge => return Ok(()),
        Mode::Xdp => vec![format!("xdp:{}", programs::XDP_FORWARD)],
        Mode::Tc => vec![
            format!("tc:{}", programs::TC_FORWARD),
            format!("tc-clsact:{}", programs::TC_FORWARD),
        ],
        Mode::Netkit => vec![format!("netkit:{}", programs::TC_FORWARD)],
    };
    let attached = hooks::programs_on(handle, &host.name, host.index, host.xdp_prog_id).await?;
    ensure!(
        attached.iter().any(|p| wanted.contains(p)),
        "port {} has no {mode} forwarding program attached (it has {attached:?})",
        host.name
    );
    let fdb = fdb::Fdb::open(&maps(datapath)?)?;
    match fdb.static_port(mac) {
        Some(ifindex) if ifindex == host.index => Ok(()),
        other => bail!(
            "the datapath's FDB sends {mac} to {}, not to port {} (ifindex {})",
            other.map_or("the bridge".to_owned(), |i| format!("ifindex {i}")),
            host.name,
            host.index
        ),
    }
}

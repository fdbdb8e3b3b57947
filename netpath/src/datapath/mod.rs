//! The BPF datapath of a set of ports sharing one bridge (a topology, or a
//! CNI network): the object and its pins, the hooks, the typed maps, the
//! FDB and the counters, and `ensure`, which makes the kernel match.

pub mod counters;
pub mod fdb;
pub mod hooks;
pub mod maps;
pub mod memlock;
pub mod object;

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::PathBuf,
};

use anyhow::{Context, Result};
use aya::{
    maps::{PerCpuValues},
    util::nr_cpus,
};
use log::info;
use netpath_common::{DatapathConfig, PortState};
use rtnetlink::Handle;

use self::{
    hooks::Hook,
    maps::Maps,
    object::{ensure_bpffs, pin_dir},
};
use crate::{
    host::netlink,
    model::{Mac, Mode, naming},
};

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
    pub ports: Vec<Port>,
}

/// The pinned maps of a running datapath.
pub fn maps(datapath: &str) -> Result<Maps> {
    Maps::open(&pin_dir(datapath)).with_context(|| {
        let owner = match naming::cni_bridge_of(datapath) {
            Some(bridge) => format!("the CNI network on bridge {bridge}"),
            None => format!("topology {datapath}"),
        };
        format!("is {owner} up in xdp or tc mode?")
    })
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

/// [`ensure`], telling `step_done` after each step; an error from it stops
/// `ensure` there (`up`'s fault points, see `ops::fault`).
pub async fn ensure_reporting(
    handle: &Handle,
    dp: &Datapath,
    mut step_done: impl FnMut(Step) -> Result<()>,
) -> Result<()> {
    if dp.mode == Mode::Bridge {
        // Detach port by port first: that restores the containers' offloads
        // after xdp mode and removes clsact filters, which no pin holds.
        let dir = pin_dir(&dp.name);
        for port in &dp.ports {
            for hook in Hook::ALL {
                hooks::detach(&dir, port, hook)?;
            }
        }
        return remove(&dp.name);
    }
    ensure_bpffs()?;
    let dir = pin_dir(&dp.name);
    // Pinned maps hold the FDB: only root may read or change them.
    for hook in Hook::ALL {
        let hook_dir = hook.dir(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&hook_dir)
            .with_context(|| format!("creating {}", hook_dir.display()))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;

    let mut ebpf = object::load(Some(&dir), dp.fdb_size)?;
    let bridge = netlink::link_by_name(handle, &dp.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing", dp.bridge))?;

    let mut ports = Vec::new();
    for port in &dp.ports {
        let link = netlink::link_by_name(handle, &port.name)
            .await?
            .with_context(|| format!("port {} is missing", port.name))?;
        ports.push((port, link.index));
    }
    let config = DatapathConfig {
        bridge_mac: bridge.mac.map(|m| m.0).unwrap_or_default(),
        learning: 1,
        ageing_ns: dp.ageing_s * 1_000_000_000,
        ..Default::default()
    };
    fill_maps(&Maps::open(&dir)?, config, &ports)?;
    step_done(Step::MapsFilled)?;

    if dp.mode == Mode::Tc && hooks::TcMethod::for_this_kernel() == hooks::TcMethod::Clsact {
        info!(
            "{}: this kernel has no tcx (Linux 6.6): the tc programs attach through a clsact qdisc and \
             cls_bpf filters instead, with the same forwarding",
            dp.name
        );
    }
    let wanted = Hook::for_mode(dp.mode);
    for (n, (port, ifindex)) in ports.iter().enumerate() {
        for hook in wanted {
            hooks::attach(handle, &mut ebpf, &dir, port, *ifindex, *hook).await?;
        }
        step_done(Step::PortAttached(n))?;
    }
    for (port, _) in &ports {
        for hook in Hook::ALL.iter().filter(|h| !wanted.contains(h)) {
            hooks::detach(&dir, port, *hook)?;
        }
    }
    let names: HashSet<String> = ports.iter().map(|(p, _)| p.name.clone()).collect();
    hooks::remove_stale(&dir, &names)?;
    info!("{}: datapath {} on {} ports", dp.name, dp.mode, ports.len());
    Ok(())
}

fn fill_maps(maps: &Maps, config: DatapathConfig, ports: &[(&Port, u32)]) -> Result<()> {
    let mut config_map = maps.config()?;
    // A `netpath trace` running meanwhile keeps its frames coming.
    let trace_until_ns = config_map.get(&0, 0).map(|c| c.trace_until_ns).unwrap_or(0);
    config_map.set(0, DatapathConfig { trace_until_ns, ..config }, 0).context("writing map CONFIG")?;

    let mut devmap = maps.ports()?;
    for (_, ifindex) in ports {
        devmap.insert(*ifindex, *ifindex, None, 0).with_context(|| format!("adding port {ifindex} to map PORTS"))?;
    }
    let mut port_state = maps.port_state()?;
    let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    for (c, ifindex) in ports {
        // Keep the counters of a port that is already there.
        let mut states: Vec<PortState> = match port_state.get(ifindex, 0) {
            Ok(existing) => existing.iter().copied().collect(),
            Err(_) => vec![PortState::default(); cpus],
        };
        if states.iter().all(|s| s.mac == c.mac.0) && states.len() == cpus {
            continue;
        }
        states.iter_mut().for_each(|s| s.mac = c.mac.0);
        port_state
            .insert(ifindex, PerCpuValues::try_from(states)?, 0)
            .with_context(|| format!("adding port {ifindex} to map PORT_STATE"))?;
    }
    let mut table = fdb::Fdb::open(maps)?;
    for (c, ifindex) in ports {
        table.add_static(c.mac, *ifindex)?;
    }
    Ok(())
}

/// What carries container-to-container traffic in each mode, for `status`.
pub fn describe(mode: Mode) -> &'static str {
    match mode {
        Mode::Tc => "tc ingress + bpf_redirect_peer on every host-side veth; carries all unicast between containers, GSO packets included",
        Mode::Xdp => "XDP + devmap redirect; carries all unicast between containers, with TSO and tx checksum offload off in the containers (XDP on veth cannot pass GSO packets or pending checksums), so TCP costs more CPU than in tc mode",
        Mode::Bridge => "no programs: the Linux bridge forwards everything",
    }
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

/// Deletes the FDB entry for `mac`; returns false if there was none. If it
/// was a port's own container MAC, the port forgets it too: the programs skip
/// learning a port's own MAC, so otherwise it could never be learned again.
pub fn forget_mac(datapath: &str, mac: Mac) -> Result<bool> {
    let maps = maps(datapath)?;
    if !fdb::Fdb::open(&maps)?.remove(mac)? {
        return Ok(false);
    }
    let mut port_state = maps.port_state()?;
    let ports: Vec<(u32, Vec<PortState>)> = port_state
        .iter()
        .filter_map(Result::ok)
        .map(|(ifindex, states)| (ifindex, states.iter().copied().collect()))
        .collect();
    for (ifindex, mut states) in ports {
        if states.iter().any(|s| s.mac == mac.0) {
            states.iter_mut().for_each(|s| s.mac = [0; 6]);
            port_state
                .insert(ifindex, PerCpuValues::try_from(states)?, 0)
                .with_context(|| format!("updating port {ifindex} in map PORT_STATE"))?;
        }
    }
    Ok(true)
}

/// Removes a port that is leaving the datapath (or has vanished) from the
/// maps, and unpins its links.
pub fn forget_port(datapath: &str, port: &Port, ifindex: Option<u32>) -> Result<()> {
    let dir = pin_dir(datapath);
    if !dir.exists() {
        return Ok(());
    }
    for hook in Hook::ALL {
        hooks::detach(&dir, port, hook)?;
    }
    let Some(ifindex) = ifindex else { return Ok(()) };
    let maps = Maps::open(&dir)?;
    fdb::Fdb::open(&maps)?.remove_port(ifindex)?;
    let _ = maps.ports()?.remove(ifindex);
    let _ = maps.port_state()?.remove(&ifindex);
    Ok(())
}

/// Ids of the programs attached to the datapath's ports (to read their logs).
pub fn attached_program_ids(datapath: &str) -> Result<Vec<u32>> {
    hooks::attached_program_ids(&pin_dir(datapath))
}

//! Loading the BPF programs, attaching them to the ports of a topology, and
//! pinning maps and links under bpffs so the datapath outlives the loader.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, DevMapHash, MapData, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::{FdLink, PinnedLink}},
    util::nr_cpus,
};
use log::{debug, info};
use netpath_common::{DatapathConfig, PortState, maps, programs};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use rtnetlink::Handle;

use crate::{
    ethtool, fdb, netlink, netns,
    spec::{ContainerSpec, Mac, Mode, TopologySpec, port_name},
    topology::CONTAINER_IFNAME,
};

/// The BPF object built by `cargo xtask build` from netpath-ebpf.
pub static OBJECT: &[u8] = include_bytes_aligned!(env!("NETPATH_BPF_OBJECT"));

pub const BPFFS: &str = "/sys/fs/bpf";
const MAP_NAMES: [&str; 5] = [maps::FDB, maps::PORTS, maps::PORT_STATE, maps::CONFIG, maps::TRACE];

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
/// FDB and one pin directory (a topology, or a CNI network).
#[derive(Clone, Debug)]
pub struct Datapath {
    /// Key of the pin directory.
    pub name: String,
    pub bridge: String,
    pub mode: Mode,
    pub ageing_s: u64,
    pub fdb_size: u32,
    pub ports: Vec<Port>,
}

impl From<&TopologySpec> for Datapath {
    fn from(spec: &TopologySpec) -> Self {
        Datapath {
            name: spec.name.clone(),
            bridge: spec.bridge_name(),
            mode: spec.mode,
            ageing_s: spec.ageing_s,
            fdb_size: spec.fdb_size,
            ports: spec.containers.iter().map(|c| Port::of_container(spec, c)).collect(),
        }
    }
}

impl Port {
    /// A topology's container: host veth and namespace both `NAME-CONTAINER`.
    pub fn of_container(spec: &TopologySpec, c: &ContainerSpec) -> Self {
        let name = port_name(&spec.name, &c.name);
        Port { netns: netns::path(&name), name, ifname: CONTAINER_IFNAME.into(), mac: c.mac }
    }
}

/// Where a topology's maps and links are pinned.
pub fn pin_dir(topology: &str) -> PathBuf {
    Path::new(BPFFS).join("netpath").join(topology)
}

fn links_dir(topology: &str) -> PathBuf {
    pin_dir(topology).join("links")
}

/// The hooks netpath attaches, one pinned link each per port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// XDP forwarding program on the host-side veth.
    Xdp,
    /// XDP_PASS program on the container-side veth, so redirects into it land.
    XdpPeer,
    /// tc ingress forwarding program on the host-side veth.
    Tc,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::Xdp, Hook::XdpPeer, Hook::Tc];

    fn for_mode(mode: Mode) -> &'static [Hook] {
        match mode {
            Mode::Xdp => &[Hook::XdpPeer, Hook::Xdp],
            Mode::Tc => &[Hook::Tc],
            Mode::Bridge => &[],
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::XdpPeer => "xdp-peer",
            Hook::Tc => "tc",
        }
    }

    /// bpffs reserves names with dots, so each hook gets a directory.
    fn pin_path(self, topology: &str, port: &str) -> PathBuf {
        links_dir(topology).join(self.suffix()).join(port)
    }
}

/// Mounts bpffs on /sys/fs/bpf if it is not there yet.
fn ensure_bpffs() -> Result<()> {
    let mounted = statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if !mounted {
        fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
        nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs on {BPFFS}"))?;
    }
    Ok(())
}

/// Loads the object and every program in it, with maps created fresh
/// (`pins` = None) or opened from / pinned to the given directory.
pub fn load(pins: Option<&Path>, fdb_size: u32) -> Result<Ebpf> {
    crate::memlock::raise_for_bpf()?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::FDB, fdb_size);
    let paths: Vec<(&str, PathBuf)> = match pins {
        Some(dir) => MAP_NAMES.iter().map(|m| (*m, dir.join(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).context("loading the BPF object (maps and relocations)")?;
    for name in [programs::XDP_FORWARD, programs::XDP_PEER] {
        let program: &mut Xdp = program_mut(&mut ebpf, name)?;
        program.load().with_context(|| format!("verifier rejected BPF program {name}"))?;
    }
    let tc: &mut SchedClassifier = program_mut(&mut ebpf, programs::TC_FORWARD)?;
    tc.load().with_context(|| format!("verifier rejected BPF program {}", programs::TC_FORWARD))?;
    Ok(ebpf)
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("BPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("BPF program {name} has an unexpected type"))
}

/// Opens one of a running topology's pinned maps.
pub fn open_map(topology: &str, name: &str) -> Result<MapData> {
    let path = pin_dir(topology).join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is topology {topology} up in xdp or tc mode?)",
            path.display()
        )
    })
}

/// Makes the datapath match: programs of its mode attached to every port,
/// the other modes' programs detached, maps filled. New links are attached
/// before old ones go, so switching modes keeps forwarding.
pub async fn ensure(handle: &Handle, dp: &Datapath) -> Result<()> {
    if dp.mode == Mode::Bridge {
        return remove(&dp.name);
    }
    ensure_bpffs()?;
    let dir = pin_dir(&dp.name);
    // Pinned maps hold the FDB: only root may read or change them.
    for hook in Hook::ALL {
        let hook_dir = links_dir(&dp.name).join(hook.suffix());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&hook_dir)
            .with_context(|| format!("creating {}", hook_dir.display()))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;

    let mut ebpf = load(Some(&dir), dp.fdb_size)?;
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
        trace: 0,
        ageing_ns: dp.ageing_s * 1_000_000_000,
    };
    fill_maps(&mut ebpf, &dp.name, config, &ports)?;

    let wanted = Hook::for_mode(dp.mode);
    for (port, ifindex) in &ports {
        for hook in wanted {
            attach(&mut ebpf, &dp.name, port, *ifindex, *hook)?;
        }
    }
    for (port, _) in &ports {
        for hook in Hook::ALL.iter().filter(|h| !wanted.contains(h)) {
            detach(&dp.name, port, *hook)?;
        }
    }
    let names: HashSet<String> = ports.iter().map(|(p, _)| p.name.clone()).collect();
    remove_stale_links(&dp.name, &names)?;
    info!("{}: datapath {} on {} ports", dp.name, dp.mode, ports.len());
    Ok(())
}

fn fill_maps(ebpf: &mut Ebpf, topology: &str, config: DatapathConfig, ports: &[(&Port, u32)]) -> Result<()> {
    let mut config_map: Array<_, DatapathConfig> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).context("map CONFIG")?)?;
    // A `netpath trace` running meanwhile keeps its frames coming.
    let trace = config_map.get(&0, 0).map(|c| c.trace).unwrap_or(0);
    config_map.set(0, DatapathConfig { trace, ..config }, 0).context("writing map CONFIG")?;

    let mut devmap = DevMapHash::try_from(ebpf.map_mut(maps::PORTS).context("map PORTS")?)?;
    for (_, ifindex) in ports {
        devmap.insert(*ifindex, *ifindex, None, 0).with_context(|| format!("adding port {ifindex} to map PORTS"))?;
    }
    let mut port_state: PerCpuHashMap<_, u32, PortState> =
        PerCpuHashMap::try_from(ebpf.map_mut(maps::PORT_STATE).context("map PORT_STATE")?)?;
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
    let mut table = fdb::Fdb::open(topology)?;
    for (c, ifindex) in ports {
        table.add_static(c.mac, *ifindex)?;
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, datapath: &str, port: &Port, ifindex: u32, hook: Hook) -> Result<()> {
    let name = &port.name;
    let pin = hook.pin_path(datapath, name);
    if pin.exists() {
        debug!("{name}: {} link already pinned", hook.suffix());
        return Ok(());
    }
    let link: FdLink = match hook {
        Hook::Xdp => {
            let program: &mut Xdp = program_mut(ebpf, programs::XDP_FORWARD)?;
            let id = program
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .with_context(|| format!("attaching XDP to {name}"))?;
            program.take_link(id)?.try_into().context("XDP link is not a bpf_link")?
        }
        Hook::XdpPeer => {
            let program: &mut Xdp = program_mut(ebpf, programs::XDP_PEER)?;
            // An ifindex is resolved in the caller's namespace: attach from inside.
            netns::enter_path_and(&port.netns, || {
                let index = nix::net::if_::if_nametoindex(port.ifname.as_str())
                    .with_context(|| format!("no {}", port.ifname))?;
                let id = program.attach_to_if_index(index, XdpMode::Driver)?;
                let link = program.take_link(id)?.try_into().context("XDP link is not a bpf_link")?;
                set_xdp_offloads(&port.ifname, true)?;
                Ok(link)
            })
            .with_context(|| format!("attaching XDP pass to {} in {}", port.ifname, port.netns.display()))?
        }
        Hook::Tc => {
            let program: &mut SchedClassifier = program_mut(ebpf, programs::TC_FORWARD)?;
            let id = program
                .attach(name, TcAttachType::Ingress)
                .with_context(|| format!("attaching tc ingress to {name}"))?;
            program.take_link(id)?.try_into().context("tc link is not a bpf_link (kernel without tcx?)")?
        }
    };
    link.pin(&pin).with_context(|| format!("pinning link {}", pin.display()))?;
    Ok(())
}

/// What XDP redirect between veths needs on the container's `eth0`, run
/// inside its namespace (see netpath-ebpf/FAST-PATH.md):
/// - no transmit checksum offload: a CHECKSUM_PARTIAL frame loses its
///   "checksum pending" mark when XDP redirects it, and the receiver drops it;
/// - GRO, so the receiving end batches the redirected frames into large skbs.
///
/// `enable = false` restores the veth defaults when XDP mode is left.
fn set_xdp_offloads(ifname: &str, enable: bool) -> Result<()> {
    ethtool::set(ifname, ethtool::Offload::TxChecksum, !enable)?;
    ethtool::set(ifname, ethtool::Offload::Gro, enable)
}

/// Unpins (and so detaches) one hook's link of one port, if pinned; leaving
/// XDP, restores the container interface's offloads if it is still there.
fn detach(datapath: &str, port: &Port, hook: Hook) -> Result<()> {
    let pin = hook.pin_path(datapath, &port.name);
    if pin.exists() {
        let link = PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
        link.unpin().with_context(|| format!("unpinning {}", pin.display()))?;
        if hook == Hook::XdpPeer && port.netns.exists() {
            netns::enter_path_and(&port.netns, || set_xdp_offloads(&port.ifname, false))
                .with_context(|| format!("restoring offloads of {} in {}", port.ifname, port.netns.display()))?;
        }
    }
    Ok(())
}

fn remove_stale_links(topology: &str, ports: &HashSet<String>) -> Result<()> {
    for hook in Hook::ALL {
        let Ok(entries) = fs::read_dir(links_dir(topology).join(hook.suffix())) else { continue };
        for entry in entries.flatten() {
            if !ports.contains(entry.file_name().to_string_lossy().as_ref()) {
                fs::remove_file(entry.path()).with_context(|| format!("unpinning {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Names of the BPF programs hooked on a host-side port, as the kernel
/// reports them: `xdp:NAME` and `tc:NAME` (tcx ingress).
pub fn programs_on(port: &str, xdp_prog_id: Option<u32>) -> Vec<String> {
    let mut out: Vec<String> = xdp_prog_id.map(|id| format!("xdp:{}", program_name(id))).into_iter().collect();
    if let Ok((_, programs)) = SchedClassifier::query_tcx(port, TcAttachType::Ingress) {
        out.extend(programs.iter().map(|p| format!("tc:{}", p.name_as_str().unwrap_or("?"))));
    }
    out
}

pub fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("id {id}"))
}

/// What carries container-to-container traffic in each mode, for `status`.
pub fn describe(mode: Mode) -> &'static str {
    match mode {
        Mode::Tc => "tc ingress + bpf_redirect_peer on every host-side veth; carries all unicast between containers, GSO packets included",
        Mode::Xdp => "XDP + devmap redirect; carries all unicast between containers, with TSO and tx checksum offload off in the containers (XDP on veth cannot pass GSO packets or pending checksums), so TCP costs more CPU than in tc mode",
        Mode::Bridge => "no programs: the Linux bridge forwards everything",
    }
}

/// Ids of the programs behind the topology's pinned links (to read their logs).
pub fn attached_program_ids(topology: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for hook in Hook::ALL {
        let Ok(entries) = fs::read_dir(links_dir(topology).join(hook.suffix())) else { continue };
        for entry in entries.flatten() {
            let link = FdLink::from(
                PinnedLink::from_pin(entry.path())
                    .with_context(|| format!("opening pinned link {}", entry.path().display()))?,
            );
            let id = link.info().context("reading link info")?.program_id();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Detaches everything and removes the datapath's pins.
pub fn remove(datapath: &str) -> Result<()> {
    let dir = pin_dir(datapath);
    if !dir.exists() {
        return Ok(());
    }
    remove_stale_links(datapath, &HashSet::new())?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing pins in {}", dir.display()))
}

/// Deletes the FDB entry for `mac`; returns false if there was none. If it
/// was a port's own container MAC, the port forgets it too: the programs skip
/// learning a port's own MAC, so otherwise it could never be learned again.
pub fn forget_mac(topology: &str, mac: Mac) -> Result<bool> {
    if !fdb::Fdb::open(topology)?.remove(mac)? {
        return Ok(false);
    }
    unset_port_mac(topology, mac)?;
    Ok(true)
}

fn unset_port_mac(topology: &str, mac: Mac) -> Result<()> {
    let mut port_state: PerCpuHashMap<_, u32, PortState> =
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(open_map(topology, maps::PORT_STATE)?))?;
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
    Ok(())
}

/// Removes a port that is leaving the datapath (or has vanished) from the
/// maps, and unpins its links.
pub fn forget_port(datapath: &str, port: &Port, ifindex: Option<u32>) -> Result<()> {
    if !pin_dir(datapath).exists() {
        return Ok(());
    }
    for hook in Hook::ALL {
        detach(datapath, port, hook)?;
    }
    let Some(ifindex) = ifindex else { return Ok(()) };
    fdb::Fdb::open(datapath)?.remove_port(ifindex)?;
    let mut devmap = DevMapHash::try_from(aya::maps::Map::DevMapHash(open_map(datapath, maps::PORTS)?))?;
    let _ = devmap.remove(ifindex);
    let mut port_state: PerCpuHashMap<_, u32, PortState> =
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(open_map(datapath, maps::PORT_STATE)?))?;
    let _ = port_state.remove(&ifindex);
    Ok(())
}

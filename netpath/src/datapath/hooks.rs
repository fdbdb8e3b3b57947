//! Where the programs attach: the table of hooks ([`HOOKS`]: program,
//! attach point, how, pin directory, modes), and one pinned link per hook
//! and port (or netpath's own cls_bpf filter, where tc goes through
//! clsact), so the datapath outlives the loader and the next one finds what
//! is attached. A new hook (netkit's primary and peer, say) is a row, an
//! arm of [`AttachPoint`] or [`Via`] if it is a new place or way, and the
//! attach code of that arm.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link, PinnedLink},
        tc::SchedClassifierLink,
        tc::{
            NlOptions, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact, qdisc_detach_program,
        },
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use futures::TryStreamExt;
use log::{debug, info};
use netpath_common::programs;
use rtnetlink::{
    Handle,
    packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption},
};

use super::{Port, netkit, object::Programs};
use crate::{
    host::{ethtool, netns},
    model::Mode,
};

/// The hooks netpath attaches: a row each of [`HOOKS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP forwarding program on the host-side veth.
    Xdp,
    /// XDP_PASS program on the container-side veth, so redirects into it land.
    XdpPeer,
    /// tc ingress forwarding program on the host-side veth.
    Tc,
    /// The same program on the peer hook of a netkit pair (netkit mode):
    /// it runs as the container transmits.
    Netkit,
    /// tc ingress of the node's vxlan device: decapsulated frames, one
    /// program per overlay (by VNI).
    Vxlan,
    /// tc ingress of the interface that holds the node's underlay address:
    /// VXLAN to the overlay's containers, decapsulated by the program.
    Underlay,
    /// Network policy alone on the host-side veth's egress: frames the
    /// bridge hands the container (every mode, where a policy isolates).
    PoliceToContainer,
    /// Network policy alone on the host-side veth's ingress: frames from
    /// the container (bridge mode, where a policy isolates; the other
    /// modes' forwarding programs judge them).
    PoliceFromContainer,
}

/// Where a hook's program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPoint {
    /// The port's host-side device: a veth end, or a netkit pair's
    /// primary device (which holds both of the pair's hooks).
    HostVeth,
    /// The container's interface, inside its namespace.
    ContainerSide,
    /// The node's one vxlan device, shared by every overlay.
    VxlanDevice,
    /// The interface that holds the node's underlay address: not
    /// netpath's, so always a tcx link (Linux 6.6+), which leaves the
    /// device's qdiscs, filters and other links as they are.
    UnderlayDevice,
}

impl AttachPoint {
    /// Whether every port has a hook here (the rest are the node's, one a
    /// datapath on an overlay).
    fn per_port(self) -> bool {
        matches!(self, AttachPoint::HostVeth | AttachPoint::ContainerSide)
    }
}

/// How a hook attaches, and which of the loaded programs it takes.
#[derive(Clone, Copy)]
pub enum Via {
    /// An XDP bpf_link, in driver mode.
    Xdp(fn(&mut Programs) -> &mut Option<Xdp>),
    /// tc ingress: a tcx bpf_link or a clsact filter, per [`TcMethod`]
    /// (which the kernel decides).
    Tc(fn(&mut Programs) -> &mut Option<SchedClassifier>),
    /// A netkit link on the pair's peer hook (Linux 6.7+), pinned.
    NetkitPeer(fn(&mut Programs) -> &mut Option<SchedClassifier>),
    /// A clsact filter in this direction, on every kernel, with a handle
    /// of its own (`POLICE_HANDLE`) beside the forwarding program's.
    Clsact(
        fn(&mut Programs) -> &mut Option<SchedClassifier>,
        TcAttachType,
    ),
}

/// `hook`'s program, which its caller made sure is loaded (see
/// [`programs_of`]).
fn loaded<T>(program: &mut Option<T>, hook: Hook) -> Result<&mut T> {
    program.as_mut().with_context(|| {
        format!(
            "program {} of hook {hook:?} is not pinned with the datapath's programs \
             (made by another netpath? `netpath upgrade --name NAME` loads it)",
            hook.row().program
        )
    })
}

/// The programs `hooks` take, each once: what a datapath with those hooks
/// loads (the others cost a verifier's walk for nothing).
pub fn programs_of(hooks: &[Hook]) -> Vec<&'static str> {
    let mut names = Vec::new();
    for hook in hooks {
        let name = hook.row().program;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// One hook: its program, where and how it attaches, where its links are
/// pinned, and the modes that have it.
pub struct HookRow {
    pub hook: Hook,
    /// The program's name (its BPF function).
    pub program: &'static str,
    pub at: AttachPoint,
    pub via: Via,
    /// Its links' directory under the pins' `links/` (bpffs reserves names
    /// with dots, so each hook gets a directory).
    pub pin_dir: &'static str,
    /// The datapath modes whose ports have it (none: attached on joining
    /// an overlay, not per port).
    pub modes: &'static [Mode],
    /// Attached only where a network policy isolates a container...
    pub policy_only: bool,
    /// ... or, for this one, on the port of a container with an ingress
    /// rate limit (frames the bridge hands it pay the rate too).
    pub ingress_rate: bool,
}

/// Every hook, in the order a port's are attached: the container side's
/// XDP_PASS before the host side's XDP, so that no redirect meets a
/// device that cannot take it.
pub const HOOKS: [HookRow; 8] = [
    HookRow {
        hook: Hook::XdpPeer,
        program: programs::XDP_PEER,
        at: AttachPoint::ContainerSide,
        via: Via::Xdp(|p| &mut p.xdp_peer),
        pin_dir: "xdp-peer",
        modes: &[Mode::Xdp],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::Xdp,
        program: programs::XDP_FORWARD,
        at: AttachPoint::HostVeth,
        via: Via::Xdp(|p| &mut p.xdp_forward),
        pin_dir: "xdp",
        modes: &[Mode::Xdp],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::Tc,
        program: programs::TC_FORWARD,
        at: AttachPoint::HostVeth,
        via: Via::Tc(|p| &mut p.tc_forward),
        pin_dir: "tc",
        modes: &[Mode::Tc],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::Netkit,
        program: programs::TC_FORWARD,
        at: AttachPoint::HostVeth,
        via: Via::NetkitPeer(|p| &mut p.tc_forward),
        pin_dir: "netkit",
        modes: &[Mode::Netkit],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::Vxlan,
        program: programs::TC_VXLAN,
        at: AttachPoint::VxlanDevice,
        via: Via::Tc(|p| &mut p.tc_vxlan),
        pin_dir: "vxlan",
        modes: &[],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::Underlay,
        program: programs::TC_UNDERLAY,
        at: AttachPoint::UnderlayDevice,
        via: Via::Tc(|p| &mut p.tc_underlay),
        pin_dir: "underlay",
        modes: &[],
        policy_only: false,
        ingress_rate: false,
    },
    HookRow {
        hook: Hook::PoliceToContainer,
        program: programs::TC_POLICE,
        at: AttachPoint::HostVeth,
        via: Via::Clsact(|p| &mut p.tc_police, TcAttachType::Egress),
        pin_dir: "police-out",
        modes: &[Mode::Xdp, Mode::Tc, Mode::Netkit, Mode::Bridge],
        policy_only: true,
        ingress_rate: true,
    },
    HookRow {
        hook: Hook::PoliceFromContainer,
        program: programs::TC_POLICE,
        at: AttachPoint::HostVeth,
        via: Via::Clsact(|p| &mut p.tc_police, TcAttachType::Ingress),
        pin_dir: "police-in",
        modes: &[Mode::Bridge],
        policy_only: true,
        ingress_rate: false,
    },
];

impl Hook {
    /// The hooks a port may have, in attach order.
    pub fn per_port() -> impl Iterator<Item = Hook> {
        HOOKS
            .iter()
            .filter(|row| row.at.per_port())
            .map(|row| row.hook)
    }

    /// The hooks of a port of a datapath in `mode`, in attach order, with
    /// the policy hooks if `policing` (a policy isolates a container).
    pub fn for_mode(mode: Mode, policing: bool) -> Vec<Hook> {
        Self::of_mode(mode, |row| policing || !row.policy_only)
    }

    /// The hooks of `port` in a datapath in `mode`: [`Hook::for_mode`]'s,
    /// and the one that holds its container's ingress rate on the bridge's
    /// frames if it has such a limit.
    pub fn for_port(mode: Mode, isolating: bool, port: &Port) -> Vec<Hook> {
        let limited = port.bandwidth.limits_ingress();
        Self::of_mode(mode, |row| {
            isolating || !row.policy_only || (limited && row.ingress_rate)
        })
    }

    /// The hooks of `mode` that `keep` keeps, in attach order.
    fn of_mode(mode: Mode, keep: impl Fn(&HookRow) -> bool) -> Vec<Hook> {
        HOOKS
            .iter()
            .filter(|row| row.modes.contains(&mode) && keep(row))
            .map(|row| row.hook)
            .collect()
    }

    pub fn row(self) -> &'static HookRow {
        HOOKS
            .iter()
            .find(|row| row.hook == self)
            .expect("every hook has a row in HOOKS")
    }

    /// The directory of its pinned links.
    pub fn dir(self, pins: &Path) -> PathBuf {
        pins.join("links").join(self.row().pin_dir)
    }

    fn pin_path(self, pins: &Path, port: &str) -> PathBuf {
        self.dir(pins).join(port)
    }
}

/// How the tc program is attached to the ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMethod {
    /// A tcx bpf_link (Linux 6.6+), pinned like the XDP links.
    Tcx,
    /// A clsact qdisc with a direct-action cls_bpf filter (every kernel):
    /// the filter holds the program on the device with no link to pin, and
    /// the next loader finds it by asking the kernel for the port's filters.
    Clsact,
}

/// Overrides the choice of [`TcMethod`]: `tcx` for tcx links (Linux 6.6+;
/// ignored, with a warning, before), `clsact` the default.
pub const TC_METHOD_ENV: &str = "NETPATH_TC_METHOD";

/// Priority and handle of netpath's cls_bpf filter on its own ports.
const CLSACT_PRIORITY: u16 = 50;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);
/// The policy program's filter: the forwarding program's priority, its own
/// handle, so a mode switch that attaches one before detaching the other
/// never finds the place taken.
const POLICE_HANDLE: TcHandle = TcHandle::new(0, 2);

/// One of netpath's cls_bpf filters on a port: its direction, its handle
/// and its program's name (how the next loader finds it).
#[derive(Clone, Copy)]
struct Filter {
    direction: TcAttachType,
    handle: TcHandle,
    program: &'static str,
}

impl Filter {
    /// The tc mode's forwarding program.
    const FORWARD: Filter = Filter {
        direction: TcAttachType::Ingress,
        handle: CLSACT_HANDLE,
        program: programs::TC_FORWARD,
    };

    fn police(direction: TcAttachType) -> Filter {
        Filter {
            direction,
            handle: POLICE_HANDLE,
            program: programs::TC_POLICE,
        }
    }
}

impl TcMethod {
    /// For every datapath, topologies and CNI pods alike: clsact, unless
    /// `NETPATH_TC_METHOD=tcx` asks for tcx links (Linux 6.6+). A tcx
    /// attach swaps the device's program array and waits a full RCU grace
    /// period (`synchronize_rcu` in `tcx_link_prog_attach`) while holding
    /// RTNL: 13-15 ms per port on a 2-CPU VM (`up` of 128 containers: 2.2
    /// s), in turn even from parallel threads, and every other netlink
    /// writer on the node waits with it. A cls_bpf filter is swapped in
    /// with an expedited grace period: under 1 ms (`up` of 128: 0.34 s).
    pub fn chosen() -> TcMethod {
        Self::overridden().unwrap_or(TcMethod::Clsact)
    }

    fn overridden() -> Option<TcMethod> {
        match std::env::var(TC_METHOD_ENV).as_deref() {
            Ok("clsact") => Some(TcMethod::Clsact),
            Ok("tcx") if Self::kernel_has_tcx() => Some(TcMethod::Tcx),
            Ok("tcx") => {
                log::warn!(
                    "{TC_METHOD_ENV}=tcx ignored: this kernel has no tcx (Linux 6.6); attaching \
                     through clsact"
                );
                None
            }
            _ => None,
        }
    }

    pub fn kernel_has_tcx() -> bool {
        KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
    }
}

/// Attaches `hook`'s program to `port` and pins the link. Where an earlier
/// loader attached it already (a pinned link, or for tc through clsact,
/// netpath's filter on the port) and that program's instructions differ
/// from `programs`' (a newer netpath), the program is replaced in place,
/// atomically: every frame meets the old program or the new one, none
/// meets no program and falls to the bridge.
pub async fn attach(
    handle: &Handle,
    programs: &mut Programs,
    pins: &Path,
    port: &Port,
    ifindex: u32,
    hook: Hook,
    tc: TcMethod,
) -> Result<()> {
    let name = &port.name;
    let pin = hook.pin_path(pins, name);
    if pin.exists() {
        return update_link(programs, &pin, name, hook, false);
    }
    let row = hook.row();
    let link: FdLink = match (row.via, row.at) {
        (Via::Tc(program), AttachPoint::HostVeth) if tc == TcMethod::Clsact => {
            let filter = Filter::FORWARD;
            let program = loaded(program(programs), hook)?;
            return attach_clsact(handle, program, port, ifindex, filter).await;
        }
        (Via::Clsact(program, direction), AttachPoint::HostVeth) => {
            let filter = Filter::police(direction);
            let program = loaded(program(programs), hook)?;
            return attach_clsact(handle, program, port, ifindex, filter).await;
        }
        (Via::Xdp(program), AttachPoint::HostVeth) => {
            let program = loaded(program(programs), hook)?;
            let id = program
                .attach_to_if_index(ifindex, XdpMode::Driver)
                .with_context(|| format!("attaching XDP to {name}"))?;
            program
                .take_link(id)?
                .try_into()
                .context("XDP link is not a bpf_link")?
        }
        (Via::Xdp(program), AttachPoint::ContainerSide) => {
            let program = loaded(program(programs), hook)?;
            // An ifindex is resolved in the caller's namespace: attach from inside.
            netns::enter_path_and(&port.netns, || {
                let index = nix::net::if_::if_nametoindex(port.ifname.as_str())
                    .with_context(|| format!("no {}", port.ifname))?;
                let id = program.attach_to_if_index(index, XdpMode::Driver)?;
                let link = program
                    .take_link(id)?
                    .try_into()
                    .context("XDP link is not a bpf_link")?;
                set_xdp_offloads(&port.ifname)?;
                Ok(link)
            })
            .with_context(|| {
                format!(
                    "attaching XDP pass to {} in {}",
                    port.ifname,
                    port.netns.display()
                )
            })?
        }
        (Via::NetkitPeer(program), AttachPoint::HostVeth) => {
            let program = loaded(program(programs), hook)?;
            return netkit::attach_peer(program.fd()?, name, ifindex, &pin);
        }
        (Via::Tc(program), AttachPoint::HostVeth) => {
            let program = loaded(program(programs), hook)?;
            let id = program
                .attach(name, TcAttachType::Ingress)
                .with_context(|| format!("attaching tc ingress to {name}"))?;
            program
                .take_link(id)?
                .try_into()
                .context("tc link is not a bpf_link (kernel without tcx?)")?
        }
        (_, at) => bail!("hook {hook:?} attaches to {at:?}, not to a port's veth"),
    };
    link.pin(&pin)
        .with_context(|| format!("pinning link {}", pin.display()))?;
    Ok(())
}

/// tc through a clsact qdisc and a direct-action filter, unless netpath's
/// filter is on the port already.
async fn attach_clsact(
    handle: &Handle,
    program: &mut SchedClassifier,
    port: &Port,
    ifindex: u32,
    filter: Filter,
) -> Result<()> {
    let name = &port.name;
    if update_clsact(handle, program, name, ifindex, filter, false).await? {
        return Ok(());
    }
    match qdisc_add_clsact(name) {
        Ok(()) => {}
        // The qdisc is already there (an earlier netpath added it, and the
        // port is netpath's own): reuse it.
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("adding a clsact qdisc to {name}")),
    }
    let options = NlOptions {
        priority: CLSACT_PRIORITY,
        handle: filter.handle,
        classid: None,
    };
    let id = program
        .attach_with_options(name, filter.direction, TcAttachOptions::Netlink(options))
        .with_context(|| {
            format!(
                "attaching {} to tc {:?} (clsact) of {name}",
                filter.program, filter.direction
            )
        })?;
    // The filter must outlive this loader: dropping the link would detach it.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Gives netpath's clsact filter on the port `program`, if the filter is
/// there with other instructions (or at all, with `force`); returns whether
/// the filter is there.
async fn update_clsact(
    handle: &Handle,
    program: &mut SchedClassifier,
    name: &str,
    ifindex: u32,
    filter: Filter,
    force: bool,
) -> Result<bool> {
    let Some(running) = filter_program_id(handle, ifindex, filter).await? else {
        return Ok(false);
    };
    if !force && same_instructions(running, program)? {
        debug!("{name}: tc filter already attached");
        return Ok(true);
    }
    // cls_bpf changes a filter's program under RCU: no frame goes unfiltered.
    let link =
        SchedClassifierLink::attached(name, filter.direction, CLSACT_PRIORITY, filter.handle, None)
            .with_context(|| {
                format!(
                    "finding netpath's tc filter of {} on {name}",
                    filter.program
                )
            })?;
    let id = program
        .attach_to_link(link)
        .with_context(|| format!("replacing the program of netpath's tc filter on {name}"))?;
    // Dropping the link would delete the filter.
    std::mem::forget(program.take_link(id)?);
    info!(
        "{name}: tc filter upgraded from program {running} to {}",
        program.info()?.id()
    );
    Ok(true)
}

/// Gives every hook of port `name` that has a program (a pinned link, or
/// netpath's clsact filter) `programs`' one, where it differs (see
/// [`attach`]; with `force` even where they are the same); hooks without a
/// program stay so.
pub async fn upgrade(
    handle: &Handle,
    programs: &mut Programs,
    pins: &Path,
    name: &str,
    ifindex: u32,
    force: bool,
) -> Result<()> {
    for hook in Hook::per_port() {
        let pin = hook.pin_path(pins, name);
        if pin.exists() {
            update_link(programs, &pin, name, hook, force)?;
            continue;
        }
        // A program the datapath never loaded has no filter to upgrade.
        match (hook.row().via, hook.row().at) {
            (Via::Tc(program), AttachPoint::HostVeth) => {
                if let Some(program) = program(programs) {
                    update_clsact(handle, program, name, ifindex, Filter::FORWARD, force).await?;
                }
            }
            (Via::Clsact(program, direction), AttachPoint::HostVeth) => {
                if let Some(program) = program(programs) {
                    let filter = Filter::police(direction);
                    update_clsact(handle, program, name, ifindex, filter, force).await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the program with id `running` has the instructions of `program`
/// (the kernel's tag, a hash of them) and its maps: then there is nothing
/// to upgrade. The tag leaves out which maps the instructions use, so the
/// same program of a datapath made again (its pins lost) has the old one's
/// tag, and must still replace it.
fn same_instructions(running: u32, program: &impl HasInfo) -> Result<bool> {
    Ok(is_program(running, &program.program_info()?))
}

/// Whether the loaded program with id `id` is `program`, or does what it
/// does: the same instructions on the same maps.
fn is_program(id: u32, program: &aya::programs::ProgramInfo) -> bool {
    id == program.id()
        || aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .is_some_and(|running| {
                running.tag() == program.tag()
                    && running.map_ids().ok().flatten() == program.map_ids().ok().flatten()
            })
}

/// The loaded programs' info, for [`same_instructions`].
trait HasInfo {
    fn program_info(&self) -> Result<aya::programs::ProgramInfo>;
}

impl HasInfo for Xdp {
    fn program_info(&self) -> Result<aya::programs::ProgramInfo> {
        self.info().context("reading an XDP program's info")
    }
}

impl HasInfo for SchedClassifier {
    fn program_info(&self) -> Result<aya::programs::ProgramInfo> {
        self.info().context("reading the tc program's info")
    }
}

/// A pinned link whose program is not `programs`' own for `hook` gets it,
/// with BPF_LINK_UPDATE: atomic, the link (and so the pin) stays.
fn update_link(
    programs: &mut Programs,
    pin: &Path,
    name: &str,
    hook: Hook,
    force: bool,
) -> Result<()> {
    let link = FdLink::from(
        PinnedLink::from_pin(pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?,
    );
    let running = link
        .info()
        .with_context(|| format!("reading link {}", pin.display()))?
        .program_id();
    let replaced = match hook.row().via {
        Via::Clsact(..) => bail!(
            "hook {hook:?} has a filter, not a link, yet {} is pinned",
            pin.display()
        ),
        Via::NetkitPeer(program) => {
            let program = loaded(program(programs), hook)?;
            if !force && same_instructions(running, program)? {
                return Ok(());
            }
            netkit::update(pin, program.fd()?)?;
            program.info()?.id()
        }
        Via::Xdp(program) => {
            let program = loaded(program(programs), hook)?;
            if !force && same_instructions(running, program)? {
                return Ok(());
            }
            let link = XdpLink::try_from(link).context("a pinned XDP link is no XDP link")?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("upgrading the XDP program of {name}"))?;
            // Dropping it closes this process's handle only: the pin holds the link.
            drop(program.take_link(id)?);
            program.info()?.id()
        }
        Via::Tc(program) => {
            let program = loaded(program(programs), hook)?;
            if !force && same_instructions(running, program)? {
                return Ok(());
            }
            let link =
                SchedClassifierLink::try_from(link).context("a pinned tc link is no tcx link")?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("upgrading the tc program of {name}"))?;
            drop(program.take_link(id)?);
            program.info()?.id()
        }
    };
    info!(
        "{name}: {} link upgraded from program {running} to {replaced}",
        hook.row().pin_dir
    );
    Ok(())
}

/// The id of the program of netpath's forwarding cls_bpf filter on the
/// port's ingress.
pub async fn clsact_program_id(handle: &Handle, ifindex: u32) -> Result<Option<u32>> {
    filter_program_id(handle, ifindex, Filter::FORWARD).await
}

/// The id of the program of netpath's `filter` on the port, if there.
async fn filter_program_id(handle: &Handle, ifindex: u32, filter: Filter) -> Result<Option<u32>> {
    Ok(clsact_programs(handle, ifindex, filter.direction)
        .await?
        .into_iter()
        .find(|(_, name)| name.split(':').next() == Some(filter.program))
        .map(|(id, _)| id))
}

/// The programs of the cls_bpf filters on a link's ingress or egress: id
/// and name.
async fn clsact_programs(
    handle: &Handle,
    ifindex: u32,
    direction: TcAttachType,
) -> Result<Vec<(u32, String)>> {
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = match direction {
        TcAttachType::Egress => request.egress(),
        _ => request.ingress(),
    };
    let filters: Vec<_> = match request.execute().try_collect().await {
        Ok(filters) => filters,
        // No clsact qdisc (or no such device): no filter.
        Err(rtnetlink::Error::NetlinkError(_)) => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("listing the tc filters of link {ifindex}"));
        }
    };
    let mut found = Vec::new();
    for filter in filters {
        let mut id = None;
        let mut name = String::new();
        for attribute in &filter.attributes {
            if let TcAttribute::Options(options) = attribute {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = n.clone(),
                        _ => {}
                    }
                }
            }
        }
        found.extend(id.map(|id| (id, name)));
    }
    Ok(found)
}

/// What XDP redirect between veths needs on the container's `eth0`, run
/// inside its namespace (see netpath-ebpf/FAST-PATH.md):
/// - no transmit checksum offload: a CHECKSUM_PARTIAL frame loses its
///   "checksum pending" mark when XDP redirects it, and the receiver drops it;
/// - GRO, so the receiving end batches the redirected frames into large skbs.
fn set_xdp_offloads(ifname: &str) -> Result<()> {
    ethtool::set(ifname, ethtool::Offload::TxChecksum, false)?;
    ethtool::set(ifname, ethtool::Offload::Gro, true)
}

/// Gives the container's interface back the veth defaults of this kernel
/// when XDP mode is left: transmit checksumming on, and GRO as the port's
/// host end has it (the same driver's default, which netpath never changes:
/// off on recent kernels, on for instance on 5.10).
fn restore_veth_offloads(port: &Port) -> Result<()> {
    if nix::net::if_::if_nametoindex(port.name.as_str()).is_err() {
        return Ok(()); // the pair is gone, and with it the container's end
    }
    let gro = ethtool::get(&port.name, ethtool::Offload::Gro)?;
    netns::enter_path_and(&port.netns, || {
        ethtool::set(&port.ifname, ethtool::Offload::TxChecksum, true)?;
        ethtool::set(&port.ifname, ethtool::Offload::Gro, gro)
    })
    .with_context(|| {
        format!(
            "restoring offloads of {} in {}",
            port.ifname,
            port.netns.display()
        )
    })
}

/// Unpins (and so detaches) one hook's link of one port, if pinned, or
/// removes netpath's clsact filter; leaving XDP, restores the container
/// interface's offloads if it is still there.
pub fn detach(pins: &Path, port: &Port, hook: Hook) -> Result<()> {
    let row = hook.row();
    // Whichever way it was attached: a datapath's ports may have either.
    let filter_direction = match (row.via, row.at) {
        (Via::Tc(_), AttachPoint::HostVeth) => Some(TcAttachType::Ingress),
        (Via::Clsact(_, direction), AttachPoint::HostVeth) => Some(direction),
        _ => None,
    };
    if let Some(direction) = filter_direction {
        match qdisc_detach_program(&port.name, direction, row.program) {
            Ok(()) => {}
            // Not attached, or the port (and its filter) are gone already.
            Err(TcError::IoError(e))
                if matches!(e.kind(), std::io::ErrorKind::NotFound)
                    || e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(TcError::NetlinkError(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("detaching the tc filter of {}", port.name));
            }
        }
    }
    let pin = hook.pin_path(pins, &port.name);
    if pin.exists() {
        let link = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        link.unpin()
            .with_context(|| format!("unpinning {}", pin.display()))?;
        if row.at == AttachPoint::ContainerSide && port.netns.exists() {
            restore_veth_offloads(port)?;
        }
    }
    Ok(())
}

/// Unpins the links of every port not in `ports`.
pub fn remove_stale(pins: &Path, ports: &HashSet<String>) -> Result<()> {
    for hook in Hook::per_port() {
        let Ok(entries) = fs::read_dir(hook.dir(pins)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !ports.contains(entry.file_name().to_string_lossy().as_ref()) {
                fs::remove_file(entry.path())
                    .with_context(|| format!("unpinning {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Names of the BPF programs hooked on a host-side port, as the kernel
/// reports them: `xdp:NAME`, `tc:NAME` (tcx ingress), `tc-clsact:NAME`
/// (a cls_bpf filter on the clsact qdisc), `netkit:NAME` (a netkit pair's
/// peer hook), and the policy's filters, `police-in:NAME` and
/// `police-out:NAME`.
pub async fn programs_on(
    handle: &Handle,
    port: &str,
    ifindex: u32,
    xdp_prog_id: Option<u32>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = xdp_prog_id
        .map(|id| format!("xdp:{}", super::object::program_name(id)))
        .into_iter()
        .collect();
    if let Ok((_, programs)) = SchedClassifier::query_tcx(port, TcAttachType::Ingress) {
        out.extend(
            programs
                .iter()
                .map(|p| format!("tc:{}", p.name_as_str().unwrap_or("?"))),
        );
    }
    if let Some(id) = clsact_program_id(handle, ifindex).await? {
        out.push(format!("tc-clsact:{}", super::object::program_name(id)));
    }
    out.extend(
        netkit::peer_programs(ifindex)
            .into_iter()
            .map(|id| format!("netkit:{}", super::object::program_name(id))),
    );
    for (shown, direction) in [
        ("police-in", TcAttachType::Ingress),
        ("police-out", TcAttachType::Egress),
    ] {
        if let Some(id) = filter_program_id(handle, ifindex, Filter::police(direction)).await? {
            out.push(format!("{shown}:{}", super::object::program_name(id)));
        }
    }
    Ok(out)
}

/// Where a datapath's link on the node's vxlan device is pinned: one
/// per datapath, so the hook's directory is the pin.
fn vxlan_pin(pins: &Path) -> PathBuf {
    Hook::Vxlan.dir(pins)
}

/// The clsact filter handle of a datapath's program on the vxlan device:
/// one per overlay, so each is detached alone. A cls_bpf handle is 32 bits
/// (the kernel keeps any non-zero one), so the whole 24-bit VNI fits and no
/// two overlays share one (cut to 16 bits, VNI 42 and 65578 did: the
/// second's join failed, or its leave took the first's filter).
fn vxlan_handle(vni: u32) -> TcHandle {
    TcHandle::new((vni >> 16) as u16, (vni & 0xffff) as u16)
}

/// The vxlan hook's program among `programs`.
fn vxlan_program(programs: &mut Programs) -> Result<&mut SchedClassifier> {
    let Via::Tc(program) = Hook::Vxlan.row().via else {
        bail!("the vxlan device's hook is a tc one");
    };
    loaded(program(programs), Hook::Vxlan)
}

/// Attaches the vxlan hook's program (a datapath's `netpath_vxlan`) to the ingress of
/// the node's vxlan device `device`, after the programs of the overlays
/// there already: each takes its VNI's frames and passes the rest on. A
/// pinned link that is there already is kept.
pub fn attach_vxlan(
    programs: &mut Programs,
    pins: &Path,
    device: &str,
    vni: u32,
    tc: TcMethod,
) -> Result<()> {
    let pin = vxlan_pin(pins);
    if pin.exists() {
        return Ok(());
    }
    let program = vxlan_program(programs)?;
    if tc == TcMethod::Clsact {
        match qdisc_add_clsact(device) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("adding a clsact qdisc to {device}")),
        }
        // A filter of this VNI already there is a datapath's that lost its
        // pins (a filter holds its program itself): it gets the new program
        // (replacing fails where there is no filter to replace).
        if replace_vxlan_filter(program, device, vni).is_ok() {
            return Ok(());
        }
        let options = NlOptions {
            priority: CLSACT_PRIORITY,
            handle: vxlan_handle(vni),
            classid: None,
        };
        let id = program
            .attach_with_options(
                device,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(options),
            )
            .with_context(|| format!("attaching tc ingress (clsact) to {device}"))?;
        // The filter outlives this loader; `detach_vxlan` removes it.
        std::mem::forget(program.take_link(id)?);
        return Ok(());
    }
    attach_tcx_pinned(program, device, &pin)
}

/// Attaches `program` to `device`'s tc ingress as a tcx link, after the
/// programs there, pinned at `pin`.
fn attach_tcx_pinned(program: &mut SchedClassifier, device: &str, pin: &Path) -> Result<()> {
    let id = program
        .attach(device, TcAttachType::Ingress)
        .with_context(|| format!("attaching tc ingress to {device}"))?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("tc link is not a bpf_link (kernel without tcx?)")?;
    if let Some(links) = pin.parent() {
        fs::create_dir_all(links)
            .with_context(|| format!("creating the links directory {}", links.display()))?;
    }
    link.pin(pin)
        .with_context(|| format!("pinning link {}", pin.display()))?;
    Ok(())
}

/// Attaches the underlay hook's program (a datapath's `netpath_uldecap`)
/// to `device`, the interface that holds the node's underlay address, as a
/// pinned tcx link; one that is pinned already is kept. Each overlay's
/// program takes its own VNI's packets and passes the rest on.
pub fn attach_underlay(programs: &mut Programs, pins: &Path, device: &str) -> Result<()> {
    let pin = Hook::Underlay.dir(pins);
    if pin.exists() {
        return Ok(());
    }
    let Via::Tc(program) = Hook::Underlay.row().via else {
        bail!("the underlay's hook is a tc one");
    };
    attach_tcx_pinned(loaded(program(programs), Hook::Underlay)?, device, &pin)
}

/// Gives a datapath's underlay hook, if it has one, `programs`' program
/// where it differs (with `force` even where it is the same).
pub fn upgrade_underlay(programs: &mut Programs, pins: &Path, force: bool) -> Result<()> {
    let pin = Hook::Underlay.dir(pins);
    if !pin.exists() {
        return Ok(());
    }
    update_link(programs, &pin, "the underlay", Hook::Underlay, force)
}

/// Unpins (and so detaches) a datapath's underlay hook, if it has one.
pub fn detach_underlay(pins: &Path) -> Result<()> {
    let pin = Hook::Underlay.dir(pins);
    if !pin.exists() {
        return Ok(());
    }
    unpin_link(&pin)
}

/// Unpins the link pinned at `pin`, which detaches it (no one else holds it).
fn unpin_link(pin: &Path) -> Result<()> {
    PinnedLink::from_pin(pin)
        .with_context(|| format!("opening pinned link {}", pin.display()))?
        .unpin()
        .map(drop)
        .with_context(|| format!("unpinning {}", pin.display()))
}

/// Puts `program` into the clsact filter of VNI `vni` on the vxlan device
/// `device` (cls_bpf changes it under RCU: no frame goes unfiltered).
fn replace_vxlan_filter(program: &mut SchedClassifier, device: &str, vni: u32) -> Result<()> {
    let filter = SchedClassifierLink::attached(
        device,
        TcAttachType::Ingress,
        CLSACT_PRIORITY,
        vxlan_handle(vni),
        None,
    )
    .with_context(|| format!("finding the tc filter of VNI {vni} on {device}"))?;
    let id = program.attach_to_link(filter).with_context(|| {
        format!("replacing the program of the tc filter of VNI {vni} on {device}")
    })?;
    // Dropping the link would delete the filter; `detach_vxlan` removes it.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Gives a datapath's hook on the vxlan device `device` `programs`' decap
/// program where it differs (with `force` even where it is the same): its
/// pinned tcx link, or else its clsact filter of VNI `vni`, whose program
/// is replaced either way (filters are listed by program name, which every
/// overlay's filter on the device shares).
pub fn upgrade_vxlan(
    programs: &mut Programs,
    pins: &Path,
    device: &str,
    vni: u32,
    force: bool,
) -> Result<()> {
    let pin = vxlan_pin(pins);
    if pin.exists() {
        return update_link(programs, &pin, device, Hook::Vxlan, force);
    }
    let program = vxlan_program(programs)?;
    replace_vxlan_filter(program, device, vni)?;
    info!(
        "{device}: the tc filter of VNI {vni} upgraded to program {}",
        program.info()?.id()
    );
    Ok(())
}

/// Detaches a datapath's program from the vxlan device: its pinned tcx
/// link, or else its clsact filter, if there (the device, or the program,
/// may be gone already: an `up` interrupted before it joined).
pub fn detach_vxlan(pins: &Path, device: &str, vni: u32) -> Result<()> {
    let pin = vxlan_pin(pins);
    if pin.exists() {
        return unpin_link(&pin);
    }
    let filter = SchedClassifierLink::attached(
        device,
        TcAttachType::Ingress,
        CLSACT_PRIORITY,
        vxlan_handle(vni),
        None,
    );
    if let Err(e) = filter
        .map_err(aya::programs::ProgramError::from)
        .and_then(|l| l.detach())
    {
        debug!("{device}: no tc filter of VNI {vni} to detach ({e})");
    }
    Ok(())
}

/// Whether any program is still on the vxlan device's ingress (tcx or a
/// clsact filter of netpath's).
pub async fn vxlan_in_use(handle: &Handle, device: &str, ifindex: u32) -> Result<bool> {
    let tcx = SchedClassifier::query_tcx(device, TcAttachType::Ingress)
        .map(|(_, programs)| !programs.is_empty())
        .unwrap_or(false);
    let mut filters = handle
        .traffic_filter(ifindex as i32)
        .get()
        .ingress()
        .execute();
    let clsact = matches!(filters.try_next().await, Ok(Some(_)));
    Ok(tcx || clsact)
}

/// Whether the decap program of the datapath pinned in `pins` is on the
/// ingress of the vxlan device (`device`, `ifindex`): its pinned program,
/// not just any datapath's.
pub async fn vxlan_attached(
    handle: &Handle,
    pins: &Path,
    device: &str,
    ifindex: u32,
) -> Result<bool> {
    let Some(decap) = Programs::pinned(pins, &[programs::TC_VXLAN])?.and_then(|p| p.tc_vxlan)
    else {
        return Ok(false);
    };
    let ours = decap
        .info()
        .with_context(|| format!("reading the pinned decap program in {}", pins.display()))?;
    let tcx = SchedClassifier::query_tcx(device, TcAttachType::Ingress)
        .map(|(_, programs)| programs.iter().any(|p| is_program(p.id(), &ours)))
        .unwrap_or(false);
    let clsact = clsact_programs(handle, ifindex, TcAttachType::Ingress)
        .await?
        .iter()
        .any(|(id, _)| is_program(*id, &ours));
    Ok(tcx || clsact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vni_has_a_filter_handle_of_its_own() {
        let handle = |vni| u32::from(vxlan_handle(vni));
        assert_ne!(handle(42), handle(42 + (1 << 16)));
        assert_eq!(handle(1), 1);
        assert_eq!(handle((1 << 24) - 1), (1 << 24) - 1);
    }
}

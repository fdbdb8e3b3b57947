//! Where the programs attach: one pinned link per hook and port, so the
//! datapath outlives the loader and the next one finds what is attached.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use log::debug;
use netpath_common::programs;

use super::{Port, object::program_mut};
use crate::{
    host::{ethtool, netns},
    model::Mode,
};

/// The hooks netpath attaches, one pinned link each per port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP forwarding program on the host-side veth.
    Xdp,
    /// XDP_PASS program on the container-side veth, so redirects into it land.
    XdpPeer,
    /// tc ingress forwarding program on the host-side veth.
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::XdpPeer, Hook::Tc];

    pub fn for_mode(mode: Mode) -> &'static [Hook] {
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
    pub fn dir(self, pins: &Path) -> PathBuf {
        pins.join("links").join(self.suffix())
    }

    fn pin_path(self, pins: &Path, port: &str) -> PathBuf {
        self.dir(pins).join(port)
    }
}

/// Attaches `hook`'s program to `port` and pins the link, unless a link is
/// pinned already (attached by an earlier loader).
pub fn attach(ebpf: &mut Ebpf, pins: &Path, port: &Port, ifindex: u32, hook: Hook) -> Result<()> {
    let name = &port.name;
    let pin = hook.pin_path(pins, name);
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
pub fn detach(pins: &Path, port: &Port, hook: Hook) -> Result<()> {
    let pin = hook.pin_path(pins, &port.name);
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

/// Unpins the links of every port not in `ports`.
pub fn remove_stale(pins: &Path, ports: &HashSet<String>) -> Result<()> {
    for hook in Hook::ALL {
        let Ok(entries) = fs::read_dir(hook.dir(pins)) else { continue };
        for entry in entries.flatten() {
            if !ports.contains(entry.file_name().to_string_lossy().as_ref()) {
                fs::remove_file(entry.path()).with_context(|| format!("unpinning {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Ids of the programs behind the pinned links (to read their logs).
pub fn attached_program_ids(pins: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for hook in Hook::ALL {
        let Ok(entries) = fs::read_dir(hook.dir(pins)) else { continue };
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

/// Names of the BPF programs hooked on a host-side port, as the kernel
/// reports them: `xdp:NAME` and `tc:NAME` (tcx ingress).
pub fn programs_on(port: &str, xdp_prog_id: Option<u32>) -> Vec<String> {
    let mut out: Vec<String> =
        xdp_prog_id.map(|id| format!("xdp:{}", super::object::program_name(id))).into_iter().collect();
    if let Ok((_, programs)) = SchedClassifier::query_tcx(port, TcAttachType::Ingress) {
        out.extend(programs.iter().map(|p| format!("tc:{}", p.name_as_str().unwrap_or("?"))));
    }
    out
}

//! The forwarding decision both hooks share: parse the Ethernet header,
//! check or learn the source, and look the destination up in the FDB: a
//! local port, or on an overlay a container on another node.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use netpath_common::{
    Counter, DatapathConfig, FLOOD_BUDGET, FLOOD_WINDOW_NS, FdbEntry, FdbKey, NodeAddr,
    OverlayConfig, PortPolicy, PortState,
};
use network_types::eth::EthHdr;

use crate::{
    frame::Frame,
    maps::{CONFIG, FDB_LEARNED, FDB_STATIC, PORT_LEARNED, PORT_STATE, PORTS, REMOTE_FDB},
    overlay, policy, rate, source, tunnel,
};

/// A learned entry's timestamp is refreshed at most this often, so steady
/// traffic does not write to the shared FDB on every frame.
const REFRESH_NS: u64 = 1_000_000_000;

/// What to do with a frame. The verdicts that need the datapath's config
/// to be carried out carry it: `decide` reads the CONFIG map once per
/// frame, and the hooks never again.
pub enum Verdict {
    /// Send the frame straight to this port's host-side veth, if it is
    /// still there (the hook checks; see [`Local`]), tracing it if the
    /// config says so.
    Redirect(Local, &'static DatapathConfig),
    /// Overlay: send the frame to this node, through the vxlan device.
    Tunnel(NodeAddr, &'static OverlayConfig),
    /// Overlay: an ARP request for the address of a container on another
    /// node, whose MAC this is: answer it here (tc only).
    AnswerArp([u8; 6]),
    /// Overlay: broadcast or multicast. To the bridge (the local
    /// containers) and a copy to every other node (tc only, by the
    /// flooding program, which reads the overlay's config itself).
    Flood,
    /// Let the bridge handle it; the counter says why.
    Pass(Counter),
    /// Drop it; the counter says why.
    Drop(Counter),
    /// Drop it: over a container's rate limit (that container's port
    /// counted it).
    Limited,
    /// Drop it: a network policy denies its flow (the container that
    /// policy protects counted it), tracing it if the config says so.
    Denied(&'static DatapathConfig),
}

/// The ingress port's per-CPU state.
pub struct Port {
    ifindex: u32,
    state: *mut PortState,
}

impl Port {
    /// The port's state, or None for an interface netpath does not manage.
    #[inline(always)]
    pub fn lookup(ifindex: u32) -> Option<Port> {
        Self::state(ifindex)
    }

    /// The state of a destination port (the vxlan device's program counts
    /// the frames it delivers there).
    #[inline(always)]
    pub fn state(ifindex: u32) -> Option<Port> {
        PORT_STATE
            .get_ptr_mut(ifindex)
            .map(|state| Port { ifindex, state })
    }

    #[inline(always)]
    pub fn count(&self, counter: Counter) {
        // SAFETY: per-CPU value from a successful lookup; only this CPU
        // writes it while the program runs.
        unsafe { (*self.state).packets[counter as usize] += 1 };
    }

    /// Takes one copy to the other nodes from the port's budget for the
    /// current window; false once it is spent.
    #[inline(always)]
    pub fn take_flood_budget(&self) -> bool {
        // SAFETY: as in count().
        let budget = unsafe { &mut (*self.state).flood };
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if now.saturating_sub(budget.window_start_ns) >= FLOOD_WINDOW_NS {
            budget.window_start_ns = now;
            budget.replicated = 0;
        }
        if budget.replicated >= FLOOD_BUDGET {
            return false;
        }
        budget.replicated += 1;
        true
    }

    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    #[inline(always)]
    pub fn policy(&self) -> &PortPolicy {
        // SAFETY: as in count(); the loader writes the policy, never the programs.
        unsafe { &(*self.state).policy }
    }
}

/// Decides what happens to `frame` (`len` bytes, GSO packets whole), which
/// arrived on `port`, judging network policy if `POLICY` (the judging
/// variants of the programs; the others leave it to them). Costs two
/// hash lookups in the common case (port, static destination), plus the
/// hook's check that the destination is still there: frames from the
/// port's own container need no learning, and the clock is read only for
/// learned entries.
#[inline(always)]
pub fn decide<const POLICY: bool>(port: &Port, frame: &Frame, len: u32) -> Verdict {
    let eth: &EthHdr = match frame.at(0) {
        Ok(eth) => eth,
        Err(reason) => return Verdict::Drop(reason),
    };
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass(Counter::PassUnknown);
    };
    let src = eth.src_addr;
    if src[0] & 1 != 0 || src == [0; 6] {
        return Verdict::Drop(Counter::DropBadSourceMac);
    }
    let policy = port.policy();
    if policy.checks_source() {
        if src != policy.mac {
            return Verdict::Drop(Counter::DropSpoofedMac);
        }
        if let Err(reason) = source::check(policy, frame) {
            return Verdict::Drop(reason);
        }
    } else if src != policy.mac && config.learning != 0 {
        if let Err(reason) = learn(port, src) {
            return Verdict::Drop(reason);
        }
    }

    // Whatever its destination: the bridge would hand it to the host,
    // which routes it to the underlay.
    match tunnel::to_vxlan_port(frame) {
        Ok(false) => {}
        Ok(true) => return Verdict::Drop(Counter::DropTunnel),
        Err(reason) => return Verdict::Drop(reason),
    }
    // Before any destination: a flow to the bridge, to another node or to
    // a local container meets the policies of both its ends alike.
    if POLICY && policy::admit(frame).is_err() {
        return Verdict::Denied(config);
    }
    // Only what the policy let through costs the container its rate.
    if !rate::admit_from(config, port.ifindex, len) {
        return Verdict::Limited;
    }

    let dst = eth.dst_addr;
    let on_overlay = config.overlay.vni != 0;
    if dst[0] & 1 != 0 {
        if !on_overlay {
            return Verdict::Pass(Counter::PassMulticast);
        }
        // ARP for a remote container is answered here: a request flooded
        // to every node would wake every node for one answer.
        if let Some(mac) = overlay::arp_answer(eth, frame) {
            return Verdict::AnswerArp(mac);
        }
        if !port.take_flood_budget() {
            return Verdict::Pass(Counter::PassFloodLimited);
        }
        return Verdict::Flood;
    }
    if config.bridge_mac == dst {
        return Verdict::Pass(Counter::PassHost);
    }
    let key = FdbKey::new(dst, 0);
    let Some(local) = local_port(config, key) else {
        // Remote entries come from the control plane only; a local entry
        // (static, or learned and fresh) wins over them.
        // SAFETY: read only, as in local_port().
        if on_overlay && let Some(remote) = unsafe { REMOTE_FDB.get(key) } {
            return Verdict::Tunnel(remote.node, &config.overlay);
        }
        return Verdict::Pass(Counter::PassUnknown);
    };
    if local.ifindex == port.ifindex {
        return Verdict::Pass(Counter::PassHairpin);
    }
    if !rate::admit_to(config, local.ifindex, len) {
        return Verdict::Limited;
    }
    Verdict::Redirect(local, config)
}

/// A destination MAC's port on this node, from its FDB entry. The entry
/// may outlive the port (namespace deleted, runtime crashed, behind the
/// loader's back): a frame for a port that is gone must not vanish, so
/// every redirect asks the devmap first, which holds only live ports (the
/// kernel takes a device out of it when the device goes). tc asks it with
/// a lookup; XDP's redirect asks it itself and falls back to a pass.
pub struct Local {
    pub ifindex: u32,
    key: FdbKey,
    learned: bool,
}

impl Local {
    /// Whether the port is still in the devmap (forgetting it if not).
    #[inline(always)]
    pub fn alive(&self) -> bool {
        if PORTS.get_ifindex(self.ifindex).is_some() {
            return true;
        }
        self.gone();
        false
    }

    /// The port is gone: a learned entry for it is forgotten here, static
    /// ones by the loader.
    #[inline(always)]
    pub fn gone(&self) {
        if self.learned {
            forget_learned(self.key, self.ifindex);
        }
    }
}

/// Looks `key` up in the static, then the learned FDB (ageing the entry
/// out if it is stale): the one lookup of a local destination, for frames
/// from a port and from the vxlan device.
#[inline(always)]
pub fn local_port(config: &DatapathConfig, key: FdbKey) -> Option<Local> {
    // SAFETY (both gets): entries are only read; a concurrent update yields
    // a stale but well-formed value, and a stale ifindex at worst reaches
    // the bridge (the port is checked alive before a redirect).
    if let Some(ifindex) = unsafe { FDB_STATIC.get(key) } {
        return Some(Local {
            ifindex: *ifindex,
            key,
            learned: false,
        });
    }
    let entry = unsafe { FDB_LEARNED.get(key) }?;
    // Saturating: a frame on another CPU may have refreshed the entry
    // after this clock read, and a wrapped difference would age a live
    // entry out.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    if unsafe { bpf_ktime_get_ns() }.saturating_sub(entry.last_seen_ns) > config.ageing_ns {
        // Aged out: forget it here, so ageing works without the loader.
        forget_learned(key, entry.ifindex);
        return None;
    }
    Some(Local {
        ifindex: entry.ifindex,
        key,
        learned: true,
    })
}

/// Records that unicast `src` lives behind `port` (a port that does not
/// check sources: it routes or bridges for others). Refuses the static MAC
/// of another port, and a new MAC beyond the port's learn limit.
#[inline(always)]
fn learn(port: &Port, src: [u8; 6]) -> Result<(), Counter> {
    let key = FdbKey::new(src, 0);
    // SAFETY: read only, as in decide().
    if let Some(owner) = unsafe { FDB_STATIC.get(key) } {
        // Refusals are counted, never logged: a log record per frame on a
        // path the sender controls would be its lever on the ring buffer.
        if *owner != port.ifindex {
            return Err(Counter::DropSpoofedMac);
        }
        return Ok(());
    }
    // A container on another node owns this MAC: taking it here would
    // capture its traffic from this node's containers.
    // SAFETY: read only, as in decide().
    if unsafe { REMOTE_FDB.get(key) }.is_some() {
        return Err(Counter::DropSpoofedMac);
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match FDB_LEARNED.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: the pointer comes from a successful map lookup.
            let entry = unsafe { &mut *entry };
            if entry.ifindex == port.ifindex {
                if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
                    entry.last_seen_ns = now;
                }
                return Ok(());
            }
            // The MAC moved here.
            if !take_learn_slot(port) {
                return Err(Counter::DropLearnLimit);
            }
            release_learn_slot(entry.ifindex);
            entry.ifindex = port.ifindex;
            entry.last_seen_ns = now;
        }
        None => {
            if !take_learn_slot(port) {
                return Err(Counter::DropLearnLimit);
            }
            let entry = FdbEntry {
                ifindex: port.ifindex,
                _pad: 0,
                last_seen_ns: now,
            };
            // NOEXIST: another CPU may have learned it meanwhile.
            if FDB_LEARNED.insert(key, entry, BPF_NOEXIST.into()).is_err() {
                release_learn_slot(port.ifindex);
                return Ok(());
            }
        }
    }
    port.count(Counter::Learned);
    Ok(())
}

/// Removes a learned entry and frees its port's slot (only if this call
/// removed it: two CPUs ageing one entry free one slot).
#[inline(always)]
fn forget_learned(key: FdbKey, ifindex: u32) {
    if FDB_LEARNED.remove(key).is_ok() {
        release_learn_slot(ifindex);
    }
}

/// Counts one more learned entry for `port`, unless it holds its limit
/// already (or the loader gave it no count: it learns nothing then).
#[inline(always)]
fn take_learn_slot(port: &Port) -> bool {
    let Some(count) = PORT_LEARNED.get_ptr_mut(port.ifindex) else {
        return false;
    };
    // SAFETY: a u32 in a map value, shared by every CPU: read once, then
    // changed only atomically. Two CPUs may both pass the check; the port
    // then holds one entry over its limit, no more than one per CPU.
    unsafe {
        if *count >= port.policy().learn_limit {
            return false;
        }
        atomic_add(count, 1);
    }
    true
}

#[inline(always)]
fn release_learn_slot(ifindex: u32) {
    if let Some(count) = PORT_LEARNED.get_ptr_mut(ifindex) {
        // SAFETY: as in take_learn_slot().
        unsafe {
            if *count > 0 {
                atomic_add(count, u32::MAX); // wraps: minus one
            }
        }
    }
}

/// `*target += delta` atomically, as one XADD instruction: core has no
/// atomics for BPF, and XADD (without fetching the old value, which needs
/// Linux 5.12) is what every kernel netpath supports knows.
///
/// # Safety
/// `target` points to a u32 in a map value.
#[inline(always)]
unsafe fn atomic_add(target: *mut u32, delta: u32) {
    // SAFETY: one locked add to memory the caller vouches for.
    unsafe {
        core::arch::asm!("lock *(u32 *)({0} + 0) += {1}", in(reg) target, in(reg) delta as u64, options(nostack))
    };
}

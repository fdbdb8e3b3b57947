//! The forwarding decision both hooks share: parse the Ethernet header,
//! learn the source, and look the destination up in the FDB.

use aya_ebpf::{EbpfContext, bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use aya_log_ebpf::debug;
use netpath_common::{Counter, FdbEntry, FdbKey, PortState};
use network_types::eth::EthHdr;

use crate::maps::{CONFIG, FDB, PORT_STATE};

/// A learned entry's timestamp is refreshed at most this often, so steady
/// traffic does not write to the shared FDB on every frame.
const REFRESH_NS: u64 = 1_000_000_000;

pub enum Verdict {
    /// Send the frame straight to this host-side veth.
    Redirect(u32),
    /// Let the bridge handle it; the counter says why.
    Pass(Counter),
    /// Not even an Ethernet header.
    DropRunt,
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
        PORT_STATE.get_ptr_mut(ifindex).map(|state| Port { ifindex, state })
    }

    #[inline(always)]
    pub fn count(&self, counter: Counter) {
        // SAFETY: per-CPU value from a successful lookup; only this CPU
        // writes it while the program runs.
        unsafe { (*self.state).packets[counter as usize] += 1 };
    }

    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    #[inline(always)]
    fn mac(&self) -> [u8; 6] {
        // SAFETY: as in count().
        unsafe { (*self.state).mac }
    }
}

/// Decides what happens to the frame in `[data, data_end)` that arrived on
/// `port`. Costs two hash lookups in the common case (port, destination):
/// frames from the port's own container need no learning, and the clock
/// is read only for learned entries.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, port: &Port, data: usize, data_end: usize) -> Verdict {
    if data + EthHdr::LEN > data_end {
        return Verdict::DropRunt;
    }
    // SAFETY: bounds-checked just above; EthHdr is packed plain data.
    let eth = unsafe { &*(data as *const EthHdr) };
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass(Counter::PassUnknown);
    };
    let src = eth.src_addr;
    if src[0] & 1 != 0 || src == [0; 6] {
        port.count(Counter::BadSource);
    } else if config.learning != 0 && src != port.mac() {
        learn(ctx, port, src);
    }

    let dst = eth.dst_addr;
    if dst[0] & 1 != 0 {
        return Verdict::Pass(Counter::PassMulticast);
    }
    if config.bridge_mac == dst {
        return Verdict::Pass(Counter::PassHost);
    }
    let key = FdbKey::new(dst, 0);
    // SAFETY: entries are only read; a concurrent update yields a stale but
    // well-formed entry, and a stale ifindex at worst reaches the bridge.
    let Some(entry) = (unsafe { FDB.get(key) }) else {
        return Verdict::Pass(Counter::PassUnknown);
    };
    // Saturating: a frame on another CPU may have refreshed the entry after
    // this clock read, and a wrapped difference would age a live entry out.
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    if !entry.is_static() && unsafe { bpf_ktime_get_ns() }.saturating_sub(entry.last_seen_ns) > config.ageing_ns {
        // Aged out: forget it here, so ageing works without the loader.
        let _ = FDB.remove(key);
        return Verdict::Pass(Counter::PassUnknown);
    }
    if entry.ifindex == port.ifindex {
        return Verdict::Pass(Counter::PassHairpin);
    }
    Verdict::Redirect(entry.ifindex)
}

/// Records that unicast `src` lives behind `port`, unless it is the static
/// address of another port (spoofing).
#[inline(always)]
fn learn<C: EbpfContext>(ctx: &C, port: &Port, src: [u8; 6]) {
    let key = FdbKey::new(src, 0);
    match FDB.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: the pointer comes from a successful map lookup.
            let entry = unsafe { &mut *entry };
            if entry.is_static() {
                if entry.ifindex != port.ifindex {
                    debug!(ctx, "port {}: ignoring static MAC {:mac} of port {}", port.ifindex, src, entry.ifindex);
                    port.count(Counter::SpoofedSource);
                }
                return;
            }
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if entry.ifindex != port.ifindex {
                entry.ifindex = port.ifindex;
                entry.last_seen_ns = now;
                port.count(Counter::Learned);
            } else if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
                entry.last_seen_ns = now;
            }
        }
        None => {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let entry = FdbEntry { ifindex: port.ifindex, flags: 0, last_seen_ns: unsafe { bpf_ktime_get_ns() } };
            // NOEXIST: never overwrite a static entry the loader added meanwhile.
            if FDB.insert(key, entry, BPF_NOEXIST.into()).is_ok() {
                debug!(ctx, "port {}: learned {:mac}", port.ifindex, src);
                port.count(Counter::Learned);
            }
        }
    }
}

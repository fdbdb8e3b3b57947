//! The forwarding decision both hooks share: parse the Ethernet header,
//! learn the source, and look the destination up in the FDB.

use aya_ebpf::{EbpfContext, bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use aya_log_ebpf::debug;
use netpath_common::{Counter, FdbEntry, FdbKey};
use network_types::eth::EthHdr;

use crate::maps::{CONFIG, COUNTERS, FDB};

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

/// Decides what happens to the frame in `[data, data_end)` that arrived on
/// host-side veth `ingress`.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, data: usize, data_end: usize, ingress: u32) -> Verdict {
    if data + EthHdr::LEN > data_end {
        return Verdict::DropRunt;
    }
    // SAFETY: bounds-checked just above; EthHdr is packed plain data.
    let eth = unsafe { &*(data as *const EthHdr) };

    let Some(config) = CONFIG.get(0) else {
        return Verdict::Pass(Counter::PassUnknown);
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if config.learning != 0 {
        learn(ctx, eth.src_addr, ingress, now);
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
    match unsafe { FDB.get(key) } {
        None => Verdict::Pass(Counter::PassUnknown),
        Some(entry) if !entry.is_static() && now.wrapping_sub(entry.last_seen_ns) > config.ageing_ns => {
            // Aged out: forget it here, so ageing works without the loader.
            let _ = FDB.remove(key);
            Verdict::Pass(Counter::PassUnknown)
        }
        Some(entry) if entry.ifindex == ingress => Verdict::Pass(Counter::PassHairpin),
        Some(entry) => Verdict::Redirect(entry.ifindex),
    }
}

/// Records that `src` lives behind `ingress`, unless it is not a unicast
/// address or is the static address of another port (spoofing).
#[inline(always)]
fn learn<C: EbpfContext>(ctx: &C, src: [u8; 6], ingress: u32, now: u64) {
    if src[0] & 1 != 0 || src == [0; 6] {
        count(ingress, Counter::BadSource);
        return;
    }
    let key = FdbKey::new(src, 0);
    match FDB.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: the pointer comes from a successful map lookup.
            let entry = unsafe { &mut *entry };
            if entry.is_static() {
                if entry.ifindex != ingress {
                    debug!(ctx, "port {}: ignoring static MAC {:mac} of port {}", ingress, src, entry.ifindex);
                    count(ingress, Counter::SpoofedSource);
                }
            } else if entry.ifindex != ingress {
                entry.ifindex = ingress;
                entry.last_seen_ns = now;
                count(ingress, Counter::Learned);
            } else if now.wrapping_sub(entry.last_seen_ns) > REFRESH_NS {
                entry.last_seen_ns = now;
            }
        }
        None => {
            let entry = FdbEntry { ifindex: ingress, flags: 0, last_seen_ns: now };
            // NOEXIST: never overwrite a static entry the loader added meanwhile.
            if FDB.insert(key, entry, BPF_NOEXIST.into()).is_ok() {
                debug!(ctx, "port {}: learned {:mac}", ingress, src);
                count(ingress, Counter::Learned);
            }
        }
    }
}

#[inline(always)]
pub fn count(port: u32, counter: Counter) {
    if let Some(counters) = COUNTERS.get_ptr_mut(port) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { (*counters).packets[counter as usize] += 1 };
    }
}

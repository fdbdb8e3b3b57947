//! The containers' rate limits (`maps::RATE_LIMITS`, see
//! `netpath_common::rate`), checked by every program that takes a frame
//! from a container or hands one to it. A port over its limit counts the
//! drop itself, whichever program dropped the frame.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{Counter, DatapathConfig, rate::RateLimit};

use crate::{forward::Port, maps::RATE_LIMITS};

/// Whether the container behind `ifindex` may send `len` more bytes now.
#[inline(always)]
pub fn admit_from(config: &DatapathConfig, ifindex: u32, len: u32) -> bool {
    admit(config, ifindex, len, Counter::DropEgressRate, |r| &mut r.egress)
}

/// Whether the container behind `ifindex` may be sent `len` more bytes now.
#[inline(always)]
pub fn admit_to(config: &DatapathConfig, ifindex: u32, len: u32) -> bool {
    admit(config, ifindex, len, Counter::DropIngressRate, |r| &mut r.ingress)
}

#[inline(always)]
fn admit(
    config: &DatapathConfig,
    ifindex: u32,
    len: u32,
    over: Counter,
    way: fn(&mut netpath_common::rate::PortRates) -> &mut RateLimit,
) -> bool {
    if config.rate_limits == 0 {
        return true;
    }
    let Some(rates) = RATE_LIMITS.get_ptr_mut(ifindex) else {
        return true;
    };
    // SAFETY: a value from a successful lookup, shared by every CPU: a
    // race between two costs one frame's worth (see RateLimit::admit).
    // SAFETY (clock): bpf_ktime_get_ns has no preconditions.
    let admitted = unsafe { way(&mut *rates).admit(bpf_ktime_get_ns(), len) };
    if !admitted && let Some(port) = Port::state(ifindex) {
        port.count(over);
    }
    admitted
}

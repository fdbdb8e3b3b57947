//! Copies of redirected frames for `netpath trace` (tcpdump on a host veth
//! cannot see them), and of frames a network policy denied. One branch on
//! the config when tracing is off.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, helpers::bpf_ktime_get_ns};
use netpath_common::{Counter, DatapathConfig, TRACE_DENIED, TRACE_SNAPLEN, TraceEvent};

use crate::{forward::Port, maps::TRACE};

/// Records a frame of `len` bytes redirected from `ingress` to `egress`,
/// if `config` says a tracer is there; `load(dst, n)` copies its first `n`
/// bytes (1..=TRACE_SNAPLEN) to `dst`.
#[inline(always)]
pub fn redirected(
    config: &DatapathConfig,
    ingress: &Port,
    egress: u32,
    len: u32,
    load: impl FnOnce(*mut u8, u32) -> i64,
) {
    if !record(config, ingress.ifindex(), egress, len, load) {
        // The tracer is behind: say so in its counters.
        ingress.count(Counter::TraceLost);
    }
}

/// Records a frame that came in by `ingress` and a network policy
/// dropped, as [`redirected`] records those it redirects.
#[inline(always)]
pub fn denied(
    config: &DatapathConfig,
    ingress: u32,
    len: u32,
    load: impl FnOnce(*mut u8, u32) -> i64,
) {
    // (A frame lost to a full ring is counted where a port counts it; a
    // denial always is, by the port of the container its policy protects.)
    let _ = record(config, ingress, TRACE_DENIED, len, load);
}

/// Copies the frame to the ring if a tracer is there; false if the ring
/// had no room for it.
#[inline(always)]
fn record(
    config: &DatapathConfig,
    ingress: u32,
    egress: u32,
    len: u32,
    load: impl FnOnce(*mut u8, u32) -> i64,
) -> bool {
    let until = config.trace_until_ns;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    if until == 0 || len == 0 || unsafe { bpf_ktime_get_ns() } >= until {
        return true;
    }
    let Some(mut entry) = TRACE.reserve::<TraceEvent>(0) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    let captured = bounded_snaplen(len);
    // SAFETY: `event` points at a reserved ring buffer slot of TraceEvent size.
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).ingress = ingress;
        (*event).egress = egress;
        (*event).len = len;
        (*event).captured = captured;
    }
    if load(unsafe { (*event).data.as_mut_ptr() }, captured) != 0 {
        entry.discard(0);
        return true;
    }
    // No wakeup per frame: `netpath trace` drains the ring on a timer,
    // which costs the datapath far less than waking it up each time.
    entry.submit(BPF_RB_NO_WAKEUP.into());
    true
}

/// `min(len, TRACE_SNAPLEN)` for `len >= 1`, computed so that the verifier
/// sees the result in 1..=TRACE_SNAPLEN, as the copy helpers' length must
/// be. The mask is in assembly because LLVM would otherwise fold it into a
/// compare on another copy of the register, which the verifier cannot use.
#[inline(always)]
fn bounded_snaplen(len: u32) -> u32 {
    let mut n = (len.min(TRACE_SNAPLEN as u32) - 1) as u64;
    // SAFETY: one ALU instruction on a register we own.
    unsafe { core::arch::asm!("{0} &= 127", inout(reg) n, options(pure, nomem, nostack)) };
    const _: () = assert!(TRACE_SNAPLEN == 128, "the mask above is TRACE_SNAPLEN - 1");
    n as u32 + 1
}

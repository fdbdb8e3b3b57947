//! XDP hook on the host-side veth ends.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use netpath_common::{Counter, TRACE_SNAPLEN};

use crate::{
    forward::{Port, Verdict, decide},
    maps::PORTS,
    trace,
};

#[xdp]
pub fn netpath_xdp(ctx: XdpContext) -> u32 {
    let Some(port) = Port::lookup(ctx.ingress_ifindex() as u32) else {
        return xdp_action::XDP_PASS;
    };
    match decide(&ctx, &port, ctx.data(), ctx.data_end()) {
        Verdict::Redirect(dst) => match PORTS.redirect(dst, xdp_action::XDP_PASS.into()) {
            Ok(action) if action == xdp_action::XDP_REDIRECT => {
                port.count(Counter::Redirected);
                let len = (ctx.data_end() - ctx.data()) as u32;
                trace::redirected(port.ifindex(), dst, len, |to, n| copy_frame(&ctx, to, n));
                action
            }
            _ => {
                port.count(Counter::PassRedirectFailed);
                xdp_action::XDP_PASS
            }
        },
        // The loader puts overlays in tc mode only (XDP cannot set tunnel
        // keys): never met here, and the bridge is the safe answer.
        Verdict::Tunnel(_) | Verdict::AnswerArp(_) | Verdict::Flood => {
            port.count(Counter::PassUnknown);
            xdp_action::XDP_PASS
        }
        Verdict::Pass(reason) => {
            port.count(reason);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(reason) => {
            port.count(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// Copies the frame's first `n` bytes (1..=TRACE_SNAPLEN) to `to` by direct
/// packet access: `bpf_xdp_load_bytes` would do it in one call, but that
/// helper needs Linux 5.18 and netpath runs on 5.10. This program is not
/// `xdp.frags`, so the whole frame is in `[data, data_end)`.
/// Eight bytes at a time, then the tail byte by byte; every access is
/// checked against `data_end` where the verifier can see it.
#[inline(always)]
fn copy_frame(ctx: &XdpContext, to: *mut u8, n: u32) -> i64 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let n = n as usize;
    let mut off = 0;
    while off + 8 <= n && off < TRACE_SNAPLEN {
        if data + off + 8 > end {
            return -1;
        }
        // SAFETY: the 8 bytes at `data + off` are inside the frame (checked
        // above) and `to` has room for `n` bytes.
        unsafe { (to.add(off) as *mut u64).write_unaligned(load_u64(data + off)) };
        off += 8;
    }
    while off < n && off < TRACE_SNAPLEN {
        if after_byte(data + off) > end {
            return -1;
        }
        // SAFETY: as above, for one byte.
        unsafe { *to.add(off) = *((data + off) as *const u8) };
        off += 1;
    }
    0
}

/// One 8-byte load from the frame at any alignment (frames often start
/// 2 bytes past an 8-byte boundary). In assembly because `read_unaligned`
/// becomes eight byte loads and shifts on BPF, where the JITs of x86 and
/// arm64 do unaligned loads natively and the verifier allows them.
///
/// # Safety
/// `[addr, addr + 8)` must be inside the frame, checked against `data_end`.
#[inline(always)]
unsafe fn load_u64(addr: usize) -> u64 {
    let value: u64;
    // SAFETY: the caller checked the bounds; one load instruction.
    unsafe {
        core::arch::asm!("{0} = *(u64 *)({1} + 0)", lateout(reg) value, in(reg) addr, options(readonly, nostack))
    };
    value
}

/// `addr + 1`, computed where LLVM cannot see it: it would turn
/// `addr + 1 > end` into `addr >= end`, from which the verifier learns
/// no packet range and refuses the load that follows.
#[inline(always)]
fn after_byte(mut addr: usize) -> usize {
    // SAFETY: one ALU instruction on a register we own.
    unsafe { core::arch::asm!("{0} += 1", inout(reg) addr, options(pure, nomem, nostack)) };
    addr
}

/// Attached to the container-side veth ends: a veth only accepts frames
/// redirected into it by XDP when its peer runs an XDP program (or NAPI).
#[xdp]
pub fn netpath_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

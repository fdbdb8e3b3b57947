//! XDP hook on the host-side veth ends.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use netpath_common::{Counter, TRACE_SNAPLEN};

use crate::{
    forward::{Port, Verdict, decide},
    frame::Frame,
    maps::{POLICY_XDP, PORTS},
    policy, trace,
};

#[xdp]
pub fn netpath_xdp(ctx: XdpContext) -> u32 {
    forward::<false>(ctx)
}

/// `netpath_xdp` judging network policy too: tail-called by it while a
/// policy is in force.
#[xdp]
pub fn netpath_xdp_pol(ctx: XdpContext) -> u32 {
    forward::<true>(ctx)
}

#[inline(always)]
fn forward<const POLICY: bool>(ctx: XdpContext) -> u32 {
    let Some(port) = Port::lookup(ctx.ingress_ifindex() as u32) else {
        return xdp_action::XDP_PASS;
    };
    if policy::hand_to_judge::<POLICY, _>(&ctx, &POLICY_XDP, 0) {
        port.count(Counter::DropPolicyUnloaded);
        return xdp_action::XDP_DROP;
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    match decide::<POLICY>(&port, &frame, frame.len() as u32) {
        // The redirect looks the port up in the devmap itself, no lookup of
        // our own first: a port that is gone is missing there, and the
        // helper then returns the flags' low bits, XDP_PASS (since 5.3).
        Verdict::Redirect(dst, config) => {
            match PORTS.redirect(dst.ifindex, xdp_action::XDP_PASS.into()) {
                Ok(action) => {
                    port.count(Counter::Redirected);
                    let len = frame.len() as u32;
                    trace::redirected(config, &port, dst.ifindex, len, |to, n| {
                        copy_frame(&frame, to, n)
                    });
                    action
                }
                Err(fallback) => {
                    dst.gone();
                    port.count(Counter::PassRedirectFailed);
                    fallback
                }
            }
        }
        // The loader puts overlays in tc mode only (XDP cannot set tunnel
        // keys): never met here, and the bridge is the safe answer.
        Verdict::Tunnel(..) | Verdict::AnswerArp(_) | Verdict::Flood => {
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
        Verdict::Limited => xdp_action::XDP_DROP,
        Verdict::Denied(config) => {
            let len = frame.len() as u32;
            trace::denied(config, port.ifindex(), len, |to, n| copy_frame(&frame, to, n));
            xdp_action::XDP_DROP
        }
    }
}

/// Copies the frame's first `n` bytes (1..=TRACE_SNAPLEN) to `to` by direct
/// packet access: `bpf_xdp_load_bytes` would do it in one call, but that
/// helper needs Linux 5.18 and netpath runs on 5.10. This program is not
/// `xdp.frags`, so the whole frame is in the frame's bounds.
/// Eight bytes at a time, then the tail byte by byte.
#[inline(always)]
fn copy_frame(frame: &Frame, to: *mut u8, n: u32) -> i64 {
    let n = n as usize;
    let mut off = 0;
    while off + 8 <= n && off < TRACE_SNAPLEN {
        let Ok(word) = frame.at::<[u8; 8]>(off) else {
            return -1;
        };
        // SAFETY: `word` is inside the frame and `to` has room for `n` bytes.
        unsafe { (to.add(off) as *mut u64).write_unaligned(load_u64(word)) };
        off += 8;
    }
    while off < n && off < TRACE_SNAPLEN {
        let Ok(byte) = frame.at::<u8>(off) else {
            return -1;
        };
        // SAFETY: as above, for one byte.
        unsafe { *to.add(off) = *byte };
        off += 1;
    }
    0
}

/// One 8-byte load from the frame at any alignment (frames often start
/// 2 bytes past an 8-byte boundary). In assembly because `read_unaligned`
/// becomes eight byte loads and shifts on BPF, where the JITs of x86 and
/// arm64 do unaligned loads natively and the verifier allows them.
#[inline(always)]
fn load_u64(word: &[u8; 8]) -> u64 {
    let value: u64;
    // SAFETY: `word` is 8 bytes of the frame; one load instruction.
    unsafe {
        core::arch::asm!("{0} = *(u64 *)({1} + 0)", lateout(reg) value, in(reg) word.as_ptr(), options(readonly, nostack))
    };
    value
}

/// Attached to the container-side veth ends: a veth only accepts frames
/// redirected into it by XDP when its peer runs an XDP program (or NAPI).
#[xdp]
pub fn netpath_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

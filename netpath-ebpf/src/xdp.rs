//! XDP hook on the host-side veth ends.

use aya_ebpf::{EbpfContext, bindings::xdp_action, helpers::bpf_xdp_load_bytes, macros::xdp, programs::XdpContext};
use netpath_common::Counter;

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
                // SAFETY: the helper copies at most `n` bytes of this frame into `to`.
                trace::redirected(port.ifindex(), dst, len, |to, n| unsafe {
                    bpf_xdp_load_bytes(ctx.as_ptr().cast(), 0, to.cast(), n)
                });
                action
            }
            _ => {
                port.count(Counter::PassRedirectFailed);
                xdp_action::XDP_PASS
            }
        },
        Verdict::Pass(reason) => {
            port.count(reason);
            xdp_action::XDP_PASS
        }
        Verdict::DropRunt => {
            port.count(Counter::DropRunt);
            xdp_action::XDP_DROP
        }
    }
}

/// Attached to the container-side veth ends: a veth only accepts frames
/// redirected into it by XDP when its peer runs an XDP program (or NAPI).
#[xdp]
pub fn netpath_peer(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

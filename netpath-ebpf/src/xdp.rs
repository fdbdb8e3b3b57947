//! XDP hook on the host-side veth ends.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use netpath_common::Counter;

use crate::{
    forward::{Port, Verdict, decide},
    maps::PORTS,
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

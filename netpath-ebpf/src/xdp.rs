//! XDP hook on the host-side veth ends.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use netpath_common::Counter;

use crate::{
    forward::{Verdict, count, decide},
    maps::PORTS,
};

#[xdp]
pub fn netpath_xdp(ctx: XdpContext) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    match decide(&ctx, ctx.data(), ctx.data_end(), ingress) {
        Verdict::Redirect(port) => match PORTS.redirect(port, xdp_action::XDP_PASS.into()) {
            Ok(action) if action == xdp_action::XDP_REDIRECT => {
                count(ingress, Counter::Redirected);
                action
            }
            _ => {
                count(ingress, Counter::PassRedirectFailed);
                xdp_action::XDP_PASS
            }
        },
        Verdict::Pass(reason) => {
            count(ingress, reason);
            xdp_action::XDP_PASS
        }
        Verdict::DropRunt => {
            count(ingress, Counter::DropRunt);
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

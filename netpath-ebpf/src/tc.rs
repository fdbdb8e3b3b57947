//! tc (clsact/tcx) ingress hook on the host-side veth ends.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use netpath_common::Counter;

use crate::forward::{Verdict, count, decide};

#[classifier]
pub fn netpath_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    match decide(&ctx, ctx.data(), ctx.data_end(), ingress) {
        Verdict::Redirect(port) => {
            // Peer redirect: the frame enters the destination container's
            // eth0 directly, skipping the host veth and the backlog queue.
            // SAFETY: helper call with plain integer arguments.
            let action = unsafe { bpf_redirect_peer(port, 0) } as i32;
            if action == TC_ACT_REDIRECT {
                count(ingress, Counter::Redirected);
                action
            } else {
                count(ingress, Counter::PassRedirectFailed);
                TC_ACT_OK
            }
        }
        Verdict::Pass(reason) => {
            count(ingress, reason);
            TC_ACT_OK
        }
        Verdict::DropRunt => {
            count(ingress, Counter::DropRunt);
            TC_ACT_SHOT
        }
    }
}

//! tc hook on the host-side veth ends that only enforces network policy
//! and rate limits, attached only where a policy isolates a container or
//! a container has an ingress rate limit. On the egress (every mode):
//! frames the bridge hands a container, which no forwarding program
//! judged (from the host's stack, a subnet it routes, a broadcast); those a
//! container's own program judged are a known flow here, one lookup. In
//! bridge mode also on the ingress (policy only: the loader refuses rate
//! limits in bridge mode): frames from the containers, so bridge mode
//! enforces what the other modes do, without forwarding.

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_skb_load_bytes,
    macros::classifier,
    programs::TcContext,
};

use netpath_common::{TC_INDEX_JUDGED, programs::POLICY_SLOT_POLICE};

use crate::{
    frame::Frame,
    maps::{CONFIG, POLICY_TC},
    policy, rate,
    tc::pull_checked_headers,
    trace,
};

#[classifier]
pub fn netpath_police(ctx: TcContext) -> i32 {
    police::<false>(ctx)
}

/// `netpath_police` judging network policy too: tail-called by it while a
/// policy is in force.
#[classifier]
pub fn netpath_plc_pol(ctx: TcContext) -> i32 {
    police::<true>(ctx)
}

#[inline(always)]
fn police<const POLICY: bool>(ctx: TcContext) -> i32 {
    // A netkit datapath's forwarding program judged this frame already on
    // its way here (see TC_INDEX_JUDGED), and cleared the mark on every
    // other.
    // SAFETY: the context pointer is valid for the program's run.
    let skb = unsafe { &mut *ctx.skb.skb };
    if skb.tc_index == TC_INDEX_JUDGED && CONFIG.get(0).is_some_and(|c| c.netkit != 0) {
        skb.tc_index = 0;
        return TC_ACT_OK;
    }
    if policy::hand_to_judge::<POLICY, _>(&ctx, &POLICY_TC, POLICY_SLOT_POLICE) {
        return TC_ACT_SHOT;
    }
    if POLICY {
        // Too short for the headers it announces: not IP enough to judge.
        if pull_checked_headers(&ctx).is_err() {
            return TC_ACT_SHOT;
        }
        if policy::admit(&Frame::new(ctx.data(), ctx.data_end())).is_err() {
            if let Some(config) = CONFIG.get(0) {
                // SAFETY: the context pointer is valid for the program's
                // run; the helper copies at most `n` bytes of this skb.
                let ifindex = unsafe { (*ctx.skb.skb).ifindex };
                trace::denied(config, ifindex, ctx.len(), |to, n| unsafe {
                    bpf_skb_load_bytes(ctx.as_ptr(), 0, to.cast(), n)
                });
            }
            return TC_ACT_SHOT;
        }
    }
    // Frames reach a container by the bridge as they do by a redirect: at
    // the container's one ingress rate.
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match CONFIG.get(0) {
        Some(config) if !rate::admit_to(config, ifindex, ctx.len()) => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

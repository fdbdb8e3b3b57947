//! tc hook of the ports: tc ingress (clsact or tcx) on the host-side veth
//! ends, or in netkit mode the netkit peer hook, which runs as the
//! container transmits. The same program serves both; only how a frame
//! enters another container differs ([`into_container`]).

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_change_type, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use netpath_common::{Counter, DatapathConfig, TC_INDEX_JUDGED, programs::POLICY_SLOT_FORWARD};

use crate::{
    flood,
    forward::{Port, Verdict, decide},
    frame::Frame,
    maps::{FLOOD, POLICY_TC},
    overlay, policy, source, trace,
};

/// `skb->pkt_type` values (linux/if_packet.h).
const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;

#[classifier]
pub fn netpath_tc(ctx: TcContext) -> i32 {
    forward::<false>(ctx)
}

/// `netpath_tc` judging network policy too: tail-called by it while a
/// policy is in force.
#[classifier]
pub fn netpath_tc_pol(ctx: TcContext) -> i32 {
    forward::<true>(ctx)
}

#[inline(always)]
fn forward<const POLICY: bool>(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let Some(port) = Port::lookup(unsafe { (*ctx.skb.skb).ifindex }) else {
        return TC_ACT_OK;
    };
    // No frame leaves here with another's mark (see TC_INDEX_JUDGED). Only
    // a netkit datapath honours the mark, but the clear is one store into
    // the skb, cheaper than asking the config which datapath this is.
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).tc_index = 0 };
    if policy::hand_to_judge::<POLICY, _>(&ctx, &POLICY_TC, POLICY_SLOT_FORWARD) {
        port.count(Counter::DropPolicyUnloaded);
        return TC_ACT_SHOT;
    }
    // The receive path took an 802.1Q tag out of the frame before this
    // hook (XDP still sees it in the frame): a tagged frame is refused
    // here as the check refuses it there.
    // SAFETY: the context pointer is valid for the program's run.
    if port.policy().checks_source() && unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        port.count(Counter::DropProtocol);
        return TC_ACT_SHOT;
    }
    if pull_checked_headers(&ctx).is_err() {
        port.count(Counter::DropMalformed);
        return TC_ACT_SHOT;
    }
    let mut frame = Frame::new(ctx.data(), ctx.data_end());
    match decide::<POLICY>(&port, &frame, ctx.len()) {
        Verdict::Redirect(dst, config) => {
            // bpf_redirect_peer() accepts any ifindex (a missing device
            // drops the frame after the program): ask the devmap first.
            if dst.alive() && deliver(&ctx, config, dst.ifindex) {
                port.count(Counter::Redirected);
                // SAFETY: the helper copies at most `n` bytes of this skb into `to`.
                trace::redirected(config, &port, dst.ifindex, ctx.len(), |to, n| unsafe {
                    bpf_skb_load_bytes(ctx.as_ptr(), 0, to.cast(), n)
                });
                TC_ACT_REDIRECT
            } else {
                port.count(Counter::PassRedirectFailed);
                TC_ACT_OK
            }
        }
        Verdict::Tunnel(node, config) => {
            // Out of the vxlan device, which encapsulates it (GSO packets
            // whole: the device segments them, or the underlay NIC does).
            // SAFETY: helper call with plain integer arguments.
            if overlay::set_tunnel(&ctx, config, &node)
                && unsafe { bpf_redirect(config.vxlan_ifindex, 0) } as i32 == TC_ACT_REDIRECT
            {
                port.count(Counter::Encapsulated);
                TC_ACT_REDIRECT
            } else {
                port.count(Counter::PassRedirectFailed);
                TC_ACT_OK
            }
        }
        Verdict::AnswerArp(mac) => {
            // The reply goes back out of this port, into the container
            // that asked.
            // SAFETY: helper call with plain integer arguments.
            if overlay::make_arp_reply(&mut frame, mac)
                && unsafe { bpf_redirect(port.ifindex(), 0) } as i32 == TC_ACT_REDIRECT
            {
                port.count(Counter::ArpAnswered);
                TC_ACT_REDIRECT
            } else {
                port.count(Counter::DropMalformed);
                TC_ACT_SHOT
            }
        }
        Verdict::Flood => {
            port.count(Counter::Flooded);
            // SAFETY: the context pointer is valid for the program's run;
            // the FLOOD slot holds a tc program, as this one is, which ends
            // the run with the frame's own verdict.
            unsafe {
                (*ctx.skb.skb).cb[flood::NEXT_NODE_CB] = 0;
                FLOOD.tail_call(&ctx, 0);
            }
            // Only with the slot empty (a datapath joining its overlay):
            // the bridge floods the frame to this node's ports alone.
            TC_ACT_OK
        }
        Verdict::Pass(reason) => {
            port.count(reason);
            TC_ACT_OK
        }
        Verdict::Drop(reason) => {
            port.count(reason);
            TC_ACT_SHOT
        }
        Verdict::Limited => TC_ACT_SHOT,
        Verdict::Denied(config) => {
            // SAFETY: the helper copies at most `n` bytes of this skb into `to`.
            trace::denied(config, port.ifindex(), ctx.len(), |to, n| unsafe {
                bpf_skb_load_bytes(ctx.as_ptr(), 0, to.cast(), n)
            });
            TC_ACT_SHOT
        }
    }
}

/// Makes linear the headers the decision reads (the source check, the
/// tunnel rule), and no more. A GSO
/// skb (TCP, UDP) comes with only its headers linear and its payload in
/// pages: pulling payload too would copy it, often into a reallocated
/// head, for every such skb. A raw socket can also leave headers in the
/// pages. Frames linear whole (every small one) cost one comparison.
#[inline(always)]
pub fn pull_checked_headers(ctx: &TcContext) -> Result<(), i64> {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear >= ctx.len() {
        return Ok(());
    }
    // The EtherType and the first bytes of the network header say how far
    // the decision reads. A frame whose linear part ends before them (an
    // odd one from a raw socket) gets all the decision may read.
    let want = match Frame::new(ctx.data(), ctx.data_end()).at::<[u8; 12]>(12) {
        Ok(head) => source::header_len(head),
        Err(_) => source::HEADROOM,
    };
    let want = want.min(ctx.len());
    if linear >= want {
        return Ok(());
    }
    ctx.pull_data(want)
}

/// Sends the skb into the container behind port `port` from this hook.
/// At tc ingress, [`into_container`]. In netkit mode this program runs in
/// the sending container's transmit instead, where the kernel drops a peer
/// redirect: the frame leaves by the destination's primary device, whose
/// transmit hands it to the container (one backlog queue, as a veth's),
/// marked as judged.
#[inline(always)]
fn deliver(ctx: &TcContext, config: &DatapathConfig, port: u32) -> bool {
    if config.netkit == 0 {
        return into_container(ctx, port);
    }
    // SAFETY: the context pointer is valid for the program's run; the
    // helper takes plain integers.
    unsafe {
        (*ctx.skb.skb).tc_index = TC_INDEX_JUDGED;
        bpf_redirect(port, 0) as i32 == TC_ACT_REDIRECT
    }
}

/// Sends the skb into the container behind host-side port `port` (its
/// peer: a veth's or a netkit primary's), straight into its namespace,
/// skipping the host device and the backlog queue; false if the helper
/// refused. Only from tc ingress (the kernel drops a peer redirect from
/// anywhere else). The caller checked that the port is alive: the helper
/// accepts any ifindex (the kernel would drop the frame later for one
/// naming no device).
#[inline(always)]
pub fn into_container(ctx: &TcContext, port: u32) -> bool {
    // The frame arrived addressed to a container's MAC, not to the device
    // it came in by, so the kernel marked it for another host; kernels
    // before 6.1 keep that mark across bpf_redirect_peer() and the
    // container drops the frame (measured on 5.10).
    // SAFETY: the context pointer is valid for the program's run; the
    // helpers take the skb, a packet type, plain integers.
    unsafe {
        if (*ctx.skb.skb).pkt_type == PACKET_OTHERHOST {
            bpf_skb_change_type(ctx.skb.skb, PACKET_HOST);
        }
        bpf_redirect_peer(port, 0) as i32 == TC_ACT_REDIRECT
    }
}

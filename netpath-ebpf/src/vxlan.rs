//! tc ingress hook on the node's vxlan device: frames from other nodes,
//! decapsulated by the kernel, with the outer header's addresses and VNI in
//! the tunnel key. One program per overlay (datapath) is attached; each
//! takes the frames of its VNI and lets the others pass to the next one.
//! Frames no overlay takes end in the vxlan device, which has no bridge and
//! no address: the stack drops them (two overlays never see each other's).
//! A frame a node sends is checked as a port checks its container: the
//! node must be in `NODES`, the inner source MAC one of its containers in
//! `REMOTE_FDB`, and the rest as `source` checks it against what that
//! container may send.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_load_bytes},
    macros::classifier,
    programs::TcContext,
};
use netpath_common::{
    Counter, DatapathConfig, FdbKey, NodeAddr, OverlayCounter, programs::POLICY_SLOT_VXLAN,
};
use network_types::eth::EthHdr;

use crate::{
    forward::{Local, Port, local_port},
    frame::Frame,
    maps::{CONFIG, NODES, OVERLAY_STATS, POLICY_TC, REMOTE_FDB},
    overlay::TUNNEL_KEY_SIZE,
    policy, rate, source,
    tc::{into_container, pull_checked_headers},
    trace,
};

#[classifier]
pub fn netpath_vxlan(ctx: TcContext) -> i32 {
    decapsulated::<false>(ctx)
}

/// `netpath_vxlan` judging network policy too: tail-called by it while a
/// policy is in force.
#[classifier]
pub fn netpath_vxl_pol(ctx: TcContext) -> i32 {
    decapsulated::<true>(ctx)
}

#[inline(always)]
fn decapsulated<const POLICY: bool>(ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let overlay = &config.overlay;
    if overlay.vni == 0 {
        return TC_ACT_UNSPEC;
    }
    if policy::hand_to_judge::<POLICY, _>(&ctx, &POLICY_TC, POLICY_SLOT_VXLAN) {
        return count(OverlayCounter::DropPolicyUnloaded, TC_ACT_SHOT);
    }
    let Some(node) = tunnel_source(&ctx, overlay.underlay_ipv6 != 0, overlay.vni) else {
        return TC_ACT_UNSPEC; // another overlay's frame
    };
    if !is_node(node) {
        return count(OverlayCounter::DropUnknownNode, TC_ACT_SHOT);
    }
    from_node::<POLICY>(&ctx, config, node)
}

/// Whether `node` is one of this overlay's: only they may put frames into
/// its containers (a forged VXLAN packet from anywhere on the underlay
/// must not).
#[inline(always)]
pub fn is_node(node: NodeAddr) -> bool {
    // SAFETY: read only.
    unsafe { NODES.get(node) }.is_some()
}

/// The decision on a frame that node `node` (one of the overlay's) sent,
/// decapsulated, for both places that decapsulate: the vxlan device's hook
/// and the underlay's ([`crate::underlay`]).
#[inline(always)]
pub fn from_node<const POLICY: bool>(
    ctx: &TcContext,
    config: &DatapathConfig,
    node: NodeAddr,
) -> i32 {
    let overlay = &config.overlay;
    if pull_checked_headers(ctx).is_err() {
        return count(OverlayCounter::DropMalformed, TC_ACT_SHOT);
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let Ok(eth) = frame.at::<EthHdr>(0) else {
        return count(OverlayCounter::DropMalformed, TC_ACT_SHOT);
    };
    // The inner frame is checked as the sending node's port checks its
    // container: a node sends only its own containers' frames (a frame
    // from anywhere else is a forgery, or a container of that node that
    // got past its port), each only from that container's addresses.
    // SAFETY: read only; the loader writes whole values.
    let sender = unsafe { REMOTE_FDB.get(FdbKey::new(eth.src_addr, 0)) };
    let Some(sender) = sender.filter(|sender| sender.node == node) else {
        return count(OverlayCounter::DropSpoofedMac, TC_ACT_SHOT);
    };
    if let Err(reason) = source::check(&sender.policy, &frame) {
        return count(overlay_reason(reason), TC_ACT_SHOT);
    }
    // The sender's node judged its egress; the receivers' ingress is
    // judged here (the container it protects counts the denial).
    if POLICY && policy::admit(&frame).is_err() {
        // SAFETY: the context pointer is valid for the program's run; the
        // helper copies at most `n` bytes of this skb into `to`.
        trace::denied(config, unsafe { (*ctx.skb.skb).ifindex }, ctx.len(), |to, n| unsafe {
            bpf_skb_load_bytes(ctx.as_ptr(), 0, to.cast(), n)
        });
        return TC_ACT_SHOT;
    }
    let dst = eth.dst_addr;
    if dst[0] & 1 != 0 {
        // Out of the bridge device: the bridge floods it to its ports, the
        // local containers (never back to a node: only the ports' own
        // programs replicate, and frames leaving the bridge meet none).
        // SAFETY: helper call with plain integer arguments.
        if unsafe { bpf_redirect(overlay.bridge_ifindex, 0) } as i32 == TC_ACT_REDIRECT {
            return count(OverlayCounter::FloodedIn, TC_ACT_REDIRECT);
        }
        return count(OverlayCounter::DropNoPort, TC_ACT_SHOT);
    }
    let Some(port) = local_port(config, FdbKey::new(dst, 0)).filter(Local::alive) else {
        return count(OverlayCounter::DropNoPort, TC_ACT_SHOT);
    };
    let port = port.ifindex;
    if !rate::admit_to(config, port, ctx.len()) {
        return TC_ACT_SHOT; // the port counted it
    }
    if !into_container(ctx, port) {
        return count(OverlayCounter::DropNoPort, TC_ACT_SHOT);
    }
    if let Some(port) = Port::state(port) {
        port.count(Counter::Decapsulated);
    }
    count(OverlayCounter::Decapsulated, TC_ACT_REDIRECT)
}

/// The outer source address of a frame of VNI `vni` whose outer header is
/// of the underlay's family, or None (another overlay's frame).
#[inline(always)]
fn tunnel_source(ctx: &TcContext, ipv6: bool, vni: u32) -> Option<NodeAddr> {
    // SAFETY: bpf_tunnel_key is plain integers.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let flags = if ipv6 { BPF_F_TUNINFO_IPV6 as u64 } else { 0 };
    // SAFETY: the key lives on this stack frame; the size is within it.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, TUNNEL_KEY_SIZE, flags) } != 0
        || key.tunnel_id != vni
    {
        return None;
    }
    let mut node = NodeAddr::default();
    if ipv6 {
        node.family = 6;
        // SAFETY: remote_ipv6 is 16 bytes in network order, as is the address.
        unsafe {
            core::ptr::copy_nonoverlapping(
                key.__bindgen_anon_1.remote_ipv6.as_ptr().cast::<u8>(),
                node.addr.as_mut_ptr(),
                16,
            )
        };
    } else {
        node.family = 4;
        // SAFETY: the union holds the IPv4 address (host order) without the flag.
        let ip = unsafe { key.__bindgen_anon_1.remote_ipv4 };
        node.addr[..4].copy_from_slice(&ip.to_be_bytes());
    }
    Some(node)
}

/// The vxlan device's counter for a reason the source check gave.
#[inline(always)]
fn overlay_reason(reason: Counter) -> OverlayCounter {
    match reason {
        Counter::DropSpoofedMac => OverlayCounter::DropSpoofedMac,
        Counter::DropSpoofedIp => OverlayCounter::DropSpoofedIp,
        Counter::DropMalformed => OverlayCounter::DropMalformed,
        _ => OverlayCounter::DropProtocol,
    }
}

/// Counts `counter` in OVERLAY_STATS and returns `action`.
#[inline(always)]
pub fn count(counter: OverlayCounter, action: i32) -> i32 {
    if let Some(stats) = OVERLAY_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value; only this CPU writes it while the program runs.
        unsafe { (*stats).packets[counter as usize] += 1 };
    }
    action
}

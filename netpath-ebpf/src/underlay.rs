//! tc ingress hook on the interface that holds the node's underlay address
//! (a tcx link, Linux 6.6+): a VXLAN packet of this datapath's overlay,
//! from one of its nodes to one of its containers, is decapsulated here and
//! handed to the container, instead of going up the stack to the node's
//! vxlan device. That device's receive path allocates a metadata dst for
//! every packet and frees it through RCU: on one TCP stream, 5,400 RCU
//! softirqs a second that preempt the sender (measured: 7-9% of the
//! stream's throughput). The frame then meets the same decision as on the
//! vxlan device ([`vxlan::from_node`]).
//!
//! Whatever this hook does not take passes untouched to the next program
//! and the stack, and so to the vxlan device's hook, which handles
//! everything: broadcast, ARP, a policy in force (judged there), other
//! overlays, packets to the node's other addresses, unknown nodes (dropped
//! and counted there), IPv6 underlays, outer checksums, IP options and
//! fragments.

use aya_ebpf::{
    bindings::{
        BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_csum_level, bpf_set_hash_invalid},
    macros::classifier,
    programs::TcContext,
};
use netpath_common::{DatapathConfig, NodeAddr, OverlayCounter, VXLAN_PORT};

use crate::{
    maps::CONFIG,
    policy,
    proto::{ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP},
    vxlan,
};

const ETH_LEN: usize = 14;
/// An outer IPv4 header without options (a packet with options passes).
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;
/// What decapsulation removes after the outer Ethernet header, whose place
/// the inner one takes.
const REMOVED: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
/// The outer headers and the inner Ethernet header: what the hook reads.
const HEADERS: usize = ETH_LEN + REMOVED;

/// Offsets into [`HEADERS`].
const ETHERTYPE: usize = 12;
const IP: usize = ETH_LEN;
const UDP: usize = IP + IPV4_LEN;
const VXLAN: usize = UDP + UDP_LEN;
const INNER: usize = VXLAN + VXLAN_LEN;

/// The VXLAN header's flags with only the I bit (a valid VNI) set.
const VXLAN_FLAGS_VNI: u8 = 0x08;
/// The skb was addressed to this host's MAC.
const PACKET_HOST: u32 = 0;

#[classifier]
pub fn netpath_uldecap(ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let Some((node, inner)) = to_decapsulate(&ctx, config) else {
        return TC_ACT_UNSPEC;
    };
    let l3 = if inner[ETHERTYPE..] == ETH_P_IPV6 {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
    };
    // The inner segments keep their size (FIXED_GSO): a GSO packet's
    // gso_size is already the inner TCP's. DECAP_L3 sets skb->protocol to
    // the inner family. On failure the skb is as it was: the stack has it.
    let flags = (BPF_F_ADJ_ROOM_FIXED_GSO | l3) as u64;
    if ctx
        .adjust_room(-(REMOVED as i32), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return TC_ACT_UNSPEC;
    }
    // Half decapsulated, the frame must not reach the host's stack.
    if ctx.store(0, &inner, 0).is_err() {
        return vxlan::count(OverlayCounter::DropMalformed, TC_ACT_SHOT);
    }
    // As the kernel's tunnel receive does: a checksum the NIC vouched for
    // was the outer one (the stack then checks the inner), and the hash was
    // the outer flow's.
    // SAFETY: the context pointer is valid for the program's run; the
    // helpers take the skb and a plain integer.
    unsafe {
        bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_DEC as u64);
        bpf_set_hash_invalid(ctx.skb.skb);
    }
    let verdict = vxlan::from_node::<false>(&ctx, config, node);
    if verdict == TC_ACT_REDIRECT {
        vxlan::count(OverlayCounter::DecapsulatedAtUnderlay, verdict);
    }
    verdict
}

/// The sending node and the inner Ethernet header of a packet this hook
/// takes, or None: it passes untouched.
#[inline(always)]
fn to_decapsulate(ctx: &TcContext, config: &DatapathConfig) -> Option<(NodeAddr, [u8; ETH_LEN])> {
    let overlay = &config.overlay;
    // A policy in force is judged on the vxlan device, by the judging
    // variant of its program.
    if overlay.vni == 0 || overlay.underlay_ipv6 != 0 || policy::in_force() {
        return None;
    }
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST || ctx.len() < HEADERS as u32 {
        return None;
    }
    let h: [u8; HEADERS] = ctx.load(0).ok()?;
    let outer_ipv4 = h[ETHERTYPE..ETHERTYPE + 2] == ETH_P_IP
        && h[IP] == 0x45 // version 4, no options
        && h[IP + 6] & 0x3f == 0 // neither more fragments
        && h[IP + 7] == 0 // nor an offset
        && h[IP + 9] == IPPROTO_UDP
        && h[IP + 16..IP + 20] == overlay.local[..4];
    // A UDP checksum is left to the stack to check (netpath's nodes send
    // none, as Linux's vxlan does by default over IPv4).
    let vxlan = h[UDP + 2..UDP + 4] == VXLAN_PORT.to_be_bytes()
        && h[UDP + 6..UDP + 8] == [0, 0]
        && h[VXLAN..VXLAN + 4] == [VXLAN_FLAGS_VNI, 0, 0, 0]
        && h[VXLAN + 4..VXLAN + 7] == overlay.vni.to_be_bytes()[1..]
        && h[VXLAN + 7] == 0;
    let inner_type = &h[INNER + ETHERTYPE..INNER + ETHERTYPE + 2];
    // Broadcast, multicast and ARP go through the vxlan device's hook.
    let inner_unicast_ip =
        h[INNER] & 1 == 0 && (inner_type == ETH_P_IP || inner_type == ETH_P_IPV6);
    if !(outer_ipv4 && vxlan && inner_unicast_ip) {
        return None;
    }
    let mut node = NodeAddr {
        family: 4,
        ..NodeAddr::default()
    };
    node.addr[..4].copy_from_slice(&h[IP + 12..IP + 16]);
    if !vxlan::is_node(node) {
        return None;
    }
    let mut inner = [0u8; ETH_LEN];
    inner.copy_from_slice(&h[INNER..INNER + ETH_LEN]);
    Some((node, inner))
}

//! The overlay's part of the fast path on a container's port: what the
//! shared decision asks about other nodes (remote MACs, ARP for remote
//! addresses), and how the tc hook sends a frame to another node: the
//! tunnel key (node, VNI) on the skb, then out of the node's one
//! collect-metadata vxlan device, which encapsulates it (keeping the
//! kernel's UDP tunnel offloads). XDP cannot set tunnel keys: overlays run
//! in tc mode only (the loader refuses the rest).

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::{bpf_clone_redirect, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use netpath_common::{NODE_CAPACITY, NodeAddr, OverlayConfig};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{
    frame::Frame,
    maps::{NODE_LIST, REMOTE_IPV4},
    proto::{ETH_P_ARP, ETH_P_IP},
};

const ARP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const ARP_REPLY: [u8; 2] = 2u16.to_be_bytes();

/// Bytes of `struct bpf_tunnel_key` passed to the tunnel key helpers: up
/// to `tunnel_label`, the struct as Linux 4.x-5.x define it. Linux 6.0
/// appends the local address and accepts this size as the older layout.
pub const TUNNEL_KEY_SIZE: u32 = 28;

/// The TTL of the outer header (the kernel's default for vxlan would be
/// the route's hop limit; fixed here so every kernel does the same).
const TUNNEL_TTL: u8 = 64;

/// The MAC of the remote container that owns the address an ARP request
/// (`frame`, whose Ethernet header is `eth`) asks for, if the control
/// plane knows it.
#[inline(always)]
pub fn arp_answer(eth: &EthHdr, frame: &Frame) -> Option<[u8; 6]> {
    if eth.ether_type.to_ne_bytes() != ETH_P_ARP {
        return None;
    }
    let arp: &ArpHdr = frame.at(EthHdr::LEN).ok()?;
    if arp.htype != 1u16.to_be_bytes()
        || arp.ptype != ETH_P_IP
        || arp.hlen != 6
        || arp.plen != 4
        || arp.oper != ARP_REQUEST
    {
        return None;
    }
    // SAFETY: read only; the loader writes whole values.
    unsafe { REMOTE_IPV4.get(arp.tpa) }.copied()
}

/// Turns the ARP request in `frame` into the reply `mac`'s owner would
/// send, in place; false if the frame is too short (it was checked in
/// `arp_answer`, but the verifier wants it checked on the frame written).
#[inline(always)]
pub fn make_arp_reply(frame: &mut Frame, mac: [u8; 6]) -> bool {
    let Ok(arp) = frame.at_mut::<ArpHdr>(EthHdr::LEN) else {
        return false;
    };
    let (asker_mac, asker_ip, asked_ip) = (arp.sha, arp.spa, arp.tpa);
    arp.oper = ARP_REPLY;
    arp.sha = mac;
    arp.spa = asked_ip;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    let Ok(eth) = frame.at_mut::<EthHdr>(0) else {
        return false;
    };
    eth.dst_addr = eth.src_addr;
    eth.src_addr = mac;
    true
}

/// Puts the tunnel key for `node` on the skb: the vxlan device it is then
/// sent out of encapsulates it to that node with the overlay's VNI.
#[inline(always)]
pub fn set_tunnel(ctx: &TcContext, overlay: &OverlayConfig, node: &NodeAddr) -> bool {
    // SAFETY: bpf_tunnel_key is plain integers; all zero is "no options".
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = overlay.vni;
    key.tunnel_ttl = TUNNEL_TTL;
    let ipv6 = node.family == 6;
    let flags = if ipv6 {
        // The kernel copies IPv6 addresses as they are (network order).
        // SAFETY: remote_ipv6 is 16 bytes, as is the address.
        unsafe {
            core::ptr::copy_nonoverlapping(
                node.addr.as_ptr(),
                key.__bindgen_anon_1.remote_ipv6.as_mut_ptr().cast::<u8>(),
                16,
            )
        };
        BPF_F_TUNINFO_IPV6 as u64
    } else {
        // IPv4 goes in host order.
        key.__bindgen_anon_1.remote_ipv4 =
            u32::from_be_bytes([node.addr[0], node.addr[1], node.addr[2], node.addr[3]]);
        // No outer UDP checksum, as Linux's vxlan sends over IPv4 by
        // default (RFC 7348 says so too; the inner frame has its own): the
        // receiving node's underlay hook then takes the packet without
        // checking one (see `underlay`).
        BPF_F_ZERO_CSUM_TX as u64
    };
    // The outer source: this node's underlay address, as the other nodes
    // know it, not whichever address the route to the node prefers (with
    // a second address on the underlay, the peers would drop everything).
    let size = if overlay.pin_local != 0 {
        let local = &overlay.local;
        if ipv6 {
            // SAFETY: local_ipv6 is 16 bytes, as is the address.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    local.as_ptr(),
                    key.__bindgen_anon_3.local_ipv6.as_mut_ptr().cast::<u8>(),
                    16,
                )
            };
        } else {
            key.__bindgen_anon_3.local_ipv4 =
                u32::from_be_bytes([local[0], local[1], local[2], local[3]]);
        }
        core::mem::size_of::<bpf_tunnel_key>() as u32
    } else {
        TUNNEL_KEY_SIZE
    };
    // SAFETY: the key lives on this stack frame for the call; the size is
    // within it.
    unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size, flags) == 0 }
}

/// Nodes one run of the flooding program copies a frame to; it tail-calls
/// itself for the next ones. The verifier walks this many slots per load
/// (256 slots in one loop cost 170-240 ms on 6.18, far more under TCG),
/// and a frame may take 33 tail calls: to the port program's judging
/// variant while a policy is in force, from it to the first chunk, then
/// one per chunk after the first.
pub const FLOOD_CHUNK: u32 = 8;
const _: () = assert!(1 + NODE_CAPACITY / FLOOD_CHUNK <= 33);

/// Head-end replication of nodes `first..first + FLOOD_CHUNK` of the list:
/// a copy of the frame to each, with its own tunnel key. Whether the list
/// goes on after them.
#[inline(always)]
pub fn flood_chunk(ctx: &TcContext, overlay: &OverlayConfig, first: u32) -> bool {
    for offset in 0..FLOOD_CHUNK {
        let Some(node) = NODE_LIST.get(first.saturating_add(offset)) else {
            return false;
        };
        if node.family == 0 {
            return false;
        }
        if set_tunnel(ctx, overlay, node) {
            // SAFETY: helper call on this program's skb. A copy that fails
            // (no route to that node) does not stop the others.
            unsafe { bpf_clone_redirect(ctx.skb.skb, overlay.vxlan_ifindex, 0) };
        }
    }
    true
}

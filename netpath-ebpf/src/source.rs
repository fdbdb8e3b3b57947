//! Source check: a port that checks its sources only sends frames from its
//! own MAC and addresses, the way a switch's IP source guard and dynamic
//! ARP inspection do. A container with CAP_NET_RAW can then neither take
//! another's MAC or IP (in the FDB, the bridge's FDB, or its neighbours'
//! ARP and ND caches) nor pose as a router.
//!
//! Only IPv4, IPv6 and ARP pass. The checks read the frame in place: every
//! header is bounds-checked against the frame's end first, and a frame too
//! short for the header it announces is malformed.

use netpath_common::{Counter, Ipv6Slot, PORT_IPV4_SLOTS, PORT_IPV6_SLOTS, PortPolicy};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{frame::Frame, proto::*};

/// The bytes of UDP's, TCP's and SCTP's ports (the tunnel rule and policy
/// read them).
const PORTS: usize = 4;
/// TCP's header up to its flags (policy reads them).
const TCP_THROUGH_FLAGS: usize = 14;

const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
/// ND option types carrying a link-layer address (RFC 4861 4.6.1).
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// Bytes before the options of an NS or NA.
const ND_FIXED_LEN: usize = core::mem::size_of::<NdMessage>();
/// Options looked at per ND message; a real one carries one or two.
const ND_MAX_OPTIONS: usize = 4;

/// Bytes of headers the decision may read: Ethernet, IPv6, an 8-byte
/// hop-by-hop header and an ND message with its options, or a UDP
/// header behind two extension headers.
pub const HEADROOM: u32 = 128;

/// How many bytes from the frame's start the decision reads (the source
/// check, the tunnel rule, policy) of a frame whose bytes 12 to 23 are `head`
/// (the EtherType, the IPv4 header's length and protocol, the IPv6 next
/// header): the tc programs make exactly these linear. Bulk traffic (TCP)
/// needs its network header only, UDP its ports too; the rest of the
/// headroom is for ND and MLD, small frames.
#[inline(always)]
pub fn header_len(head: &[u8; 12]) -> u32 {
    let ipv4_header = ((head[2] & 0xf) as usize * 4).max(Ipv4Hdr::LEN);
    let network = match [head[0], head[1]] {
        ETH_P_IP => match head[11] {
            IPPROTO_UDP | IPPROTO_SCTP => ipv4_header + PORTS,
            IPPROTO_TCP => ipv4_header + TCP_THROUGH_FLAGS,
            // Errors quote the packet they are about.
            IPPROTO_ICMP => return HEADROOM,
            _ => Ipv4Hdr::LEN,
        },
        ETH_P_ARP => ArpHdr::LEN,
        ETH_P_IPV6 => match head[8] {
            IPPROTO_HOPOPTS | IPPROTO_ICMPV6 | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                return HEADROOM;
            }
            IPPROTO_FRAGMENT => Ipv6Hdr::LEN + 8 + TCP_THROUGH_FLAGS,
            IPPROTO_UDP | IPPROTO_SCTP => Ipv6Hdr::LEN + PORTS,
            IPPROTO_TCP => Ipv6Hdr::LEN + TCP_THROUGH_FLAGS,
            _ => Ipv6Hdr::LEN,
        },
        _ => 0,
    };
    (EthHdr::LEN + network) as u32
}

/// The frame from a port whose policy checks sources, with the port's own
/// source MAC (the caller checked that).
#[inline(always)]
pub fn check(policy: &PortPolicy, frame: &Frame) -> Result<(), Counter> {
    let eth: &EthHdr = frame.at(0)?;
    match eth.ether_type.to_ne_bytes() {
        ETH_P_IP => {
            let ip: &Ipv4Hdr = frame.at(EthHdr::LEN)?;
            own_ipv4(policy, ip.src_addr)
                .then_some(())
                .ok_or(Counter::DropSpoofedIp)
        }
        ETH_P_ARP => arp(policy, frame.at(EthHdr::LEN)?),
        ETH_P_IPV6 => ipv6(policy, frame),
        _ => Err(Counter::DropProtocol),
    }
}

/// Probes (RFC 5227) announce no sender address: 0.0.0.0 is no claim.
#[inline(always)]
fn arp(policy: &PortPolicy, arp: &ArpHdr) -> Result<(), Counter> {
    if arp.htype != 1u16.to_be_bytes() || arp.ptype != ETH_P_IP || arp.hlen != 6 || arp.plen != 4 {
        return Err(Counter::DropProtocol);
    }
    if arp.sha != policy.mac {
        return Err(Counter::DropSpoofedMac);
    }
    if arp.spa != [0; 4] && !own_ipv4(policy, arp.spa) {
        return Err(Counter::DropSpoofedIp);
    }
    Ok(())
}

#[inline(always)]
fn ipv6(policy: &PortPolicy, frame: &Frame) -> Result<(), Counter> {
    let ip: &Ipv6Hdr = frame.at(EthHdr::LEN)?;
    let source = Ipv6Slot::halves(&ip.src_addr);
    // Duplicate address detection and early MLD reports come from `::`.
    let unspecified = source == [0; 2];
    if !unspecified && !own_ipv6(policy, source) {
        return Err(Counter::DropSpoofedIp);
    }
    // Ethernet may pad a frame: the IPv6 payload ends where its header says.
    let payload_end = EthHdr::LEN + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
    let mut next = ip.next_hdr;
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    if next == IPPROTO_HOPOPTS {
        // MLD reports come behind one hop-by-hop header (router alert).
        (next, offset) = frame.ipv6_extension(offset)?;
    }
    match next {
        IPPROTO_ICMPV6 => icmpv6(policy, frame, offset, payload_end, unspecified),
        // Only ND and MLD may come from `::` (never in fragments).
        _ if unspecified => Err(Counter::DropSpoofedIp),
        // A router advertisement behind routing or destination options, or
        // in fragments, gets past checks that stop at the first header
        // (RFC 7113); ND and MLD never need them (RFC 6980).
        IPPROTO_ROUTING | IPPROTO_DSTOPTS => Err(Counter::DropProtocol),
        IPPROTO_FRAGMENT => {
            let fragment: &[u8; 8] = frame.at(offset)?;
            if fragment[0] == IPPROTO_ICMPV6 {
                Err(Counter::DropProtocol)
            } else {
                Ok(())
            }
        }
        // Extension headers the check cannot see past (authentication,
        // mobility, HIP, shim6, experimental) could hide the same: as an
        // unknown EtherType, they are refused.
        IPPROTO_AH | IPPROTO_MOBILITY | IPPROTO_HIP | IPPROTO_SHIM6 | IPPROTO_EXPERIMENT1
        | IPPROTO_EXPERIMENT2 => Err(Counter::DropProtocol),
        _ => Ok(()),
    }
}

#[inline(always)]
fn icmpv6(
    policy: &PortPolicy,
    frame: &Frame,
    offset: usize,
    payload_end: usize,
    unspecified: bool,
) -> Result<(), Counter> {
    let kind: &u8 = frame.at(offset)?;
    match *kind {
        // A container is no router.
        ND_ROUTER_ADVERT | ND_REDIRECT => return Err(Counter::DropSpoofedIp),
        ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT => {}
        _ => return Ok(()),
    }
    // Both messages' fixed part read as one: the verifier then knows the
    // same of the frame after either, and walks the options once for both.
    let message: &NdMessage = frame.at(offset)?;
    if message.kind == ND_NEIGHBOR_ADVERT
        && (unspecified || !own_ipv6(policy, Ipv6Slot::halves(&message.target)))
    {
        return Err(Counter::DropSpoofedIp);
    }
    nd_options(policy, frame, offset + ND_FIXED_LEN, payload_end)
}

/// A neighbour solicitation or advertisement up to its options.
#[repr(C)]
struct NdMessage {
    kind: u8,
    code: u8,
    checksum: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
}

/// An ND option's first 8 bytes: every option has 8 or more (its length
/// counts 8-byte units, and 0 is invalid), and a link-layer address option
/// on Ethernet has exactly these.
#[repr(C)]
struct NdOption {
    kind: u8,
    units: u8,
    mac: [u8; 6],
}

/// Every link-layer address option must carry the port's MAC: the
/// receiver's neighbour cache takes it from there, not from the frame.
#[inline(always)]
fn nd_options(
    policy: &PortPolicy,
    frame: &Frame,
    mut offset: usize,
    payload_end: usize,
) -> Result<(), Counter> {
    for _ in 0..ND_MAX_OPTIONS {
        if offset >= payload_end {
            return Ok(());
        }
        // Eight bytes whatever the option's kind: every path through the
        // loop then knows the same of the frame, so the verifier walks
        // each round once, not once per kind of the rounds before.
        let option: &NdOption = frame.at(offset)?;
        if option.units == 0 {
            // RFC 4861: a zero-length option is invalid; the kernel drops the message.
            return Err(Counter::DropMalformed);
        }
        if (option.kind == ND_OPT_SOURCE_LL || option.kind == ND_OPT_TARGET_LL)
            && option.mac != policy.mac
        {
            return Err(Counter::DropSpoofedMac);
        }
        offset += option.units as usize * 8;
    }
    // More options than a real message carries: one further could hide a
    // forged address.
    if offset < payload_end {
        Err(Counter::DropProtocol)
    } else {
        Ok(())
    }
}

/// Whether `address` lies in one of the policy's IPv4 slots (never the
/// unspecified address: 0.0.0.0 is no claim).
#[inline(always)]
fn own_ipv4(policy: &PortPolicy, address: [u8; 4]) -> bool {
    let address = u32::from_ne_bytes(address);
    if address == 0 {
        return false;
    }
    for slot in 0..PORT_IPV4_SLOTS {
        if policy.ipv4[slot].contains(address) {
            return true;
        }
    }
    false
}

/// Whether the address with `halves` (see [`Ipv6Slot::halves`]) lies in
/// one of the policy's IPv6 slots (never `::`).
#[inline(always)]
fn own_ipv6(policy: &PortPolicy, halves: [u64; 2]) -> bool {
    if halves == [0; 2] {
        return false;
    }
    for slot in 0..PORT_IPV6_SLOTS {
        if policy.ipv6[slot].contains(halves) {
            return true;
        }
    }
    false
}

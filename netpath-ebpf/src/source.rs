//! Source check: a port that checks its sources only sends frames from its
//! own MAC and addresses, the way a switch's IP source guard and dynamic
//! ARP inspection do. A container with CAP_NET_RAW can then neither take
//! another's MAC or IP (in the FDB, the bridge's FDB, or its neighbours'
//! ARP and ND caches) nor pose as a router.
//!
//! Only IPv4, IPv6 and ARP pass. The checks read the frame in place: every
//! header is bounds-checked against the frame's end first, and a frame too
//! short for the header it announces is malformed.

use netpath_common::{Counter, PortPolicy};
use network_types::{
    arp::ArpHdr,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::frame::Frame;

const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_ARP: [u8; 2] = 0x0806u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
/// ND option types carrying a link-layer address (RFC 4861 4.6.1).
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// Bytes before the options of an NS or NA: type, code, checksum,
/// reserved/flags, target address.
const ND_FIXED_LEN: usize = 24;
/// Options looked at per ND message; a real one carries one or two.
const ND_MAX_OPTIONS: usize = 4;

/// Bytes of headers the check may read: Ethernet, IPv6, an 8-byte
/// hop-by-hop header and an ND message with its options.
pub const HEADROOM: u32 = 128;

/// How many bytes from the frame's start [`check`] reads of a frame with
/// this EtherType and, for IPv6, this first next header: the tc program
/// makes exactly these linear. Bulk traffic (TCP, UDP) needs its network
/// header only; the rest of the headroom is for ND and MLD, small frames.
#[inline(always)]
pub fn header_len(ether_type: [u8; 2], ipv6_next_hdr: u8) -> u32 {
    let network = match ether_type {
        ETH_P_IP => Ipv4Hdr::LEN,
        ETH_P_ARP => ArpHdr::LEN,
        ETH_P_IPV6 => match ipv6_next_hdr {
            IPPROTO_HOPOPTS | IPPROTO_ICMPV6 => return HEADROOM,
            IPPROTO_FRAGMENT => Ipv6Hdr::LEN + 8,
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
    // Duplicate address detection and early MLD reports come from `::`.
    let unspecified = ip.src_addr == [0; 16];
    if !unspecified && !own_ipv6(policy, &ip.src_addr) {
        return Err(Counter::DropSpoofedIp);
    }
    // Ethernet may pad a frame: the IPv6 payload ends where its header says.
    let payload_end = EthHdr::LEN + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
    let mut next = ip.next_hdr;
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    if next == IPPROTO_HOPOPTS {
        // MLD reports come behind one hop-by-hop header (router alert).
        let ext: &[u8; 2] = frame.at(offset)?;
        next = ext[0];
        offset += (ext[1] as usize + 1) * 8;
    }
    match next {
        IPPROTO_ICMPV6 => icmpv6(policy, frame, offset, payload_end, unspecified),
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
        // Only ND and MLD may come from `::`.
        _ if unspecified => Err(Counter::DropSpoofedIp),
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
        ND_ROUTER_ADVERT | ND_REDIRECT => Err(Counter::DropSpoofedIp),
        ND_NEIGHBOR_SOLICIT => nd_options(policy, frame, offset + ND_FIXED_LEN, payload_end),
        ND_NEIGHBOR_ADVERT => {
            let target: &[u8; 16] = frame.at(offset + 8)?;
            if unspecified || !own_ipv6(policy, target) {
                return Err(Counter::DropSpoofedIp);
            }
            nd_options(policy, frame, offset + ND_FIXED_LEN, payload_end)
        }
        _ => Ok(()),
    }
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
        let option: &[u8; 2] = frame.at(offset)?;
        let (kind, units) = (option[0], option[1] as usize);
        if units == 0 {
            // RFC 4861: a zero-length option is invalid; the kernel drops the message.
            return Err(Counter::DropMalformed);
        }
        if kind == ND_OPT_SOURCE_LL || kind == ND_OPT_TARGET_LL {
            let mac: &[u8; 6] = frame.at(offset + 2)?;
            if *mac != policy.mac {
                return Err(Counter::DropSpoofedMac);
            }
        }
        offset += units * 8;
    }
    // More options than a real message carries: one further could hide a
    // forged address.
    if offset < payload_end {
        Err(Counter::DropProtocol)
    } else {
        Ok(())
    }
}

#[inline(always)]
fn own_ipv4(policy: &PortPolicy, address: [u8; 4]) -> bool {
    address != [0; 4] && policy.ipv4.iter().any(|own| *own == address)
}

#[inline(always)]
fn own_ipv6(policy: &PortPolicy, address: &[u8; 16]) -> bool {
    *address != [0; 16] && policy.ipv6.iter().any(|own| own == address)
}

//! Frames as a container with CAP_NET_RAW could send them: honest ones
//! and forged ones (another's MAC or address, a router's advertisement),
//! for the programs' source check. Checksums are left zero: nothing on
//! the way checks them before the programs decide.

use super::frame;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// An IPv4/UDP frame from `src` to `dst`, 60 bytes or more.
pub fn ipv4(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 26, 0, 0]);
    ip.resize(46, 0);
    frame(dst_mac, src_mac, ETH_P_IP, &ip)
}

/// Sets the header checksum of an IPv4 `frame` (from [`ipv4`]), which a
/// frame for the host's own stack needs (the programs do not check it).
pub fn ipv4_checksum(frame: &mut [u8]) {
    let header = 14..14 + (frame[14] as usize & 0xf) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[header]
        .chunks(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// An ARP request (op 1) or reply (op 2), broadcast for a request.
pub fn arp(op: u16, src_mac: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut body = vec![0, 1, 0x08, 0x00, 6, 4];
    body.extend_from_slice(&op.to_be_bytes());
    body.extend_from_slice(&sha);
    body.extend_from_slice(&spa);
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&tpa);
    body.resize(46, 0);
    let dst = if op == 1 {
        [0xff; 6]
    } else {
        [0x02, 0, 0, 0, 0, 0x07]
    };
    frame(dst, src_mac, ETH_P_ARP, &body)
}

/// An IPv6 frame: header with `next` header and `payload` after it.
pub fn ipv6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 255]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(payload);
    frame(dst_mac, src_mac, ETH_P_IPV6, &ip)
}

/// IPv6/UDP from `src`.
pub fn ipv6_udp(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    ipv6(
        dst_mac,
        src_mac,
        src,
        dst,
        IPPROTO_UDP,
        &[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0],
    )
}

/// `frame` (from [`ipv4`] or [`ipv6_udp`]) sent to UDP port `port` instead.
pub fn udp_to(mut frame: Vec<u8>, port: u16) -> Vec<u8> {
    let udp = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => 14 + (frame[14] as usize & 0xf) * 4,
        ETH_P_IPV6 => 14 + 40,
        other => panic!("not IP: EtherType {other:#x}"),
    };
    frame[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
    frame
}

/// An ICMPv6 ND message of `kind` (NS, NA, RA) with `target` and, if
/// given, one link-layer address option (source for NS/RA, target for NA).
pub fn nd(
    kind: u8,
    src_mac: [u8; 6],
    src: [u8; 16],
    target: [u8; 16],
    lladdr: Option<[u8; 6]>,
) -> Vec<u8> {
    ipv6(
        [0x33, 0x33, 0, 0, 0, 1],
        src_mac,
        src,
        ff02_1(),
        IPPROTO_ICMPV6,
        &nd_message(kind, target, lladdr),
    )
}

fn nd_message(kind: u8, target: [u8; 16], lladdr: Option<[u8; 6]>) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target);
    if let Some(mac) = lladdr {
        icmp.extend_from_slice(&[if kind == ND_NEIGHBOR_ADVERT { 2 } else { 1 }, 1]);
        icmp.extend_from_slice(&mac);
    }
    icmp
}

/// A router advertisement hidden behind an extension header (RFC 7113):
/// hop-by-hop (which the check looks through) or authentication (which it
/// cannot).
pub fn ra_behind(header: u8, src_mac: [u8; 6], src: [u8; 16]) -> Vec<u8> {
    let mut payload = match header {
        IPPROTO_HOPOPTS => vec![IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0],
        // Next header, length in 4-byte units less 2, reserved, SPI, sequence.
        IPPROTO_AH => vec![IPPROTO_ICMPV6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        other => panic!("no extension header {other} here"),
    };
    payload.extend(nd_message(ND_ROUTER_ADVERT, [0; 16], Some(src_mac)));
    ipv6(
        [0x33, 0x33, 0, 0, 0, 1],
        src_mac,
        src,
        ff02_1(),
        header,
        &payload,
    )
}

/// The first fragment of an ICMPv6 router advertisement or of a UDP
/// datagram, to all nodes.
pub fn first_fragment(next: u8, src_mac: [u8; 6], src: [u8; 16]) -> Vec<u8> {
    let mut payload = vec![next, 0, 0, 1, 0, 0, 0, 1];
    match next {
        IPPROTO_ICMPV6 => payload.extend(nd_message(ND_ROUTER_ADVERT, [0; 16], None)),
        IPPROTO_UDP => payload.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0]),
        other => panic!("no fragment of protocol {other} here"),
    }
    ipv6(
        [0x33, 0x33, 0, 0, 0, 1],
        src_mac,
        src,
        ff02_1(),
        IPPROTO_FRAGMENT,
        &payload,
    )
}

fn ff02_1() -> [u8; 16] {
    let mut a = [0; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[15] = 1;
    a
}

/// The modified EUI-64 link-local address of `mac`.
pub fn link_local(mac: [u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

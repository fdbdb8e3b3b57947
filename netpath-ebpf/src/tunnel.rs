//! No container speaks VXLAN to the underlay. A datagram to UDP port 4789
//! from a container, masqueraded to a node's underlay address on its way
//! out (`--nat`), would arrive at the other nodes from this node's address,
//! and their vxlan device would take it for this node's own tunnel
//! traffic: a container could put frames into any node's containers. So
//! the decision drops it on the port it enters by, whatever its
//! destination, for every port (one that routes for others too).
//!
//! A datagram's first fragment carries the port and is dropped; the rest
//! cannot be reassembled without it.

use netpath_common::{Counter, VXLAN_PORT};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    frame::Frame,
    proto::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING,
        IPPROTO_UDP,
    },
};

/// IPv6 extension headers looked through before the UDP header.
const MAX_EXTENSION_HEADERS: usize = 2;

/// Whether `frame` is UDP to the VXLAN port (whole, or its first
/// fragment).
#[inline(always)]
pub fn to_vxlan_port(frame: &Frame) -> Result<bool, Counter> {
    let eth: &EthHdr = frame.at(0)?;
    let udp = match eth.ether_type.to_ne_bytes() {
        ETH_P_IP => {
            let ip: &Ipv4Hdr = frame.at(EthHdr::LEN)?;
            if ip.proto != IPPROTO_UDP || ip.frag_offset() != 0 {
                return Ok(false);
            }
            EthHdr::LEN + ip.ihl() as usize
        }
        ETH_P_IPV6 => {
            let ip: &Ipv6Hdr = frame.at(EthHdr::LEN)?;
            let mut next = ip.next_hdr;
            let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
            for _ in 0..MAX_EXTENSION_HEADERS {
                match next {
                    IPPROTO_FRAGMENT => {
                        let fragment: &[u8; 8] = frame.at(offset)?;
                        if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                            return Ok(false);
                        }
                        next = fragment[0];
                        offset += 8;
                    }
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        (next, offset) = frame.ipv6_extension(offset)?;
                    }
                    _ => break,
                }
            }
            match next {
                IPPROTO_UDP => offset,
                // Deeper than the check looks: no container needs that.
                IPPROTO_FRAGMENT | IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    return Err(Counter::DropProtocol);
                }
                _ => return Ok(false),
            }
        }
        _ => return Ok(false),
    };
    // Source port, destination port.
    let ports: &[u8; 4] = frame.at(udp)?;
    Ok([ports[2], ports[3]] == VXLAN_PORT.to_be_bytes())
}

//! Network policy as the programs read it, compiled by the loader from
//! Kubernetes NetworkPolicy objects (`netpath/src/model/policy`).
//!
//! A flow is judged once, on its first packet, and then remembered in
//! [`FLOWS`](crate::maps::FLOWS) (connection tracking): a packet of a known
//! flow, or a reply to one, passes on one lookup. A new flow passes if the
//! sender's egress and the receiver's ingress both allow it; a direction
//! is judged only for a container of this node that a policy isolates in
//! it ([`POLICY_ENDPOINTS`](crate::maps::POLICY_ENDPOINTS)). The rules of
//! an isolated direction are two longest-prefix tables: the peer's address
//! gives a port class ([`POLICY_PEERS`](crate::maps::POLICY_PEERS)), and
//! the class with the protocol and the destination port gives the verdict
//! ([`POLICY_PORTS`](crate::maps::POLICY_PORTS)), so a rule's port range is
//! a few prefixes, not a loop.
//!
//! Every key starts with a generation (1 or 2): the loader writes a new
//! policy under the generation not in force, switches
//! [`PolicyState::generation`] (one word), then deletes the old one, so no
//! packet ever sees half of each. A flow remembers the generation that
//! judged it and is judged again under a new one.
//!
//! A flow has one entry for both directions: its key is normalized
//! ([`FlowKey::normalize`]), so a packet and its reply find it in one
//! lookup, and the entry says which way the flow was opened.

/// [`EndpointPolicy::flags`]: a policy of type Ingress selects it.
pub const ISOLATED_INGRESS: u32 = 1;
/// [`EndpointPolicy::flags`]: a policy of type Egress selects it.
pub const ISOLATED_EGRESS: u32 = 2;

/// [`PolicyPeerKey::direction`] values.
pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// [`PeerRule::port_class`] of a rule that allows every protocol and port.
pub const ALL_PORTS: u32 = 0;

/// Bits of [`PolicyPeerKey`] before the peer's address: the LPM prefix of
/// an entry is this plus the peer prefix's length.
pub const PEER_KEY_FIXED_BITS: u32 = 8 * 20;
/// Bits of [`PolicyPortKey`] before the port.
pub const PORT_KEY_FIXED_BITS: u32 = 8 * 8;

/// Index 0 of `POLICY_STATE`: the generation in force (0: no policy at
/// all, and the programs skip every policy lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyState {
    pub generation: u32,
    pub _pad: u32,
}

/// An address of a container of this node, under a generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyEndpointKey {
    pub generation: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
    /// IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
}

/// What policy says of a container: the directions it is isolated in, and
/// its port (host-side ifindex), whose counters count its flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    pub flags: u32,
    pub ifindex: u32,
}

/// The data of a `POLICY_PEERS` key: an isolated container's address, a
/// direction, and a peer prefix (LPM over the peer's bits only: the prefix
/// length is [`PEER_KEY_FIXED_BITS`] plus the peer prefix's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyPeerKey {
    pub generation: u8,
    pub direction: u8,
    pub family: u8,
    pub _pad: u8,
    pub endpoint: [u8; 16],
    pub peer: [u8; 16],
}

/// What the longest matching peer prefix allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerRule {
    /// [`ALL_PORTS`], or the class to look the port up in.
    pub port_class: u32,
}

/// The data of a `POLICY_PORTS` key: a class, a protocol, and a port
/// (network order) whose bits after [`PORT_KEY_FIXED_BITS`] the LPM
/// matches: a port range is stored as its few prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyPortKey {
    pub generation: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
    /// Big-endian, so the fixed part compares as written.
    pub class: [u8; 4],
    pub port: [u8; 2],
}

/// A packet's flow: its addresses and ports (ICMP echo: the identifier as
/// the source port of a request and the destination port of a reply, so a
/// reply is its request's reverse). Aligned to 8 so the programs compare
/// addresses a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order, as in the header.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// Makes this the key of the flow's entry, the same for both
    /// directions: the end with the lower address (then port) as the
    /// source. True if it was reversed for that.
    #[inline(always)]
    pub fn normalize(&mut self) -> bool {
        let end = |addr: &[u8; 16], port: [u8; 2]| {
            let mut high = [0; 8];
            let mut low = [0; 8];
            high.copy_from_slice(&addr[..8]);
            low.copy_from_slice(&addr[8..]);
            (
                u64::from_be_bytes(high),
                u64::from_be_bytes(low),
                u16::from_be_bytes(port),
            )
        };
        let reverse = end(&self.src, self.sport) > end(&self.dst, self.dport);
        if reverse {
            core::mem::swap(&mut self.src, &mut self.dst);
            core::mem::swap(&mut self.sport, &mut self.dport);
        }
        reverse
    }
}

/// [`Flow::state`]: a FIN or RST was seen; the flow ends soon.
pub const FLOW_CLOSING: u32 = 1;
/// [`Flow::state`]: its first packet went from the key's destination to
/// its source (the normalized key is that packet's reverse).
pub const FLOW_OPENED_REVERSED: u32 = 2;

/// A flow policy allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// bpf_ktime_get_ns() of its last packet.
    pub last_seen_ns: u64,
    /// The policy generation that allowed it.
    pub generation: u32,
    pub state: u32,
}

/// How long a flow is remembered without a packet: a TCP connection (as
/// Cilium's default), one that is closing, anything else.
pub const FLOW_TCP_LIFETIME_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const FLOW_CLOSING_LIFETIME_NS: u64 = 10 * 1_000_000_000;
pub const FLOW_OTHER_LIFETIME_NS: u64 = 60 * 1_000_000_000;

/// An IP datagram's fragments: the first carries the ports, the others
/// are judged by the ports it carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The datagram's identification (IPv4's 16 bits, or IPv6's 32).
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The ports the first fragment carried (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentPorts {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Capacities of the policy maps.
pub const POLICY_ENDPOINT_CAPACITY: u32 = 2 * 4096;
pub const POLICY_PEER_CAPACITY: u32 = 131_072;
pub const POLICY_PORT_CAPACITY: u32 = 65_536;
/// Flows remembered at once (an LRU map: the least recently used goes).
pub const FLOW_CAPACITY: u32 = 32_768;
pub const FRAGMENT_CAPACITY: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], integer and byte-array fields, explicit padding.
    unsafe impl aya::Pod for PolicyState {}
    unsafe impl aya::Pod for PolicyEndpointKey {}
    unsafe impl aya::Pod for EndpointPolicy {}
    unsafe impl aya::Pod for PolicyPeerKey {}
    unsafe impl aya::Pod for PeerRule {}
    unsafe impl aya::Pod for PolicyPortKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for FragmentPorts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        let mut key = FlowKey {
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            protocol: 6,
            family: 4,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&src);
        key.dst[..4].copy_from_slice(&dst);
        key
    }

    #[test]
    fn a_packet_and_its_reply_share_one_entry() {
        let mut request = key([10, 0, 0, 9], 40000, [10, 0, 0, 2], 80);
        let mut reply = key([10, 0, 0, 2], 80, [10, 0, 0, 9], 40000);
        assert!(request.normalize());
        assert!(!reply.normalize());
        assert_eq!(request, reply);
        assert_eq!(request.src[..4], [10, 0, 0, 2]);
        assert_eq!(request.sport, 80u16.to_be_bytes());
    }

    #[test]
    fn the_same_address_is_ordered_by_port_and_the_high_word_comes_first() {
        let mut same = key([10, 0, 0, 2], 9, [10, 0, 0, 2], 8);
        assert!(same.normalize());
        assert_eq!(same.sport, 8u16.to_be_bytes());
        let mut v6 = FlowKey {
            family: 6,
            ..FlowKey::default()
        };
        v6.src[0] = 0xfd;
        v6.dst[15] = 0xff;
        assert!(v6.normalize(), "fd00:: sorts after ::ff");
        let mut again = v6;
        assert!(!again.normalize(), "a normalized key stays as it is");
    }
}

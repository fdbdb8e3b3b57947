//! Network policy: whether a frame's flow may pass, judged once per flow
//! and remembered (connection tracking). See `netpath_common::policy` for
//! the maps and the generations; this is the one judgement every hook
//! asks (a port's program for the frames its container sends, the vxlan
//! device's for frames from other nodes).
//!
//! What passes without a judgement: frames that are not IP (ARP: the
//! source check guards it), neighbour discovery and MLD (IPv6 does not
//! work without them), packets of a remembered flow and their replies, and
//! ICMP errors about a remembered flow.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    maps::{ProgramArray, lpm_trie::Key},
};
use netpath_common::{
    Counter,
    policy::{
        ALL_PORTS, DIRECTION_EGRESS, DIRECTION_INGRESS, FLOW_CLOSING, FLOW_CLOSING_LIFETIME_NS,
        FLOW_OPENED_REVERSED, FLOW_OTHER_LIFETIME_NS, FLOW_TCP_LIFETIME_NS, Flow, FlowKey, FragmentKey, FragmentPorts,
        ISOLATED_EGRESS, ISOLATED_INGRESS, PEER_KEY_FIXED_BITS, PORT_KEY_FIXED_BITS,
        PolicyEndpointKey, PolicyPeerKey, PolicyPortKey,
    },
};

use crate::{
    forward::Port,
    frame::Frame,
    maps::{FLOWS, FRAGMENTS, POLICY_ENDPOINTS, POLICY_PEERS, POLICY_PORTS, POLICY_STATE},
    proto::*,
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// A flow's timestamp is refreshed at most this often, so a busy flow
/// does not write the shared entry on every packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// A policy denied the frame; the container it protects counted it.
pub struct Denied;

/// What a packet is to connection tracking (its flow's key written to the
/// caller's).
enum Kind {
    /// Not judged (not IP, neighbour discovery, MLD).
    Exempt,
    /// A packet of the flow, with its TCP flags (0 for other protocols).
    Flow(u8),
    /// An ICMP error (the key: the error itself, ports zero) about the
    /// flow quoted in it (as its sender sent it).
    Error,
}

/// Whether a policy is in force. The forwarding programs then hand every
/// frame to their judging variant (`programs::TAIL_CALLED`), which calls
/// [`admit`]: the judgement is most of what the verifier walks, and a
/// datapath without a policy never loads it.
#[inline(always)]
pub fn in_force() -> bool {
    POLICY_STATE.get(0).is_some_and(|state| state.generation != 0)
}

/// Hands the frame to the program's judging variant, in slot `slot` of
/// `variants`, while a policy is in force (the variant ends the run with
/// the frame's verdict). Returns whether the caller must drop the frame
/// (and count it as `DropPolicyUnloaded`): a policy is in force and the
/// slot is empty, which the loader, filling it first, never leaves. The
/// judging variants themselves (`POLICY`) judge and hand nothing on.
#[inline(always)]
pub fn hand_to_judge<const POLICY: bool, C: EbpfContext>(
    ctx: &C,
    variants: &ProgramArray,
    slot: u32,
) -> bool {
    if POLICY || !in_force() {
        return false;
    }
    // SAFETY: the loader fills the slot with a program of the caller's
    // type, which ends the run with the frame's verdict.
    unsafe { variants.tail_call(ctx, slot) };
    true
}

/// Whether `frame` may pass under the policy in force (always, when there
/// is none: one array lookup).
#[inline(always)]
pub fn admit(frame: &Frame) -> Result<(), Denied> {
    let Some(state) = POLICY_STATE.get(0) else {
        return Ok(());
    };
    let generation = state.generation;
    if generation == 0 {
        return Ok(());
    }
    let (data, end) = frame.bounds();
    if judge_frame(data, end, generation) == JUDGED_DENIED {
        Err(Denied)
    } else {
        Ok(())
    }
}

/// The judgement proper. It and the functions it calls are BPF-to-BPF
/// calls, each with a stack frame of its own: inlined into the hooks,
/// their keys would not fit beside the hooks' in one 512-byte frame. The
/// frame's bounds come as two registers (the verifier follows packet
/// pointers through arguments).
#[inline(never)]
fn judge_frame(data: usize, end: usize, generation: u32) -> u32 {
    let mut packet = FlowKey::default();
    let mut about = FlowKey::default();
    // A frame too short for the headers it announces is not IP enough to
    // judge: the source check refuses those from a container, and here
    // they are refused whatever their origin.
    let class = classify(&Frame::new(data, end), &mut packet, &mut about);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match class & 0xff {
        CLASS_EXEMPT => JUDGED_UNCONCERNED,
        CLASS_FLOW => {
            let tcp_flags = (class >> 8) as u8;
            let reversed = packet.normalize();
            if let Some(verdict) = known(generation, &packet, now, tcp_flags) {
                return verdict;
            }
            let verdict = judge_flow(generation, &packet, reversed);
            // A FIN or RST opens nothing: only a packet that can start a
            // flow is remembered as its start.
            if verdict == JUDGED_ALLOWED && tcp_flags & (TCP_FIN | TCP_RST) == 0 {
                let flow = Flow {
                    last_seen_ns: now,
                    generation,
                    state: if reversed { FLOW_OPENED_REVERSED } else { 0 },
                };
                let _ = FLOWS.insert(&packet, &flow, BPF_ANY.into());
            }
            verdict
        }
        CLASS_ERROR => {
            about.normalize();
            if let Some(verdict) = known(generation, &about, now, 0) {
                return verdict;
            }
            let reversed = packet.normalize();
            judge_flow(generation, &packet, reversed)
        }
        _ => JUDGED_DENIED,
    }
}

/// The verdict on a packet of the remembered flow of `key` (normalized):
/// allowed under this generation (refreshed), or under an older one and
/// judged again, as the flow's first packet would be now: kept if the
/// policy in force allows it, else forgotten and this packet denied (its
/// flow is cut, and the one judgement counted once). None: no such flow.
#[inline(always)]
fn known(generation: u32, key: &FlowKey, now: u64, tcp_flags: u8) -> Option<u32> {
    match remembered(generation, key, now, tcp_flags) {
        FLOW_KNOWN => Some(JUDGED_ALLOWED),
        stale @ (FLOW_STALE | FLOW_STALE_OPENED_REVERSED) => {
            let reversed = stale == FLOW_STALE_OPENED_REVERSED;
            let allowed = judge_flow(generation, key, reversed) == JUDGED_ALLOWED;
            settle(generation, key, allowed);
            Some(if allowed { JUDGED_ALLOWED } else { JUDGED_DENIED })
        }
        _ => None,
    }
}

/// What connection tracking knows of a flow.
const FLOW_UNKNOWN: u32 = 0;
const FLOW_KNOWN: u32 = 1;
/// Allowed under an older generation of the policy (opened from the
/// key's source, or from its destination).
const FLOW_STALE: u32 = 2;
const FLOW_STALE_OPENED_REVERSED: u32 = 3;

/// Looks the flow up (forgetting it if it expired) and refreshes it. Each
/// of these functions is a BPF-to-BPF call with a frame of its own:
/// inlined, their keys would not fit one 512-byte frame. The verifier also
/// bounds the frames of a chain of calls together (512 bytes, each frame
/// rounded up to 32 on Linux 5.10): hence calls only two deep below the
/// judgement, and no copies of keys on the way.
#[inline(never)]
fn remembered(generation: u32, key: &FlowKey, now: u64, tcp_flags: u8) -> u32 {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return FLOW_UNKNOWN;
    };
    // SAFETY: a pointer from a successful lookup; every CPU may write the
    // entry, but only whole words, and a torn timestamp ages a flow early
    // at worst.
    let flow = unsafe { &mut *flow };
    let lifetime = if flow.state & FLOW_CLOSING != 0 {
        FLOW_CLOSING_LIFETIME_NS
    } else if key.protocol == IPPROTO_TCP {
        FLOW_TCP_LIFETIME_NS
    } else {
        FLOW_OTHER_LIFETIME_NS
    };
    if now.saturating_sub(flow.last_seen_ns) > lifetime {
        let _ = FLOWS.remove(key);
        return FLOW_UNKNOWN;
    }
    if flow.generation != generation {
        return if flow.state & FLOW_OPENED_REVERSED != 0 {
            FLOW_STALE_OPENED_REVERSED
        } else {
            FLOW_STALE
        };
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flow.state |= FLOW_CLOSING;
        flow.last_seen_ns = now;
    } else if now.saturating_sub(flow.last_seen_ns) > REFRESH_NS {
        flow.last_seen_ns = now;
    }
    FLOW_KNOWN
}

/// A flow an older policy allowed, judged again under this one: kept
/// (under this generation) if it allows it, forgotten if not.
#[inline(never)]
fn settle(generation: u32, key: &FlowKey, allowed: bool) {
    if !allowed {
        let _ = FLOWS.remove(key);
    } else if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in remembered().
        unsafe { (*flow).generation = generation };
    }
}

/// Judges a new flow: the sender's egress, then the receiver's ingress,
/// each only if it is a container of this node a policy isolates in that
/// direction: allowed, and to be remembered (some policy covers one end:
/// replies must find it), or denied, or of no concern to any policy here.
const JUDGED_UNCONCERNED: u32 = 0;
const JUDGED_ALLOWED: u32 = 1;
const JUDGED_DENIED: u32 = 2;

#[inline(never)]
fn judge_flow(generation: u32, key: &FlowKey, reversed: bool) -> u32 {
    let (sender, receiver, _) = first_packet(key, reversed);
    let endpoint = |addr: [u8; 16]| {
        let key = PolicyEndpointKey {
            generation: generation as u8,
            family: key.family,
            _pad: [0; 2],
            addr,
        };
        // SAFETY: read only; the loader writes whole values.
        unsafe { POLICY_ENDPOINTS.get(key) }.copied()
    };
    let src = endpoint(*sender);
    let dst = endpoint(*receiver);
    if src.is_none() && dst.is_none() {
        return JUDGED_UNCONCERNED;
    }
    let egress = (DIRECTION_EGRESS, ISOLATED_EGRESS, Counter::PolicyEgressAllowed, Counter::PolicyEgressDenied);
    let ingress = (DIRECTION_INGRESS, ISOLATED_INGRESS, Counter::PolicyIngressAllowed, Counter::PolicyIngressDenied);
    for (end, (direction, isolated, allowed, denied)) in [(src, egress), (dst, ingress)] {
        let Some(end) = end.filter(|end| end.flags & isolated != 0) else {
            continue;
        };
        let allows = allows(generation, direction, key, reversed);
        count(end.ifindex, if allows { allowed } else { denied });
        if !allows {
            return JUDGED_DENIED;
        }
    }
    JUDGED_ALLOWED
}

/// The sender, receiver and destination port of the flow's first packet:
/// `key`'s, or (`reversed`) its reverse's. Judging takes the key and this
/// flag rather than a reversed copy: every frame on the deepest chain of
/// calls counts against the verifier's 512 bytes (Linux 5.10 rounds each
/// up to 32).
#[inline(always)]
fn first_packet(key: &FlowKey, reversed: bool) -> (&[u8; 16], &[u8; 16], [u8; 2]) {
    if reversed {
        (&key.dst, &key.src, key.sport)
    } else {
        (&key.src, &key.dst, key.dport)
    }
}

/// Whether the rules of the flow's sender (egress) or receiver (ingress)
/// allow it: the longest prefix of the other end's address gives the
/// ports, and the destination port's longest prefix in them the verdict.
#[inline(never)]
fn allows(generation: u32, direction: u8, flow: &FlowKey, reversed: bool) -> bool {
    let (sender, receiver, dport) = first_packet(flow, reversed);
    let (endpoint, peer) = if direction == DIRECTION_EGRESS {
        (*sender, *receiver)
    } else {
        (*receiver, *sender)
    };
    let address_bits = if flow.family == 4 { 32 } else { 128 };
    let key = Key::new(
        PEER_KEY_FIXED_BITS + address_bits,
        PolicyPeerKey {
            generation: generation as u8,
            direction,
            family: flow.family,
            _pad: 0,
            endpoint,
            peer,
        },
    );
    let Some(rule) = POLICY_PEERS.get(&key) else {
        return false;
    };
    let class = rule.port_class;
    if class == ALL_PORTS {
        return true;
    }
    if !matches!(flow.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return false;
    }
    let key = Key::new(
        PORT_KEY_FIXED_BITS + 16,
        PolicyPortKey {
            generation: generation as u8,
            protocol: flow.protocol,
            _pad: [0; 2],
            class: class.to_be_bytes(),
            port: dport,
        },
    );
    POLICY_PORTS.get(&key).is_some()
}

#[inline(always)]
fn count(ifindex: u32, counter: Counter) {
    if let Some(port) = Port::state(ifindex) {
        port.count(counter);
    }
}

/// The flow a frame belongs to, written to `key` (and for an ICMP error,
/// the flow it is about to `about`). Its own call (see [`judge_frame`]),
/// which returns the [`Kind`] as one integer: the verifier refuses a
/// function that returns a value through its caller's stack, as Rust
/// returns an enum with data.
#[inline(never)]
fn classify(frame: &Frame, key: &mut FlowKey, about: &mut FlowKey) -> u32 {
    match kind_of(frame, key, about) {
        Ok(Kind::Exempt) => CLASS_EXEMPT,
        Ok(Kind::Flow(tcp_flags)) => CLASS_FLOW | (tcp_flags as u32) << 8,
        Ok(Kind::Error) => CLASS_ERROR,
        Err(()) => CLASS_MALFORMED,
    }
}

const CLASS_EXEMPT: u32 = 0;
const CLASS_FLOW: u32 = 1;
const CLASS_ERROR: u32 = 2;
const CLASS_MALFORMED: u32 = 3;

#[inline(always)]
fn kind_of(frame: &Frame, key: &mut FlowKey, about: &mut FlowKey) -> Result<Kind, ()> {
    let ether_type: &[u8; 2] = frame.at(12).map_err(|_| ())?;
    match *ether_type {
        ETH_P_IP => ipv4(frame, key, about),
        ETH_P_IPV6 => ipv6(frame, key, about),
        _ => Ok(Kind::Exempt),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, key: &mut FlowKey, about: &mut FlowKey) -> Result<Kind, ()> {
    let ip: &[u8; IPV4_LEN] = frame.at(ETH_LEN).map_err(|_| ())?;
    let header = (ip[0] & 0xf) as usize * 4;
    if header < IPV4_LEN {
        return Err(());
    }
    key.protocol = ip[9];
    key.family = 4;
    key.src[..4].copy_from_slice(&ip[12..16]);
    key.dst[..4].copy_from_slice(&ip[16..20]);
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    let id = u16::from_be_bytes([ip[4], ip[5]]) as u32;
    let l4 = ETH_LEN + header;
    if fragment & 0x1fff != 0 {
        later_fragment(key, id);
        return Ok(Kind::Flow(0));
    }
    if key.protocol == IPPROTO_ICMP {
        return icmp(frame, key, about, l4, ICMP_V4);
    }
    let kind = transport(frame, key, l4)?;
    if fragment & 0x2000 != 0 {
        first_fragment(key, id);
    }
    Ok(kind)
}

#[inline(always)]
fn ipv6(frame: &Frame, key: &mut FlowKey, about: &mut FlowKey) -> Result<Kind, ()> {
    let ip: &[u8; IPV6_LEN] = frame.at(ETH_LEN).map_err(|_| ())?;
    key.protocol = ip[6];
    key.family = 6;
    key.src.copy_from_slice(&ip[8..24]);
    key.dst.copy_from_slice(&ip[24..40]);
    let mut l4 = ETH_LEN + IPV6_LEN;
    if key.protocol == IPPROTO_HOPOPTS {
        // MLD comes behind a hop-by-hop header (router alert).
        let (next, offset) = frame.ipv6_extension(l4).map_err(|_| ())?;
        key.protocol = next;
        l4 = offset;
    }
    if key.protocol == IPPROTO_FRAGMENT {
        let header: &[u8; 8] = frame.at(l4).map_err(|_| ())?;
        key.protocol = header[0];
        let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
        let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if offset != 0 {
            later_fragment(key, id);
            return Ok(Kind::Flow(0));
        }
        let kind = transport(frame, key, l4 + 8)?;
        if header[3] & 1 != 0 {
            first_fragment(key, id);
        }
        return Ok(kind);
    }
    if key.protocol == IPPROTO_ICMPV6 {
        return icmp(frame, key, about, l4, ICMP_V6);
    }
    // Other extension headers: judged with ports zero (what only a rule
    // for every port allows).
    transport(frame, key, l4)
}

/// TCP, UDP and SCTP carry their ports first; anything else is judged
/// with ports zero.
#[inline(always)]
fn transport(frame: &Frame, key: &mut FlowKey, l4: usize) -> Result<Kind, ()> {
    let mut tcp_flags = 0;
    if let IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP = key.protocol {
        let ports: &[u8; 4] = frame.at(l4).map_err(|_| ())?;
        key.sport = [ports[0], ports[1]];
        key.dport = [ports[2], ports[3]];
        if key.protocol == IPPROTO_TCP {
            tcp_flags = *frame.at::<u8>(l4 + 13).map_err(|_| ())?;
        }
    }
    Ok(Kind::Flow(tcp_flags))
}

/// The ICMP types policy reads, per version.
struct IcmpTypes {
    echo_request: u8,
    echo_reply: u8,
    /// Errors: destination unreachable, source quench (ICMP) or packet too
    /// big (ICMPv6), time exceeded, parameter problem.
    errors: [u8; 4],
    /// The first and last type that pass unjudged (ICMPv6: neighbour
    /// discovery and MLD; an empty range for ICMP).
    exempt: [u8; 2],
}

const ICMP_V4: IcmpTypes = IcmpTypes {
    echo_request: 8,
    echo_reply: 0,
    errors: [3, 4, 11, 12],
    exempt: [1, 0],
};

const ICMP_V6: IcmpTypes = IcmpTypes {
    echo_request: 128,
    echo_reply: 129,
    errors: [1, 2, 3, 4],
    // MLD query, report and done, router and neighbour discovery (130 to
    // 137) and MLDv2 reports (143).
    exempt: [130, 137],
};

/// Echo requests and replies are a flow keyed by their identifier; errors
/// are about the packet they quote.
#[inline(always)]
fn icmp(
    frame: &Frame,
    key: &mut FlowKey,
    about: &mut FlowKey,
    l4: usize,
    types: IcmpTypes,
) -> Result<Kind, ()> {
    let icmp: &[u8; 8] = frame.at(l4).map_err(|_| ())?;
    let kind = icmp[0];
    if (types.exempt[0]..=types.exempt[1]).contains(&kind) || (key.family == 6 && kind == 143) {
        return Ok(Kind::Exempt);
    }
    if kind == types.echo_request {
        key.sport = [icmp[4], icmp[5]];
    } else if kind == types.echo_reply {
        key.dport = [icmp[4], icmp[5]];
    } else if types.errors.contains(&kind) {
        quoted(frame, about, l4 + 8, types.echo_request)?;
        return Ok(Kind::Error);
    }
    Ok(Kind::Flow(0))
}

/// The flow of the packet an ICMP error quotes, from its addresses, its
/// protocol and its first eight bytes (ports, or an echo's identifier).
#[inline(always)]
fn quoted(frame: &Frame, about: &mut FlowKey, inner: usize, echo_request: u8) -> Result<(), ()> {
    let first: &[u8; 1] = frame.at(inner).map_err(|_| ())?;
    let l4 = if first[0] >> 4 == 4 {
        let quoted: &[u8; IPV4_LEN] = frame.at(inner).map_err(|_| ())?;
        about.protocol = quoted[9];
        about.family = 4;
        about.src[..4].copy_from_slice(&quoted[12..16]);
        about.dst[..4].copy_from_slice(&quoted[16..20]);
        inner + ((quoted[0] & 0xf) as usize * 4).max(IPV4_LEN)
    } else {
        let quoted: &[u8; IPV6_LEN] = frame.at(inner).map_err(|_| ())?;
        about.protocol = quoted[6];
        about.family = 6;
        about.src.copy_from_slice(&quoted[8..24]);
        about.dst.copy_from_slice(&quoted[24..40]);
        inner + IPV6_LEN
    };
    let head: &[u8; 8] = frame.at(l4).map_err(|_| ())?;
    match about.protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            about.sport = [head[0], head[1]];
            about.dport = [head[2], head[3]];
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if head[0] == echo_request => {
            about.sport = [head[4], head[5]];
        }
        _ => {}
    }
    Ok(())
}

/// Remembers the ports of a fragmented datagram's first fragment.
#[inline(always)]
fn first_fragment(key: &FlowKey, id: u32) {
    let ports = FragmentPorts {
        sport: key.sport,
        dport: key.dport,
    };
    let _ = FRAGMENTS.insert(&fragment_key(key, id), &ports, BPF_ANY.into());
}

/// A fragment after the first: the flow of the first one, if it was seen
/// (whatever its verdict: a later fragment of a denied datagram is judged
/// by the same ports, so denied too); else ports zero, which only a rule
/// for every port allows.
#[inline(always)]
fn later_fragment(key: &mut FlowKey, id: u32) {
    // SAFETY: read only.
    if let Some(ports) = unsafe { FRAGMENTS.get(&fragment_key(key, id)) } {
        key.sport = ports.sport;
        key.dport = ports.dport;
    }
}

#[inline(always)]
fn fragment_key(key: &FlowKey, id: u32) -> FragmentKey {
    FragmentKey {
        src: key.src,
        dst: key.dst,
        id,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    }
}

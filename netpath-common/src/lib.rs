//! Types shared by the BPF programs and the userspace loader.
//!
//! Every type here is `#[repr(C)]` and plain old data: the loader writes and
//! reads them in BPF maps byte for byte, so layout changes are ABI changes.
#![no_std]

/// Key of the forwarding database: a MAC address, with room for a VLAN id
/// (0 = untagged) so VLAN-aware forwarding does not need a new map layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FdbKey {
    pub mac: [u8; 6],
    pub vlan: u16,
}

impl FdbKey {
    pub const fn new(mac: [u8; 6], vlan: u16) -> Self {
        Self { mac, vlan }
    }
}

/// Value of the learned half of the FDB. Static entries (the containers'
/// own MACs, `fdb add`) live in a map of their own, keyed alike, whose value
/// is just the port's ifindex: a flood of learned addresses can never crowd
/// them out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FdbEntry {
    /// ifindex of the host-side veth the MAC lives behind.
    pub ifindex: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last frame seen from it.
    pub last_seen_ns: u64,
}

/// Declares a counter enum from its rows (`Variant => "name",`, each with
/// its doc): the enum (the discriminant is the index into the counters'
/// array), `COUNT`, `ALL` in row order and `name()`, the stable snake_case
/// name used in tables, JSON and metrics. A new counter is one row (and,
/// for a verdict, its place in `SENT`, `PASSED` or `DROPPED`).
macro_rules! counters {
    ($(#[$doc:meta])* pub enum $enum:ident {
        $($(#[$row_doc:meta])* $variant:ident => $name:literal,)*
    }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum {
            $($(#[$row_doc])* $variant,)*
        }

        impl $enum {
            pub const ALL: [$enum; [$($enum::$variant),*].len()] = [$($enum::$variant),*];
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in tables, JSON and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// What the programs count, per port and per CPU. The discriminant is the
    /// index into [`PortState::packets`].
    pub enum Counter {
        /// Sent straight to the destination port, bypassing the bridge.
        Redirected => "redirected",
        /// Passed to the bridge: broadcast or multicast destination (ARP, ND, ...).
        PassMulticast => "pass_multicast",
        /// Passed to the bridge: destination MAC not in the FDB.
        PassUnknown => "pass_unknown",
        /// Passed to the bridge: destination is the bridge itself (host, NAT).
        PassHost => "pass_host",
        /// Passed to the bridge: destination lives on the ingress port.
        PassHairpin => "pass_hairpin",
        /// Passed to the bridge: the destination port is gone (no longer in the
        /// devmap, which the kernel keeps to live devices; its learned entry is
        /// removed) or the redirect helper refused the frame.
        PassRedirectFailed => "pass_redirect_failed",
        /// Dropped: shorter than the headers it announces.
        DropMalformed => "drop_malformed",
        /// Dropped: multicast or all-zero source MAC (no valid frame has one).
        DropBadSourceMac => "drop_bad_source_mac",
        /// Dropped: the source MAC is not the port's own (source check), or is
        /// the static MAC of another port.
        DropSpoofedMac => "drop_spoofed_mac",
        /// Dropped (source check): the IPv4/IPv6 source, the ARP sender or the
        /// ND target or link-layer option is not the port's own, or a container
        /// sent a router advertisement or redirect.
        DropSpoofedIp => "drop_spoofed_ip",
        /// Dropped (source check): neither IPv4, IPv6 nor ARP, or an IPv6
        /// header chain the check cannot see through.
        DropProtocol => "drop_protocol",
        /// Dropped: a new source MAC on a port that holds its limit of learned
        /// entries. Dropping (not just not learning) keeps the flood from the
        /// bridge, whose own learning would otherwise take it in.
        DropLearnLimit => "drop_learn_limit",
        /// A new or moved learned FDB entry.
        Learned => "learned",
        /// A redirected frame `netpath trace` did not get: its ring buffer was full.
        TraceLost => "trace_lost",
        /// Sent to a container on another node: tunnel key set, redirected to
        /// the node's vxlan device (overlay).
        Encapsulated => "encapsulated",
        /// Broadcast or multicast on an overlay: passed to the bridge and a copy
        /// sent to every other node (head-end replication).
        Flooded => "flooded",
        /// An ARP request for a remote container's address, answered by the
        /// program with that container's MAC (nothing leaves the node).
        ArpAnswered => "arp_answered",
        /// Delivered to this port's container from another node (counted by the
        /// vxlan device's program, not a verdict of this port's).
        Decapsulated => "decapsulated",
        /// Passed to the bridge only: broadcast or multicast on an overlay
        /// beyond the port's budget of copies to other nodes
        /// ([`FLOOD_BUDGET`] per [`FLOOD_WINDOW_NS`], per CPU).
        PassFloodLimited => "pass_flood_limited",
        /// Dropped: UDP to the VXLAN port (4789), from a container. Masqueraded
        /// to a node's underlay address it would pass as that node's own
        /// tunnel traffic at every other node (the inner frame is then checked
        /// there too).
        DropTunnel => "drop_tunnel",
        /// A new flow from this port's container that a policy of type
        /// Egress allowed (counted once per flow, not per packet).
        PolicyEgressAllowed => "policy_egress_allowed",
        /// Dropped: a new flow from this port's container that no policy of
        /// type Egress selecting it allows.
        PolicyEgressDenied => "policy_egress_denied",
        /// A new flow to this port's container that a policy of type Ingress
        /// allowed (counted on the port of the container it protects).
        PolicyIngressAllowed => "policy_ingress_allowed",
        /// Dropped: a new flow to this port's container that no policy of type
        /// Ingress selecting it allows (counted on the protected container's
        /// port, whichever port the frame came by).
        PolicyIngressDenied => "policy_ingress_denied",
        /// Dropped: over the rate this port's container may send at (the
        /// CNI `bandwidth` capability's egress rate).
        DropEgressRate => "drop_egress_rate",
        /// Dropped: over the rate this port's container may be sent at (the
        /// `bandwidth` capability's ingress rate), whichever port or device
        /// the frame came by.
        DropIngressRate => "drop_ingress_rate",
        /// Dropped: a network policy is in force and its judging program
        /// is not in its slot (the loader fills the slot before it puts a
        /// policy in force: only a change behind its back gets here).
        DropPolicyUnloaded => "drop_policy_unloaded",
    }
}

impl Counter {
    /// The reasons a frame leaves by the fast path (not the bridge).
    pub const SENT: [Counter; 3] = [
        Counter::Redirected,
        Counter::Encapsulated,
        Counter::ArpAnswered,
    ];

    /// The reasons a frame is passed to the bridge.
    pub const PASSED: [Counter; 7] = [
        Counter::PassMulticast,
        Counter::Flooded,
        Counter::PassFloodLimited,
        Counter::PassUnknown,
        Counter::PassHost,
        Counter::PassHairpin,
        Counter::PassRedirectFailed,
    ];

    /// The reasons a frame is dropped.
    pub const DROPPED: [Counter; 11] = [
        Counter::DropMalformed,
        Counter::DropBadSourceMac,
        Counter::DropSpoofedMac,
        Counter::DropSpoofedIp,
        Counter::DropProtocol,
        Counter::DropLearnLimit,
        Counter::DropTunnel,
        Counter::PolicyEgressDenied,
        Counter::PolicyIngressDenied,
        Counter::DropEgressRate,
        Counter::DropIngressRate,
    ];
}

/// Addresses a port may send from, per family.
pub const PORT_IPV4_SLOTS: usize = 4;
/// The IPv6 slots hold the container's link-local address too.
pub const PORT_IPV6_SLOTS: usize = 4;

/// [`PortPolicy::flags`]: frames from the port must carry its own MAC and
/// addresses. Off for containers that route or bridge for others.
pub const PORT_SOURCE_CHECK: u32 = 1;

/// An IPv4 prefix as the source check compares it, made by the loader so
/// the check is one AND and one compare per slot: an address is inside if
/// `address & mask == net`, the bytes of all three read as native-endian
/// integers (a bytewise mask needs no byte swap). An empty slot has bits
/// of `net` outside `mask`, so no address is inside it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Slot {
    pub net: u32,
    pub mask: u32,
}

impl Ipv4Slot {
    pub const EMPTY: Ipv4Slot = Ipv4Slot {
        net: u32::MAX,
        mask: 0,
    };

    /// `prefix`/`len` (`len` at most 32; bits of `prefix` past it are ignored).
    pub const fn new(prefix: [u8; 4], len: u8) -> Self {
        let mask = match len {
            0 => 0,
            _ => u32::MAX << (32 - len as u32),
        };
        let mask = u32::from_ne_bytes(mask.to_be_bytes());
        Ipv4Slot {
            net: u32::from_ne_bytes(prefix) & mask,
            mask,
        }
    }

    /// The prefix and its length; None for an empty slot.
    pub const fn prefix(&self) -> Option<([u8; 4], u8)> {
        if self.net & !self.mask != 0 {
            return None;
        }
        Some((self.net.to_ne_bytes(), self.mask.count_ones() as u8))
    }

    /// Whether `address` (its bytes as one native-endian u32) is inside.
    #[inline(always)]
    pub const fn contains(&self, address: u32) -> bool {
        address & self.mask == self.net
    }
}

/// An IPv6 prefix as the source check compares it: [`Ipv4Slot`]'s rule on
/// the address's two halves (see [`Ipv6Slot::halves`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Slot {
    pub net: [u64; 2],
    pub mask: [u64; 2],
}

impl Ipv6Slot {
    pub const EMPTY: Ipv6Slot = Ipv6Slot {
        net: [u64::MAX; 2],
        mask: [0; 2],
    };

    /// `prefix`/`len` (`len` at most 128; bits of `prefix` past it are ignored).
    pub const fn new(prefix: [u8; 16], len: u8) -> Self {
        let mask = match len {
            0 => 0,
            _ => u128::MAX << (128 - len as u32),
        };
        let mask = Self::halves(&mask.to_be_bytes());
        let prefix = Self::halves(&prefix);
        Ipv6Slot {
            net: [prefix[0] & mask[0], prefix[1] & mask[1]],
            mask,
        }
    }

    /// The prefix and its length; None for an empty slot.
    pub const fn prefix(&self) -> Option<([u8; 16], u8)> {
        if self.net[0] & !self.mask[0] != 0 || self.net[1] & !self.mask[1] != 0 {
            return None;
        }
        let (high, low) = (self.net[0].to_ne_bytes(), self.net[1].to_ne_bytes());
        let mut bytes = [0; 16];
        let mut i = 0;
        while i < 8 {
            bytes[i] = high[i];
            bytes[8 + i] = low[i];
            i += 1;
        }
        let len = self.mask[0].count_ones() + self.mask[1].count_ones();
        Some((bytes, len as u8))
    }

    /// An address's bytes as two native-endian u64, as the slots hold theirs.
    #[inline(always)]
    pub const fn halves(address: &[u8; 16]) -> [u64; 2] {
        let (high, low) = address.split_at(8);
        let mut h = [0; 8];
        let mut l = [0; 8];
        let mut i = 0;
        while i < 8 {
            h[i] = high[i];
            l[i] = low[i];
            i += 1;
        }
        [u64::from_ne_bytes(h), u64::from_ne_bytes(l)]
    }

    /// Whether the address with `halves` is inside.
    #[inline(always)]
    pub const fn contains(&self, halves: [u64; 2]) -> bool {
        (((halves[0] & self.mask[0]) ^ self.net[0]) | ((halves[1] & self.mask[1]) ^ self.net[1]))
            == 0
    }
}

/// What a port may send, set by the loader; also what a container on
/// another node may send, checked on the frames decapsulated from it.
/// Each address slot is a prefix: a container's own address is a /32 or a
/// /128; a remote container that routes for others may send from its
/// node's subnets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// MAC of the container behind the port: frames from it need no learning.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub flags: u32,
    /// Most learned FDB entries the port may hold at once.
    pub learn_limit: u32,
    pub ipv4: [Ipv4Slot; PORT_IPV4_SLOTS],
    pub ipv6: [Ipv6Slot; PORT_IPV6_SLOTS],
}

/// No MAC, no flags, every slot empty (a zeroed slot would hold every
/// address).
impl Default for PortPolicy {
    fn default() -> Self {
        PortPolicy {
            mac: [0; 6],
            _pad: [0; 2],
            flags: 0,
            learn_limit: 0,
            ipv4: [Ipv4Slot::EMPTY; PORT_IPV4_SLOTS],
            ipv6: [Ipv6Slot::EMPTY; PORT_IPV6_SLOTS],
        }
    }
}

impl PortPolicy {
    pub const fn checks_source(&self) -> bool {
        self.flags & PORT_SOURCE_CHECK != 0
    }

    /// Lets the port send from `prefix`/`len` (1..=32); false if every
    /// IPv4 slot is taken or the length is out of range.
    pub fn allow_ipv4(&mut self, prefix: [u8; 4], len: u8) -> bool {
        match self.ipv4.iter().position(|s| s.prefix().is_none()) {
            Some(slot) if (1..=32).contains(&len) => {
                self.ipv4[slot] = Ipv4Slot::new(prefix, len);
                true
            }
            _ => false,
        }
    }

    /// Lets the port send from `prefix`/`len` (1..=128); false if every
    /// IPv6 slot is taken or the length is out of range.
    pub fn allow_ipv6(&mut self, prefix: [u8; 16], len: u8) -> bool {
        match self.ipv6.iter().position(|s| s.prefix().is_none()) {
            Some(slot) if (1..=128).contains(&len) => {
                self.ipv6[slot] = Ipv6Slot::new(prefix, len);
                true
            }
            _ => false,
        }
    }
}

/// A container on another node, as the remote FDB holds it: the node it
/// lives on (where frames to it are sent, and the only node frames from
/// it may come from) and what it may send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteContainer {
    pub node: NodeAddr,
    pub policy: PortPolicy,
}

/// What the programs keep per port, one copy per CPU (one lookup per frame
/// finds both): the port's policy, which the loader writes to every copy,
/// and the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortState {
    pub policy: PortPolicy,
    pub packets: [u64; Counter::COUNT],
    /// The port's copies of broadcast to other nodes in the current window.
    pub flood: FloodBudget,
}

/// Broadcast and multicast a port may have replicated to the other nodes
/// of an overlay, per CPU: one container's ARP storm costs every node.
/// Beyond it, the frames reach the local bridge only.
pub const FLOOD_BUDGET: u32 = 100;
/// The window [`FLOOD_BUDGET`] is counted in: 1000 copies a second.
pub const FLOOD_WINDOW_NS: u64 = 100_000_000;

/// A port's use of its [`FLOOD_BUDGET`] in the window that started at
/// `window_start_ns` (`bpf_ktime_get_ns()`), kept by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodBudget {
    pub window_start_ns: u64,
    pub replicated: u32,
    pub _pad: u32,
}

/// Topology-wide settings the programs read from index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// MAC of the bridge: frames to it are for the host and go to the bridge.
    pub bridge_mac: [u8; 6],
    /// Non-zero: learn source MACs of frames from the ports.
    pub learning: u8,
    /// Non-zero: some port has a rate limit (`maps::RATE_LIMITS`), so the
    /// programs look them up; zero spares every frame that lookup.
    pub rate_limits: u8,
    /// Learned entries not refreshed for this long are ignored (and removed).
    pub ageing_ns: u64,
    /// Copy redirected frames to the TRACE ring buffer until this
    /// `bpf_ktime_get_ns()` time (0: off). A live `netpath trace` keeps
    /// pushing it forward, so tracing stops by itself soon after the tracer
    /// dies, SIGKILL included.
    pub trace_until_ns: u64,
    /// The overlay this datapath's containers are on (`vni` 0: none).
    pub overlay: OverlayConfig,
    /// Non-zero: the ports are netkit devices (netkit mode). The forwarding
    /// program runs in the container's transmit then, where the kernel
    /// refuses bpf_redirect_peer() (it takes it at tc ingress only): a
    /// frame for another container is sent out of that container's
    /// primary device instead, marked [`TC_INDEX_JUDGED`].
    pub netkit: u8,
    pub _pad: [u8; 7],
}

/// `skb->tc_index` of a frame a netkit datapath's forwarding program judged
/// and sent out of another container's primary device, whose egress the
/// policy's program holds too: that program passes it on unjudged (once is
/// enough: a rate paid twice would halve it). The forwarding program sets
/// `tc_index` on every frame it sees, so no container can forge the mark;
/// nothing else in Linux 6.7+ (netkit's kernels) uses the field.
pub const TC_INDEX_JUDGED: u32 = 0x6e70;

/// How a datapath reaches containers on other nodes: through the node's
/// one collect-metadata vxlan device, with its own VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayConfig {
    /// VXLAN network identifier (24 bits); 0: the datapath is on no overlay.
    pub vni: u32,
    /// The node's vxlan device (external, collect metadata).
    pub vxlan_ifindex: u32,
    /// The datapath's bridge: broadcast from other nodes is sent out of it,
    /// so it floods the frame to the local containers.
    pub bridge_ifindex: u32,
    /// Non-zero: the underlay is IPv6 (tunnel keys carry IPv6 addresses).
    pub underlay_ipv6: u8,
    /// Non-zero: the tunnel key names `local` as the outer source address
    /// (Linux 6.0 takes it; before, the kernel's route chooses).
    pub pin_local: u8,
    pub _pad: [u8; 2],
    /// This node's underlay address (IPv4 in the first four bytes), the
    /// outer source the other nodes know it by.
    pub local: [u8; 16],
}

/// A node's underlay address: IPv4 in the first 4 bytes (the rest zero), or
/// IPv6. A map key, so every byte (padding included) is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NodeAddr {
    pub addr: [u8; 16],
    /// 4 or 6; 0 marks the end of [`maps::NODE_LIST`].
    pub family: u8,
    pub _pad: [u8; 3],
}

counters! {
    /// What the vxlan device's program counts, per datapath and per CPU: the
    /// index into [`OverlayStats::packets`].
    pub enum OverlayCounter {
        /// Unicast from a known node, sent into the destination container
        /// (also counted as the port's `decapsulated`).
        Decapsulated => "decapsulated",
        /// Broadcast or multicast from a known node, flooded by the bridge to
        /// the local containers.
        FloodedIn => "flooded_in",
        /// Dropped: the outer source address is no node of this overlay.
        DropUnknownNode => "drop_unknown_node",
        /// Dropped: unicast to a MAC no local container has.
        DropNoPort => "drop_no_port",
        /// Dropped: shorter than the headers it announces.
        DropMalformed => "drop_malformed",
        /// Dropped: the inner source MAC is no container of the sending node,
        /// or an ARP or ND message carries another MAC.
        DropSpoofedMac => "drop_spoofed_mac",
        /// Dropped: the inner source address, ARP sender or ND target is not
        /// the sending container's (or its node's, for one that routes), or it
        /// is a router advertisement or redirect.
        DropSpoofedIp => "drop_spoofed_ip",
        /// Dropped: neither IPv4, IPv6 nor ARP inside, or an IPv6 header chain
        /// the check cannot see through.
        DropProtocol => "drop_protocol",
        /// Dropped: a network policy is in force and the judging variant
        /// of the vxlan device's program is not in its slot.
        DropPolicyUnloaded => "drop_policy_unloaded",
        /// Of `decapsulated`, those the underlay interface's program took
        /// (the rest came through the vxlan device).
        DecapsulatedAtUnderlay => "decapsulated_at_underlay",
    }
}

/// The counters of [`OverlayCounter`]. Its size is that of the layout
/// before `decapsulated_at_underlay`, which took the place of a padding
/// word that programs never wrote: pins of that layout stay readable.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayStats {
    pub packets: [u64; OverlayCounter::COUNT],
}

/// Most nodes of one overlay; also the bound of the flooding loop, which
/// the verifier walks once per iteration. That loop is a program of its own
/// (`programs::TC_FLOOD`), loaded when a datapath joins an overlay, so a
/// datapath without one never pays for it: in the port program, a bound of
/// 256 made every load 193 ms against 13 ms with 16 (6.18).
pub const NODE_CAPACITY: u32 = 256;

/// Bytes of each redirected frame copied to userspace by `netpath trace`
/// (a power of two: the programs bound the copy's length with a mask).
pub const TRACE_SNAPLEN: usize = 128;
/// Size of the TRACE ring buffer (a power of two, in bytes).
pub const TRACE_RING_BYTES: u32 = 1 << 20;

/// [`TraceEvent::egress`] of a frame a network policy dropped.
pub const TRACE_DENIED: u32 = u32::MAX;

/// One redirected (or denied) frame, as `netpath trace` receives it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// bpf_ktime_get_ns() when the frame was redirected.
    pub timestamp_ns: u64,
    pub ingress: u32,
    /// Where it went, or [`TRACE_DENIED`].
    pub egress: u32,
    /// Length of the frame.
    pub len: u32,
    /// Bytes of it in `data`.
    pub captured: u32,
    pub data: [u8; TRACE_SNAPLEN],
}

/// Version of the layout of the maps: their names, types, key and value
/// types. The loader writes it into the pinned `LAYOUT` map when it creates
/// a datapath's maps, and refuses pins of another version instead of
/// misreading them. Bump it with every change to a map or a type above
/// (one that only gives meaning to bytes no program wrote, as
/// `OverlayStats`' padding word becoming a counter, reads old pins right
/// and keeps it).
pub const LAYOUT_VERSION: u32 = 16;

pub mod maps;
pub mod policy;
pub mod rate;

/// Program names (the BPF function names; the kernel keeps 15 bytes).
pub mod programs {
    pub const XDP_FORWARD: &str = "netpath_xdp";
    pub const XDP_PEER: &str = "netpath_peer";
    pub const TC_FORWARD: &str = "netpath_tc";
    /// tc ingress of the node's vxlan device: decapsulated frames.
    pub const TC_VXLAN: &str = "netpath_vxlan";
    /// tc ingress (tcx) of the interface that holds the node's underlay
    /// address: VXLAN to local containers, decapsulated without the vxlan
    /// device.
    pub const TC_UNDERLAY: &str = "netpath_uldecap";
    /// tc on a host-side veth, network policy and ingress rates only (where
    /// a policy isolates a container or a container has an ingress rate):
    /// egress in every mode, ingress too in bridge mode.
    pub const TC_POLICE: &str = "netpath_police";
    /// Head-end replication of an overlay's broadcast, tail-called by
    /// `TC_FORWARD` through the FLOOD map: attached to no hook.
    pub const TC_FLOOD: &str = "netpath_flood";
    /// The programs with network policy judged: what `XDP_FORWARD`,
    /// `TC_FORWARD`, `TC_VXLAN` and `TC_POLICE` tail-call while a policy is
    /// in force (see [`TAIL_CALLED`]). The judgement is nine tenths of what
    /// the verifier walks, and only it uses the policy's LRU maps, which
    /// the kernel makes whole: a datapath loads these, and makes those
    /// maps full size, with its first policy, not with its first port.
    pub const XDP_FORWARD_POLICY: &str = "netpath_xdp_pol";
    pub const TC_FORWARD_POLICY: &str = "netpath_tc_pol";
    pub const TC_VXLAN_POLICY: &str = "netpath_vxl_pol";
    pub const TC_POLICE_POLICY: &str = "netpath_plc_pol";
    pub const ALL: [&str; 11] = [
        XDP_FORWARD,
        XDP_PEER,
        TC_FORWARD,
        TC_VXLAN,
        TC_UNDERLAY,
        TC_POLICE,
        TC_FLOOD,
        XDP_FORWARD_POLICY,
        TC_FORWARD_POLICY,
        TC_VXLAN_POLICY,
        TC_POLICE_POLICY,
    ];

    /// A program attached to no hook, run by a tail call through a slot of
    /// a program array map; the loader fills the slot when it loads the
    /// program.
    pub struct TailCall {
        pub program: &'static str,
        pub map: &'static str,
        pub slot: u32,
    }

    /// Slots of `POLICY_TC` (the tc programs' judging variants).
    pub const POLICY_SLOT_FORWARD: u32 = 0;
    pub const POLICY_SLOT_VXLAN: u32 = 1;
    pub const POLICY_SLOT_POLICE: u32 = 2;

    /// Every tail-called program, with its slot.
    pub const TAIL_CALLED: [TailCall; 5] = [
        TailCall {
            program: TC_FLOOD,
            map: crate::maps::FLOOD,
            slot: 0,
        },
        TailCall {
            program: TC_FORWARD_POLICY,
            map: crate::maps::POLICY_TC,
            slot: POLICY_SLOT_FORWARD,
        },
        TailCall {
            program: TC_VXLAN_POLICY,
            map: crate::maps::POLICY_TC,
            slot: POLICY_SLOT_VXLAN,
        },
        TailCall {
            program: XDP_FORWARD_POLICY,
            map: crate::maps::POLICY_XDP,
            slot: 0,
        },
        TailCall {
            program: TC_POLICE_POLICY,
            map: crate::maps::POLICY_TC,
            slot: POLICY_SLOT_POLICE,
        },
    ];

    /// Each program that leaves policy to a judging variant, and that
    /// variant.
    pub const JUDGING_VARIANTS: [(&str, &str); 4] = [
        (XDP_FORWARD, XDP_FORWARD_POLICY),
        (TC_FORWARD, TC_FORWARD_POLICY),
        (TC_VXLAN, TC_VXLAN_POLICY),
        (TC_POLICE, TC_POLICE_POLICY),
    ];

    /// The judging variant of `program`, if it has one.
    pub fn with_policy(program: &str) -> Option<&'static str> {
        JUDGING_VARIANTS
            .iter()
            .find(|(base, _)| *base == program)
            .map(|(_, variant)| *variant)
    }

    /// Whether `program` is a judging variant.
    pub fn is_judging_variant(program: &str) -> bool {
        JUDGING_VARIANTS
            .iter()
            .any(|(_, variant)| *variant == program)
    }
}

/// Capacity of each FDB map (static, learned); large enough for a busy host.
pub const FDB_CAPACITY: u32 = 65536;
/// Default most learned entries per port: with every port at it, the
/// learned FDB is just full (PORT_CAPACITY x 64 = FDB_CAPACITY), so by
/// default no port's learning ever evicts another's entries.
pub const DEFAULT_LEARN_LIMIT: u32 = 64;
/// The UDP port of netpath's vxlan device (IANA's VXLAN port); containers
/// may not send to it.
pub const VXLAN_PORT: u16 = 4789;
/// Capacity of the port maps (devmap and port state).
pub const PORT_CAPACITY: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] with only integer fields and
    // explicit padding, so every byte pattern is a valid value.
    unsafe impl aya::Pod for FdbKey {}
    unsafe impl aya::Pod for FdbEntry {}
    unsafe impl aya::Pod for PortState {}
    unsafe impl aya::Pod for FloodBudget {}
    unsafe impl aya::Pod for PortPolicy {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for NodeAddr {}
    unsafe impl aya::Pod for RemoteContainer {}
    unsafe impl aya::Pod for OverlayStats {}
    unsafe impl aya::Pod for rate::PortRates {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_slot_holds_its_prefix_and_nothing_else() {
        let slot = Ipv4Slot::new([10, 88, 2, 7], 24);
        assert_eq!(slot.prefix(), Some(([10, 88, 2, 0], 24)));
        let inside = |a: [u8; 4]| slot.contains(u32::from_ne_bytes(a));
        assert!(inside([10, 88, 2, 0]) && inside([10, 88, 2, 255]));
        assert!(!inside([10, 88, 3, 1]) && !inside([11, 88, 2, 1]));
        let host = Ipv4Slot::new([10, 88, 2, 7], 32);
        assert!(host.contains(u32::from_ne_bytes([10, 88, 2, 7])));
        assert!(!host.contains(u32::from_ne_bytes([10, 88, 2, 6])));
        assert_eq!(Ipv4Slot::EMPTY.prefix(), None);
        for a in [[0; 4], [255; 4], [10, 88, 2, 7]] {
            assert!(!Ipv4Slot::EMPTY.contains(u32::from_ne_bytes(a)));
        }
    }

    #[test]
    fn an_ipv6_slot_holds_its_prefix_and_nothing_else() {
        let net: [u8; 16] = [0xfd, 0, 0, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let inside = |slot: &Ipv6Slot, a: [u8; 16]| slot.contains(Ipv6Slot::halves(&a));
        // Lengths inside the high half, at its end, and in the low half.
        for len in [48u8, 64, 120, 128] {
            let slot = Ipv6Slot::new(net, len);
            let mut first = net;
            for bit in len as usize..128 {
                first[bit / 8] &= !(0x80 >> (bit % 8));
            }
            assert_eq!(slot.prefix(), Some((first, len)), "/{len}");
            assert!(inside(&slot, net), "/{len}");
            // The last bit of the prefix flipped: outside.
            let mut outside = net;
            outside[(len as usize - 1) / 8] ^= 0x80 >> ((len as usize - 1) % 8);
            assert!(!inside(&slot, outside), "/{len}");
            // A bit past the prefix flipped: inside.
            if len < 128 {
                let mut within = net;
                within[len as usize / 8] ^= 0x80 >> (len as usize % 8);
                assert!(inside(&slot, within), "/{len}");
            }
        }
        assert_eq!(Ipv6Slot::EMPTY.prefix(), None);
        assert!(!inside(&Ipv6Slot::EMPTY, [0; 16]) && !inside(&Ipv6Slot::EMPTY, [0xff; 16]));
    }

    #[test]
    fn a_policys_slots_start_empty_and_fill_in_order() {
        let mut policy = PortPolicy::default();
        assert!(policy.ipv4.iter().all(|s| s.prefix().is_none()));
        assert!(policy.ipv6.iter().all(|s| s.prefix().is_none()));
        assert!(!policy.allow_ipv4([10, 0, 0, 1], 0) && !policy.allow_ipv4([10, 0, 0, 1], 33));
        for i in 0..PORT_IPV4_SLOTS as u8 {
            assert!(policy.allow_ipv4([10, 0, 0, i], 32));
        }
        assert!(!policy.allow_ipv4([10, 0, 0, 9], 32), "a fifth IPv4 slot");
        assert_eq!(policy.ipv4[2].prefix(), Some(([10, 0, 0, 2], 32)));
        assert!(policy.allow_ipv6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 128));
        assert!(!policy.allow_ipv6([0; 16], 129));
        assert_eq!(
            policy.ipv6.iter().filter(|s| s.prefix().is_some()).count(),
            1
        );
    }
}

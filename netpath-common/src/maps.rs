//! The datapath's maps as one table, [`datapath_maps!`](crate::datapath_maps):
//! the programs declare their maps from it (`netpath-ebpf/src/maps.rs`),
//! the loader sizes, pins and opens them by it
//! (`netpath/src/datapath/maps.rs`), and the names below come from it. A
//! new map is one row plus the code that uses it; any change to a row is a
//! change of [`LAYOUT_VERSION`](crate::LAYOUT_VERSION).
//!
//! A row: the map's name (also its pin's file name), `=>` the loader's
//! accessor, `:` its kind with key and value types, the size in brackets
//! (entries, or bytes for a ring buffer), and who sets the size at load:
//! `fixed` (the table's), `fdb` (the datapath's FDB size), `learned` (the
//! learned FDB's, derived from it), `remote` (the FDB size on an overlay,
//! else one entry) or `judgement` (the table's once the judging programs
//! are loaded, else one entry). A macro, not a list of constants,
//! because the BPF side needs statics of aya-ebpf's types and the loader
//! typed handles of aya's, and neither crate can see the other's.

/// Calls `$row!` with every map of the datapath (see the module's text).
#[macro_export]
macro_rules! datapath_maps {
    ($row:ident) => {
        $row! {
            /// One u32: the [`LAYOUT_VERSION`]($crate::LAYOUT_VERSION) of the
            /// pins, written by the loader; the programs never read it.
            LAYOUT => layout: Array<u32> [1] fixed;
            /// The datapath's mode and the overlay's devices and VNI.
            CONFIG => config: Array<$crate::DatapathConfig> [1] fixed;
            /// Static FDB entries: MAC -> ifindex, written only by the loader.
            FDB_STATIC => fdb_static: HashMap<$crate::FdbKey, u32> [$crate::FDB_CAPACITY] fdb;
            /// Learned FDB entries. When it is full, learning evicts the
            /// entry used least recently (a lookup counts as a use), never a
            /// static one.
            FDB_LEARNED => fdb_learned: LruHashMap<$crate::FdbKey, $crate::FdbEntry>
                [$crate::FDB_CAPACITY] learned;
            /// How many learned entries point at each port: the programs add
            /// and take away atomically (every CPU shares one count, unlike
            /// PORT_STATE).
            PORT_LEARNED => port_learned: HashMap<u32, u32> [$crate::PORT_CAPACITY] fixed;
            /// Destination ports for XDP redirect: ifindex -> ifindex.
            PORTS => ports: DevMapHash [$crate::PORT_CAPACITY] fixed;
            /// Ports with a rate limit (either way): ifindex -> the limits and
            /// the policers' state, shared by every CPU. Looked up only while
            /// `DatapathConfig::rate_limits` is set.
            RATE_LIMITS => rate_limits: HashMap<u32, $crate::rate::PortRates>
                [$crate::PORT_CAPACITY] fixed;
            /// Per-port, per-CPU policy and counters, keyed by the ingress
            /// ifindex. A frame from a port not in here is not netpath's: it
            /// goes to the bridge.
            PORT_STATE => port_state: PerCpuHashMap<u32, $crate::PortState>
                [$crate::PORT_CAPACITY] fixed;
            /// Redirected frames for `netpath trace`, written only while
            /// tracing is on.
            TRACE => trace: RingBuf [$crate::TRACE_RING_BYTES] fixed;
            /// Overlay: containers on other nodes, MAC -> their node and what
            /// they may send, written only by the loader (the control plane).
            REMOTE_FDB => remote_fdb: HashMap<$crate::FdbKey, $crate::RemoteContainer>
                [$crate::FDB_CAPACITY] remote;
            /// Overlay: IPv4 address of a container on another node -> its
            /// MAC, so the programs answer ARP for it instead of flooding
            /// the request to every node.
            REMOTE_IPV4 => remote_ipv4: HashMap<[u8; 4], [u8; 6]> [$crate::FDB_CAPACITY] remote;
            /// Overlay: the other nodes; decapsulated frames from any other
            /// underlay address are dropped.
            NODES => nodes: HashMap<$crate::NodeAddr, u32> [$crate::NODE_CAPACITY] fixed;
            /// Overlay: the other nodes as a list, for head-end replication
            /// of broadcast; the first entry of family 0 ends it.
            NODE_LIST => node_list: Array<$crate::NodeAddr> [$crate::NODE_CAPACITY] fixed;
            /// Overlay: the flooding program (`programs::TC_FLOOD`) in slot
            /// 0, set by the loader when a datapath joins an overlay; the
            /// port program tail-calls it for a broadcast to other nodes.
            FLOOD => flood: ProgramArray [1] fixed;
            /// Overlay: the vxlan device program's counters.
            OVERLAY_STATS => overlay_stats: PerCpuArray<$crate::OverlayStats> [1] fixed;
            /// Policy: the judging variants of the tc programs
            /// (`programs::TAIL_CALLED`: the port program's in slot 0, the
            /// vxlan device's in 1, the police program's in 2), which they
            /// tail-call while a policy is in force.
            POLICY_TC => policy_tc: ProgramArray [3] fixed;
            /// Policy: the XDP port program's judging variant, in slot 0.
            POLICY_XDP => policy_xdp: ProgramArray [1] fixed;
            /// Policy: the generation in force (see `policy`).
            POLICY_STATE => policy_state: Array<$crate::policy::PolicyState> [1] fixed;
            /// Policy: the containers of this node a policy isolates, by
            /// address, with the directions it isolates them in.
            POLICY_ENDPOINTS => policy_endpoints: HashMap<$crate::policy::PolicyEndpointKey,
                $crate::policy::EndpointPolicy> [$crate::policy::POLICY_ENDPOINT_CAPACITY] fixed;
            /// Policy: (container, direction, peer prefix) -> the ports allowed.
            POLICY_PEERS => policy_peers: LpmTrie<$crate::policy::PolicyPeerKey,
                $crate::policy::PeerRule> [$crate::policy::POLICY_PEER_CAPACITY] fixed;
            /// Policy: (port class, protocol, port prefix) -> allowed.
            POLICY_PORTS => policy_ports: LpmTrie<$crate::policy::PolicyPortKey, u32>
                [$crate::policy::POLICY_PORT_CAPACITY] fixed;
            /// Policy: the flows allowed (connection tracking). Shared by
            /// every CPU, as a flow's packets and replies cross CPUs.
            FLOWS => flows: LruHashMap<$crate::policy::FlowKey, $crate::policy::Flow>
                [$crate::policy::FLOW_CAPACITY] judgement;
            /// Policy: the ports of fragmented datagrams, from their first
            /// fragment.
            FRAGMENTS => fragments: LruHashMap<$crate::policy::FragmentKey,
                $crate::policy::FragmentPorts> [$crate::policy::FRAGMENT_CAPACITY] judgement;
        }
    };
}

/// Who sets a map's size when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// The table's size.
    Fixed,
    /// The datapath's FDB size (`--fdb-size`).
    Fdb,
    /// The learned FDB's, derived from the FDB size.
    Learned,
    /// The FDB size on an overlay, else one entry: the remote containers'
    /// maps of a datapath that joins none stay empty (an overlay is joined
    /// when the datapath is made, never later).
    Remote,
    /// The table's size once the judging programs are loaded (they alone
    /// use the map), else one entry; the loader makes the map anew, full
    /// size, with the first of them (see `programs::JUDGING_VARIANTS`).
    Judgement,
}

/// One map of the table, as the loader iterates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRow {
    pub name: &'static str,
    pub sizing: Sizing,
}

macro_rules! names {
    ($($(#[$doc:meta])* $name:ident => $accessor:ident : $kind:ident $(<$($ty:ty),+>)?
        [$size:expr] $sizing:ident;)*) => {
        $(
            $(#[$doc])*
            pub const $name: &str = stringify!($name);
        )*
        /// Every map of the table, in its order.
        pub const ALL: &[MapRow] = &[$(MapRow { name: $name, sizing: names!(@sizing $sizing) }),*];
    };
    (@sizing fixed) => { Sizing::Fixed };
    (@sizing fdb) => { Sizing::Fdb };
    (@sizing learned) => { Sizing::Learned };
    (@sizing remote) => { Sizing::Remote };
    (@sizing judgement) => { Sizing::Judgement };
}

datapath_maps!(names);

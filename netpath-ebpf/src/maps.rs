//! The maps shared by every program. The loader pins them under the
//! datapath's bpffs directory, so a restarted loader reuses them.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netpath_common::{
    DatapathConfig, FDB_CAPACITY, FdbEntry, FdbKey, NODE_CAPACITY, NodeAddr, OverlayStats,
    PORT_CAPACITY, PortState, TRACE_RING_BYTES,
};

/// Static FDB entries: MAC -> ifindex, written only by the loader.
#[map(name = "FDB_STATIC")]
pub static FDB_STATIC: HashMap<FdbKey, u32> = HashMap::with_max_entries(FDB_CAPACITY, 0);

/// Learned FDB entries. When it is full, learning evicts the entry used
/// least recently (a lookup counts as a use), never a static one.
#[map(name = "FDB_LEARNED")]
pub static FDB_LEARNED: LruHashMap<FdbKey, FdbEntry> =
    LruHashMap::with_max_entries(FDB_CAPACITY, 0);

/// How many learned entries point at each port: the programs add and take
/// away atomically (every CPU shares one count, unlike PORT_STATE).
#[map(name = "PORT_LEARNED")]
pub static PORT_LEARNED: HashMap<u32, u32> = HashMap::with_max_entries(PORT_CAPACITY, 0);

/// Destination ports for XDP redirect: ifindex -> ifindex.
#[map(name = "PORTS")]
pub static PORTS: DevMapHash = DevMapHash::with_max_entries(PORT_CAPACITY, 0);

/// Per-port, per-CPU policy and counters, keyed by the ingress ifindex. A
/// frame from a port not in here is not netpath's: it goes to the bridge.
#[map(name = "PORT_STATE")]
pub static PORT_STATE: PerCpuHashMap<u32, PortState> =
    PerCpuHashMap::with_max_entries(PORT_CAPACITY, 0);

/// The layout version of these maps, written by the loader (see
/// `netpath_common::LAYOUT_VERSION`); the programs never read it.
#[map(name = "LAYOUT")]
pub static LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Redirected frames for `netpath trace`, written only while tracing is on.
#[map(name = "TRACE")]
pub static TRACE: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// Overlay: containers on other nodes, MAC -> node, written only by the
/// loader (the control plane). Sized like the FDB by the loader.
#[map(name = "REMOTE_FDB")]
pub static REMOTE_FDB: HashMap<FdbKey, NodeAddr> = HashMap::with_max_entries(FDB_CAPACITY, 0);

/// Overlay: IPv4 address of a container on another node -> its MAC, so the
/// programs answer ARP for it instead of flooding the request to every node.
#[map(name = "REMOTE_IPV4")]
pub static REMOTE_IPV4: HashMap<[u8; 4], [u8; 6]> = HashMap::with_max_entries(FDB_CAPACITY, 0);

/// Overlay: the other nodes; decapsulated frames from any other underlay
/// address are dropped.
#[map(name = "NODES")]
pub static NODES: HashMap<NodeAddr, u32> = HashMap::with_max_entries(NODE_CAPACITY, 0);

/// Overlay: the other nodes as a list, for head-end replication of
/// broadcast; the first entry of family 0 ends it.
#[map(name = "NODE_LIST")]
pub static NODE_LIST: Array<NodeAddr> = Array::with_max_entries(NODE_CAPACITY, 0);

/// Overlay: the vxlan device program's counters.
#[map(name = "OVERLAY_STATS")]
pub static OVERLAY_STATS: PerCpuArray<OverlayStats> = PerCpuArray::with_max_entries(1, 0);

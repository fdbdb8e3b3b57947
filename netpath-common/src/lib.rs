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

/// The entry was installed by the loader for one of the topology's own
/// containers; learning never overrides or ages it.
pub const FDB_FLAG_STATIC: u32 = 1;

/// Value of the forwarding database.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FdbEntry {
    /// ifindex of the host-side veth the MAC lives behind.
    pub ifindex: u32,
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last frame seen from it.
    pub last_seen_ns: u64,
}

impl FdbEntry {
    pub const fn is_static(&self) -> bool {
        self.flags & FDB_FLAG_STATIC != 0
    }
}

/// What the programs count, per port and per CPU. The discriminant is the
/// index into [`PortCounters::packets`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Sent straight to the destination port, bypassing the bridge.
    Redirected = 0,
    /// Passed to the bridge: broadcast or multicast destination (ARP, ND, ...).
    PassMulticast,
    /// Passed to the bridge: destination MAC not in the FDB.
    PassUnknown,
    /// Passed to the bridge: destination is the bridge itself (host, NAT).
    PassHost,
    /// Passed to the bridge: destination lives on the ingress port.
    PassHairpin,
    /// Passed to the bridge: the destination port is gone (no longer in the
    /// devmap, which the kernel keeps to live devices) or the redirect
    /// helper refused the frame.
    PassRedirectFailed,
    /// Dropped: shorter than an Ethernet header.
    DropRunt,
    /// Not learned: multicast or all-zero source MAC.
    BadSource,
    /// Not learned: the source MAC belongs to a static entry on another port.
    SpoofedSource,
    /// A new or moved learned FDB entry.
    Learned,
    /// A redirected frame `netpath trace` did not get: its ring buffer was full.
    TraceLost,
}

impl Counter {
    pub const COUNT: usize = 11;
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::Redirected,
        Counter::PassMulticast,
        Counter::PassUnknown,
        Counter::PassHost,
        Counter::PassHairpin,
        Counter::PassRedirectFailed,
        Counter::DropRunt,
        Counter::BadSource,
        Counter::SpoofedSource,
        Counter::Learned,
        Counter::TraceLost,
    ];

    /// The reasons a frame is passed to the bridge.
    pub const PASSED: [Counter; 5] = [
        Counter::PassMulticast,
        Counter::PassUnknown,
        Counter::PassHost,
        Counter::PassHairpin,
        Counter::PassRedirectFailed,
    ];

    /// Stable snake_case name, used in tables, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::PassMulticast => "pass_multicast",
            Counter::PassUnknown => "pass_unknown",
            Counter::PassHost => "pass_host",
            Counter::PassHairpin => "pass_hairpin",
            Counter::PassRedirectFailed => "pass_redirect_failed",
            Counter::DropRunt => "drop_runt",
            Counter::BadSource => "bad_source",
            Counter::SpoofedSource => "spoofed_source",
            Counter::Learned => "learned",
            Counter::TraceLost => "trace_lost",
        }
    }
}

/// What the programs keep per port, one copy per CPU: the MAC of the
/// container behind it (frames from it need no learning) and the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortState {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub packets: [u64; Counter::COUNT],
}

/// Topology-wide settings the programs read from index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// MAC of the bridge: frames to it are for the host and go to the bridge.
    pub bridge_mac: [u8; 6],
    /// Non-zero: learn source MACs of frames from the ports.
    pub learning: u8,
    pub _pad: u8,
    /// Learned entries not refreshed for this long are ignored (and removed).
    pub ageing_ns: u64,
    /// Copy redirected frames to the TRACE ring buffer until this
    /// `bpf_ktime_get_ns()` time (0: off). A live `netpath trace` keeps
    /// pushing it forward, so tracing stops by itself soon after the tracer
    /// dies, SIGKILL included.
    pub trace_until_ns: u64,
}

/// Bytes of each redirected frame copied to userspace by `netpath trace`
/// (a power of two: the programs bound the copy's length with a mask).
pub const TRACE_SNAPLEN: usize = 128;
/// Size of the TRACE ring buffer (a power of two, in bytes).
pub const TRACE_RING_BYTES: u32 = 1 << 20;

/// One redirected frame, as `netpath trace` receives it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// bpf_ktime_get_ns() when the frame was redirected.
    pub timestamp_ns: u64,
    pub ingress: u32,
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
/// misreading them. Bump it with every change to a map or a type above.
pub const LAYOUT_VERSION: u32 = 3;

/// Map names, shared so the loader finds what the programs declare.
pub mod maps {
    /// One u32: the [`LAYOUT_VERSION`](super::LAYOUT_VERSION) of the pins.
    pub const LAYOUT: &str = "LAYOUT";
    pub const FDB: &str = "FDB";
    pub const PORTS: &str = "PORTS";
    pub const PORT_STATE: &str = "PORT_STATE";
    pub const TRACE: &str = "TRACE";
    pub const CONFIG: &str = "CONFIG";
}

/// Program names (the BPF function names; the kernel keeps 15 bytes).
pub mod programs {
    pub const XDP_FORWARD: &str = "netpath_xdp";
    pub const XDP_PEER: &str = "netpath_peer";
    pub const TC_FORWARD: &str = "netpath_tc";
}

/// Capacity of the FDB map; large enough for a busy host.
pub const FDB_CAPACITY: u32 = 65536;
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
    unsafe impl aya::Pod for DatapathConfig {}
}

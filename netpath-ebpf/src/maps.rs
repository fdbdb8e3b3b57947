//! The maps shared by every program. The loader pins them under the
//! topology's bpffs directory, so a restarted loader reuses them.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuHashMap},
};
use netpath_common::{
    DatapathConfig, FDB_CAPACITY, FdbEntry, FdbKey, PORT_CAPACITY, PortCounters,
};

#[map(name = "FDB")]
pub static FDB: HashMap<FdbKey, FdbEntry> = HashMap::with_max_entries(FDB_CAPACITY, 0);

/// Destination ports for XDP redirect: ifindex -> ifindex.
#[map(name = "PORTS")]
pub static PORTS: DevMapHash = DevMapHash::with_max_entries(PORT_CAPACITY, 0);

/// Per-port, per-CPU counters, keyed by the ingress ifindex.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuHashMap<u32, PortCounters> =
    PerCpuHashMap::with_max_entries(PORT_CAPACITY, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

//! The maps shared by every program, declared from the one table
//! (`netpath_common::datapath_maps!`), so the programs and the loader
//! cannot disagree on a name, a kind or a type. The loader pins them under
//! the datapath's bpffs directory, so a restarted loader reuses them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray,
        RingBuf,
    },
};

macro_rules! declare {
    ($($(#[$doc:meta])* $name:ident => $accessor:ident : $kind:ident $(<$($ty:ty),+>)?
        [$size:expr] $sizing:ident;)*) => {
        $(
            $(#[$doc])*
            #[map]
            pub static $name: $kind $(<$($ty),+>)? = declare!(@new $kind $size);
        )*
    };
    // A ring buffer is sized in bytes, every other map in entries.
    (@new RingBuf $size:expr) => { RingBuf::with_byte_size($size, 0) };
    // The hash maps' entries are the loader's (the programs change values
    // in place, and insert only into the LRU maps): allocated as it
    // inserts them, not all when the map is made, which costs a datapath's
    // making milliseconds per map (the remote FDB alone is 8 MB) and every
    // datapath the memory of entries it never has.
    (@new HashMap $size:expr) => { HashMap::with_max_entries($size, BPF_F_NO_PREALLOC) };
    (@new PerCpuHashMap $size:expr) => { PerCpuHashMap::with_max_entries($size, BPF_F_NO_PREALLOC) };
    (@new $kind:ident $size:expr) => { $kind::with_max_entries($size, 0) };
}

netpath_common::datapath_maps!(declare);

//! The maps shared by every program, declared from the one table
//! (`netpath_common::datapath_maps!`), so the programs and the loader
//! cannot disagree on a name, a kind or a type. The loader pins them under
//! the datapath's bpffs directory, so a restarted loader reuses them.

use aya_ebpf::{
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
    (@new $kind:ident $size:expr) => { $kind::with_max_entries($size, 0) };
}

netpath_common::datapath_maps!(declare);

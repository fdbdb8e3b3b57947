//! netpath: an eBPF fast path between containers, with the Linux bridge as
//! the fallback.
//!
//! Layers, each using only those below it:
//! - `cli`, `bench`: the products a person runs;
//! - `ops`: transactions (topology, status, supervise, CNI), `observe`;
//! - `network`: a topology or a CNI network, one view of either;
//! - `datapath`: the BPF object, hooks, typed maps, FDB, counters;
//! - `host`: netlink, namespaces, the container plumbing, ethtool, NAT;
//!   `store`: records and locks under /run/netpath;
//! - `model`: plain data and validation.

pub mod bench;
pub mod cli;
pub mod datapath;
pub mod host;
pub mod model;
pub mod network;
pub mod observe;
pub mod ops;
pub mod store;

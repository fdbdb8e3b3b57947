//! netpath: an eBPF fast path between containers on one host, with the
//! Linux bridge as the fallback.

pub mod bench;
pub mod cli;
pub mod cni;
pub mod datapath;
pub mod ethtool;
pub mod fdb;
pub mod nat;
pub mod lock;
pub mod memlock;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod run;
pub mod spec;
pub mod state;
pub mod stats;
pub mod topology;
pub mod trace;

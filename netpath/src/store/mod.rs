//! What netpath remembers between runs, under /run/netpath (gone after a
//! reboot, like the namespaces and links it describes): records written
//! atomically, and per-datapath locks.

pub mod atomic;
pub mod cni;
pub mod lock;
pub mod nat;
pub mod topology;

pub const STATE_DIR: &str = "/run/netpath";

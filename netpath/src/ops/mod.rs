//! What netpath does, as transactions: each takes its datapath's lock,
//! refuses bad input before it changes anything, and undoes its own changes
//! when it fails halfway. The CLI and the CNI plugin are thin layers on top.

pub mod cni;
pub mod status;
pub mod supervise;
pub mod topology;

//! What netpath does, as transactions: each takes its datapath's lock,
//! refuses bad input before it changes anything, and undoes its own changes
//! when it fails halfway. The CLI and the CNI plugin are thin layers on top.

pub mod cni;
pub mod fault;
pub mod fdb;
pub mod list;
pub mod overlay;
pub mod policy;
pub mod status;
pub mod supervise;
pub mod topology;

use std::time::Duration;

use anyhow::Result;
use rtnetlink::Handle;

use crate::{
    datapath,
    store::lock::{Lock, Purpose},
};

/// Upgrades a running datapath (see `datapath::upgrade`) under its lock,
/// waiting for a CNI ADD or DEL in progress as the plugin's calls do.
pub async fn upgrade(handle: &Handle, datapath: &str, force: bool) -> Result<usize> {
    let _lock = Lock::acquire_waiting(datapath, Purpose::Change, Duration::from_secs(60))?;
    datapath::upgrade(handle, datapath, force).await
}

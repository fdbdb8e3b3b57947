//! What netpath does, as transactions: each takes its datapath's lock,
//! refuses bad input before it changes anything, and undoes its own changes
//! when it fails halfway. The CLI and the CNI plugin are thin layers on top.

pub mod cni;
pub mod fault;
pub mod fdb;
pub mod status;
pub mod supervise;
pub mod topology;

use std::time::Duration;

use anyhow::Result;
use rtnetlink::Handle;

use crate::{
    datapath,
    model::naming::{cni_datapath, validate_ifname, validate_topology_name},
    store::{
        cni::NetworkRecord,
        lock::{Lock, Purpose},
        topology as record,
    },
};

/// The datapath a user means by `name`: a topology, or the CNI network on
/// the bridge of that name (so nobody needs the internal `_cni-` key). The
/// name is validated before any file is looked at.
pub fn datapath_named(name: &str) -> Result<String> {
    if validate_topology_name(name).is_ok() && record::path(name)?.exists() {
        return Ok(name.to_owned());
    }
    validate_ifname("topology or CNI bridge name", name)?;
    if NetworkRecord::exists(name) {
        return Ok(cni_datapath(name));
    }
    validate_topology_name(name)?;
    Ok(name.to_owned())
}

/// Upgrades a running datapath (see `datapath::upgrade`) under its lock,
/// waiting for a CNI ADD or DEL in progress as the plugin's calls do.
pub async fn upgrade(handle: &Handle, datapath: &str, force: bool) -> Result<usize> {
    let _lock = Lock::acquire_waiting(datapath, Purpose::Change, Duration::from_secs(60))?;
    datapath::upgrade(handle, datapath, force).await
}

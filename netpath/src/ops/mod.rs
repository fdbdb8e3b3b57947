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

use anyhow::{Result, bail};
use log::info;
use rtnetlink::Handle;

use crate::{
    datapath,
    host::netlink,
    model::Mode,
    store::lock::{Lock, Purpose},
};

/// The mode of a datapath whose settings name none: the one it was made
/// in, if it exists (`recorded`), else netkit where the kernel has it, else
/// tc. Says which and why.
pub async fn default_mode(handle: &Handle, owner: &str, recorded: Option<Mode>) -> Result<Mode> {
    if let Some(mode) = recorded {
        return Ok(mode);
    }
    let mode = if netlink::kernel_has_netkit(handle).await? {
        info!(
            "{owner}: mode netkit (the default where the kernel has netkit devices, as this one \
             does): containers get netkit pairs, the tc program runs as they transmit"
        );
        Mode::Netkit
    } else {
        info!(
            "{owner}: mode tc (the default where the kernel has no netkit devices, which need \
             Linux 6.7+ built with CONFIG_NETKIT): veth pairs, the tc program at their ingress"
        );
        Mode::Tc
    };
    Ok(mode)
}

/// Refuses netkit mode, before anything changes, on a kernel without
/// netkit devices.
pub async fn require_mode(handle: &Handle, owner: &str, mode: Mode) -> Result<()> {
    if mode.uses_netkit() && !netlink::kernel_has_netkit(handle).await? {
        bail!(
            "{owner}: mode netkit needs netkit devices, which this kernel does not make (they \
             need Linux 6.7+ built with CONFIG_NETKIT; `ip link add type netkit` says \
             \"Unknown device type\"): use mode tc, the same program on veth pairs"
        );
    }
    Ok(())
}

/// Upgrades a running datapath (see `datapath::upgrade`) under its lock,
/// waiting for a CNI ADD or DEL in progress as the plugin's calls do.
pub async fn upgrade(handle: &Handle, datapath: &str, force: bool) -> Result<usize> {
    let _lock = Lock::acquire_waiting(datapath, Purpose::Change, Duration::from_secs(60))?;
    datapath::upgrade(handle, datapath, force).await
}

//! What netpath does, as transactions: each takes its datapath's lock,
//! refuses bad input before it changes anything, and undoes its own changes
//! when it fails halfway. The CLI and the CNI plugin are thin layers on top.

pub mod cni;
pub mod fault;
pub mod fdb;
pub mod list;
pub mod overlay;
pub mod status;
pub mod supervise;
pub mod topology;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rtnetlink::Handle;

use crate::{
    datapath,
    host::netlink,
    model::naming::{cni_datapath, validate_ifname, validate_topology_name},
    store::{
        cni::NetworkRecord,
        lock::{Lock, Purpose},
        topology as record,
    },
};

/// What a user means by a `--name`: a topology, or the CNI network on the
/// bridge of that name (so nobody needs the internal `_cni-` key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    Topology(String),
    CniNetwork { bridge: String },
}

impl Named {
    /// The key of its datapath: pin directory and lock.
    pub fn datapath(&self) -> String {
        match self {
            Named::Topology(name) => name.clone(),
            Named::CniNetwork { bridge } => cni_datapath(bridge),
        }
    }
}

/// Resolves `name`, validated before any file is looked at: an existing
/// topology first, then a CNI network's bridge, else a topology name (one
/// that may not exist yet).
pub fn named(name: &str) -> Result<Named> {
    if validate_topology_name(name).is_ok() && record::path(name)?.exists() {
        return Ok(Named::Topology(name.to_owned()));
    }
    if validate_ifname("CNI bridge name", name).is_err() {
        // No bridge can have this name: it is a topology's, or wrong as one.
        validate_topology_name(name)?;
        return Ok(Named::Topology(name.to_owned()));
    }
    if NetworkRecord::exists(name) {
        return Ok(Named::CniNetwork {
            bridge: name.to_owned(),
        });
    }
    validate_topology_name(name)?;
    Ok(Named::Topology(name.to_owned()))
}

/// The datapath key of `name` (see [`named`]).
pub fn datapath_named(name: &str) -> Result<String> {
    Ok(named(name)?.datapath())
}

/// The host-side veth and its ifindex of `port`: for a topology, a
/// container name or host veth; for a CNI network, a container ID or host
/// veth.
pub async fn port_ifindex(handle: &Handle, named: &Named, port: &str) -> Result<(String, u32)> {
    let bridge = match named {
        Named::Topology(name) => return topology::port_ifindex(handle, name, port).await,
        Named::CniNetwork { bridge } => bridge,
    };
    let rec = NetworkRecord::load(bridge)?;
    let Some(attachment) = rec
        .attachments
        .iter()
        .find(|a| a.host_veth == port || a.container_id == port)
    else {
        bail!("the CNI network on bridge {bridge} has no container or host veth {port}");
    };
    let veth = attachment.host_veth.clone();
    let link = netlink::link_by_name(handle, &veth)
        .await?
        .with_context(|| {
            format!(
                "host veth {veth} of container {} is missing",
                attachment.container_id
            )
        })?;
    Ok((veth, link.index))
}

/// Upgrades a running datapath (see `datapath::upgrade`) under its lock,
/// waiting for a CNI ADD or DEL in progress as the plugin's calls do.
pub async fn upgrade(handle: &Handle, datapath: &str, force: bool) -> Result<usize> {
    let _lock = Lock::acquire_waiting(datapath, Purpose::Change, Duration::from_secs(60))?;
    datapath::upgrade(handle, datapath, force).await
}

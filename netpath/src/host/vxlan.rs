//! The node's one vxlan device: external (collect metadata), shared by
//! every overlay on this host, each overlay's program on its ingress taking
//! the frames of its VNI. Created by the first overlay that joins, deleted
//! with the last one.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use rtnetlink::Handle;

use super::netlink::{self, Link};
use crate::model::overlay::VXLAN_PORT;

/// Name of the node's vxlan device.
pub const DEVICE: &str = "netpath-vxlan";
/// Its owner mark (the alias of netpath's links).
const ALIAS: &str = "netpath overlay device";

/// The node's vxlan device, created with MTU `mtu` if missing; an existing
/// one keeps the larger of its MTU and `mtu`.
pub async fn ensure_device(handle: &Handle, mtu: u32) -> Result<Link> {
    match netlink::link_by_name(handle, DEVICE).await? {
        Some(link) if link.alias.as_deref() == Some(ALIAS) => {
            if link.mtu.is_some_and(|m| m < mtu) {
                netlink::set_mtu(handle, link.index, mtu).await?;
            }
            Ok(link)
        }
        Some(_) => bail!(
            "an interface named {DEVICE} exists that netpath did not create: remove or rename it"
        ),
        None => netlink::create_external_vxlan(handle, DEVICE, VXLAN_PORT, mtu, ALIAS).await,
    }
}

/// Deletes the device if no overlay uses it any more (`in_use`: the
/// programs still attached to it).
pub async fn remove_unless(handle: &Handle, in_use: bool) -> Result<()> {
    if in_use {
        return Ok(());
    }
    if let Some(link) = netlink::link_by_name(handle, DEVICE).await?
        && link.alias.as_deref() == Some(ALIAS)
    {
        netlink::delete_link(handle, link.index).await?;
    }
    Ok(())
}

/// The MTU of the interface that carries the underlay address `addr`,
/// which must be one of this host's.
pub async fn underlay_mtu(handle: &Handle, addr: IpAddr) -> Result<u32> {
    let link = netlink::link_with_address(handle, addr)
        .await?
        .with_context(|| {
            format!(
                "underlay address {addr} is on no interface of this host: give --underlay one of its \
                 addresses (see `ip address`)"
            )
        })?;
    link.mtu
        .with_context(|| format!("interface {} reports no MTU", link.name))
}

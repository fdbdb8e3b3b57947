//! The node's one vxlan device: external (collect metadata), shared by
//! every overlay on this host, each overlay's program on its ingress taking
//! the frames of its VNI. What no program takes (a VNI no overlay here
//! uses, an outer family none expects) is dropped and counted by an
//! nftables rule on the device's ingress hook, which runs after tc's: it
//! never reaches the host's stack. Created by the first overlay that
//! joins, deleted with the last one.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use rtnetlink::Handle;

use super::{
    netlink::{self, Link},
    nft,
};
use crate::model::overlay::VXLAN_PORT;

/// Name of the node's vxlan device.
pub const DEVICE: &str = "netpath-vxlan";
/// Its owner mark (the alias of netpath's links).
const ALIAS: &str = "netpath overlay device";
/// The nftables table (family netdev) that drops what no overlay took.
const UNCLAIMED_TABLE: &str = "netpath-vxlan";
/// Its counter of the frames dropped.
const UNCLAIMED_COUNTER: &str = "unclaimed";

/// The node's vxlan device, created with MTU `mtu` if missing; an existing
/// one keeps the larger of its MTU and `mtu`.
pub async fn ensure_device(handle: &Handle, mtu: u32) -> Result<Link> {
    let link = match netlink::link_by_name(handle, DEVICE).await? {
        Some(link) if link.alias.as_deref() == Some(ALIAS) => {
            if link.mtu.is_some_and(|m| m < mtu) {
                netlink::set_mtu(handle, link.index, mtu).await?;
            }
            link
        }
        Some(_) => bail!(
            "an interface named {DEVICE} exists that netpath did not create: remove or rename it"
        ),
        None => netlink::create_external_vxlan(handle, DEVICE, VXLAN_PORT, mtu, ALIAS).await?,
    };
    drop_unclaimed().with_context(|| {
        format!(
            "adding the rule that drops what no overlay takes on {DEVICE} (nftables, family netdev)"
        )
    })?;
    Ok(link)
}

/// The rule that drops and counts what no overlay's program took, made
/// afresh (its counter kept: `add` leaves an existing one as it is).
fn drop_unclaimed() -> Result<()> {
    nft::run(&format!(
        "add table netdev {UNCLAIMED_TABLE}\n\
         add counter netdev {UNCLAIMED_TABLE} {UNCLAIMED_COUNTER}\n\
         add chain netdev {UNCLAIMED_TABLE} ingress {{ type filter hook ingress device \"{DEVICE}\" priority 0; policy accept; }}\n\
         flush chain netdev {UNCLAIMED_TABLE} ingress\n\
         add rule netdev {UNCLAIMED_TABLE} ingress counter name \"{UNCLAIMED_COUNTER}\" drop\n"
    ))
}

/// Frames of the vxlan device no overlay took, dropped since the device
/// was made (0 without the device).
pub fn unclaimed_packets() -> Result<u64> {
    Ok(nft::counter_packets("netdev", UNCLAIMED_TABLE, UNCLAIMED_COUNTER)?.unwrap_or(0))
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
    if nft::table_exists("netdev", UNCLAIMED_TABLE) {
        nft::run(&format!("delete table netdev {UNCLAIMED_TABLE}\n"))?;
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

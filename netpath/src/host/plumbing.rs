//! Plugging a container in and out: a veth pair (a netkit pair in netkit
//! mode) whose far end is created directly inside the container's namespace, the host end on a bridge and
//! marked as its owner's, and the container side addressed and routed.

use std::{net::IpAddr, os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use rtnetlink::Handle;

use super::{netlink, netns};
use crate::model::{
    Mac,
    naming::{describe_datapath, owner_alias, pod_alias},
};

/// One container's connection.
pub struct Plug<'a> {
    /// Name of the veth end that stays on this side.
    pub host_veth: &'a str,
    /// The container's network namespace (a bind mount or /proc/PID/ns/net).
    pub netns: &'a Path,
    /// Name of the veth end inside the container.
    pub ifname: &'a str,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// The bridge the host end joins, if any.
    pub bridge: Option<u32>,
    /// Topology or CNI datapath whose alias marks the host end.
    pub owner: &'a str,
    /// The CNI container (ID, interface) the host end belongs to, marked
    /// in its alias after the owner.
    pub container: Option<(&'a str, &'a str)>,
    /// The container's addresses, one per family.
    pub addresses: &'a [IpNet],
    /// Default routes of the container, one per family.
    pub gateways: &'a [IpAddr],
    /// The container sends only from its own MAC and addresses (see
    /// `datapath::Port::source_check`).
    pub source_check: bool,
    /// What the pair is (see `netlink::PairKind::of` a mode).
    pub kind: netlink::PairKind,
}

/// Creates and configures the pair; returns the host end. On failure the
/// caller unplugs (the host end may exist).
pub async fn plug(handle: &Handle, p: &Plug<'_>) -> Result<netlink::Link> {
    let host = create_pair(handle, p).await?;
    configure_inside(p.netns, p.ifname, p.addresses, p.gateways).with_context(|| {
        format!(
            "configuring {} in namespace {}",
            p.ifname,
            p.netns.display()
        )
    })?;
    Ok(host)
}

/// The first half of [`plug`], which needs no address: the pair, the host
/// end marked and on the bridge, the container end unconfigured. Returns
/// the host end. On failure the caller unplugs.
pub async fn create_pair(handle: &Handle, p: &Plug<'_>) -> Result<netlink::Link> {
    let ns = std::fs::File::open(p.netns)
        .with_context(|| format!("opening namespace {}", p.netns.display()))?;
    let peer = netlink::VethPeer {
        netns_fd: ns.as_raw_fd(),
        name: p.ifname,
        mac: p.mac,
    };
    let host = netlink::create_pair(handle, p.kind, p.host_veth, p.bridge, p.mtu, peer).await?;
    let alias = match p.container {
        Some((id, ifname)) => pod_alias(p.owner, id, ifname),
        None => owner_alias(p.owner),
    };
    let host = netlink::set_alias(handle, &host, &alias).await?;
    if let (Some(_), Some(mac)) = (p.bridge, p.mac) {
        secure_bridge_port(handle, host.index, mac, p.source_check).await?;
    }
    Ok(host)
}

/// The bridge learns nothing from a container that checks its sources:
/// it knows its one MAC from a static entry, which no forged frame moves
/// (in every mode: in bridge mode no program checks sources). A container
/// that routes for others keeps learning, within the bridge's own rules.
async fn secure_bridge_port(
    handle: &Handle,
    index: u32,
    mac: Mac,
    source_check: bool,
) -> Result<()> {
    netlink::add_bridge_static_entry(handle, index, mac).await?;
    netlink::set_bridge_port_learning(handle, index, !source_check).await
}

/// Inside a namespace: `lo` up, the addresses on `ifname`, `ifname` up,
/// and a default route per gateway.
pub fn configure_inside(
    ns: &Path,
    ifname: &str,
    addresses: &[IpNet],
    gateways: &[IpAddr],
) -> Result<()> {
    let (ifname, addresses, gateways) = (ifname.to_owned(), addresses.to_vec(), gateways.to_vec());
    netns::run_in_path(ns, move |h| async move {
        if let Some(lo) = netlink::link_by_name(&h, "lo").await? {
            netlink::set_up(&h, lo.index).await?;
        }
        let link = netlink::link_by_name(&h, &ifname)
            .await?
            .with_context(|| format!("{ifname} is missing"))?;
        netlink::set_eui64_link_local(&h, link.index).await?;
        for address in addresses {
            netlink::add_address(&h, link.index, address).await?;
        }
        netlink::set_up(&h, link.index).await?;
        for gateway in gateways {
            netlink::add_default_route(&h, gateway).await?;
        }
        Ok(())
    })
}

/// Whether a link marked with one of `marks` may be deleted: it carries
/// one, or it is of an interrupted change that created it but had not
/// marked it yet (its names were checked free before).
fn marked(link: &netlink::Link, marks: &[String], interrupted: bool) -> bool {
    match link.alias.as_deref() {
        Some(alias) => marks.iter().any(|m| m == alias),
        None => interrupted,
    }
}

/// Deletes the host end (and so the pair) if it is `owner`'s; returns
/// whether a link was deleted.
pub async fn unplug(
    handle: &Handle,
    host_veth: &str,
    owner: &str,
    interrupted: bool,
) -> Result<bool> {
    unplug_marked(handle, host_veth, &[owner_alias(owner)], interrupted).await
}

/// Deletes a CNI container's host end if its alias names the container.
/// `recorded`: the owner's record holds the attachment with this host veth,
/// which proves it the container's even under the owner-only mark of older
/// netpath versions. Without that, a container whose ID hashes to the same
/// name cannot touch it.
pub async fn unplug_pod(
    handle: &Handle,
    host_veth: &str,
    owner: &str,
    (container_id, ifname): (&str, &str),
    recorded: bool,
    interrupted: bool,
) -> Result<bool> {
    let mut marks = vec![pod_alias(owner, container_id, ifname)];
    if recorded {
        marks.push(owner_alias(owner));
    }
    unplug_marked(handle, host_veth, &marks, interrupted).await
}

async fn unplug_marked(
    handle: &Handle,
    host_veth: &str,
    marks: &[String],
    interrupted: bool,
) -> Result<bool> {
    let Some(link) = netlink::link_by_name(handle, host_veth).await? else {
        return Ok(false);
    };
    if !marked(&link, marks, interrupted) {
        log::warn!(
            "not deleting link {host_veth}: it is not {} (alias {:?})",
            marks.join(" or "),
            link.alias.as_deref().unwrap_or("")
        );
        return Ok(false);
    }
    netlink::delete_link(handle, link.index).await
}

/// Whether an existing bridge that `owner` did not make may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopt {
    /// Only `owner`'s own bridge.
    No,
    /// Any bridge: the user said so (a CNI conflist's `adoptBridge`).
    Yes,
}

/// The bridge `name` with every gateway address, created (marked as
/// `owner`'s) if missing. Returns it and whether this call created it.
/// An existing device is refused before anything changes if it is no
/// bridge, or, unless `adopt`, a bridge `owner` did not make: netpath
/// never addresses or plugs containers into what is not its own.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    owner: &str,
    mtu: u32,
    gateways: &[IpNet],
    adopt: Adopt,
) -> Result<(netlink::Link, bool)> {
    let (bridge, created) = match netlink::link_by_name(handle, name).await? {
        Some(existing) if !existing.is_bridge() => bail!(
            "{name} exists and is no bridge (a {} device): netpath will not put containers on it; \
             name a bridge of netpath's, or one that does not exist yet",
            existing.kind.as_deref().unwrap_or("physical")
        ),
        Some(existing)
            if adopt == Adopt::No && existing.alias.as_deref() != Some(&owner_alias(owner)) =>
        {
            bail!(
                "bridge {name} exists and netpath did not make it for {}: netpath will not \
                 address it or plug containers into it; name another bridge, or (CNI) set \
                 \"adoptBridge\": true in the conflist to use it as it is",
                describe_datapath(owner)
            )
        }
        Some(bridge) => (bridge, false),
        None => (
            netlink::create_bridge(handle, name, &owner_alias(owner), mtu).await?,
            true,
        ),
    };
    address_bridge(handle, &bridge, gateways).await?;
    Ok((bridge, created))
}

/// Gives `bridge` every gateway address it does not have yet.
pub async fn address_bridge(
    handle: &Handle,
    bridge: &netlink::Link,
    gateways: &[IpNet],
) -> Result<()> {
    if gateways.is_empty() {
        return Ok(());
    }
    let present = netlink::addresses(handle, bridge.index).await?;
    for gateway in gateways
        .iter()
        .filter(|g| !present.iter().any(|p| p.addr() == g.addr()))
    {
        netlink::add_address(handle, bridge.index, *gateway)
            .await
            .with_context(|| format!("addressing bridge {}", bridge.name))?;
    }
    Ok(())
}

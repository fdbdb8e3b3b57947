//! WireGuard under an overlay (`--wireguard-key`): one device per
//! datapath on an overlay, whose peers are the other nodes. VXLAN then runs
//! between the nodes' tunnel addresses (each node's gateway address in its
//! own slice of the overlay network), which only the device routes: every
//! tunnel packet leaves encrypted, and one arrives only if the peer that
//! holds that tunnel address (its only allowed IP) sealed it. A packet
//! from a tunnel address that comes in on any other interface (forged on
//! the underlay) is dropped and counted by an nftables rule before routing.
//!
//! The device through rtnetlink, its keys and peers through WireGuard's
//! generic netlink family (as `wg set` does), the routes to the peers'
//! tunnel addresses on it through rtnetlink.

use std::{
    collections::BTreeSet,
    fs,
    io::{ErrorKind, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context, Result, bail};
use base64::{Engine, prelude::BASE64_STANDARD};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use rtnetlink::{
    Handle, LinkWireguard, RouteMessageBuilder,
    packet_route::route::{RouteAttribute, RouteScope},
};

use super::{
    netlink::{self, Link},
    nft,
};
use crate::model::overlay::{VXLAN_PORT, decode_key};

/// A node's X25519 private key.
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// The key in `path` (base64, as `wg genkey` writes it), or a new one
    /// written there (mode 0600) if the file does not exist.
    pub fn load_or_make(path: &Path) -> Result<PrivateKey> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(PrivateKey(decode_key(text.trim()).with_context(|| {
                format!(
                    "WireGuard key file {}: not a key as `wg genkey` writes it",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key).context("drawing a WireGuard key")?;
                // Clamped as X25519 wants it (what `wg genkey` does).
                key[0] &= 248;
                key[31] = (key[31] & 127) | 64;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating WireGuard key file {}", path.display()))?;
                writeln!(file, "{}", BASE64_STANDARD.encode(key))
                    .with_context(|| format!("writing WireGuard key file {}", path.display()))?;
                log::info!("made a WireGuard key in {}", path.display());
                Ok(PrivateKey(key))
            }
            Err(e) => {
                Err(e).with_context(|| format!("reading WireGuard key file {}", path.display()))
            }
        }
    }

    /// The public key, base64.
    pub fn public(&self) -> String {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        BASE64_STANDARD.encode(x25519_dalek::PublicKey::from(&secret).as_bytes())
    }
}

/// Another node as this node's device knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: [u8; 32],
    /// Its underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Its tunnel address: the one address it may send from through the
    /// device, and where VXLAN to it goes.
    pub tunnel: IpAddr,
}

/// The device `name` (owned through `alias`), made if missing, with MTU
/// `mtu`, this node's key, and UDP port `port`.
pub async fn ensure_device(
    handle: &Handle,
    name: &str,
    alias: &str,
    mtu: u32,
    key: &PrivateKey,
    port: u16,
) -> Result<Link> {
    let link = match netlink::link_by_name(handle, name).await? {
        Some(link) if link.alias.as_deref() == Some(alias) => {
            if link.mtu != Some(mtu) {
                netlink::set_mtu(handle, link.index, mtu).await?;
            }
            link
        }
        Some(_) => bail!(
            "an interface named {name} exists that netpath did not create: remove or rename it"
        ),
        None => {
            let msg = LinkWireguard::new(name).mtu(mtu).up().build();
            if let Err(e) = handle.link().add(msg).execute().await {
                let unsupported = matches!(&e, rtnetlink::Error::NetlinkError(m)
                    if m.raw_code() == -libc::EOPNOTSUPP);
                if unsupported {
                    return Err(no_wireguard());
                }
                return Err(e).with_context(|| format!("creating WireGuard device {name}"));
            }
            let link = netlink::link_by_name(handle, name)
                .await?
                .with_context(|| format!("WireGuard device {name} vanished after creation"))?;
            netlink::set_alias(handle, &link, alias).await?
        }
    };
    set_device(
        name,
        vec![
            WireguardAttribute::PrivateKey(key.0),
            WireguardAttribute::ListenPort(port),
        ],
    )
    .await
    .with_context(|| format!("setting the key and port {port} of WireGuard device {name}"))?;
    Ok(link)
}

/// Makes `device`'s peers exactly `peers`, each reached by a route to its
/// tunnel address from `local` (this node's). Peers that stay keep their
/// sessions.
pub async fn set_peers(
    handle: &Handle,
    device: &Link,
    local: IpAddr,
    peers: &[Peer],
) -> Result<()> {
    let name = &device.name;
    let have = peer_keys(name)
        .await
        .with_context(|| format!("reading the peers of WireGuard device {name}"))?;
    let mut update: Vec<WireguardPeer> = have
        .iter()
        .filter(|key| !peers.iter().any(|p| p.public_key == **key))
        .map(|key| {
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])
        })
        .collect();
    update.extend(peers.iter().map(|peer| {
        WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(peer.public_key),
            WireguardPeerAttribute::Endpoint(peer.endpoint),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
            WireguardPeerAttribute::AllowedIps(vec![host_route(peer.tunnel)]),
        ])
    }));
    if !update.is_empty() {
        set_device(name, vec![WireguardAttribute::Peers(update)])
            .await
            .with_context(|| format!("setting the peers of WireGuard device {name}"))?;
    }
    // The routes to the tunnel addresses: the only way out to them.
    let want: BTreeSet<IpAddr> = peers.iter().map(|p| p.tunnel).collect();
    for route in routes_on(handle, device.index).await? {
        let stale = destination(&route).is_none_or(|dst| !want.contains(&dst));
        if stale {
            handle
                .route()
                .del(route)
                .execute()
                .await
                .with_context(|| format!("removing a stale route on {name}"))?;
        }
    }
    for tunnel in want {
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(tunnel, host_prefix(tunnel))
            .and_then(|b| b.pref_source(local))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .output_interface(device.index)
            .scope(RouteScope::Link)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the route to {tunnel} dev {name} src {local}"))?;
    }
    Ok(())
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn host_route(ip: IpAddr) -> WireguardAllowedIp {
    let family = if ip.is_ipv4() {
        WireguardAddressFamily::Ipv4
    } else {
        WireguardAddressFamily::Ipv6
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(ip),
        WireguardAllowedIpAttr::Cidr(host_prefix(ip)),
    ])
}

/// The routes of both families in the main table that go out of `index`.
async fn routes_on(
    handle: &Handle,
    index: u32,
) -> Result<Vec<rtnetlink::packet_route::route::RouteMessage>> {
    let mut out = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<_> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .context("listing routes")?;
        out.extend(routes.into_iter().filter(|r| {
            r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
                && r.header.scope == RouteScope::Link
        }));
    }
    Ok(out)
}

fn destination(route: &rtnetlink::packet_route::route::RouteMessage) -> Option<IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(v4)) => {
            Some(IpAddr::V4(*v4))
        }
        RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet6(v6)) => {
            Some(IpAddr::V6(*v6))
        }
        _ => None,
    })
}

/// One WG_CMD_SET_DEVICE on device `name`.
async fn set_device(name: &str, mut attributes: Vec<WireguardAttribute>) -> Result<()> {
    attributes.insert(0, WireguardAttribute::IfName(name.to_owned()));
    let replies = request(
        WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        },
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .await?;
    drop(replies);
    Ok(())
}

/// The public keys of device `name`'s peers.
async fn peer_keys(name: &str) -> Result<Vec<[u8; 32]>> {
    let replies = request(
        WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(name.to_owned())],
        },
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await?;
    Ok(replies
        .iter()
        .flat_map(|m| &m.attributes)
        .filter_map(|a| match a {
            WireguardAttribute::Peers(peers) => Some(peers),
            _ => None,
        })
        .flatten()
        .filter_map(|peer| {
            peer.0.iter().find_map(|a| match a {
                WireguardPeerAttribute::PublicKey(key) => Some(*key),
                _ => None,
            })
        })
        .collect())
}

/// Sends one message to WireGuard's generic netlink family and collects
/// the replies, failing on an error reply.
async fn request(message: WireguardMessage, flags: u16) -> Result<Vec<WireguardMessage>> {
    let (connection, mut handle, _) =
        genetlink::new_connection().context("opening a generic netlink socket")?;
    let connection = tokio::spawn(connection);
    let mut nlmsg = NetlinkMessage::from(GenlMessage::from_payload(message));
    nlmsg.header.flags = flags;
    let result = async {
        let mut replies = handle
            .request(nlmsg)
            .await
            .context("WireGuard's generic netlink family (is the wireguard module loaded?)")?;
        let mut out = Vec::new();
        while let Some(reply) = futures::StreamExt::next(&mut replies).await {
            match reply.context("reading a WireGuard netlink reply")?.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io().into()),
                _ => {}
            }
        }
        Ok(out)
    }
    .await;
    connection.abort();
    result
}

/// The nftables table (family inet) of `device`'s guard.
fn guard_table(device: &str) -> String {
    format!("netpath-{device}")
}

const GUARD_COUNTER: &str = "unauthenticated";

/// Drops, and counts, VXLAN from an address of `network` (the overlay's,
/// where the tunnel addresses are) that does not come in on `device`:
/// only WireGuard may deliver tunnel traffic from a tunnel address.
pub fn guard(device: &str, network: IpNet) -> Result<()> {
    let table = guard_table(device);
    let family = if network.addr().is_ipv4() {
        "ip"
    } else {
        "ip6"
    };
    nft::run(&format!(
        "add table inet {table}\n\
         add counter inet {table} {GUARD_COUNTER}\n\
         add chain inet {table} prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
         flush chain inet {table} prerouting\n\
         add rule inet {table} prerouting iifname != \"{device}\" {family} saddr {network} udp dport {VXLAN_PORT} counter name \"{GUARD_COUNTER}\" drop\n"
    ))
    .with_context(|| format!("adding the rule that keeps tunnel traffic to {device} (nftables)"))
}

/// VXLAN from a tunnel address that did not come through `device`,
/// dropped since the guard was made (0 without it).
pub fn unauthenticated_packets(device: &str) -> Result<u64> {
    Ok(nft::counter_packets("inet", &guard_table(device), GUARD_COUNTER)?.unwrap_or(0))
}

/// Removes `device` (if it carries `alias`) and its guard.
pub async fn remove(handle: &Handle, device: &str, alias: &str) -> Result<()> {
    if let Some(link) = netlink::link_by_name(handle, device).await?
        && link.alias.as_deref() == Some(alias)
    {
        netlink::delete_link(handle, link.index).await?;
    }
    let table = guard_table(device);
    if nft::table_exists("inet", &table) {
        nft::run(&format!("delete table inet {table}\n"))?;
    }
    Ok(())
}

/// Fails, naming the kernel feature, unless this kernel has WireGuard
/// (asking for its generic netlink family loads the module if it is one).
pub async fn probe() -> Result<()> {
    let (connection, handle, _) =
        genetlink::new_connection().context("opening a generic netlink socket")?;
    let connection = tokio::spawn(connection);
    let found = handle.resolve_family::<WireguardMessage>().await;
    connection.abort();
    found.map(|_| ()).map_err(|_| no_wireguard())
}

fn no_wireguard() -> anyhow::Error {
    anyhow::anyhow!(
        "this kernel has no WireGuard (CONFIG_WIREGUARD, Linux 5.6+; Debian builds it as the module \
         wireguard: `modprobe wireguard`): bring the overlay up without --wireguard-key, or on a \
         kernel that has it"
    )
}

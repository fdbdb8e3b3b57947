//! Small helpers over rtnetlink for the links and addresses netpath manages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkNetkit, LinkUnspec, LinkVeth,
    LinkVxlan, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{
            AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoNetkit, InfoVeth,
            LinkAttribute, LinkInfo, LinkMessage, LinkXdp, NetkitMode,
        },
        neighbour::{NeighbourFlags, NeighbourState},
    },
};

use crate::model::{Mac, Mode};

/// A link as netpath needs to see it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub mac: Option<Mac>,
    pub controller: Option<u32>,
    /// Id of the XDP program attached to the link, if any.
    pub xdp_prog_id: Option<u32>,
    pub mtu: Option<u32>,
    /// Its driver's kind (`bridge`, `veth`, `vxlan`, ...); None for a
    /// device without one (a physical NIC, `lo`).
    pub kind: Option<String>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

impl From<LinkMessage> for Link {
    fn from(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            alias: None,
            mac: None,
            controller: None,
            xdp_prog_id: None,
            mtu: None,
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac = Some(Mac(a.try_into().expect("length checked")))
                }
                LinkAttribute::Controller(c) => link.controller = Some(c),
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(InfoKind::Other(kind)) => Some(kind.clone()),
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    })
                }
                LinkAttribute::Xdp(xdp) => {
                    link.xdp_prog_id = xdp.iter().find_map(|x| match x {
                        LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        link
    }
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(Link::from)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>> {
    let msgs: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing links")?;
    Ok(msgs.into_iter().map(Link::from).collect())
}

/// Interface names by ifindex, for tables and logs.
#[derive(Default)]
pub struct LinkNames(std::collections::HashMap<u32, String>);

impl LinkNames {
    pub async fn load(handle: &Handle) -> Result<Self> {
        Ok(Self(
            links(handle)
                .await?
                .into_iter()
                .map(|l| (l.index, l.name))
                .collect(),
        ))
    }

    /// The interface's name, or `ifN` for one that is gone.
    pub fn name(&self, ifindex: u32) -> String {
        self.0
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }
}

pub async fn create_bridge(handle: &Handle, name: &str, alias: &str, mtu: u32) -> Result<Link> {
    let msg = LinkBridge::new(name).mtu(mtu).up().build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating bridge {name}"))?;
    let link = link_by_name(handle, name)
        .await?
        .with_context(|| format!("bridge {name} vanished after creation"))?;
    set_alias(handle, &link, alias).await
}

/// Marks a link as netpath's. The kernel ignores IFLA_IFALIAS when creating
/// a link, so this is a change right after.
pub async fn set_alias(handle: &Handle, link: &Link, alias: &str) -> Result<Link> {
    let msg = LinkUnspec::new_with_index(link.index).alias(alias).build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("marking {} as netpath's", link.name))?;
    Ok(Link {
        alias: Some(alias.to_owned()),
        ..link.clone()
    })
}

/// The far end of a veth or netkit pair: created directly inside a
/// namespace.
pub struct VethPeer<'a> {
    pub netns_fd: i32,
    pub name: &'a str,
    pub mac: Option<Mac>,
}

impl VethPeer<'_> {
    /// Its part of the request that creates the pair.
    fn message(&self, mtu: u32) -> LinkMessage {
        let mut msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(self.name.to_owned())
            .mtu(mtu)
            .setns_by_fd(self.netns_fd);
        if let Some(mac) = self.mac {
            msg = msg.address(mac.0.to_vec());
        }
        msg.build()
    }
}

/// What a container's pair of devices is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    Veth,
    /// In L2 mode (Ethernet frames, so a bridge can take the primary and
    /// ARP works as on veth), both ends passing frames on when no program
    /// decides.
    Netkit,
}

impl PairKind {
    /// The pairs a datapath in `mode` plugs its containers in with.
    pub fn of(mode: Mode) -> PairKind {
        if mode.uses_netkit() {
            PairKind::Netkit
        } else {
            PairKind::Veth
        }
    }
}

/// Creates a pair of `kind` with MTU `mtu` on both ends: `name` here (a
/// netkit pair's primary; enslaved to `bridge` if given, and up) and `peer`
/// inside its namespace.
pub async fn create_pair(
    handle: &Handle,
    kind: PairKind,
    name: &str,
    bridge: Option<u32>,
    mtu: u32,
    peer: VethPeer<'_>,
) -> Result<Link> {
    let peer_msg = peer.message(mtu);
    match kind {
        PairKind::Veth => {
            let msg = LinkVeth::new(name, peer.name)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
            add_pair(handle, msg, "veth", name, bridge, mtu).await
        }
        PairKind::Netkit => {
            let msg =
                LinkNetkit::new(name, peer.name, NetkitMode::L2).set_info_data(InfoData::Netkit(
                    vec![InfoNetkit::Mode(NetkitMode::L2), InfoNetkit::Peer(peer_msg)],
                ));
            add_pair(handle, msg, "netkit", name, bridge, mtu).await
        }
    }
}

/// Whether this kernel makes netkit devices (Linux 6.7+ built with
/// CONFIG_NETKIT, which cannot be a module). Asked without creating
/// anything: a request for a netkit pair in a mode no kernel has is
/// refused for the mode where netkit exists (EINVAL, or ERANGE where the
/// attribute's policy bounds it), and for the kind (EOPNOTSUPP, "Unknown
/// device type") where it does not. Any other refusal (EPERM without
/// CAP_NET_ADMIN, say) answers neither way and is passed on. The answer
/// holds for the process: `up` without a mode asks for the default mode and
/// then checks the mode it got, and asks the kernel once.
pub async fn kernel_has_netkit(handle: &Handle) -> Result<bool> {
    static ANSWER: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    ANSWER
        .get_or_try_init(|| probe_netkit(handle))
        .await
        .copied()
}

async fn probe_netkit(handle: &Handle) -> Result<bool> {
    const PROBE: &str = "np-nkprobe";
    let msg = LinkNetkit::new(PROBE, "np-nkprobe-p", NetkitMode::Other(u32::MAX)).build();
    match handle.link().add(msg).execute().await {
        Err(e) if is_errno(&e, libc::EOPNOTSUPP) => Ok(false),
        Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ERANGE) => Ok(true),
        Err(e) => Err(e).context(
            "asking the kernel whether it makes netkit devices (a netkit link of an invalid \
             mode, named np-nkprobe, which the kernel should refuse)",
        ),
        Ok(()) => {
            // A kernel that took the mode: the pair exists, remove it.
            if let Some(link) = link_by_name(handle, PROBE).await? {
                delete_link(handle, link.index).await?;
            }
            Ok(true)
        }
    }
}

async fn add_pair<T>(
    handle: &Handle,
    msg: LinkMessageBuilder<T>,
    kind: &str,
    name: &str,
    bridge: Option<u32>,
    mtu: u32,
) -> Result<Link> {
    let mut msg = msg.mtu(mtu).up();
    if let Some(bridge) = bridge {
        msg = msg.controller(bridge);
    }
    handle
        .link()
        .add(msg.build())
        .execute()
        .await
        .with_context(|| format!("creating {kind} pair {name}"))?;
    link_by_name(handle, name)
        .await?
        .with_context(|| format!("{kind} {name} vanished after creation"))
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("setting link {index} up"))
}

/// Deletes a link; returns false if it was already gone.
pub async fn delete_link(handle: &Handle, index: u32) -> Result<bool> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting link {index}")),
    }
}

/// Sets the link's IPv6 address generation to EUI-64, so its link-local
/// address follows from its MAC (see `Mac::ipv6_link_local`) whatever the
/// namespace's default. Before the link goes up; a namespace without IPv6
/// has nothing to set.
pub async fn set_eui64_link_local(handle: &Handle, index: u32) -> Result<()> {
    let mode = AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::Eui64)]);
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![mode]))
        .build();
    match handle.link().set(msg).execute().await {
        Err(e) if is_errno(&e, libc::EAFNOSUPPORT) => Ok(()),
        other => other
            .with_context(|| format!("setting IPv6 address generation of link {index} to EUI-64")),
    }
}

/// `bridge link set dev PORT learning on|off`.
pub async fn set_bridge_port_learning(handle: &Handle, index: u32, learning: bool) -> Result<()> {
    let msg = LinkBridgePort::new(index).learning(learning).build();
    // A change through RTM_NEWLINK: RTM_SETLINK ignores port settings.
    handle.link().change(msg).execute().await.with_context(|| {
        format!(
            "turning learning {} on bridge port {index}",
            if learning { "on" } else { "off" }
        )
    })
}

/// `bridge fdb replace MAC dev PORT master static sticky`: the bridge
/// sends frames for `mac` to this port, and frames from another port with
/// that source MAC never move the entry (sticky; static alone would move).
pub async fn add_bridge_static_entry(handle: &Handle, index: u32, mac: Mac) -> Result<()> {
    handle
        .neighbours()
        .add_bridge(index, &mac.0)
        .state(NeighbourState::Noarp)
        .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding static bridge FDB entry {mac} on port {index}"))
}

/// Adds an address; an IPv6 one is usable at once (no duplicate address
/// detection: netpath hands out the addresses itself).
pub async fn add_address(handle: &Handle, index: u32, net: IpNet) -> Result<()> {
    let mut request = handle.address().add(index, net.addr(), net.prefix_len());
    if net.addr().is_ipv6() {
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request
        .execute()
        .await
        .with_context(|| format!("adding address {net} to link {index}"))
}

/// The link's addresses of both families, without IPv6 link-local ones
/// (the kernel adds those itself).
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpNet>> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("listing addresses of link {index}"))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let prefix = m.header.prefix_len;
            m.attributes.into_iter().find_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                    IpNet::new(ip, prefix).ok()
                }
                _ => None,
            })
        })
        .filter(|net| !matches!(net.addr(), IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect())
}

/// The link that carries address `addr`, if any.
pub async fn link_with_address(handle: &Handle, addr: IpAddr) -> Result<Option<Link>> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing addresses")?;
    let index = msgs.into_iter().find_map(|m| {
        m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr))
            .then_some(m.header.index)
    });
    let Some(index) = index else {
        return Ok(None);
    };
    Ok(links(handle).await?.into_iter().find(|l| l.index == index))
}

/// Creates an external (collect-metadata) vxlan device on UDP `port`: BPF
/// programs give each frame its tunnel (VNI, remote address); the device
/// learns nothing and floods nowhere by itself.
pub async fn create_external_vxlan(
    handle: &Handle,
    name: &str,
    port: u16,
    mtu: u32,
    alias: &str,
) -> Result<Link> {
    let msg = LinkVxlan::new(name, 0)
        .collect_metadata(true)
        .port(port)
        .learning(false)
        .mtu(mtu)
        .up()
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating vxlan device {name} (external, UDP port {port})"))?;
    let link = link_by_name(handle, name)
        .await?
        .with_context(|| format!("vxlan device {name} vanished after creation"))?;
    set_alias(handle, &link, alias).await
}

/// A vxlan device of one VNI as the kernel's own overlay design uses it
/// (Flannel's `flannel.1`): a fixed local underlay address, sent out of the
/// underlay interface, a port of a bridge; it learns nothing, static FDB
/// entries say behind which node each MAC is.
pub struct VxlanPort<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The interface carrying `local`.
    pub underlay: u32,
    pub mtu: u32,
    pub bridge: u32,
}

pub async fn create_vxlan_port(handle: &Handle, v: &VxlanPort<'_>) -> Result<Link> {
    let msg = LinkVxlan::new(v.name, v.vni)
        .local(v.local)
        .port(v.port)
        .dev(v.underlay)
        .learning(false)
        .mtu(v.mtu)
        .controller(v.bridge)
        .up()
        .build();
    handle.link().add(msg).execute().await.with_context(|| {
        format!(
            "creating vxlan device {} (VNI {}, local {}, UDP port {})",
            v.name, v.vni, v.local, v.port
        )
    })?;
    link_by_name(handle, v.name)
        .await?
        .with_context(|| format!("vxlan device {} vanished after creation", v.name))
}

/// `bridge fdb add MAC dev VXLAN dst REMOTE self permanent`: the vxlan
/// device sends frames for `mac` to the node at `remote`; the all-zeros MAC
/// is where broadcasts and unknown destinations go.
pub async fn add_vxlan_fdb_entry(
    handle: &Handle,
    index: u32,
    mac: Mac,
    remote: IpAddr,
) -> Result<()> {
    handle
        .neighbours()
        .add_bridge(index, &mac.0)
        .destination(remote)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .execute()
        .await
        .with_context(|| format!("adding vxlan FDB entry {mac} dst {remote} on link {index}"))
}

/// `ip neigh replace IP lladdr MAC dev LINK nud permanent`: no ARP or ND
/// for `ip` on that link.
pub async fn add_static_neighbour(handle: &Handle, index: u32, ip: IpAddr, mac: Mac) -> Result<()> {
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(&mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding neighbour {ip} lladdr {mac} on link {index}"))
}

pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("setting the MTU of link {index} to {mtu}"))
}

/// The default route of the gateway's family.
pub async fn add_default_route(handle: &Handle, gateway: IpAddr) -> Result<()> {
    let route = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).build(),
    };
    handle
        .route()
        .add(route)
        .execute()
        .await
        .with_context(|| format!("adding default route via {gateway}"))
}

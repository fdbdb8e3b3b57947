//! A network: what netpath runs as one unit, a datapath with its bridge,
//! its ports, its record and its place on an overlay. There are two kinds,
//! and they differ only in who adds the containers and where the record is
//! kept: a topology (`netpath up` or `run`, its containers named by the
//! user) and a CNI network (the containers a runtime attaches through
//! netpath-cni to one bridge). Every verb, the overlay, status and the
//! reconciler take a [`Network`]; only this module tells the kinds apart
//! (`topology.rs`, `cni.rs`), so a new kind of owner is a file here.

pub mod cni;
pub mod topology;

use std::fmt;

use anyhow::{Result, bail};
use ipnet::IpNet;
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath::{Datapath, Port},
    model::{
        Mode,
        naming::{self, bridge_name, cni_datapath, validate_ifname, validate_topology_name},
        policy::{self, Endpoint, EndpointRules, Identity},
    },
    store::{
        self,
        cni::{NetworkOverlay, NetworkRecord},
    },
};

/// Who adds and removes a network's containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `netpath up` (or `run`) and `port add|del`.
    Topology,
    /// A container runtime, through netpath-cni.
    Cni,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Topology => "topology",
            Kind::Cni => "cni",
        })
    }
}

/// A topology or a CNI network, by the name `--name` takes: the
/// topology's, or the CNI network's bridge. Valid by construction, so
/// no name reaches outside the state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    kind: Kind,
    name: String,
}

/// A network as its record has it now.
#[derive(Clone, Debug)]
pub struct View {
    /// False for a topology whose `up` has not finished (or failed halfway).
    pub complete: bool,
    /// The mode its record sets: a topology's. A CNI network keeps none
    /// (each ADD brings its conflist's); its programs show it.
    pub mode: Option<Mode>,
    pub subnets: Vec<IpNet>,
    pub nat: bool,
    pub containers: Vec<Container>,
    /// Its place on an overlay: the overlay and this node's subnets there.
    pub overlay: Option<NetworkOverlay>,
}

/// One container of a network: its port, as the datapath attaches it.
#[derive(Clone, Debug)]
pub struct Container {
    /// What the user calls it: a topology's container name, a CNI
    /// container ID.
    pub id: String,
    /// What policies, `policy check` and `status` call it: a topology's
    /// container name; a CNI pod's name as the runtime gave it
    /// (K8S_POD_NAME), else its container ID.
    pub name: String,
    /// Its namespace as shown: a topology container's name, a CNI
    /// container's path (CNI_NETNS).
    pub netns_shown: String,
    pub port: Port,
    /// Its namespace and labels, which network policies select it by.
    pub identity: Identity,
}

impl Network {
    pub fn topology(name: &str) -> Result<Network> {
        validate_topology_name(name)?;
        Ok(Network {
            kind: Kind::Topology,
            name: name.to_owned(),
        })
    }

    /// The CNI network on `bridge`.
    pub fn cni(bridge: &str) -> Result<Network> {
        validate_ifname("CNI bridge", bridge)?;
        Ok(Network {
            kind: Kind::Cni,
            name: bridge.to_owned(),
        })
    }

    /// What a user means by `name`, validated before any file is looked
    /// at: an existing topology first, then the CNI network on the bridge
    /// of that name (so nobody needs the internal `_cni-` key), else a
    /// topology (one that may not exist yet).
    pub fn named(name: &str) -> Result<Network> {
        if validate_topology_name(name).is_ok() && topology::exists(name)? {
            return Network::topology(name);
        }
        if validate_ifname("CNI bridge name", name).is_ok() && NetworkRecord::exists(name) {
            return Network::cni(name);
        }
        Network::topology(name)
    }

    /// Every network with a record: topologies (complete or not), then CNI
    /// networks, each sorted by name.
    pub fn all() -> Result<Vec<Network>> {
        let mut all: Vec<Network> = topology::names()?
            .iter()
            .map(|name| Network::topology(name))
            .collect::<Result<_>>()?;
        all.extend(cni::bridges()?.iter().filter_map(|b| Network::cni(b).ok()));
        Ok(all)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The user's name for it: the topology's, or the CNI bridge's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of its datapath: pin directory, lock, overlay record.
    pub fn datapath(&self) -> String {
        match self.kind {
            Kind::Topology => self.name.clone(),
            Kind::Cni => cni_datapath(&self.name),
        }
    }

    pub fn bridge(&self) -> String {
        match self.kind {
            Kind::Topology => bridge_name(&self.name),
            Kind::Cni => self.name.clone(),
        }
    }

    /// The topology's name, for the verbs that change topologies; a CNI
    /// network's containers come and go with its runtime.
    pub fn topology_name(&self) -> Result<&str> {
        match self.kind {
            Kind::Topology => Ok(&self.name),
            Kind::Cni => bail!(
                "{} is the bridge of a CNI network: its runtime adds and removes its containers \
                 through netpath-cni (ADD/DEL), and its conflist sets the mode; this verb changes \
                 topologies (see `netpath list`)",
                self.name
            ),
        }
    }

    /// Whether its runtime, not netpath, makes and removes it: `run` then
    /// keeps only its overlay's control plane.
    pub fn runtime_managed(&self) -> bool {
        self.kind == Kind::Cni
    }

    /// Its record now; None if it has none (not up, or removed since).
    pub fn view(&self) -> Result<Option<View>> {
        match self.kind {
            Kind::Topology => topology::view(&self.name),
            Kind::Cni => cni::view(&self.name),
        }
    }

    /// Its record, for the verbs that need it up: a topology that is up
    /// (not half built), a CNI network with or without pods.
    pub fn load(&self) -> Result<View> {
        match self.kind {
            Kind::Topology => Ok(topology::view_complete(&self.name)?),
            Kind::Cni => Ok(cni::view(&self.name)?.unwrap_or_else(cni::empty_view)),
        }
    }

    /// Its datapath as its record has it now, with the network policies
    /// applied to it compiled: a topology that is up, a CNI network with
    /// a pod added.
    pub fn datapath_now(&self) -> Result<Datapath> {
        match self.kind {
            Kind::Topology => topology::datapath(&topology::load_complete(&self.name)?.spec),
            Kind::Cni => cni::recorded_datapath(&self.name),
        }
    }

    /// Its place on its overlay now, or an error naming the fix.
    pub fn overlay(&self) -> Result<NetworkOverlay> {
        let view = self.load()?;
        match (view.overlay, self.kind) {
            (Some(overlay), _) => Ok(overlay),
            (None, Kind::Topology) => bail!(
                "topology {} is on no overlay (bring it up with --vni, --underlay, --overlay-network and \
                 --peers or --etcd)",
                self.name
            ),
            (None, Kind::Cni) => bail!(
                "the CNI network on bridge {} is on no overlay now: it has no pods, or its conflist \
                 names no \"overlay\"",
                self.name
            ),
        }
    }

    /// The host veth and ifindex of `port`: a container (a topology's name,
    /// a CNI container ID) or its host veth.
    pub async fn port_ifindex(&self, handle: &Handle, port: &str) -> Result<(String, u32)> {
        let view = self.load()?;
        let Some(member) = view
            .containers
            .iter()
            .find(|m| m.port.name == port || m.id == port)
        else {
            bail!("{self} has no port {port}: no container or host veth of that name");
        };
        let veth = &member.port.name;
        let link = crate::host::netlink::link_by_name(handle, veth)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("host veth {veth} of container {} is missing", member.id)
            })?;
        Ok((veth.clone(), link.index))
    }
}

/// "topology np", "the CNI network on bridge cni0": for messages.
impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Topology => write!(f, "topology {}", self.name),
            Kind::Cni => write!(f, "the CNI network on bridge {}", self.name),
        }
    }
}

/// A container of this node as network policy sees it.
pub fn endpoint(
    name: &str,
    identity: &Identity,
    addresses: impl Iterator<Item = std::net::IpAddr>,
) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        namespace: identity.namespace.clone(),
        labels: identity.labels.clone(),
        addresses: addresses.collect(),
        named_ports: identity.named_ports.clone(),
        local: true,
    }
}

/// The policies applied to `datapath`, compiled for `containers` (this
/// node's), with the node's own addresses on the network (`gateways`)
/// always allowed, as Kubernetes allows a pod's node. Selectors select
/// the containers of the overlay's other nodes too, as their records last
/// programmed name them (see `ops::overlay::program`).
pub fn compiled_policy(
    datapath: &str,
    containers: &[Endpoint],
    gateways: &[IpNet],
) -> Result<Vec<EndpointRules>> {
    let policies = store::policy::load(datapath)?;
    if policies.is_empty() {
        refuse_if_record_lost(datapath)?;
        return Ok(Vec::new());
    }
    let mut endpoints = containers.to_vec();
    endpoints.extend(remote_endpoints(datapath)?);
    let namespaces = Vec::new();
    let node: Vec<IpNet> = gateways.iter().map(|g| IpNet::from(g.addr())).collect();
    Ok(policy::compile(&policies, &endpoints, &namespaces, &node))
}

/// Fails closed when the maps enforce a policy whose record is gone (the
/// state directory damaged, a file deleted by hand): compiling nothing
/// would switch every container's policy off in silence.
fn refuse_if_record_lost(datapath: &str) -> Result<()> {
    if store::policy::is_recorded(datapath) {
        return Ok(());
    }
    let Ok(maps) = crate::datapath::maps(datapath) else {
        return Ok(()); // not running: nothing enforced
    };
    let generation = crate::datapath::policy::generation(&maps)?;
    if generation != 0 {
        bail!(
            "{}: its maps enforce network policies (generation {generation}) whose record \
             {} is gone; refusing to switch them off. Apply them again (`netpath policy apply`), \
             or switch them off (`netpath policy delete --all`)",
            naming::describe_datapath(datapath),
            store::policy::path(datapath).display()
        );
    }
    Ok(())
}

/// The containers of the overlay's other nodes, as policy sees them: peers
/// whose `local` is false, named `NODE/MAC`.
fn remote_endpoints(datapath: &str) -> Result<Vec<Endpoint>> {
    let peers = store::overlay::load(datapath)?
        .map(|record| record.peers)
        .unwrap_or_default();
    Ok(peers
        .iter()
        .flat_map(|node| {
            node.endpoints.iter().map(|remote| Endpoint {
                local: false,
                ..endpoint(
                    &format!("{}/{}", node.node, remote.mac),
                    &remote.identity,
                    remote.ips.iter().copied(),
                )
            })
        })
        .collect())
}

impl View {
    /// What the datapath attaches: every container's port.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.containers.iter().map(|m| &m.port)
    }
}

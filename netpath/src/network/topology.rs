//! A topology as a network: its record is the spec `up` was given (and
//! `port add|del` changed), kept in /run/netpath/NAME.json; its containers
//! are named, each with a namespace and host veth `NAME-CONTAINER`.

use anyhow::{Result, bail};

use super::{Container, View};
use crate::{
    datapath::{Datapath, Port, hooks::TcMethod},
    host::netns,
    model::{
        ContainerSpec, TopologySpec,
        naming::{CONTAINER_IFNAME, port_name},
        policy::Endpoint,
    },
    store::{
        cni::NetworkOverlay,
        topology::{self as record, TopologyRecord},
    },
};

pub(super) fn exists(name: &str) -> Result<bool> {
    Ok(record::path(name)?.exists())
}

pub(super) fn names() -> Result<Vec<String>> {
    record::names()
}

/// The datapath of a topology, with the policies applied to it compiled
/// for its containers.
pub fn datapath(spec: &TopologySpec) -> Result<Datapath> {
    let containers: Vec<Endpoint> = spec
        .containers
        .iter()
        .map(|c| super::endpoint(&c.name, &c.identity, c.ips.iter().map(|ip| ip.addr())))
        .collect();
    let policy = super::compiled_policy(&spec.name, &containers, &spec.gateways())?;
    Ok(Datapath {
        name: spec.name.clone(),
        bridge: spec.bridge_name(),
        mode: spec.mode,
        ageing_s: spec.ageing_s,
        fdb_size: spec.fdb_size,
        // A container that routes for others (now or by `port add`) learns.
        learning: true,
        overlay: spec.overlay.is_some(),
        learn_limit: spec.learn_limit,
        tc: TcMethod::chosen(),
        ports: spec.containers.iter().map(|c| port(spec, c)).collect(),
        policy,
    })
}

/// A topology's container: host veth and namespace both `NAME-CONTAINER`.
pub fn port(spec: &TopologySpec, c: &ContainerSpec) -> Port {
    let name = port_name(&spec.name, &c.name);
    Port {
        netns: netns::path(&name),
        name,
        ifname: CONTAINER_IFNAME.into(),
        mac: c.mac,
        addresses: c.ips.iter().map(|ip| ip.addr()).collect(),
        source_check: c.source_check,
        bandwidth: Default::default(),
    }
}

/// The record of a topology that is up (not half built).
pub fn load_complete(topology: &str) -> Result<TopologyRecord> {
    match record::load(topology)? {
        Some(s) if s.complete => Ok(s),
        Some(_) => bail!(
            "topology {topology} is half built; run `netpath down --name {topology}` or `up` again"
        ),
        None => bail!("topology {topology} is not up (see `netpath up --help`)"),
    }
}

pub(super) fn view(topology: &str) -> Result<Option<View>> {
    Ok(record::load(topology)?.map(|rec| view_of(&rec)))
}

pub(super) fn view_complete(topology: &str) -> Result<View> {
    Ok(view_of(&load_complete(topology)?))
}

fn view_of(rec: &TopologyRecord) -> View {
    let spec = &rec.spec;
    View {
        complete: rec.complete,
        mode: Some(spec.mode),
        subnets: spec.subnets.clone(),
        nat: spec.nat,
        containers: spec
            .containers
            .iter()
            .map(|c| {
                let port = port(spec, c);
                Container {
                    id: c.name.clone(),
                    name: c.name.clone(),
                    netns_shown: port.name.clone(),
                    port,
                    identity: c.identity.clone(),
                }
            })
            .collect(),
        overlay: spec.overlay.clone().map(|spec_overlay| NetworkOverlay {
            spec: spec_overlay,
            subnets: spec.subnets.clone(),
        }),
    }
}

//! A CNI network as a network: the containers netpath-cni attached to one
//! bridge, kept in /run/netpath/cni/BRIDGE.json; its containers are known
//! by the runtime's container ID and interface, their namespaces by path.

use anyhow::{Context, Result};
use ipnet::IpNet;
use log::warn;

use super::{Container, View};
use crate::{
    datapath::{Datapath, Port, hooks::TcMethod},
    model::{
        Mode,
        cni::NetConf,
        naming::{cni_datapath, validate_ifname},
        policy::Endpoint,
        spec::DEFAULT_AGEING_S,
    },
    store::cni::{Attachment, NetworkRecord},
};

/// The bridges with a record; a stray file is skipped with a warning.
pub(super) fn bridges() -> Result<Vec<String>> {
    Ok(NetworkRecord::bridges()?
        .into_iter()
        .filter(|bridge| match validate_ifname("CNI record", bridge) {
            Ok(()) => true,
            Err(e) => {
                warn!("skipping a stray file in the CNI records: {e:#}");
                false
            }
        })
        .collect())
}

/// The datapath of the network `conf` configures, with `attachments`, and
/// the network policies applied to it compiled for their pods.
pub fn datapath<'a>(
    conf: &NetConf,
    attachments: impl Iterator<Item = &'a Attachment>,
) -> Result<Datapath> {
    build(
        &conf.bridge,
        conf.mode(),
        conf.overlay.is_some(),
        attachments.collect(),
    )
}

/// The datapath of the CNI network on `bridge` as its record has it: its
/// pods, in the mode the last ADD's configuration set.
pub fn recorded_datapath(bridge: &str) -> Result<Datapath> {
    let rec = NetworkRecord::load(bridge)?;
    let mode = rec.mode.with_context(|| {
        format!(
            "the CNI network on bridge {bridge} has no pod added by this netpath yet, so its mode \
             is not known: ADD a pod first"
        )
    })?;
    // A pod whose veth is gone (killed without DEL) has no port to judge
    // for; the next ADD, DEL or GC forgets it.
    let live = rec
        .attachments
        .iter()
        .filter(|a| nix::net::if_::if_nametoindex(a.host_veth.as_str()).is_ok())
        .collect();
    build(bridge, mode, rec.overlay.is_some(), live)
}

fn build(
    bridge: &str,
    mode: Mode,
    overlay: bool,
    attachments: Vec<&Attachment>,
) -> Result<Datapath> {
    let name = cni_datapath(bridge);
    let pods: Vec<Endpoint> = attachments
        .iter()
        .map(|a| super::endpoint(pod_name(a), &a.identity, a.ips.iter().map(IpNet::addr)))
        .collect();
    let mut gateways: Vec<IpNet> = attachments
        .iter()
        .flat_map(|a| a.gateways.iter().map(|gateway| IpNet::from(*gateway)))
        .collect();
    gateways.sort();
    gateways.dedup();
    let policy = super::compiled_policy(&name, &pods, &gateways)?;
    Ok(Datapath {
        name,
        bridge: bridge.to_owned(),
        mode,
        ageing_s: DEFAULT_AGEING_S,
        fdb_size: netpath_common::FDB_CAPACITY,
        // Every pod's source is checked (see `port`): none learns.
        learning: false,
        overlay,
        learn_limit: netpath_common::DEFAULT_LEARN_LIMIT,
        tc: TcMethod::chosen(),
        ports: attachments.into_iter().map(port).collect(),
        policy,
    })
}

/// What policy calls a pod: its name from the runtime, else its container
/// ID.
fn pod_name(a: &Attachment) -> &str {
    a.pod.as_deref().unwrap_or(&a.container_id)
}

/// A pod's port: its source is always checked (a pod that routes for
/// others needs a topology).
pub fn port(a: &Attachment) -> Port {
    Port {
        name: a.host_veth.clone(),
        netns: a.netns.clone(),
        ifname: a.ifname.clone(),
        mac: a.mac,
        addresses: a.ips.iter().map(|ip| ip.addr()).collect(),
        source_check: true,
        bandwidth: a.bandwidth,
    }
}

pub(super) fn view(bridge: &str) -> Result<Option<View>> {
    if !NetworkRecord::exists(bridge) {
        return Ok(None);
    }
    let rec = NetworkRecord::load(bridge)?;
    if !NetworkRecord::exists(bridge) {
        // The last DEL removed it since it was looked for.
        return Ok(None);
    }
    let mut subnets: Vec<IpNet> = rec
        .attachments
        .iter()
        .flat_map(|a| a.ips.iter().map(IpNet::trunc))
        .collect();
    subnets.sort();
    subnets.dedup();
    Ok(Some(View {
        complete: true,
        mode: None,
        subnets,
        // The plugin never sets NAT up (a chained plugin may).
        nat: false,
        containers: rec
            .attachments
            .iter()
            .map(|a| Container {
                id: a.container_id.clone(),
                name: pod_name(a).to_owned(),
                netns_shown: a.netns.display().to_string(),
                port: port(a),
                identity: a.identity.clone(),
            })
            .collect(),
        overlay: rec.overlay,
    }))
}

/// A CNI network without pods: its first ADD makes it.
pub(super) fn empty_view() -> View {
    View {
        complete: true,
        mode: None,
        subnets: Vec::new(),
        nat: false,
        containers: Vec::new(),
        overlay: None,
    }
}

//! A CNI network as a network: the containers netpath-cni attached to one
//! bridge, kept in /run/netpath/cni/BRIDGE.json; its containers are known
//! by the runtime's container ID and interface, their namespaces by path.

use anyhow::Result;
use ipnet::IpNet;
use log::warn;

use super::{Container, View};
use crate::{
    datapath::{Datapath, Port, hooks::TcMethod},
    model::{cni::NetConf, naming::validate_ifname, policy::Identity, spec::DEFAULT_AGEING_S},
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

/// The datapath of the network `conf` configures, with `attachments`.
pub fn datapath<'a>(conf: &NetConf, attachments: impl Iterator<Item = &'a Attachment>) -> Datapath {
    Datapath {
        name: conf.datapath_name(),
        bridge: conf.bridge.clone(),
        mode: conf.mode(),
        ageing_s: DEFAULT_AGEING_S,
        fdb_size: netpath_common::FDB_CAPACITY,
        learn_limit: netpath_common::DEFAULT_LEARN_LIMIT,
        tc: TcMethod::chosen(),
        ports: attachments.map(port).collect(),
        policy: Vec::new(),
    }
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
                netns_shown: a.netns.display().to_string(),
                port: port(a),
                // Network policy is not offered on CNI networks yet.
                identity: Identity::default(),
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

//! Every datapath netpath has on this machine: the topologies and the CNI
//! plugin's networks, by the name `--name` takes.

use anyhow::Result;
use log::warn;
use rtnetlink::Handle;
use serde::Serialize;

use super::status::{Kind, mode_on_ports};
use crate::{
    model::{
        Mode,
        naming::{port_name, validate_ifname},
    },
    store::{cni::NetworkRecord, topology as record},
};

#[derive(Debug, Serialize)]
pub struct Listed {
    /// What `--name` takes: the topology name, or the CNI bridge.
    pub name: String,
    pub kind: Kind,
    pub bridge: String,
    /// A topology's from its record; a CNI network's as the programs on its
    /// first host veth show it (None if none is left).
    pub mode: Option<Mode>,
    /// False for a topology whose `up` has not finished (or failed halfway).
    pub complete: bool,
    /// Host-side veths, one per container.
    pub ports: Vec<String>,
}

/// Topologies first, then CNI networks, each sorted by name.
pub async fn list(handle: &Handle) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for name in record::names()? {
        // None: removed (`down`) since the directory was read.
        let Some(rec) = record::load(&name)? else {
            continue;
        };
        let spec = rec.spec;
        listed.push(Listed {
            bridge: spec.bridge_name(),
            mode: Some(spec.mode),
            complete: rec.complete,
            ports: spec
                .containers
                .iter()
                .map(|c| port_name(&spec.name, &c.name))
                .collect(),
            name,
            kind: Kind::Topology,
        });
    }
    for bridge in NetworkRecord::bridges()? {
        if let Err(e) = validate_ifname("CNI record", &bridge) {
            warn!("skipping a stray file in the CNI records: {e:#}");
            continue;
        }
        let rec = NetworkRecord::load(&bridge)?;
        if !NetworkRecord::exists(&bridge) {
            // The last DEL removed it since the directory was read.
            continue;
        }
        let ports: Vec<String> = rec.attachments.into_iter().map(|a| a.host_veth).collect();
        listed.push(Listed {
            mode: mode_on_ports(handle, ports.iter().map(String::as_str)).await?,
            name: bridge.clone(),
            kind: Kind::Cni,
            bridge,
            complete: true,
            ports,
        });
    }
    Ok(listed)
}

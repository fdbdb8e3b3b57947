//! Every datapath netpath has on this machine: the topologies and the CNI
//! plugin's networks, by the name `--name` takes.

use anyhow::Result;
use rtnetlink::Handle;
use serde::Serialize;

use super::status::mode_on_ports;
use crate::{
    model::Mode,
    network::{Kind, Network},
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
    /// Their containers, "namespace/name" (see `network::Container::name`),
    /// in the same order.
    pub containers: Vec<String>,
}

/// Topologies first, then CNI networks, each sorted by name.
pub async fn list(handle: &Handle) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for network in Network::all()? {
        // None: removed (`down`, the last DEL) since the directory was read.
        let Some(view) = network.view()? else {
            continue;
        };
        let ports: Vec<String> = view.ports().map(|p| p.name.clone()).collect();
        let containers = view
            .containers
            .iter()
            .map(|c| format!("{}/{}", c.identity.namespace, c.name))
            .collect();
        let mode = match view.mode {
            Some(mode) => Some(mode),
            None => mode_on_ports(handle, ports.iter().map(String::as_str)).await?,
        };
        listed.push(Listed {
            name: network.name().to_owned(),
            kind: network.kind(),
            bridge: network.bridge(),
            mode,
            complete: view.complete,
            ports,
            containers,
        });
    }
    Ok(listed)
}

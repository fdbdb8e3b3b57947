//! A topology as the machine has it now (not as it was asked for).

use anyhow::Result;
use ipnet::IpNet;
use rtnetlink::Handle;
use serde::Serialize;

use super::topology::load_complete;
use crate::{
    datapath::{self, hooks, object::program_name},
    host::{netlink, netns},
    model::{
        Mac, Mode,
        naming::{CONTAINER_IFNAME, port_name},
    },
};

#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub ips: Vec<IpNet>,
    pub ifindex: Option<u32>,
    pub mac: Option<Mac>,
}

#[derive(Debug, Serialize)]
pub struct PortStatus {
    /// Host-side veth.
    pub name: String,
    pub ifindex: Option<u32>,
    pub netns: String,
    pub ifname: String,
    pub mac: Option<Mac>,
    pub ips: Vec<IpNet>,
    /// BPF programs on the host-side veth (`xdp:NAME`, `tc:NAME`) and on
    /// the container's interface (`peer-xdp:NAME`).
    pub programs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub mode: Mode,
    /// What carries the traffic in this mode.
    pub datapath: &'static str,
    pub subnets: Vec<IpNet>,
    pub nat: bool,
    pub bridge: BridgeStatus,
    pub ports: Vec<PortStatus>,
}

pub async fn status(handle: &Handle, topology: &str) -> Result<Status> {
    let spec = load_complete(topology)?.spec;
    let bridge_link = netlink::link_by_name(handle, &spec.bridge_name()).await?;
    let bridge_ips = match &bridge_link {
        Some(l) => netlink::addresses(handle, l.index).await?,
        None => Vec::new(),
    };
    let mut ports = Vec::new();
    for c in &spec.containers {
        let name = port_name(&spec.name, &c.name);
        let host = netlink::link_by_name(handle, &name).await?;
        let (mac, ips, peer_xdp) = if netns::exists(&name) {
            netns::run_in(&name, |h| async move {
                let Some(eth0) = netlink::link_by_name(&h, CONTAINER_IFNAME).await? else {
                    return Ok((None, Vec::new(), None));
                };
                let ips = netlink::addresses(&h, eth0.index).await?;
                Ok((eth0.mac, ips, eth0.xdp_prog_id))
            })?
        } else {
            (None, Vec::new(), None)
        };
        let mut programs = match &host {
            Some(link) => hooks::programs_on(handle, &name, link.index, link.xdp_prog_id).await?,
            None => Vec::new(),
        };
        programs.extend(peer_xdp.map(|id| format!("peer-xdp:{}", program_name(id))));
        ports.push(PortStatus {
            programs,
            ifindex: host.map(|l| l.index),
            netns: name.clone(),
            name,
            ifname: CONTAINER_IFNAME.into(),
            mac,
            ips,
        });
    }
    Ok(Status {
        name: spec.name.clone(),
        mode: spec.mode,
        datapath: datapath::describe(spec.mode),
        subnets: spec.subnets.clone(),
        nat: spec.nat,
        bridge: BridgeStatus {
            name: spec.bridge_name(),
            ips: bridge_ips,
            ifindex: bridge_link.as_ref().map(|l| l.index),
            mac: bridge_link.and_then(|l| l.mac),
        },
        ports,
    })
}

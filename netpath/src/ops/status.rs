//! A topology or CNI network as the machine has it now (not as it was
//! asked for).

use std::{fmt, path::Path};

use anyhow::Result;
use ipnet::IpNet;
use rtnetlink::Handle;
use serde::Serialize;

use super::{Named, topology::load_complete};
use crate::{
    datapath::{self, hooks, object::program_name},
    host::{netlink, netns},
    model::{
        Mac, Mode,
        naming::{CONTAINER_IFNAME, port_name},
    },
    store::cni::NetworkRecord,
};

/// Who made a datapath: `netpath up` (or `run`), or the CNI plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Topology,
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
    /// The container's namespace: its name for a topology, its path
    /// (CNI_NETNS) for a CNI container.
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
    pub kind: Kind,
    /// None for a CNI network none of whose host veths is left to show it
    /// (the plugin's record keeps no mode: each ADD brings its conflist's).
    pub mode: Option<Mode>,
    /// What carries the traffic in this mode.
    pub datapath: &'static str,
    pub subnets: Vec<IpNet>,
    pub nat: bool,
    pub bridge: BridgeStatus,
    pub ports: Vec<PortStatus>,
}

const UNKNOWN_DATAPATH: &str = "unknown: no host veth of the network is left to show its programs";

pub async fn status(handle: &Handle, named: &Named) -> Result<Status> {
    match named {
        Named::Topology(topology) => topology_status(handle, topology).await,
        Named::CniNetwork { bridge } => cni_status(handle, bridge).await,
    }
}

async fn topology_status(handle: &Handle, topology: &str) -> Result<Status> {
    let spec = load_complete(topology)?.spec;
    let mut ports = Vec::new();
    for c in &spec.containers {
        let name = port_name(&spec.name, &c.name);
        let netns_path = netns::path(&name);
        ports.push(port_status(handle, &name, &netns_path, name.clone(), CONTAINER_IFNAME).await?);
    }
    Ok(Status {
        name: spec.name.clone(),
        kind: Kind::Topology,
        mode: Some(spec.mode),
        datapath: datapath::describe(spec.mode),
        subnets: spec.subnets.clone(),
        nat: spec.nat,
        bridge: bridge_status(handle, &spec.bridge_name()).await?,
        ports,
    })
}

async fn cni_status(handle: &Handle, bridge: &str) -> Result<Status> {
    let rec = NetworkRecord::load(bridge)?;
    let mut ports = Vec::new();
    for a in &rec.attachments {
        let shown = a.netns.display().to_string();
        ports.push(port_status(handle, &a.host_veth, &a.netns, shown, &a.ifname).await?);
    }
    let mode = ports
        .iter()
        .find(|p| p.ifindex.is_some())
        .map(|p| mode_shown_by(&p.programs));
    let mut subnets: Vec<IpNet> = rec
        .attachments
        .iter()
        .flat_map(|a| a.ips.iter().map(IpNet::trunc))
        .collect();
    subnets.sort();
    subnets.dedup();
    Ok(Status {
        name: bridge.to_owned(),
        kind: Kind::Cni,
        mode,
        datapath: mode.map_or(UNKNOWN_DATAPATH, datapath::describe),
        subnets,
        // The plugin never sets NAT up (a chained plugin may).
        nat: false,
        bridge: bridge_status(handle, bridge).await?,
        ports,
    })
}

async fn bridge_status(handle: &Handle, name: &str) -> Result<BridgeStatus> {
    let link = netlink::link_by_name(handle, name).await?;
    let ips = match &link {
        Some(l) => netlink::addresses(handle, l.index).await?,
        None => Vec::new(),
    };
    Ok(BridgeStatus {
        name: name.to_owned(),
        ips,
        ifindex: link.as_ref().map(|l| l.index),
        mac: link.and_then(|l| l.mac),
    })
}

/// One container's port: the host veth, and what is inside the namespace
/// at `netns_path` (nothing if it is gone).
async fn port_status(
    handle: &Handle,
    host_veth: &str,
    netns_path: &Path,
    netns_shown: String,
    ifname: &str,
) -> Result<PortStatus> {
    let host = netlink::link_by_name(handle, host_veth).await?;
    let (mac, ips, peer_xdp) = if netns_path.exists() {
        let inside = ifname.to_owned();
        netns::run_in_path(netns_path, |h| async move {
            let Some(link) = netlink::link_by_name(&h, &inside).await? else {
                return Ok((None, Vec::new(), None));
            };
            let ips = netlink::addresses(&h, link.index).await?;
            Ok((link.mac, ips, link.xdp_prog_id))
        })?
    } else {
        (None, Vec::new(), None)
    };
    let mut programs = match &host {
        Some(link) => hooks::programs_on(handle, host_veth, link.index, link.xdp_prog_id).await?,
        None => Vec::new(),
    };
    programs.extend(peer_xdp.map(|id| format!("peer-xdp:{}", program_name(id))));
    Ok(PortStatus {
        name: host_veth.to_owned(),
        ifindex: host.map(|l| l.index),
        netns: netns_shown,
        ifname: ifname.to_owned(),
        mac,
        ips,
        programs,
    })
}

/// The mode the first of `host_veths` that exists shows by its programs;
/// None if none exists.
pub(super) async fn mode_on_ports<'a>(
    handle: &Handle,
    host_veths: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Mode>> {
    for veth in host_veths {
        if let Some(link) = netlink::link_by_name(handle, veth).await? {
            let programs = hooks::programs_on(handle, veth, link.index, link.xdp_prog_id).await?;
            return Ok(Some(mode_shown_by(&programs)));
        }
    }
    Ok(None)
}

/// The mode a host veth's programs (as [`hooks::programs_on`] names them)
/// show: an XDP program is xdp mode, a tc one (tcx or clsact) tc mode, none
/// the bridge alone.
fn mode_shown_by(programs: &[String]) -> Mode {
    let hooked = |hook: &str| {
        programs
            .iter()
            .any(|p| p.split_once(':').map(|(h, _)| h) == Some(hook))
    };
    if hooked("xdp") {
        Mode::Xdp
    } else if hooked("tc") || hooked("tc-clsact") {
        Mode::Tc
    } else {
        Mode::Bridge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_on_a_host_veth_show_its_mode() {
        let shown = |programs: &[&str]| {
            mode_shown_by(&programs.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(shown(&["xdp:xdp_forward", "peer-xdp:xdp_pass"]), Mode::Xdp);
        assert_eq!(shown(&["tc:tc_forward"]), Mode::Tc);
        assert_eq!(shown(&["tc-clsact:tc_forward"]), Mode::Tc);
        // The container side's XDP_PASS program alone is no xdp mode.
        assert_eq!(shown(&["peer-xdp:xdp_pass"]), Mode::Bridge);
        assert_eq!(shown(&[]), Mode::Bridge);
    }
}

//! A topology or CNI network as the machine has it now (not as it was
//! asked for).

use anyhow::Result;
use ipnet::IpNet;
use rtnetlink::Handle;
use serde::Serialize;

use crate::{
    datapath::{self, hooks, object::program_name},
    host::{netlink, netns},
    model::{Mac, Mode, bandwidth::Bandwidth},
    network::{Container, Kind, Network},
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
    /// The container as policies select it: "namespace/name" (a CNI pod's
    /// as the runtime gave them).
    pub container: String,
    pub ifindex: Option<u32>,
    /// The container's namespace: its name for a topology, its path
    /// (CNI_NETNS) for a CNI container.
    pub netns: String,
    pub ifname: String,
    pub mac: Option<Mac>,
    pub ips: Vec<IpNet>,
    /// Its container's rate limits, as the `bandwidth` capability gave
    /// them (bits per second; none: no limit).
    #[serde(skip_serializing_if = "Bandwidth::is_unlimited")]
    pub bandwidth: Bandwidth,
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

pub async fn status(handle: &Handle, network: &Network) -> Result<Status> {
    let view = network.load()?;
    let mut ports = Vec::new();
    for container in &view.containers {
        ports.push(port_status(handle, container).await?);
    }
    // A CNI network keeps no mode: its programs show it.
    let mode = view.mode.or_else(|| {
        ports
            .iter()
            .find(|p| p.ifindex.is_some())
            .map(|p| mode_shown_by(&p.programs))
    });
    Ok(Status {
        name: network.name().to_owned(),
        kind: network.kind(),
        mode,
        datapath: mode.map_or(UNKNOWN_DATAPATH, datapath::describe),
        subnets: view.subnets,
        nat: view.nat,
        bridge: bridge_status(handle, &network.bridge()).await?,
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

/// One container's port: the host veth, and what is inside its namespace
/// (nothing if it is gone).
async fn port_status(handle: &Handle, container: &Container) -> Result<PortStatus> {
    let port = &container.port;
    let host = netlink::link_by_name(handle, &port.name).await?;
    let (mac, ips, peer_xdp) = if port.netns.exists() {
        let inside = port.ifname.clone();
        netns::run_in_path(&port.netns, |h| async move {
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
        Some(link) => hooks::programs_on(handle, &port.name, link.index, link.xdp_prog_id).await?,
        None => Vec::new(),
    };
    programs.extend(peer_xdp.map(|id| format!("peer-xdp:{}", program_name(id))));
    Ok(PortStatus {
        name: port.name.clone(),
        container: format!("{}/{}", container.identity.namespace, container.name),
        ifindex: host.map(|l| l.index),
        netns: container.netns_shown.clone(),
        ifname: port.ifname.clone(),
        mac,
        ips,
        bandwidth: port.bandwidth,
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
/// show: an XDP program is xdp mode, a tc one (tcx or clsact) tc mode, one
/// on a netkit pair's peer hook netkit mode, none the bridge alone.
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
    } else if hooked("netkit") {
        Mode::Netkit
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
        assert_eq!(shown(&["netkit:tc_forward"]), Mode::Netkit);
        // The container side's XDP_PASS program alone is no xdp mode.
        assert_eq!(shown(&["peer-xdp:xdp_pass"]), Mode::Bridge);
        assert_eq!(shown(&[]), Mode::Bridge);
    }
}

//! What the CNI plugin keeps per bridge: the containers it attached.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic, record_names};
use crate::model::{Mac, Mode, bandwidth::Bandwidth, overlay::OverlaySpec, policy::Identity};

/// One container the plugin attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// The network (the configuration's `name`) it was added to: networks
    /// may share a bridge, and each GCs its own.
    #[serde(default)]
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_veth: String,
    pub mac: Mac,
    pub ips: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    /// The pod's name, as the runtime gave it (K8S_POD_NAME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's UID, as the runtime gave it (K8S_POD_UID): a later
    /// sandbox of the same pod replaces this attachment (an ADD forgets
    /// the ones of the pod's earlier sandboxes, see `forget_replaced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's namespace and labels, which network policies select it
    /// by (see `NetConf::pod_identity`).
    #[serde(default, flatten)]
    pub identity: Identity,
    /// Its rate limits, as the runtime asked (the `bandwidth` capability).
    #[serde(default, skip_serializing_if = "Bandwidth::is_unlimited")]
    pub bandwidth: Bandwidth,
}

/// An ADD under way: it wires its container without holding the network's
/// lock, so the record keeps what it took meanwhile. Concurrent ADDs take
/// another MAC and other addresses, and the last DEL does not wind the
/// network up under it. The ADD replaces it with its attachment, or drops
/// it on failure; one whose process is gone is stale.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reservation {
    pub container_id: String,
    pub ifname: String,
    /// The plugin process making the attachment.
    pub pid: u32,
    /// When that process started (clock ticks after boot, as
    /// /proc/PID/stat has it), so that another process given the same pid
    /// later is not taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    pub mac: Mac,
    /// Addresses from netpath's IPAM (host-local keeps its own).
    pub ips: Vec<IpNet>,
}

impl Reservation {
    /// Whether the ADD that made it is still running: its pid names a
    /// process that started when it did (a pid reused since is not it).
    pub fn is_live(&self) -> bool {
        match (process_start(self.pid), self.started) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            // A reservation of a netpath that kept no start time.
            (Some(_), None) => true,
        }
    }
}

/// When process `pid` started (field 22 of /proc/PID/stat, clock ticks
/// after boot); None if there is no such process.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count the fields after its closing one.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The plugin's record of one bridge.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The plugin created the bridge (and so removes it with the last DEL).
    pub bridge_created: bool,
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<Reservation>,
    /// The overlay the network's pods are on, as their configuration gave
    /// it: what `netpath run` keeps the control plane of, without the
    /// conflist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<NetworkOverlay>,
    /// The mode of its datapath, as the last ADD's configuration set it:
    /// what a network policy applied between ADDs is enforced in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// A CNI network on an overlay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkOverlay {
    pub spec: OverlaySpec,
    /// This node's slices of the overlay's networks (the IPAM subnets).
    pub subnets: Vec<IpNet>,
}

fn dir() -> PathBuf {
    Path::new(STATE_DIR).join("cni")
}

/// The record's path; `bridge` is a validated interface name.
pub fn path(bridge: &str) -> PathBuf {
    dir().join(format!("{bridge}.json"))
}

impl NetworkRecord {
    pub fn load(bridge: &str) -> Result<Self> {
        Ok(atomic::read_json(&path(bridge))?.unwrap_or_default())
    }

    /// Saves the record, or removes it when there is nothing left to remember.
    pub fn save(&self, bridge: &str) -> Result<()> {
        if self.containers() == 0 && !self.bridge_created {
            return atomic::remove(&path(bridge));
        }
        atomic::write_json(&path(bridge), self)
    }

    /// The bridges the plugin keeps a record of, sorted.
    pub fn bridges() -> Result<Vec<String>> {
        record_names(&dir())
    }

    /// Whether the plugin keeps a record of `bridge` (a validated name).
    pub fn exists(bridge: &str) -> bool {
        path(bridge).exists()
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Option<usize> {
        self.attachments
            .iter()
            .position(|a| a.container_id == container_id && a.ifname == ifname)
    }

    pub fn reservation(&self, container_id: &str, ifname: &str) -> Option<&Reservation> {
        self.reservations
            .iter()
            .find(|r| r.container_id == container_id && r.ifname == ifname)
    }

    pub fn unreserve(&mut self, container_id: &str, ifname: &str) {
        self.reservations
            .retain(|r| (r.container_id.as_str(), r.ifname.as_str()) != (container_id, ifname));
    }

    /// The containers attached or being attached.
    pub fn containers(&self) -> usize {
        self.attachments.len() + self.reservations.len()
    }

    /// Whether an attachment or an ADD under way has `mac`.
    pub fn mac_taken(&self, mac: Mac) -> bool {
        self.attachments.iter().any(|a| a.mac == mac)
            || self.reservations.iter().any(|r| r.mac == mac)
    }

    /// Whether an attachment or an ADD under way has the address `ip`.
    pub fn address_taken(&self, ip: IpAddr) -> bool {
        let has = |ips: &[IpNet]| ips.iter().any(|i| i.addr() == ip);
        self.attachments.iter().any(|a| has(&a.ips))
            || self.reservations.iter().any(|r| has(&r.ips))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_its_pid_and_its_start() {
        let me = std::process::id();
        let started = process_start(me);
        assert!(started.is_some());
        assert_eq!(process_start(me), started);
        let reservation = |pid, started| Reservation {
            container_id: "c".into(),
            ifname: "eth0".into(),
            pid,
            started,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            ips: Vec::new(),
        };
        assert!(reservation(me, started).is_live());
        // The same pid, another process (the pid was reused).
        assert!(!reservation(me, started.map(|s| s + 1)).is_live());
        // No such process (pid_max is at most 2^22).
        assert!(!reservation(u32::MAX, None).is_live());
    }
}

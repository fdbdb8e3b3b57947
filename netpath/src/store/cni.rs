//! What the CNI plugin keeps per bridge: the containers it attached.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic, record_names};
use crate::model::Mac;

/// One container the plugin attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub host_veth: String,
    pub mac: Mac,
    pub ips: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
}

/// The plugin's record of one bridge.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The plugin created the bridge (and so removes it with the last DEL).
    pub bridge_created: bool,
    pub attachments: Vec<Attachment>,
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
        if self.attachments.is_empty() && !self.bridge_created {
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
}

//! What a node last knew of its overlay: the other nodes' records as the
//! control plane last programmed them, and the control plane's state. The
//! maps keep forwarding on it while etcd is away; `overlay status` reads it.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic};
use crate::model::{naming::validate_topology_name, overlay::NodeRecord};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OverlayRecord {
    /// The other nodes, as last programmed.
    pub peers: Vec<NodeRecord>,
    /// Where they came from: `peers file PATH` or `etcd ENDPOINTS`.
    pub source: String,
    /// Whether the source was reachable at the last attempt.
    pub connected: bool,
    /// This node's etcd lease, while registered.
    pub lease: Option<i64>,
    /// Unix time of the last change programmed.
    pub programmed_at: u64,
}

pub fn path(topology: &str) -> Result<PathBuf> {
    validate_topology_name(topology)?;
    Ok(PathBuf::from(STATE_DIR)
        .join("overlay")
        .join(format!("{topology}.json")))
}

pub fn load(topology: &str) -> Result<Option<OverlayRecord>> {
    atomic::read_json(&path(topology)?)
}

pub fn save(topology: &str, record: &OverlayRecord) -> Result<()> {
    atomic::write_json(&path(topology)?, record)
}

pub fn remove(topology: &str) -> Result<()> {
    atomic::remove(&path(topology)?)
}

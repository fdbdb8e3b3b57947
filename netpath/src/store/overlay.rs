//! What a node last knew of its overlay: the other nodes' records as the
//! control plane last programmed them, and the control plane's state. The
//! maps keep forwarding on it while etcd is away; `overlay status` reads it.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic};
use crate::model::{
    naming::validate_datapath,
    overlay::{NodeRecord, Skipped},
};

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
    /// The records the control plane offered that were not taken, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// The record of datapath `datapath` (a topology's, or a CNI network's
/// `_cni-BRIDGE`); the name is validated first, so none reaches outside
/// the state directory.
pub fn path(datapath: &str) -> Result<PathBuf> {
    validate_datapath(datapath)?;
    Ok(PathBuf::from(STATE_DIR)
        .join("overlay")
        .join(format!("{datapath}.json")))
}

pub fn load(datapath: &str) -> Result<Option<OverlayRecord>> {
    atomic::read_json(&path(datapath)?)
}

pub fn save(datapath: &str, record: &OverlayRecord) -> Result<()> {
    atomic::write_json(&path(datapath)?, record)
}

pub fn remove(datapath: &str) -> Result<()> {
    atomic::remove(&path(datapath)?)
}

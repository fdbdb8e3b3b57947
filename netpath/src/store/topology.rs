//! The record of a topology netpath created.
//!
//! It is written *before* anything is created, so that an `up` interrupted at
//! any point leaves a record that `down` (or the next `up`) can clean.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic, nat, record_names};
use crate::model::{TopologySpec, naming::validate_topology_name};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopologyRecord {
    pub spec: TopologySpec,
    /// False while `up` is still creating objects.
    pub complete: bool,
}

/// The record's path; the name is validated first, so no name reaches
/// outside the state directory.
pub fn path(topology: &str) -> Result<PathBuf> {
    validate_topology_name(topology)?;
    Ok(Path::new(STATE_DIR).join(format!("{topology}.json")))
}

/// The names of every topology with a record, complete or not, sorted.
pub fn names() -> Result<Vec<String>> {
    Ok(record_names(Path::new(STATE_DIR))?
        .into_iter()
        .filter(|name| validate_topology_name(name).is_ok() && !nat::is_key(name))
        .collect())
}

pub fn load(topology: &str) -> Result<Option<TopologyRecord>> {
    atomic::read_json(&path(topology)?)
}

pub fn save(record: &TopologyRecord) -> Result<()> {
    atomic::write_json(&path(&record.spec.name)?, record)
}

pub fn remove(topology: &str) -> Result<()> {
    atomic::remove(&path(topology)?)
}

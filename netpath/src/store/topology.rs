//! The record of a topology netpath created.
//!
//! It is written *before* anything is created, so that an `up` interrupted at
//! any point leaves a record that `down` (or the next `up`) can clean.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic, nat, record_names};
use crate::model::{ContainerSpec, TopologySpec, naming::validate_topology_name};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopologyRecord {
    /// The topology as it is: `port add` and `port del` change its containers.
    pub spec: TopologySpec,
    /// False while `up` is still creating objects.
    pub complete: bool,
    /// The containers `up` was asked for, before any `port add` or `port
    /// del`: the same command line again (an agent restarted after a crash)
    /// adopts the topology as it is. None in records of older versions
    /// (their containers as they are then count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_containers: Option<Vec<ContainerSpec>>,
}

impl TopologyRecord {
    /// A new record of `spec` as `up` was asked for it.
    pub fn asked(spec: TopologySpec) -> Self {
        Self {
            asked_containers: Some(spec.containers.clone()),
            spec,
            complete: false,
        }
    }

    /// How `asked` differs from what `up` was asked for this topology:
    /// nothing if it is that command line again, whatever containers were
    /// added or removed since.
    pub fn differences_from_asked(&self, asked: &TopologySpec) -> Vec<String> {
        let mut as_asked = self.spec.clone();
        if let Some(containers) = &self.asked_containers {
            as_asked.containers = containers.clone();
        }
        as_asked.differences(asked)
    }
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

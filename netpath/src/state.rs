//! The record of a topology netpath created, kept under /run/netpath so it
//! is gone after a reboot, like the namespaces and links it describes.
//!
//! It is written *before* anything is created, so that an `up` interrupted at
//! any point leaves a record that `down` (or the next `up`) can clean.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::spec::TopologySpec;

pub const STATE_DIR: &str = "/run/netpath";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopologyState {
    pub spec: TopologySpec,
    /// False while `up` is still creating objects.
    pub complete: bool,
    /// The value of net.ipv4.ip_forward before `--nat` turned it on.
    #[serde(default)]
    pub ip_forward_before: Option<String>,
}

pub fn path(topology: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{topology}.json"))
}

pub fn load(topology: &str) -> Result<Option<TopologyState>> {
    let path = path(topology);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}; remove it if the topology is gone", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes atomically (temp file + rename) so a crash never leaves half a record.
pub fn save(state: &TopologyState) -> Result<()> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let path = path(&state.spec.name);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state)?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))
}

pub fn remove(topology: &str) -> Result<()> {
    match fs::remove_file(path(topology)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path(topology).display()))
        }
        _ => Ok(()),
    }
}

/// Every topology with a record on this machine.
pub fn all() -> Result<Vec<TopologyState>> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else { return Ok(Vec::new()) };
    let mut states = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(topology) = name.strip_suffix(".json")
            && let Some(state) = load(topology)? {
                states.push(state);
            }
    }
    Ok(states)
}

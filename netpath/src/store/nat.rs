//! What `--nat` changed in one network namespace: the forwarding sysctls as
//! they were before the first NAT topology there, and the topologies that
//! still need them on. The last one to go restores them, in any order, and
//! after a SIGKILL too (the record outlives the process).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NatRecord {
    /// Sysctl path -> value before netpath turned it on.
    pub forwarding_before: BTreeMap<String, String>,
    /// Topologies with NAT in this namespace.
    pub users: BTreeSet<String>,
}

/// NAT records share the state directory with topology records.
const KEY_PREFIX: &str = "nat-";

/// The lock and record key of the calling thread's network namespace.
pub fn key() -> Result<String> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?;
    Ok(format!("{KEY_PREFIX}{}", ns.ino()))
}

/// Whether a record name in the state directory is a NAT record's key
/// (`nat-` and a namespace's inode number), not a topology's.
pub fn is_key(name: &str) -> bool {
    name.strip_prefix(KEY_PREFIX)
        .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
}

fn path(key: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{key}.json"))
}

impl NatRecord {
    pub fn load(key: &str) -> Result<Self> {
        Ok(atomic::read_json(&path(key))?.unwrap_or_default())
    }

    /// Saves the record, or removes it once no topology needs NAT.
    pub fn save(&self, key: &str) -> Result<()> {
        if self.users.is_empty() {
            return atomic::remove(&path(key));
        }
        atomic::write_json(&path(key), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_keys_are_told_from_topology_names() {
        assert!(is_key("nat-4026531840"));
        for topology in ["nat", "nat-", "nat-x1", "natty-1", "np"] {
            assert!(!is_key(topology), "{topology}");
        }
    }
}

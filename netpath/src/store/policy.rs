//! The network policies of a network, as `policy apply` gave them
//! (Kubernetes NetworkPolicy objects), one record per datapath in
//! /run/netpath/policy/DATAPATH.json. The datapath compiles them anew
//! whenever its containers change.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{STATE_DIR, atomic};
use crate::model::policy::NetworkPolicy;

#[derive(Debug, Default, Serialize, Deserialize)]
struct PolicyRecord {
    policies: Vec<NetworkPolicy>,
}

pub fn path(datapath: &str) -> PathBuf {
    PathBuf::from(STATE_DIR)
        .join("policy")
        .join(format!("{datapath}.json"))
}

/// The policies of `datapath`, in the order they were applied.
pub fn load(datapath: &str) -> Result<Vec<NetworkPolicy>> {
    Ok(atomic::read_json::<PolicyRecord>(&path(datapath))?
        .unwrap_or_default()
        .policies)
}

/// Replaces the policies of `datapath`. No policies is a record too, so
/// that a record that is gone is told apart from policies deleted (see
/// [`is_recorded`]).
pub fn save(datapath: &str, policies: &[NetworkPolicy]) -> Result<()> {
    let record = PolicyRecord {
        policies: policies.to_vec(),
    };
    atomic::write_json(&path(datapath), &record)
}

/// Whether `datapath` has a policy record: policies were applied to it
/// since it came up (and maybe deleted since).
pub fn is_recorded(datapath: &str) -> bool {
    path(datapath).exists()
}

pub fn remove(datapath: &str) -> Result<()> {
    atomic::remove(&path(datapath))
}

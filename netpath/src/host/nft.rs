//! nftables through the `nft` command: netpath's own tables only (each
//! named after what made it), so adding or removing one touches nothing
//! else. The command, not a netlink library: its scripts are atomic
//! (all or nothing) and read as users write rules, and its JSON output is
//! the stable interface the nftables project documents for programs.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// Runs an nft script atomically.
pub fn run(script: &str) -> Result<()> {
    super::script::feed("nft", &["-f", "-"], script, "nftables")
}

/// Whether table `family name` exists.
pub fn table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The packets named counter `counter` of table `family table` has
/// counted, or None if there is no such counter.
pub fn counter_packets(family: &str, table: &str, counter: &str) -> Result<Option<u64>> {
    let out = Command::new("nft")
        .args(["-j", "list", "counter", family, table, counter])
        .stderr(Stdio::null())
        .output()
        .context("running nft (install nftables, or run `cargo xtask setup`)")?;
    if !out.status.success() {
        return Ok(None);
    }
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading `nft -j list counter {family} {table} {counter}`"))?;
    Ok(listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64()))
}

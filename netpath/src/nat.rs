//! `--nat`: IPv4 forwarding and an nftables masquerade rule for the subnet,
//! in a table of netpath's own so removing it touches nothing else.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{spec::TopologySpec, state};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

pub fn table_name(topology: &str) -> String {
    format!("netpath-{topology}")
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables, or run `cargo xtask setup`)")?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn table_exists(topology: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", &table_name(topology)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the masquerade rule; returns the previous ip_forward value if
/// this call changed it.
pub fn enable(spec: &TopologySpec) -> Result<Option<String>> {
    let subnet = spec.subnet;
    nft(&format!(
        "table ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    \
         ip saddr {subnet} ip daddr != {subnet} masquerade\n  }}\n}}\n",
        table = table_name(&spec.name)
    ))
    .with_context(|| format!("adding the masquerade rule for {subnet}"))?;
    let before = std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
    let before = before.trim().to_owned();
    if before == "1" {
        return Ok(None);
    }
    std::fs::write(IP_FORWARD, "1").with_context(|| format!("enabling {IP_FORWARD}"))?;
    Ok(Some(before))
}

/// Removes the table, and restores ip_forward when no other topology with
/// NAT still needs it.
pub fn disable(topology: &str, ip_forward_before: Option<&str>) -> Result<()> {
    if table_exists(topology) {
        nft(&format!("delete table ip {}\n", table_name(topology)))?;
    }
    if let Some(before) = ip_forward_before {
        let others = state::all()?.into_iter().any(|s| s.spec.name != topology && s.spec.nat);
        if !others {
            std::fs::write(IP_FORWARD, before).with_context(|| format!("restoring {IP_FORWARD}"))?;
        }
    }
    Ok(())
}

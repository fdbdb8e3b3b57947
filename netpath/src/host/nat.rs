//! `--nat`: forwarding and an nftables masquerade rule for the subnets (IPv4
//! and IPv6), in a table of netpath's own so removing it touches nothing else.

use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::IpNet;

use super::nft;
use crate::{
    model::naming::nat_table,
    store::{
        lock::{Lock, Purpose},
        nat::{self, NatRecord},
    },
};

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

pub fn table_exists(topology: &str) -> bool {
    nft::table_exists("inet", &nat_table(topology))
}

/// The sysctl that forwards a subnet's family.
fn forward_sysctl(subnet: &IpNet) -> &'static str {
    if subnet.addr().is_ipv4() {
        IPV4_FORWARD
    } else {
        IPV6_FORWARD
    }
}

/// Topologies of one namespace change its NAT record one at a time.
fn lock(key: &str) -> Result<Lock> {
    Lock::acquire_waiting(key, Purpose::Change, Duration::from_secs(10))
}

/// Installs the masquerade rules and turns forwarding on for the subnets'
/// families, remembering (before changing anything) what it was.
pub fn enable(topology: &str, subnets: &[IpNet]) -> Result<()> {
    let rules: String = subnets
        .iter()
        .map(|s| {
            let family = if s.addr().is_ipv4() { "ip" } else { "ip6" };
            format!("    {family} saddr {s} {family} daddr != {s} masquerade\n")
        })
        .collect();
    nft::run(&format!(
        "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat;\n{rules}  }}\n}}\n",
        table = nat_table(topology)
    ))
    .with_context(|| format!("adding the masquerade rules of topology {topology}"))?;
    let key = nat::key()?;
    let _lock = lock(&key)?;
    let mut record = NatRecord::load(&key)?;
    // The record is keyed by the namespace's inode, which a namespace made
    // after this one's end may reuse: users without their table here are
    // not this namespace's, and neither is what they remembered.
    record.users.retain(|user| table_exists(user));
    if record.users.is_empty() {
        record.forwarding_before.clear();
    }
    record.users.insert(topology.to_owned());
    let mut turn_on = Vec::new();
    for sysctl in subnets.iter().map(forward_sysctl) {
        let value = std::fs::read_to_string(sysctl).with_context(|| format!("reading {sysctl}"))?;
        if value.trim() != "1" && !record.forwarding_before.contains_key(sysctl) {
            record
                .forwarding_before
                .insert(sysctl.to_owned(), value.trim().to_owned());
            turn_on.push(sysctl);
        }
    }
    record.save(&key)?;
    for sysctl in turn_on {
        std::fs::write(sysctl, "1").with_context(|| format!("enabling {sysctl}"))?;
    }
    Ok(())
}

/// Removes the topology's table; the last NAT topology of the namespace
/// restores the forwarding sysctls to what they were before the first.
pub fn disable(topology: &str) -> Result<()> {
    if table_exists(topology) {
        nft::run(&format!("delete table inet {}\n", nat_table(topology)))?;
    }
    let key = nat::key()?;
    let _lock = lock(&key)?;
    let mut record = NatRecord::load(&key)?;
    if !record.users.remove(topology) {
        return Ok(());
    }
    if record.users.is_empty() {
        for (sysctl, value) in &record.forwarding_before {
            std::fs::write(sysctl, value).with_context(|| format!("restoring {sysctl}"))?;
        }
    }
    record.save(&key)
}

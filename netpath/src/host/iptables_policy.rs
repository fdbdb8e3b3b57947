//! Network policy as iptables rules on a Linux bridge with br_netfilter
//! (bridged IPv4 packets through the filter table's FORWARD chain): what an
//! operator of the kube-router kind writes, compiled from the same
//! [`EndpointRules`] as netpath's maps. `bench --policy` measures it.
//!
//! FORWARD jumps bridged packets (`-m physdev --physdev-is-bridged`) to
//! `OWNER-fwd`, which accepts what connection tracking knows, then sends
//! a packet through `OWNER-outN` of its source and `OWNER-inN` of its
//! destination (isolated containers only): one rule per peer prefix and
//! protocol (ports by `multiport`), then DROP; an egress chain RETURNs what
//! it allows, so the destination's ingress still judges it. Plain rules,
//! one per prefix: no ipset (the `ipset` tool is not on the machines this
//! was written for). IPv4 only, as `iptables` is.
//!
//! Applied and removed atomically through `iptables-restore --noflush`;
//! only chains named after their owner, and FORWARD's jump to them.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::model::policy::{EndpointRules, Ports, Protocol, Rule};

/// The longest chain name iptables takes.
const CHAIN_MAX: usize = 28;
/// `multiport` takes up to 15 ports, a range counting two.
const MULTIPORT_SLOTS: usize = 15;

/// The chain FORWARD jumps to.
pub fn forward_chain(owner: &str) -> String {
    format!("{owner}-fwd")
}

/// The `iptables-restore --noflush` input that adds `owner`'s chains with
/// the IPv4 containers of `rules` judged, rules in the order given.
pub fn script(owner: &str, rules: &[EndpointRules]) -> Result<String> {
    let fwd = forward_chain(owner);
    let longest = format!("{owner}-out{}", rules.len());
    if longest.len() > CHAIN_MAX {
        bail!(
            "owner {owner:?} is too long for iptables chain names ({longest}: at most {CHAIN_MAX})"
        );
    }
    let mut declared = vec![fwd.clone()];
    let mut body = format!(
        "-A FORWARD -m physdev --physdev-is-bridged -j {fwd}\n\
         -A {fwd} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    );
    let mut chains = String::new();
    for (n, endpoint) in rules.iter().enumerate() {
        if !endpoint.address.is_ipv4() {
            continue;
        }
        let address = format!("{}/32", endpoint.address);
        for (way, allowed) in [("out", &endpoint.egress), ("in", &endpoint.ingress)] {
            let Some(allowed) = allowed else { continue };
            let chain = format!("{owner}-{way}{n}");
            let (own, peer, verdict) = match way {
                "out" => ("-s", "-d", "RETURN"),
                _ => ("-d", "-s", "ACCEPT"),
            };
            let _ = writeln!(body, "-A {fwd} {own} {address} -j {chain}");
            for rule in allowed.iter().filter(|r| r.peer.addr().is_ipv4()) {
                for matches in rule_matches(rule) {
                    let _ = writeln!(
                        chains,
                        "-A {chain} {peer} {}{matches} -j {verdict}",
                        rule.peer.trunc()
                    );
                }
            }
            let _ = writeln!(chains, "-A {chain} -j DROP");
            declared.push(chain);
        }
    }
    let mut out = String::from("*filter\n");
    for chain in &declared {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&body);
    out.push_str(&chains);
    out.push_str("COMMIT\n");
    Ok(out)
}

/// The protocol and port matches of one rule: none for every protocol,
/// else one per protocol (and per 15 ports).
fn rule_matches(rule: &Rule) -> Vec<String> {
    let Ports::Only(ranges) = &rule.ports else {
        return vec![String::new()];
    };
    let mut out = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let ports: Vec<String> = ranges
            .iter()
            .filter(|r| r.protocol == protocol)
            .map(|r| {
                if r.first == r.last {
                    r.first.to_string()
                } else {
                    format!("{}:{}", r.first, r.last)
                }
            })
            .collect();
        let mut chunk: Vec<&str> = Vec::new();
        let mut slots = 0;
        let mut flush = |chunk: &mut Vec<&str>| {
            match chunk.len() {
                0 => {}
                1 => out.push(format!(" -p {protocol} --dport {}", chunk[0])),
                _ => out.push(format!(
                    " -p {protocol} -m multiport --dports {}",
                    chunk.join(",")
                )),
            }
            chunk.clear();
        };
        for port in &ports {
            let cost = if port.contains(':') { 2 } else { 1 };
            if slots + cost > MULTIPORT_SLOTS {
                flush(&mut chunk);
                slots = 0;
            }
            chunk.push(port);
            slots += cost;
        }
        flush(&mut chunk);
    }
    out
}

/// The `iptables-restore --noflush` input that removes `owner`'s chains
/// and FORWARD's jumps to them, from what `iptables -S` lists; None if
/// there are none.
pub fn removal_script(owner: &str, listed: &str) -> Option<String> {
    let prefix = format!("{owner}-");
    let chains: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.strip_prefix("-N "))
        .filter(|chain| chain.starts_with(&prefix))
        .collect();
    let jumps: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.strip_prefix("-A FORWARD "))
        .filter(|rule| {
            rule.split_whitespace()
                .last()
                .is_some_and(|target| target.starts_with(&prefix))
        })
        .collect();
    if chains.is_empty() && jumps.is_empty() {
        return None;
    }
    let mut out = String::from("*filter\n");
    for rule in jumps {
        let _ = writeln!(out, "-D FORWARD {rule}");
    }
    for chain in &chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Adds `owner`'s chains for `rules` in the caller's network namespace.
pub fn apply(owner: &str, rules: &[EndpointRules]) -> Result<()> {
    restore(&script(owner, rules)?)
}

/// Removes `owner`'s chains from the caller's network namespace, if any.
pub fn remove(owner: &str) -> Result<()> {
    let listed = Command::new("iptables")
        .args(["-w", "-S"])
        .stderr(Stdio::null())
        .output()
        .context("running iptables (install iptables)")?;
    match removal_script(owner, &String::from_utf8_lossy(&listed.stdout)) {
        Some(script) => restore(&script),
        None => Ok(()),
    }
}

/// Applies `script` atomically, beside the chains already there.
fn restore(script: &str) -> Result<()> {
    super::script::feed("iptables-restore", &["-w", "--noflush"], script, "iptables")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::testing::{allow, range};

    #[test]
    fn the_script_jumps_bridged_packets_to_per_container_chains_after_conntrack() {
        let rules = vec![
            EndpointRules {
                endpoint: "default/c0".into(),
                address: "10.0.0.2".parse().unwrap(),
                ingress: Some(vec![
                    allow("10.0.0.1/32", Ports::All),
                    allow(
                        "172.16.0.0/24",
                        Ports::only(vec![
                            range(Protocol::Tcp, 8000, 8000),
                            range(Protocol::Tcp, 30000, 32767),
                            range(Protocol::Udp, 53, 53),
                        ]),
                    ),
                    allow("fd00::/64", Ports::All),
                ]),
                egress: None,
            },
            EndpointRules {
                endpoint: "default/c1".into(),
                address: "10.0.0.3".parse().unwrap(),
                ingress: None,
                egress: Some(vec![allow(
                    "0.0.0.0/0",
                    Ports::only(vec![range(Protocol::Udp, 53, 53)]),
                )]),
            },
            EndpointRules {
                endpoint: "default/c1".into(),
                address: "fd00::3".parse().unwrap(),
                ingress: Some(vec![]),
                egress: None,
            },
        ];
        assert_eq!(
            script("nb1i", &rules).unwrap(),
            "\
*filter
:nb1i-fwd - [0:0]
:nb1i-in0 - [0:0]
:nb1i-out1 - [0:0]
-A FORWARD -m physdev --physdev-is-bridged -j nb1i-fwd
-A nb1i-fwd -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A nb1i-fwd -d 10.0.0.2/32 -j nb1i-in0
-A nb1i-fwd -s 10.0.0.3/32 -j nb1i-out1
-A nb1i-in0 -s 10.0.0.1/32 -j ACCEPT
-A nb1i-in0 -s 172.16.0.0/24 -p tcp -m multiport --dports 8000,30000:32767 -j ACCEPT
-A nb1i-in0 -s 172.16.0.0/24 -p udp --dport 53 -j ACCEPT
-A nb1i-in0 -j DROP
-A nb1i-out1 -d 0.0.0.0/0 -p udp --dport 53 -j RETURN
-A nb1i-out1 -j DROP
COMMIT
"
        );
        assert!(script(&"o".repeat(30), &rules).is_err());
    }

    #[test]
    fn multiport_takes_fifteen_slots_a_range_counting_two() {
        let ranges = (1..=14)
            .map(|p| range(Protocol::Tcp, p * 10, p * 10))
            .collect::<Vec<_>>();
        let mut with_range = ranges.clone();
        with_range.push(range(Protocol::Tcp, 1000, 1010));
        let matches = rule_matches(&allow("10.0.0.0/8", Ports::only(with_range)));
        assert_eq!(matches.len(), 2, "{matches:?}");
        assert!(matches[0].ends_with(",140"), "{matches:?}");
        assert_eq!(matches[1], " -p tcp --dport 1000:1010");
    }

    #[test]
    fn removal_takes_only_the_owners_chains_and_jumps() {
        let listed = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N nb1i-fwd\n-N nb1i-in0\n\
                      -N other-fwd\n-A FORWARD -m physdev --physdev-is-bridged -j nb1i-fwd\n\
                      -A FORWARD -j other-fwd\n-A nb1i-fwd -d 10.0.0.2/32 -j nb1i-in0\n";
        assert_eq!(
            removal_script("nb1i", listed).unwrap(),
            "*filter\n-D FORWARD -m physdev --physdev-is-bridged -j nb1i-fwd\n-F nb1i-fwd\n-F nb1i-in0\n\
             -X nb1i-fwd\n-X nb1i-in0\nCOMMIT\n"
        );
        assert_eq!(removal_script("nb2i", listed), None);
    }
}

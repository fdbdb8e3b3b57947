//! Network policy as nftables rules on the Linux bridge: what an operator
//! without netpath would run, compiled from the same [`EndpointRules`]
//! netpath's maps hold (`bench --policy` measures it beside netpath).
//!
//! One table named after its owner. Its forward chain accepts what
//! connection tracking knows (`ct state established,related`), then sends
//! a packet through the egress chain of its source and the ingress chain
//! of its destination (verdict maps by address, for the isolated
//! containers only). Each such chain looks the peer, protocol and port up
//! in one interval set (`peer . protocol . port`) and the peer alone in a
//! second (rules for every protocol: the node, rules without ports), and
//! drops what neither holds; an egress chain returns what it allows, so the
//! destination's ingress still judges it. Traffic from the node itself
//! never crosses the forward hook: it is allowed, as netpath allows it.
//!
//! The sets hold disjoint address intervals (the kernel refuses
//! overlapping elements of a concatenated interval set): nested and
//! adjacent prefixes are cut into pieces, each with the union of the
//! ports of the rules covering it, and neighbours with equal ports joined.

use std::{
    collections::BTreeSet,
    fmt::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::model::policy::{EndpointRules, Ports, Rule};

/// Where the table hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The bridge family's forward hook: every bridged frame, with
    /// connection tracking from nf_conntrack_bridge (Linux >= 5.3, when the
    /// kernel is built with it).
    Bridge,
    /// The inet family's forward hook, which bridged packets reach through
    /// br_netfilter (`net.bridge.bridge-nf-call-iptables=1`): for kernels
    /// without nf_conntrack_bridge.
    Inet,
}

impl Family {
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
        }
    }
}

/// The table of `owner`'s policy rules.
pub fn table_name(owner: &str) -> String {
    format!("netpath-policy-{owner}")
}

/// Which way a chain judges: for traffic to the container or from it.
#[derive(Clone, Copy)]
enum Way {
    In,
    Out,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::In => "in",
            Way::Out => "out",
        }
    }

    /// The packet's field naming the container, and the peer's.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Way::In => ("daddr", "saddr"),
            Way::Out => ("saddr", "daddr"),
        }
    }

    /// What an allowed packet gets: ingress decides, egress hands on.
    fn allowed(self) -> &'static str {
        match self {
            Way::In => "accept",
            Way::Out => "return",
        }
    }
}

/// The nft script that replaces `owner`'s table with `rules` in force
/// (atomic through [`super::nft::run`]).
pub fn script(owner: &str, family: Family, rules: &[EndpointRules]) -> String {
    let table = table_name(owner);
    let keyword = family.keyword();
    let mut sets = String::new();
    let mut chains = String::new();
    // Per direction and address family: the verdict map's entries.
    let mut dispatch: [[Vec<String>; 2]; 2] = Default::default();
    for (n, endpoint) in rules.iter().enumerate() {
        for (way, allowed) in [(Way::Out, &endpoint.egress), (Way::In, &endpoint.ingress)] {
            let Some(allowed) = allowed else { continue };
            let chain = format!("{}_{n}", way.name());
            let ip = ip_keyword(endpoint.address);
            let (_, peer_field) = way.fields();
            let (by_port, every_port) = elements(endpoint.address, allowed);
            let _ = writeln!(chains, "  chain {chain} {{");
            let _ = writeln!(chains, "    # {} {}", endpoint.endpoint, endpoint.address);
            // Peers on given ports, then peers on every port: an
            // interval set each, matched on what it is keyed by.
            let by_port_key = format!(
                "{} . inet_proto . inet_service",
                addr_type(endpoint.address)
            );
            for (set, key, matched, elements) in [
                (
                    chain.clone(),
                    by_port_key.as_str(),
                    format!("{peer_field} . meta l4proto . th dport"),
                    &by_port,
                ),
                (
                    format!("{chain}_all"),
                    addr_type(endpoint.address),
                    peer_field.to_owned(),
                    &every_port,
                ),
            ] {
                if elements.is_empty() {
                    continue;
                }
                let _ = write!(
                    sets,
                    "  set {set} {{\n    type {key}\n    flags interval\n    elements = {{ {} }}\n  }}\n",
                    elements.join(", ")
                );
                let _ = writeln!(chains, "    {ip} {matched} @{set} {}", way.allowed());
            }
            let _ = writeln!(chains, "    drop\n  }}");
            let v6 = usize::from(endpoint.address.is_ipv6());
            let w = match way {
                Way::Out => 0,
                Way::In => 1,
            };
            dispatch[w][v6].push(format!("{} : jump {chain}", endpoint.address));
        }
    }
    let mut forward = String::from(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n    \
         ct state established,related accept\n",
    );
    for (w, way) in [Way::Out, Way::In].into_iter().enumerate() {
        for (v6, ip) in ["ip", "ip6"].into_iter().enumerate() {
            let entries = &dispatch[w][v6];
            if !entries.is_empty() {
                let (own_field, _) = way.fields();
                let _ = writeln!(
                    forward,
                    "    {ip} {own_field} vmap {{ {} }}",
                    entries.join(", ")
                );
            }
        }
    }
    forward.push_str("  }\n");
    format!(
        "table {keyword} {table} {{}}\ndelete table {keyword} {table}\n\
         table {keyword} {table} {{\n{sets}{forward}{chains}}}\n"
    )
}

/// How many set elements [`script`] writes for `rules`: for the log.
pub fn element_count(rules: &[EndpointRules]) -> usize {
    rules
        .iter()
        .flat_map(|e| [&e.ingress, &e.egress].map(|d| (e.address, d)))
        .filter_map(|(address, rules)| rules.as_ref().map(|r| elements(address, r)))
        .map(|(by_port, all)| by_port.len() + all.len())
        .sum()
}

fn ip_keyword(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "ip" } else { "ip6" }
}

fn addr_type(address: IpAddr) -> &'static str {
    if address.is_ipv4() {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    }
}

/// The set elements of `rules` for a container at `address`: `peer .
/// protocol . ports` and the peers allowed every protocol, over disjoint
/// address intervals.
fn elements(address: IpAddr, rules: &[Rule]) -> (Vec<String>, Vec<String>) {
    let (mut by_port, mut every_port) = (Vec::new(), Vec::new());
    for (first, last, ports) in disjoint(address.is_ipv6(), rules) {
        let peer = interval(address.is_ipv6(), first, last);
        match ports {
            Ports::All => every_port.push(peer),
            Ports::Only(ranges) => {
                for range in ranges {
                    let port = if range.first == range.last {
                        range.first.to_string()
                    } else {
                        format!("{}-{}", range.first, range.last)
                    };
                    by_port.push(format!("{peer} . {} . {port}", range.protocol.number()));
                }
            }
        }
    }
    (by_port, every_port)
}

/// The rules' peers of one family as disjoint inclusive intervals
/// (numbers), each with the union of the ports of the rules covering it;
/// adjacent intervals with equal ports joined; in address order.
fn disjoint(v6: bool, rules: &[Rule]) -> Vec<(u128, u128, Ports)> {
    let spans: Vec<(u128, u128, &Ports)> = rules
        .iter()
        .filter(|rule| rule.peer.addr().is_ipv6() == v6)
        .map(|rule| {
            let net = rule.peer.trunc();
            (number(net.network()), number(net.broadcast()), &rule.ports)
        })
        .collect();
    // Every interval starts at a rule's first address or just past a rule's last.
    let cuts: BTreeSet<u128> = spans
        .iter()
        .flat_map(|(first, last, _)| [Some(*first), last.checked_add(1)])
        .flatten()
        .collect();
    let cuts: Vec<u128> = cuts.into_iter().collect();
    let top = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    let mut out: Vec<(u128, u128, Ports)> = Vec::new();
    for (i, &first) in cuts.iter().enumerate() {
        if first > top {
            break;
        }
        let last = cuts.get(i + 1).map_or(top, |next| next - 1);
        let covering = spans
            .iter()
            .filter(|(f, l, _)| *f <= first && first <= *l)
            .fold(None::<Ports>, |union, (_, _, ports)| {
                Some(union.map_or_else(|| (*ports).clone(), |u| u.union(ports)))
            });
        let Some(ports) = covering.filter(|p| !p.is_nothing()) else {
            continue;
        };
        match out.last_mut() {
            Some((_, previous_last, previous))
                if *previous_last + 1 == first && *previous == ports =>
            {
                *previous_last = last;
            }
            _ => out.push((first, last, ports)),
        }
    }
    out
}

fn number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn address_of(v6: bool, n: u128) -> IpAddr {
    if v6 {
        Ipv6Addr::from(n).into()
    } else {
        Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)).into()
    }
}

/// An interval as nft reads it: an address, a prefix when it is one, else
/// `first-last`.
fn interval(v6: bool, first: u128, last: u128) -> String {
    let bits = if v6 { 128 } else { 32 };
    let size = last - first; // one less than the count
    if size == 0 {
        return address_of(v6, first).to_string();
    }
    let host_bits = 128 - size.leading_zeros();
    let aligned = (size.checked_add(1).is_none() || (size + 1).is_power_of_two())
        && (host_bits >= 128 || first & ((1u128 << host_bits) - 1) == 0);
    match aligned.then(|| IpNet::new(address_of(v6, first), (bits - host_bits) as u8)) {
        Some(Ok(net)) => net.to_string(),
        _ => format!("{}-{}", address_of(v6, first), address_of(v6, last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{
        Protocol,
        testing::{allow, range, tcp},
    };

    fn endpoint(
        address: &str,
        ingress: Option<Vec<Rule>>,
        egress: Option<Vec<Rule>>,
    ) -> EndpointRules {
        EndpointRules {
            endpoint: "default/c".into(),
            address: address.parse().unwrap(),
            ingress,
            egress,
        }
    }

    #[test]
    fn the_script_judges_isolated_containers_by_sets_after_conntrack() {
        let rules = vec![
            endpoint(
                "10.0.0.2",
                Some(vec![
                    allow("10.0.0.1/32", Ports::All),
                    allow(
                        "172.16.0.0/24",
                        Ports::only(vec![
                            range(Protocol::Tcp, 80, 80),
                            range(Protocol::Tcp, 30000, 32767),
                        ]),
                    ),
                ]),
                None,
            ),
            endpoint("10.0.0.3", None, Some(vec![])),
        ];
        let script = script("nb1n", Family::Bridge, &rules);
        let expected = "\
table bridge netpath-policy-nb1n {}
delete table bridge netpath-policy-nb1n
table bridge netpath-policy-nb1n {
  set in_0 {
    type ipv4_addr . inet_proto . inet_service
    flags interval
    elements = { 172.16.0.0/24 . 6 . 80, 172.16.0.0/24 . 6 . 30000-32767 }
  }
  set in_0_all {
    type ipv4_addr
    flags interval
    elements = { 10.0.0.1 }
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ip saddr vmap { 10.0.0.3 : jump out_1 }
    ip daddr vmap { 10.0.0.2 : jump in_0 }
  }
  chain in_0 {
    # default/c 10.0.0.2
    ip saddr . meta l4proto . th dport @in_0 accept
    ip saddr @in_0_all accept
    drop
  }
  chain out_1 {
    # default/c 10.0.0.3
    drop
  }
}
";
        assert_eq!(script, expected);
        assert_eq!(element_count(&rules), 3);
        assert!(
            self::script("x", Family::Inet, &rules).starts_with("table inet netpath-policy-x {}")
        );
    }

    #[test]
    fn nested_and_adjacent_prefixes_become_disjoint_intervals() {
        let rules = [
            allow("10.0.0.0/8", tcp(80)),
            allow("10.1.0.0/16", tcp(443)),
            allow("11.0.0.0/8", tcp(80)),
            allow("12.0.0.0/8", Ports::All),
            allow("12.0.0.0/16", tcp(22)),
        ];
        let (by_port, all) = elements("10.9.9.9".parse().unwrap(), &rules);
        assert_eq!(
            by_port,
            [
                "10.0.0.0/16 . 6 . 80",
                "10.1.0.0/16 . 6 . 80",
                "10.1.0.0/16 . 6 . 443",
                "10.2.0.0-11.255.255.255 . 6 . 80",
            ]
        );
        assert_eq!(all, ["12.0.0.0/8"]);
    }

    #[test]
    fn every_address_and_ipv6_are_written_as_nft_reads_them() {
        assert_eq!(interval(false, 0, u128::from(u32::MAX)), "0.0.0.0/0");
        assert_eq!(interval(true, 0, u128::MAX), "::/0");
        assert_eq!(interval(false, 10, 10), "0.0.0.10");
        assert_eq!(interval(false, 8, 11), "0.0.0.8/30");
        assert_eq!(interval(false, 8, 12), "0.0.0.8-0.0.0.12");
        let rules = vec![endpoint(
            "fd00::2",
            Some(vec![allow("fd00::/64", Ports::All)]),
            None,
        )];
        let script = script("o", Family::Bridge, &rules);
        assert!(script.contains("type ipv6_addr\n"), "{script}");
        assert!(script.contains("ip6 saddr @in_0_all accept"), "{script}");
        assert!(
            script.contains("ip6 daddr vmap { fd00::2 : jump in_0 }"),
            "{script}"
        );
    }
}

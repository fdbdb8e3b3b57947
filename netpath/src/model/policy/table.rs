//! Compiled rules in the shape of the datapath's tables: peer prefixes for
//! a longest-prefix-match map, and port ranges as prefixes over the 16 port
//! bits for a second one.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{Ports, Rule};

/// For the BPF longest-prefix-match table: the distinct peer prefixes of `rules` (one family), each with
/// the union of the ports of every rule whose prefix CONTAINS it (including itself), so that a longest-prefix
/// lookup of an address yields exactly the union of all rules that match that address. Also returns, per
/// prefix, the sorted dedup list of policy keys involved. Deterministic order (by prefix).
pub fn flatten(rules: &[Rule]) -> Vec<(IpNet, Ports, Vec<String>)> {
    let prefixes: BTreeSet<IpNet> = rules.iter().map(|rule| rule.peer.trunc()).collect();
    prefixes
        .into_iter()
        .map(|prefix| {
            let covering: Vec<&Rule> = rules
                .iter()
                .filter(|rule| rule.peer.contains(&prefix))
                .collect();
            let ports = covering
                .iter()
                .fold(Ports::Only(Vec::new()), |ports, rule| {
                    ports.union(&rule.ports)
                });
            let policies: BTreeSet<&str> =
                covering.iter().map(|rule| rule.policy.as_str()).collect();
            (
                prefix,
                ports,
                policies.into_iter().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// An inclusive port range as the minimal list of (value, prefix_len) prefixes over the 16 port bits
/// (e.g. 80..=80 -> [(80,16)]; 0..=65535 -> [(0,0)]; 1000..=1999 -> a handful). At most 30 entries;
/// none when `first > last`.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut prefixes = Vec::new();
    let (mut next, last) = (u32::from(first), u32::from(last));
    while next <= last {
        // The largest aligned block starting at `next` that stays within the range.
        let mut size: u32 = if next == 0 {
            1 << 16
        } else {
            1 << next.trailing_zeros()
        };
        while next + size - 1 > last {
            size /= 2;
        }
        let value = u16::try_from(next).unwrap_or(u16::MAX);
        prefixes.push((value, 16 - size.trailing_zeros() as u8));
        next += size;
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{PortRange, Protocol, testing::rule};

    fn tcp(first: u16, last: u16) -> Ports {
        Ports::Only(vec![PortRange {
            protocol: Protocol::Tcp,
            first,
            last,
        }])
    }

    #[test]
    fn nested_prefixes_get_the_union_of_their_containers() {
        let rules = [
            rule("10.0.0.0/8", tcp(80, 80), "ns/wide"),
            rule("10.1.0.0/16", tcp(443, 443), "ns/mid"),
            rule("10.1.2.3/32", tcp(22, 22), "ns/host"),
            rule("10.1.0.0/16", tcp(81, 81), "ns/other"),
            rule("192.168.0.0/16", Ports::All, "ns/lan"),
        ];
        let flat = flatten(&rules);
        let prefixes: Vec<String> = flat.iter().map(|(p, _, _)| p.to_string()).collect();
        assert_eq!(
            prefixes,
            ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "192.168.0.0/16"]
        );
        assert_eq!(flat[0].1, tcp(80, 80));
        assert_eq!(
            flat[1].1,
            Ports::only(vec![
                PortRange {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 81
                },
                PortRange {
                    protocol: Protocol::Tcp,
                    first: 443,
                    last: 443
                },
            ])
        );
        assert_eq!(flat[1].2, ["ns/mid", "ns/other", "ns/wide"]);
        assert!(
            flat[2].1.allows(Protocol::Tcp, 22)
                && flat[2].1.allows(Protocol::Tcp, 443)
                && flat[2].1.allows(Protocol::Tcp, 80)
        );
        assert_eq!(flat[2].2, ["ns/host", "ns/mid", "ns/other", "ns/wide"]);
        assert_eq!(
            flat[3],
            (
                "192.168.0.0/16".parse().unwrap(),
                Ports::All,
                vec!["ns/lan".to_string()]
            )
        );
        assert_eq!(flatten(&[]), vec![]);
    }

    #[test]
    fn port_prefix_examples() {
        assert_eq!(port_prefixes(80, 80), [(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), [(0, 0)]);
        assert_eq!(port_prefixes(65535, 65535), [(65535, 16)]);
        assert_eq!(port_prefixes(32768, 65535), [(32768, 1)]);
        assert_eq!(port_prefixes(81, 80), []);
        assert!(port_prefixes(1000, 1999).len() <= 10);
        assert_eq!(port_prefixes(1, 65534).len(), 30);
    }

    /// Every port is covered exactly when it is in the range, and by one prefix only.
    #[test]
    fn port_prefixes_cover_exactly() {
        for (first, last) in [
            (0, 0),
            (1, 65535),
            (1000, 1999),
            (32000, 32768),
            (80, 80),
            (1, 65534),
            (4097, 12287),
            (65534, 65535),
        ] {
            let prefixes = port_prefixes(first, last);
            assert!(prefixes.len() <= 30, "{first}..={last}: {}", prefixes.len());
            for port in 0..=u16::MAX {
                let covering = prefixes
                    .iter()
                    .filter(|&&(value, len)| {
                        let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
                        value & !mask == 0 && port & mask == value
                    })
                    .count();
                assert_eq!(
                    covering,
                    usize::from((first..=last).contains(&port)),
                    "{first}..={last} at {port}"
                );
            }
        }
    }
}

//! The policy `bench --policy` puts in force on its `tc+policy` bed: what
//! a busy namespace carries, not a toy. 50 policies select every pod, each
//! allowing ten /24 ipBlocks (500 in all, none of them the client's) on a
//! few TCP ports and a range; one more allows the client on the ports the
//! benchmark's tools use. Every measured flow is then judged against all
//! of it, and every packet of it meets connection tracking.

use std::{fmt::Write, net::IpAddr};

/// What [`realistic_set`] holds, for the log.
pub(super) const DESCRIBED: &str = "51 policies, 500 ipBlocks";

/// The ports of iperf3 (TCP and UDP), sockperf (UDP) and the connection test.
const MEASURED: [(&str, u16); 4] = [("TCP", 5201), ("UDP", 5201), ("UDP", 11111), ("TCP", 5301)];

pub(super) fn realistic_set(client: &IpAddr) -> String {
    let mut yaml = String::new();
    for policy in 0..50 {
        let _ = write!(
            yaml,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: tenant-{policy}}}\n\
             spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n"
        );
        for block in 0..10 {
            let _ = writeln!(
                yaml,
                "    - ipBlock: {{cidr: 172.{}.{}.0/24}}",
                16 + policy / 16,
                (policy % 16) * 16 + block
            );
        }
        let _ = write!(
            yaml,
            "    ports:\n    - {{protocol: TCP, port: {}}}\n    - {{protocol: TCP, port: 8443}}\n    \
             - {{protocol: UDP, port: 53}}\n    - {{protocol: TCP, port: 30000, endPort: 32767}}\n",
            8000 + policy
        );
    }
    let _ = write!(
        yaml,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bench-client}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: {client}/32}}\n    ports:\n"
    );
    for (protocol, port) in MEASURED {
        let _ = writeln!(yaml, "    - {{protocol: {protocol}, port: {port}}}");
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_realistic_set_is_valid_and_as_described() {
        let policies =
            crate::model::policy::parse(&realistic_set(&"10.250.2.2".parse().unwrap())).unwrap();
        assert_eq!(policies.len(), 51);
        let blocks: usize = policies
            .iter()
            .flat_map(|p| p.spec.iter().flat_map(|s| s.ingress.iter().flatten()))
            .flat_map(|rule| rule.from.iter().flatten())
            .filter(|peer| peer.ip_block.is_some())
            .count();
        assert_eq!(blocks, 501);
    }
}

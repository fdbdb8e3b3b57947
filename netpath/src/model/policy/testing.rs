//! Builders shared by the unit tests of the policy module and of what
//! compiles its rules into firewalls (`host::nft_policy`,
//! `host::iptables_policy`).

use super::{
    Endpoint, EndpointRules, NamedPort, NetworkPolicy, PortRange, Ports, Protocol, Rule, parse,
};

/// A local endpoint named "namespace/name".
pub fn endpoint(key: &str, labels: &[(&str, &str)], addresses: &[&str]) -> Endpoint {
    let (namespace, name) = key.split_once('/').unwrap();
    Endpoint {
        name: name.into(),
        namespace: namespace.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        named_ports: vec![],
        local: true,
    }
}

pub fn with_port(mut endpoint: Endpoint, name: &str, protocol: Protocol, port: u16) -> Endpoint {
    endpoint.named_ports.push(NamedPort {
        name: name.into(),
        protocol,
        port,
    });
    endpoint
}

pub fn remote(mut endpoint: Endpoint) -> Endpoint {
    endpoint.local = false;
    endpoint
}

/// A policy `name` in `namespace` with `spec` (YAML, indented by two).
pub fn policy(namespace: &str, name: &str, spec: &str) -> NetworkPolicy {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    );
    parse(&text).unwrap().remove(0)
}

pub fn range(protocol: Protocol, first: u16, last: u16) -> PortRange {
    PortRange {
        protocol,
        first,
        last,
    }
}

pub fn tcp(port: u16) -> Ports {
    Ports::Only(vec![range(Protocol::Tcp, port, port)])
}

pub fn rule(peer: &str, ports: Ports, policy: &str) -> Rule {
    Rule {
        peer: peer.parse().unwrap(),
        ports,
        policy: policy.into(),
    }
}

/// A rule of policy "default/p", where which policy does not matter.
pub fn allow(peer: &str, ports: Ports) -> Rule {
    rule(peer, ports, "default/p")
}

/// The compiled rules of endpoint `key` at `address`.
pub fn rules_of<'r>(compiled: &'r [EndpointRules], key: &str, address: &str) -> &'r EndpointRules {
    let address: std::net::IpAddr = address.parse().unwrap();
    compiled
        .iter()
        .find(|rules| rules.endpoint == key && rules.address == address)
        .unwrap_or_else(|| panic!("no rules for {key} at {address}"))
}

//! Compiling policies to allow rules per local container address: which
//! policies isolate it in each direction, and which peers and ports the
//! rules of those policies open, resolved to prefixes and port ranges.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    Direction, Endpoint, EndpointRules, Namespace, NetworkPolicy, PortRange, Ports, Protocol, Rule,
    cidr, policy_key, policy_namespace,
    select::{World, selects},
};

/// The policy name node rules carry: no policy, the node is always allowed.
const NODE_POLICY: &str = "(node)";

/// Compiles `policies` for every LOCAL endpoint (one EndpointRules per address of it).
/// Kubernetes semantics exactly:
/// - a policy selects the endpoints of its own namespace matching spec.podSelector ({} = all of them);
/// - policyTypes default: ["Ingress"] plus "Egress" if spec.egress has a rule;
/// - an endpoint is isolated in a direction once any policy with that type selects it; its allows are the
///   union of the rules of every such policy (no order, no deny rules);
/// - a rule with no `from`/`to` (absent or empty list) means all peers (0.0.0.0/0 and ::/0);
///   no `ports` (absent or empty) means all protocols and ports (Ports::All);
/// - a peer podSelector alone: endpoints (local and remote) of the policy's namespace matching it;
///   namespaceSelector alone: all endpoints of namespaces matching it; both: endpoints matching podSelector
///   in namespaces matching namespaceSelector; peers become one /32 (/128) Rule per address;
/// - ipBlock: the cidr minus every except, as a minimal set of CIDRs;
/// - a named port resolves for INGRESS against the protected endpoint's declared ports (none declared:
///   nothing allowed for it) and for EGRESS against each peer endpoint's, so it never matches an ipBlock
///   (egress to all peers on a named port reaches every endpoint declaring it);
/// - `node_addresses` (the node's own addresses on the network): traffic between a container and its own
///   node is always allowed, as an All rule for each in every isolated direction, with policy "(node)";
/// - IPv4 peers apply only to IPv4 addresses of the endpoint and IPv6 to IPv6.
///
/// Rules of one policy to one peer are merged. Output sorted (by endpoint, then address) and deterministic.
pub fn compile(
    policies: &[NetworkPolicy],
    endpoints: &[Endpoint],
    namespaces: &[Namespace],
    node_addresses: &[IpNet],
) -> Vec<EndpointRules> {
    let world = World::new(endpoints, namespaces);
    let mut compiled: Vec<EndpointRules> = endpoints
        .iter()
        .filter(|endpoint| endpoint.local)
        .flat_map(|endpoint| {
            endpoint.addresses.iter().map(|&address| EndpointRules {
                endpoint: endpoint.key(),
                address,
                ingress: direction_rules(
                    &world,
                    policies,
                    endpoint,
                    address,
                    Direction::Ingress,
                    node_addresses,
                ),
                egress: direction_rules(
                    &world,
                    policies,
                    endpoint,
                    address,
                    Direction::Egress,
                    node_addresses,
                ),
            })
        })
        .collect();
    compiled.sort_by(|a, b| (&a.endpoint, a.address).cmp(&(&b.endpoint, b.address)));
    compiled
}

/// The policies that select `endpoint` and have `direction` among their types.
pub(super) fn isolating_policies<'p>(
    policies: &'p [NetworkPolicy],
    endpoint: &Endpoint,
    direction: Direction,
) -> Vec<&'p NetworkPolicy> {
    policies
        .iter()
        .filter(|policy| has_type(policy, direction) && selects(policy, endpoint))
        .collect()
}

/// policyTypes, defaulted as the API server does when it is absent or
/// empty: Ingress always, Egress when the policy has egress rules (at least
/// one: `egress: []` is none, as `len(spec.Egress) != 0` in Kubernetes).
pub fn has_type(policy: &NetworkPolicy, direction: Direction) -> bool {
    let Some(spec) = &policy.spec else {
        return false;
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            let wanted = match direction {
                Direction::Ingress => "Ingress",
                Direction::Egress => "Egress",
            };
            types.iter().any(|policy_type| policy_type == wanted)
        }
        _ => {
            direction == Direction::Ingress
                || spec.egress.as_ref().is_some_and(|rules| !rules.is_empty())
        }
    }
}

/// The peers and ports of one rule, whichever its direction.
struct RuleParts<'p> {
    peers: &'p [NetworkPolicyPeer],
    ports: &'p [NetworkPolicyPort],
}

fn rules_of(policy: &NetworkPolicy, direction: Direction) -> Vec<RuleParts<'_>> {
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|rule| RuleParts {
                peers: rule.from.as_deref().unwrap_or_default(),
                ports: rule.ports.as_deref().unwrap_or_default(),
            })
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|rule| RuleParts {
                peers: rule.to.as_deref().unwrap_or_default(),
                ports: rule.ports.as_deref().unwrap_or_default(),
            })
            .collect(),
    }
}

/// `endpoint`'s allow rules at `address` in `direction`: None when no policy
/// isolates it there, else every rule of the isolating policies whose peer
/// is of `address`'s family, merged per (peer, policy) and sorted.
pub(super) fn direction_rules(
    world: &World<'_>,
    policies: &[NetworkPolicy],
    endpoint: &Endpoint,
    address: IpAddr,
    direction: Direction,
    node_addresses: &[IpNet],
) -> Option<Vec<Rule>> {
    let isolating = isolating_policies(policies, endpoint, direction);
    if isolating.is_empty() {
        return None;
    }
    let same_family = |peer: &IpNet| peer.addr().is_ipv4() == address.is_ipv4();
    let mut allowed: BTreeMap<(IpNet, String), Ports> = BTreeMap::new();
    let mut allow = |peer: IpNet, policy: String, ports: Ports| {
        if same_family(&peer) && !ports.is_nothing() {
            let merged = match allowed.get(&(peer, policy.clone())) {
                Some(before) => before.union(&ports),
                None => ports,
            };
            allowed.insert((peer, policy), merged);
        }
    };
    for node in node_addresses {
        allow(node.trunc(), NODE_POLICY.to_string(), Ports::All);
    }
    for policy in isolating {
        let key = policy_key(policy);
        for rule in rules_of(policy, direction) {
            for (peer, ports) in grants(world, policy, &rule, endpoint, direction) {
                allow(peer, key.clone(), ports);
            }
        }
    }
    Some(
        allowed
            .into_iter()
            .map(|((peer, policy), ports)| Rule {
                peer,
                ports,
                policy,
            })
            .collect(),
    )
}

/// What one rule opens for `protected`: each peer prefix with its ports.
/// Named ports resolve against the protected endpoint for ingress and the
/// peer endpoint for egress, so in egress they open nothing to ipBlocks.
fn grants(
    world: &World<'_>,
    policy: &NetworkPolicy,
    rule: &RuleParts<'_>,
    protected: &Endpoint,
    direction: Direction,
) -> Vec<(IpNet, Ports)> {
    let owner_of_named_ports = |peer| named_ports_owner(direction, protected, peer);
    if rule.peers.is_empty() {
        let ports = resolve_ports(rule.ports, owner_of_named_ports(None));
        let mut grants = vec![(everywhere_v4(), ports.clone()), (everywhere_v6(), ports)];
        // Egress to "everyone" on a named port reaches every pod declaring it.
        if direction == Direction::Egress && rule.ports.iter().any(is_named) {
            let named: Vec<NetworkPolicyPort> = rule
                .ports
                .iter()
                .filter(|port| is_named(port))
                .cloned()
                .collect();
            for peer in world.endpoints {
                grants.extend(host_grants(peer, resolve_ports(&named, Some(peer))));
            }
        }
        return grants;
    }
    let mut grants = Vec::new();
    for peer in rule.peers {
        match &peer.ip_block {
            Some(block) => {
                let ports = resolve_ports(rule.ports, owner_of_named_ports(None));
                grants.extend(
                    block_prefixes(block)
                        .into_iter()
                        .map(|net| (net, ports.clone())),
                );
            }
            None => {
                for endpoint in world.peer_endpoints(peer, policy_namespace(policy)) {
                    let ports = resolve_ports(rule.ports, owner_of_named_ports(Some(endpoint)));
                    grants.extend(host_grants(endpoint, ports));
                }
            }
        }
    }
    grants
}

/// Whose declared ports a named port means: the protected endpoint's for
/// ingress, the peer's for egress (none for an ipBlock peer).
fn named_ports_owner<'e>(
    direction: Direction,
    protected: &'e Endpoint,
    peer: Option<&'e Endpoint>,
) -> Option<&'e Endpoint> {
    match direction {
        Direction::Ingress => Some(protected),
        Direction::Egress => peer,
    }
}

fn everywhere_v4() -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0))
}

fn everywhere_v6() -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0))
}

/// One host prefix (/32 or /128) per address of `endpoint`, each with `ports`.
fn host_grants(endpoint: &Endpoint, ports: Ports) -> Vec<(IpNet, Ports)> {
    endpoint
        .addresses
        .iter()
        .map(|&address| (IpNet::from(address), ports.clone()))
        .collect()
}

/// An ipBlock's cidr minus its excepts; nothing for an unparsable cidr
/// (validation rejects those), and unparsable excepts are not subtracted.
fn block_prefixes(block: &IPBlock) -> Vec<IpNet> {
    let Ok(whole) = block.cidr.parse::<IpNet>() else {
        return Vec::new();
    };
    let holes: Vec<IpNet> = block
        .except
        .iter()
        .flatten()
        .filter_map(|text| text.parse().ok())
        .collect();
    cidr::subtract(whole, &holes)
}

fn is_named(port: &NetworkPolicyPort) -> bool {
    matches!(port.port, Some(IntOrString::String(_)))
}

/// What a rule's `ports` allow: everything when there are none, else the
/// union of each entry, named ones looked up in `owner`'s declared ports.
fn resolve_ports(ports: &[NetworkPolicyPort], owner: Option<&Endpoint>) -> Ports {
    if ports.is_empty() {
        return Ports::All;
    }
    Ports::only(
        ports
            .iter()
            .filter_map(|port| resolve_port(port, owner))
            .collect(),
    )
}

/// One `ports` entry as a range; None when it names a port `owner` does not
/// declare (or is malformed, which validation rejects), so it opens nothing.
fn resolve_port(port: &NetworkPolicyPort, owner: Option<&Endpoint>) -> Option<PortRange> {
    let protocol: Protocol = match &port.protocol {
        Some(text) => text.parse().ok()?,
        None => Protocol::Tcp,
    };
    let (first, last) = match &port.port {
        None => (0, u16::MAX),
        Some(IntOrString::Int(first)) => {
            let first = u16::try_from(*first).ok()?;
            let last = port
                .end_port
                .map_or(Some(first), |last| u16::try_from(last).ok())?;
            (first, last)
        }
        Some(IntOrString::String(name)) => {
            let declared = owner?
                .named_ports
                .iter()
                .find(|named| named.name == *name && named.protocol == protocol)?;
            (declared.port, declared.port)
        }
    };
    (first <= last).then_some(PortRange {
        protocol,
        first,
        last,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::policy::testing::{
        endpoint, policy, range, remote, rule, rules_of, tcp, with_port,
    };

    fn endpoints() -> Vec<Endpoint> {
        vec![
            with_port(
                endpoint("default/web", &[("app", "web")], &["10.0.0.1", "fd00::1"]),
                "http",
                Protocol::Tcp,
                8080,
            ),
            endpoint(
                "default/client",
                &[("role", "client")],
                &["10.0.0.2", "fd00::2"],
            ),
            endpoint("default/other", &[], &["10.0.0.3"]),
            remote(with_port(
                endpoint("prod/api", &[("app", "api")], &["10.0.1.1"]),
                "http",
                Protocol::Tcp,
                9090,
            )),
            remote(endpoint("dev/tool", &[("role", "client")], &["10.0.2.1"])),
            remote(endpoint("dev/box", &[], &["10.0.2.2"])),
        ]
    }

    fn namespaces() -> Vec<Namespace> {
        let team = |name: &str| Namespace {
            name: name.into(),
            labels: BTreeMap::from([("team".to_string(), name.to_string())]),
        };
        vec![team("prod"), team("dev")]
    }

    fn compiled(policies: &[NetworkPolicy]) -> Vec<EndpointRules> {
        compile(policies, &endpoints(), &namespaces(), &[])
    }

    fn web_ingress(policies: &[NetworkPolicy]) -> Option<Vec<Rule>> {
        rules_of(&compiled(policies), "default/web", "10.0.0.1")
            .ingress
            .clone()
    }

    const WEB: &str = "  podSelector: {matchLabels: {app: web}}\n";

    #[test]
    fn deny_all_ingress_isolates_every_local_endpoint_of_the_namespace() {
        let compiled = compiled(&[policy(
            "default",
            "deny",
            "  podSelector: {}\n  policyTypes: [Ingress]\n",
        )]);
        let order: Vec<(&str, String)> = compiled
            .iter()
            .map(|r| (r.endpoint.as_str(), r.address.to_string()))
            .collect();
        assert_eq!(
            order,
            [
                ("default/client", "10.0.0.2".to_string()),
                ("default/client", "fd00::2".into()),
                ("default/other", "10.0.0.3".into()),
                ("default/web", "10.0.0.1".into()),
                ("default/web", "fd00::1".into()),
            ]
        );
        for rules in &compiled {
            assert_eq!(
                (&rules.ingress, &rules.egress),
                (&Some(vec![]), &None),
                "{}",
                rules.endpoint
            );
        }
    }

    #[test]
    fn policies_of_another_namespace_select_nothing_here() {
        let compiled = compiled(&[policy("prod", "deny", "  podSelector: {}\n")]);
        assert!(
            compiled
                .iter()
                .all(|rules| rules.ingress.is_none() && rules.egress.is_none())
        );
    }

    #[test]
    fn allow_from_a_label_per_family() {
        let allow = policy(
            "default",
            "allow-client",
            &format!(
                "{WEB}  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{role: client}}}}\n"
            ),
        );
        let compiled = compiled(&[allow]);
        assert_eq!(
            rules_of(&compiled, "default/web", "10.0.0.1").ingress,
            Some(vec![rule(
                "10.0.0.2/32",
                Ports::All,
                "default/allow-client"
            )])
        );
        assert_eq!(
            rules_of(&compiled, "default/web", "fd00::1").ingress,
            Some(vec![rule(
                "fd00::2/128",
                Ports::All,
                "default/allow-client"
            )])
        );
        assert_eq!(
            rules_of(&compiled, "default/client", "10.0.0.2").ingress,
            None
        );
    }

    #[test]
    fn a_port_a_range_and_a_whole_protocol() {
        let spec = format!(
            "{WEB}  ingress:\n  - ports:\n    - port: 80\n    - {{protocol: TCP, port: 8000, endPort: 8100}}\n    - protocol: UDP\n"
        );
        let ports = Ports::Only(vec![
            range(Protocol::Tcp, 80, 80),
            range(Protocol::Tcp, 8000, 8100),
            range(Protocol::Udp, 0, 65535),
        ]);
        assert_eq!(
            web_ingress(&[policy("default", "ports", &spec)]),
            Some(vec![rule("0.0.0.0/0", ports, "default/ports")])
        );
    }

    #[test]
    fn ip_block_with_except_applies_to_its_family_only() {
        let spec = format!(
            "{WEB}  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/24, except: [10.0.0.0/25, 10.0.0.192/26]}}\n"
        );
        let compiled = compiled(&[policy("default", "block", &spec)]);
        assert_eq!(
            rules_of(&compiled, "default/web", "10.0.0.1").ingress,
            Some(vec![rule("10.0.0.128/26", Ports::All, "default/block")])
        );
        assert_eq!(
            rules_of(&compiled, "default/web", "fd00::1").ingress,
            Some(vec![])
        );
    }

    #[test]
    fn egress_denied_but_dns() {
        let spec = "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports:\n    - {protocol: UDP, port: 53}\n";
        let compiled = compiled(&[policy("default", "dns", spec)]);
        let dns = Ports::Only(vec![range(Protocol::Udp, 53, 53)]);
        let client = rules_of(&compiled, "default/client", "10.0.0.2");
        assert_eq!(
            (client.ingress.clone(), client.egress.clone()),
            (
                None,
                Some(vec![rule("0.0.0.0/0", dns.clone(), "default/dns")])
            )
        );
        assert_eq!(
            rules_of(&compiled, "default/client", "fd00::2").egress,
            Some(vec![rule("::/0", dns, "default/dns")])
        );
    }

    #[test]
    fn namespace_selector_reaches_remote_endpoints_by_namespace_labels() {
        let spec = format!(
            "{WEB}  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: prod}}}}\n"
        );
        assert_eq!(
            web_ingress(&[policy("default", "prod", &spec)]),
            Some(vec![rule("10.0.1.1/32", Ports::All, "default/prod")])
        );
        let by_name = format!(
            "{WEB}  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: dev}}}}\n"
        );
        let peers: Vec<String> = web_ingress(&[policy("default", "dev", &by_name)])
            .unwrap()
            .iter()
            .map(|r| r.peer.to_string())
            .collect();
        assert_eq!(peers, ["10.0.2.1/32", "10.0.2.2/32"]);
    }

    #[test]
    fn pod_and_namespace_selector_in_one_peer_is_and_in_two_is_or() {
        let and = format!(
            "{WEB}  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: dev}}}}\n      podSelector: {{matchLabels: {{role: client}}}}\n"
        );
        let or = format!(
            "{WEB}  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: dev}}}}\n    - podSelector: {{matchLabels: {{role: client}}}}\n"
        );
        let peers = |spec: &str| -> Vec<String> {
            web_ingress(&[policy("default", "p", spec)])
                .unwrap()
                .iter()
                .map(|r| r.peer.to_string())
                .collect()
        };
        assert_eq!(peers(&and), ["10.0.2.1/32"]);
        assert_eq!(peers(&or), ["10.0.0.2/32", "10.0.2.1/32", "10.0.2.2/32"]);
    }

    #[test]
    fn two_policies_add_up() {
        let from_client =
            "  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: client}}\n    ports:\n";
        let a = policy(
            "default",
            "a",
            &format!("{WEB}{from_client}    - port: 80\n"),
        );
        let b = policy(
            "default",
            "b",
            &format!("{WEB}{from_client}    - port: 443\n"),
        );
        let unrelated = policy(
            "default",
            "c",
            "  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n",
        );
        assert_eq!(
            web_ingress(&[b, unrelated, a]),
            Some(vec![
                rule("10.0.0.2/32", tcp(80), "default/a"),
                rule("10.0.0.2/32", tcp(443), "default/b")
            ])
        );
    }

    #[test]
    fn rules_of_one_policy_to_one_peer_merge() {
        let spec = format!(
            "{WEB}  ingress:\n  - from: [podSelector: {{matchLabels: {{role: client}}}}]\n    ports: [port: 80]\n  - from: [podSelector: {{matchLabels: {{role: client}}}}]\n    ports: [port: 81]\n"
        );
        assert_eq!(
            web_ingress(&[policy("default", "m", &spec)]),
            Some(vec![rule(
                "10.0.0.2/32",
                Ports::Only(vec![range(Protocol::Tcp, 80, 81)]),
                "default/m"
            )])
        );
    }

    #[test]
    fn named_ports_in_ingress_resolve_against_the_protected_endpoint() {
        let spec = "  podSelector: {}\n  ingress:\n  - ports:\n    - port: http\n";
        let compiled = compiled(&[policy("default", "http", spec)]);
        assert_eq!(
            rules_of(&compiled, "default/web", "10.0.0.1").ingress,
            Some(vec![rule("0.0.0.0/0", tcp(8080), "default/http")])
        );
        assert_eq!(
            rules_of(&compiled, "default/other", "10.0.0.3").ingress,
            Some(vec![])
        );
        let udp = "  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: UDP, port: http}\n";
        assert_eq!(
            rules_of(&compiled_with(udp), "default/web", "10.0.0.1").ingress,
            Some(vec![])
        );
    }

    fn compiled_with(spec: &str) -> Vec<EndpointRules> {
        compiled(&[policy("default", "p", spec)])
    }

    #[test]
    fn named_ports_in_egress_resolve_against_each_peer_and_never_match_ip_blocks() {
        let client = "  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n";
        let to_pods = format!(
            "{client}  egress:\n  - to:\n    - namespaceSelector: {{}}\n    ports: [port: http]\n"
        );
        let compiled = compiled_with(&to_pods);
        assert_eq!(
            rules_of(&compiled, "default/client", "10.0.0.2").egress,
            Some(vec![
                rule("10.0.0.1/32", tcp(8080), "default/p"),
                rule("10.0.1.1/32", tcp(9090), "default/p")
            ])
        );
        assert_eq!(
            rules_of(&compiled, "default/client", "fd00::2").egress,
            Some(vec![rule("fd00::1/128", tcp(8080), "default/p")])
        );
        let to_block = format!(
            "{client}  egress:\n  - to:\n    - ipBlock: {{cidr: 10.0.0.0/8}}\n    ports: [port: http]\n"
        );
        assert_eq!(
            rules_of(&compiled_with(&to_block), "default/client", "10.0.0.2").egress,
            Some(vec![])
        );
        let to_anyone = format!("{client}  egress:\n  - ports: [port: http, port: 22]\n");
        assert_eq!(
            rules_of(&compiled_with(&to_anyone), "default/client", "10.0.0.2").egress,
            Some(vec![
                rule("0.0.0.0/0", tcp(22), "default/p"),
                rule("10.0.0.1/32", tcp(8080), "default/p"),
                rule("10.0.1.1/32", tcp(9090), "default/p")
            ])
        );
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_there_are_egress_rules() {
        let directions = |spec: &str| {
            let rules = rules_of(&compiled_with(spec), "default/other", "10.0.0.3").clone();
            (rules.ingress.is_some(), rules.egress.is_some())
        };
        assert_eq!(directions("  podSelector: {}\n"), (true, false));
        assert_eq!(
            directions("  podSelector: {}\n  ingress: [{}]\n"),
            (true, false)
        );
        assert_eq!(
            directions("  podSelector: {}\n  egress: [{}]\n"),
            (true, true)
        );
        // As the API server defaults it: an empty list is no egress rules.
        assert_eq!(
            directions("  podSelector: {}\n  egress: []\n"),
            (true, false)
        );
        assert_eq!(
            directions("  podSelector: {}\n  policyTypes: []\n  egress: [{}]\n"),
            (true, true)
        );
        assert_eq!(
            directions("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n"),
            (false, true)
        );
        assert_eq!(
            directions("  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
            (true, true)
        );
    }

    #[test]
    fn the_node_is_always_allowed_in_isolated_directions() {
        let deny = policy(
            "default",
            "deny",
            "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
        );
        let node: Vec<IpNet> = ["10.0.0.254/32", "fd00::fe/128"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let compiled = compile(&[deny], &endpoints(), &namespaces(), &node);
        let web = rules_of(&compiled, "default/web", "10.0.0.1");
        assert_eq!(
            web.ingress,
            Some(vec![rule("10.0.0.254/32", Ports::All, "(node)")])
        );
        assert_eq!(web.egress, None);
        assert_eq!(
            rules_of(&compiled, "default/web", "fd00::1").ingress,
            Some(vec![rule("fd00::fe/128", Ports::All, "(node)")])
        );
        assert_eq!(
            rules_of(&compiled, "default/client", "10.0.0.2").ingress,
            None
        );
    }

    #[test]
    fn compiling_is_deterministic() {
        let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n  egress:\n  - to:\n    - podSelector: {}\n";
        let policies = [policy("default", "p", spec), policy("default", "q", spec)];
        let mut shuffled = endpoints();
        shuffled.reverse();
        assert_eq!(
            compile(&policies, &endpoints(), &namespaces(), &[]),
            compile(
                &[policies[1].clone(), policies[0].clone()],
                &shuffled,
                &namespaces(),
                &[]
            )
        );
    }
}

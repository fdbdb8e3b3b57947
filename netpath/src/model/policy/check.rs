//! `netpath policy check`: whether policy lets a new flow from one container
//! to another through, and which policies decide it, judged from the same
//! compiled rules the datapath is loaded with.

use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    Direction, Endpoint, Namespace, NetworkPolicy, Protocol,
    compile::{direction_rules, isolating_policies},
    policy_key,
    select::World,
};

/// How one direction judges a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Judgement {
    /// No policy of this direction selects the endpoint.
    Unrestricted,
    /// Isolated, and these policies (keys, sorted) allow the flow.
    AllowedBy(Vec<String>),
    /// Isolated by these policies (keys, sorted), and none allows the flow.
    Denied { isolated_by: Vec<String> },
}

/// The verdict on a flow: the egress of its source and the ingress of its destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Neither direction is Denied.
    pub allowed: bool,
    pub egress: Judgement,
    pub ingress: Judgement,
}

/// Would a new flow from `from` to `to` on `protocol`/`port` be allowed? Judges the egress of `from`
/// and the ingress of `to`, both as if local (policy is global), at the first addresses of the two
/// of a common family. Endpoints missing from `endpoints` are added to it, so peers can select them.
/// Without a common family no rule can match, so an isolated direction is Denied.
pub fn check(
    policies: &[NetworkPolicy],
    endpoints: &[Endpoint],
    namespaces: &[Namespace],
    from: &Endpoint,
    to: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> Decision {
    let everyone = with_endpoints(endpoints, [from, to]);
    let world = World::new(&everyone, namespaces);
    let addresses = common_family(from, to);
    let flow = Flow {
        world: &world,
        policies,
        protocol,
        port,
    };
    let egress = flow.judge(from, addresses, Direction::Egress);
    let ingress = flow.judge(
        to,
        addresses.map(|(source, destination)| (destination, source)),
        Direction::Ingress,
    );
    let denied = |judgement: &Judgement| matches!(judgement, Judgement::Denied { .. });
    Decision {
        allowed: !denied(&egress) && !denied(&ingress),
        egress,
        ingress,
    }
}

/// `endpoints` plus those of `extra` it does not already hold (by key).
fn with_endpoints<'e>(
    endpoints: &[Endpoint],
    extra: impl IntoIterator<Item = &'e Endpoint>,
) -> Vec<Endpoint> {
    let mut all = endpoints.to_vec();
    for endpoint in extra {
        if !all.iter().any(|known| known.key() == endpoint.key()) {
            all.push(endpoint.clone());
        }
    }
    all
}

/// The first address of `from` that `to` has an address of the same family
/// for, with that first address of `to`.
fn common_family(from: &Endpoint, to: &Endpoint) -> Option<(IpAddr, IpAddr)> {
    from.addresses.iter().find_map(|&source| {
        let destination = to
            .addresses
            .iter()
            .find(|address| address.is_ipv4() == source.is_ipv4())?;
        Some((source, *destination))
    })
}

/// The flow being judged, less its endpoints.
struct Flow<'a> {
    world: &'a World<'a>,
    policies: &'a [NetworkPolicy],
    protocol: Protocol,
    port: u16,
}

impl Flow<'_> {
    /// `direction` of `protected`, with `addresses` = (its own, the peer's).
    fn judge(
        &self,
        protected: &Endpoint,
        addresses: Option<(IpAddr, IpAddr)>,
        direction: Direction,
    ) -> Judgement {
        let isolating = isolating_policies(self.policies, protected, direction);
        if isolating.is_empty() {
            return Judgement::Unrestricted;
        }
        let allowed_by: BTreeSet<String> = addresses
            .and_then(|(own, peer)| {
                let rules =
                    direction_rules(self.world, self.policies, protected, own, direction, &[])?;
                Some(
                    rules
                        .into_iter()
                        .filter(|rule| {
                            rule.peer.contains(&peer) && rule.ports.allows(self.protocol, self.port)
                        })
                        .map(|rule| rule.policy)
                        .collect(),
                )
            })
            .unwrap_or_default();
        if allowed_by.is_empty() {
            let isolated_by: BTreeSet<String> = isolating.into_iter().map(policy_key).collect();
            Judgement::Denied {
                isolated_by: isolated_by.into_iter().collect(),
            }
        } else {
            Judgement::AllowedBy(allowed_by.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::policy::{
        Ports, compile, flatten, parse,
        testing::{endpoint, range, rules_of, with_port},
    };

    /// The examples of the Kubernetes documentation, concepts/services-networking/network-policies, verbatim.
    const TEST_NETWORK_POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
";
    const DEFAULT_DENY_INGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
";
    const ALLOW_ALL_INGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
";
    const DEFAULT_DENY_EGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
";
    const ALLOW_ALL_EGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
";
    const DEFAULT_DENY_ALL: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
";
    const MULTI_PORT_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
";

    /// The pods and outside hosts the documentation's examples talk about.
    struct Cluster {
        endpoints: Vec<Endpoint>,
        namespaces: Vec<Namespace>,
    }

    impl Cluster {
        fn new() -> Self {
            let endpoints = vec![
                endpoint("default/db", &[("role", "db")], &["192.168.0.10"]),
                endpoint(
                    "default/frontend",
                    &[("role", "frontend")],
                    &["192.168.0.11"],
                ),
                endpoint("default/backend", &[("role", "backend")], &["192.168.0.12"]),
                endpoint("mine/tool", &[], &["192.168.1.5"]),
                endpoint("other/frontend", &[("role", "frontend")], &["192.168.2.5"]),
                endpoint("outside/in-block", &[], &["172.17.0.5"]),
                endpoint("outside/in-except", &[], &["172.17.1.5"]),
                endpoint("outside/high-in-block", &[], &["172.17.200.1"]),
                endpoint("outside/egress-target", &[], &["10.0.0.7"]),
                endpoint("outside/elsewhere", &[], &["10.0.1.7"]),
            ];
            let mine = Namespace {
                name: "mine".into(),
                labels: BTreeMap::from([("project".to_string(), "myproject".to_string())]),
            };
            Cluster {
                endpoints,
                namespaces: vec![mine],
            }
        }

        fn get(&self, key: &str) -> &Endpoint {
            self.endpoints.iter().find(|e| e.key() == key).unwrap()
        }

        fn check(
            &self,
            policies: &[NetworkPolicy],
            from: &str,
            to: &str,
            protocol: Protocol,
            port: u16,
        ) -> Decision {
            check(
                policies,
                &self.endpoints,
                &self.namespaces,
                self.get(from),
                self.get(to),
                protocol,
                port,
            )
        }
    }

    fn policies(yaml: &[&str]) -> Vec<NetworkPolicy> {
        parse(&yaml.concat()).unwrap()
    }

    fn allowed_by(keys: &[&str]) -> Judgement {
        Judgement::AllowedBy(keys.iter().map(|k| k.to_string()).collect())
    }

    fn denied(keys: &[&str]) -> Judgement {
        Judgement::Denied {
            isolated_by: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn test_network_policy_ingress_as_documented() {
        let cluster = Cluster::new();
        let policies = policies(&[TEST_NETWORK_POLICY]);
        let key = "default/test-network-policy";
        let to_db = |from: &str, protocol, port| {
            cluster.check(&policies, from, "default/db", protocol, port)
        };
        for from in [
            "default/frontend",
            "mine/tool",
            "outside/in-block",
            "outside/high-in-block",
        ] {
            let decision = to_db(from, Protocol::Tcp, 6379);
            assert_eq!(
                decision,
                Decision {
                    allowed: true,
                    egress: Judgement::Unrestricted,
                    ingress: allowed_by(&[key])
                },
                "{from}"
            );
        }
        for from in ["default/backend", "other/frontend", "outside/in-except"] {
            assert_eq!(
                to_db(from, Protocol::Tcp, 6379).ingress,
                denied(&[key]),
                "{from}"
            );
        }
        assert!(!to_db("default/frontend", Protocol::Tcp, 6380).allowed);
        assert!(!to_db("default/frontend", Protocol::Udp, 6379).allowed);
        // Pods the policy does not select are not isolated.
        assert_eq!(
            cluster
                .check(
                    &policies,
                    "default/backend",
                    "default/frontend",
                    Protocol::Tcp,
                    1
                )
                .ingress,
            Judgement::Unrestricted
        );
    }

    #[test]
    fn test_network_policy_egress_as_documented() {
        let cluster = Cluster::new();
        let policies = policies(&[TEST_NETWORK_POLICY]);
        let key = "default/test-network-policy";
        let from_db =
            |to: &str, protocol, port| cluster.check(&policies, "default/db", to, protocol, port);
        assert_eq!(
            from_db("outside/egress-target", Protocol::Tcp, 5978).egress,
            allowed_by(&[key])
        );
        assert_eq!(
            from_db("outside/egress-target", Protocol::Tcp, 5979).egress,
            denied(&[key])
        );
        assert_eq!(
            from_db("outside/egress-target", Protocol::Udp, 5978).egress,
            denied(&[key])
        );
        assert_eq!(
            from_db("outside/elsewhere", Protocol::Tcp, 5978).egress,
            denied(&[key])
        );
        assert!(!from_db("default/frontend", Protocol::Tcp, 6379).allowed);
    }

    #[test]
    fn test_network_policy_compiles_the_except_away() {
        let cluster = Cluster::new();
        let compiled = compile(
            &policies(&[TEST_NETWORK_POLICY]),
            &cluster.endpoints,
            &cluster.namespaces,
            &[],
        );
        let db = rules_of(&compiled, "default/db", "192.168.0.10");
        let ingress = db.ingress.as_ref().unwrap();
        let blocks: Vec<String> = ingress
            .iter()
            .map(|r| r.peer.to_string())
            .filter(|p| p.starts_with("172.17."))
            .collect();
        assert_eq!(
            blocks,
            [
                "172.17.0.0/24",
                "172.17.2.0/23",
                "172.17.4.0/22",
                "172.17.8.0/21",
                "172.17.16.0/20",
                "172.17.32.0/19",
                "172.17.64.0/18",
                "172.17.128.0/17"
            ]
        );
        let redis = Ports::Only(vec![range(Protocol::Tcp, 6379, 6379)]);
        assert!(ingress.iter().all(|rule| rule.ports == redis));
        let peers: Vec<String> = ingress
            .iter()
            .map(|r| r.peer.to_string())
            .filter(|p| !p.starts_with("172.17."))
            .collect();
        assert_eq!(peers, ["192.168.0.11/32", "192.168.1.5/32"]);
        assert_eq!(
            db.egress
                .as_ref()
                .unwrap()
                .iter()
                .map(|r| r.peer.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.0/24"]
        );
        assert_eq!(
            rules_of(&compiled, "default/frontend", "192.168.0.11").ingress,
            None
        );
    }

    #[test]
    fn default_deny_ingress_isolates_ingress_only_and_allow_all_ingress_overrides_it() {
        let cluster = Cluster::new();
        let deny = policies(&[DEFAULT_DENY_INGRESS]);
        let decision = cluster.check(
            &deny,
            "default/frontend",
            "default/backend",
            Protocol::Tcp,
            80,
        );
        assert_eq!(
            decision,
            Decision {
                allowed: false,
                egress: Judgement::Unrestricted,
                ingress: denied(&["default/default-deny-ingress"])
            }
        );
        assert!(
            cluster
                .check(
                    &deny,
                    "default/frontend",
                    "outside/elsewhere",
                    Protocol::Tcp,
                    80
                )
                .allowed
        );
        let both = policies(&[DEFAULT_DENY_INGRESS, ALLOW_ALL_INGRESS]);
        for port in [1, 80, 65535] {
            let decision = cluster.check(
                &both,
                "outside/elsewhere",
                "default/db",
                Protocol::Udp,
                port,
            );
            assert_eq!(decision.ingress, allowed_by(&["default/allow-all-ingress"]));
        }
        let compiled = compile(&both, &cluster.endpoints, &cluster.namespaces, &[]);
        let ingress = rules_of(&compiled, "default/db", "192.168.0.10")
            .ingress
            .clone()
            .unwrap();
        assert_eq!(
            ingress,
            vec![crate::model::policy::testing::rule(
                "0.0.0.0/0",
                Ports::All,
                "default/allow-all-ingress"
            )]
        );
    }

    #[test]
    fn default_deny_egress_isolates_egress_only_and_allow_all_egress_overrides_it() {
        let cluster = Cluster::new();
        let deny = policies(&[DEFAULT_DENY_EGRESS]);
        let decision = cluster.check(
            &deny,
            "default/frontend",
            "default/backend",
            Protocol::Tcp,
            80,
        );
        assert_eq!(
            decision,
            Decision {
                allowed: false,
                egress: denied(&["default/default-deny-egress"]),
                ingress: Judgement::Unrestricted
            }
        );
        assert!(
            cluster
                .check(&deny, "outside/elsewhere", "default/db", Protocol::Tcp, 80)
                .allowed
        );
        let both = policies(&[ALLOW_ALL_EGRESS, DEFAULT_DENY_EGRESS]);
        let decision = cluster.check(
            &both,
            "default/frontend",
            "outside/elsewhere",
            Protocol::Sctp,
            9,
        );
        assert_eq!(decision.egress, allowed_by(&["default/allow-all-egress"]));
        assert!(decision.allowed);
    }

    #[test]
    fn default_deny_all_denies_both_directions() {
        let cluster = Cluster::new();
        let deny = policies(&[DEFAULT_DENY_ALL]);
        let decision = cluster.check(
            &deny,
            "default/frontend",
            "default/backend",
            Protocol::Tcp,
            80,
        );
        let isolated = denied(&["default/default-deny-all"]);
        assert_eq!(
            decision,
            Decision {
                allowed: false,
                egress: isolated.clone(),
                ingress: isolated
            }
        );
        let compiled = compile(&deny, &cluster.endpoints, &cluster.namespaces, &[]);
        let db = rules_of(&compiled, "default/db", "192.168.0.10");
        assert_eq!(
            (db.ingress.clone(), db.egress.clone()),
            (Some(vec![]), Some(vec![]))
        );
        assert_eq!(
            rules_of(&compiled, "mine/tool", "192.168.1.5").ingress,
            None
        );
    }

    #[test]
    fn end_port_range_as_documented() {
        let cluster = Cluster::new();
        let policies = policies(&[MULTI_PORT_EGRESS]);
        let key = "default/multi-port-egress";
        let from_db = |port| {
            cluster
                .check(
                    &policies,
                    "default/db",
                    "outside/egress-target",
                    Protocol::Tcp,
                    port,
                )
                .egress
        };
        for port in [32000, 32500, 32768] {
            assert_eq!(from_db(port), allowed_by(&[key]), "{port}");
        }
        for port in [31999, 32769] {
            assert_eq!(from_db(port), denied(&[key]), "{port}");
        }
        let decision = cluster.check(
            &policies,
            "default/frontend",
            "default/db",
            Protocol::Tcp,
            1,
        );
        assert_eq!(decision.ingress, Judgement::Unrestricted);
    }

    #[test]
    fn no_common_family_is_denied_where_isolated() {
        let v4 = endpoint("default/a", &[], &["10.0.0.1"]);
        let v6 = endpoint("default/b", &[], &["fd00::2"]);
        let allow_all = policies(&[ALLOW_ALL_INGRESS]);
        let decision = check(&allow_all, &[], &[], &v4, &v6, Protocol::Tcp, 80);
        assert_eq!(decision.ingress, denied(&["default/allow-all-ingress"]));
        assert_eq!(decision.egress, Judgement::Unrestricted);
    }

    /// A small deterministic generator, so the cross-check needs no crate.
    struct Lcg(u64);

    impl Lcg {
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            &items[(self.0 >> 33) as usize % items.len()]
        }
    }

    fn random_policy(random: &mut Lcg, index: usize) -> String {
        const SELECTORS: [&str; 5] = [
            "{}",
            "{matchLabels: {app: a}}",
            "{matchExpressions: [{key: app, operator: NotIn, values: [a]}]}",
            "{matchExpressions: [{key: tier, operator: Exists}]}",
            "{matchLabels: {app: b, tier: x}}",
        ];
        const PEERS: [&str; 7] = [
            "",
            "    - podSelector: {matchLabels: {app: b}}\n",
            "    - namespaceSelector: {matchLabels: {team: red}}\n",
            "    - namespaceSelector: {}\n      podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}\n",
            "    - ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}\n",
            "    - ipBlock: {cidr: 10.9.1.0/28}\n    - podSelector: {}\n",
            "    - ipBlock: {cidr: \"fd09::/32\"}\n",
        ];
        const PORTS: [&str; 5] = [
            "",
            "    ports: [{port: 80}]\n",
            "    ports: [{protocol: UDP, port: 53}, {port: 8000, endPort: 8080}]\n",
            "    ports: [{port: web}]\n",
            "    ports: [{protocol: TCP}]\n",
        ];
        const TYPES: [&str; 4] = [
            "",
            "  policyTypes: [Ingress]\n",
            "  policyTypes: [Egress]\n",
            "  policyTypes: [Ingress, Egress]\n",
        ];
        let namespace = random.pick(&["red", "blue"]);
        let mut yaml = format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p{index}\n  namespace: {namespace}\nspec:\n  podSelector: {}\n{}",
            random.pick(&SELECTORS),
            random.pick(&TYPES)
        );
        for (direction, peers_field) in [("ingress", "from"), ("egress", "to")] {
            if *random.pick(&[true, false]) {
                yaml.push_str(&format!("  {direction}:\n"));
                for _ in 0..*random.pick(&[1, 2]) {
                    let peers = random.pick(&PEERS);
                    let peers = if peers.is_empty() {
                        String::new()
                    } else {
                        format!("    {peers_field}:\n{peers}")
                    };
                    let rule = format!("{peers}{}", random.pick(&PORTS));
                    let rule = if rule.is_empty() {
                        "  - {}\n".to_string()
                    } else {
                        format!("  -{}", &rule[3..])
                    };
                    yaml.push_str(&rule);
                }
            }
        }
        yaml
    }

    fn random_endpoints(random: &mut Lcg) -> Vec<Endpoint> {
        const LABELS: [&[(&str, &str)]; 4] = [
            &[("app", "a")],
            &[("app", "b"), ("tier", "x")],
            &[("tier", "y")],
            &[],
        ];
        (0..8)
            .map(|index| {
                let namespace = random.pick(&["red", "blue", "green"]);
                let v4 = format!("{}.{index}", random.pick(&["10.9.1", "10.9.2", "10.8.0"]));
                let v6 = format!("fd09::{index}");
                let addresses: Vec<&str> = if *random.pick(&[true, false]) {
                    vec![&v4, &v6]
                } else {
                    vec![&v4]
                };
                let labels = *random.pick(&LABELS);
                let base = endpoint(&format!("{namespace}/e{index}"), labels, &addresses);
                if *random.pick(&[true, false]) {
                    with_port(base, "web", Protocol::Tcp, *random.pick(&[80, 8000, 8443]))
                } else {
                    base
                }
            })
            .collect()
    }

    /// `check` must agree with what `compile` loads, looked up the way the
    /// datapath does: longest prefix of the peer in the flattened rules.
    #[test]
    fn check_agrees_with_compiled_and_flattened_rules() {
        let mut random = Lcg(7);
        let namespaces = vec![Namespace {
            name: "red".into(),
            labels: BTreeMap::from([("team".to_string(), "red".to_string())]),
        }];
        let mut judged = 0;
        let mut seen = BTreeSet::new();
        for round in 0..20 {
            let endpoints = random_endpoints(&mut random);
            let text: String = (0..4)
                .map(|index| random_policy(&mut random, index))
                .collect();
            let policies =
                parse(&text).unwrap_or_else(|error| panic!("round {round}: {error:#}\n{text}"));
            let compiled = compile(&policies, &endpoints, &namespaces, &[]);
            for from in &endpoints {
                for to in &endpoints {
                    for (protocol, port) in [
                        (Protocol::Tcp, 80),
                        (Protocol::Udp, 53),
                        (Protocol::Tcp, 8000),
                        (Protocol::Tcp, 8443),
                        (Protocol::Sctp, 1),
                    ] {
                        let decision =
                            check(&policies, &endpoints, &namespaces, from, to, protocol, port);
                        let (source, destination) = (from.addresses[0], to.addresses[0]);
                        let egress = &rules_of(&compiled, &from.key(), &source.to_string()).egress;
                        let ingress =
                            &rules_of(&compiled, &to.key(), &destination.to_string()).ingress;
                        assert_eq!(
                            lookup(egress, destination, protocol, port),
                            verdict(&decision.egress),
                            "round {round} {decision:?}\n{text}"
                        );
                        assert_eq!(
                            lookup(ingress, source, protocol, port),
                            verdict(&decision.ingress),
                            "round {round} {decision:?}\n{text}"
                        );
                        seen.insert((verdict(&decision.egress), verdict(&decision.ingress)));
                        judged += 1;
                    }
                }
            }
        }
        assert_eq!(judged, 20 * 8 * 8 * 5);
        // The generator must reach every kind of judgement in both directions.
        for verdict in [None, Some(true), Some(false)] {
            assert!(
                seen.iter().any(|(egress, _)| *egress == verdict),
                "egress never {verdict:?}"
            );
            assert!(
                seen.iter().any(|(_, ingress)| *ingress == verdict),
                "ingress never {verdict:?}"
            );
        }
    }

    /// None when unrestricted, else whether the longest matching prefix allows the port.
    fn lookup(
        rules: &Option<Vec<crate::model::policy::Rule>>,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<bool> {
        let rules = rules.as_ref()?;
        let table = flatten(rules);
        let longest = table
            .iter()
            .filter(|(prefix, _, _)| prefix.contains(&peer))
            .max_by_key(|(prefix, _, _)| prefix.prefix_len());
        Some(longest.is_some_and(|(_, ports, _)| ports.allows(protocol, port)))
    }

    fn verdict(judgement: &Judgement) -> Option<bool> {
        match judgement {
            Judgement::Unrestricted => None,
            Judgement::AllowedBy(_) => Some(true),
            Judgement::Denied { .. } => Some(false),
        }
    }
}

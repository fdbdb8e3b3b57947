//! What a policy's selectors select: the endpoints a policy protects, and
//! the endpoints a peer of one of its rules names, by pod and namespace labels.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::networking::v1::NetworkPolicyPeer,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};

use super::{Endpoint, Namespace, NetworkPolicy, namespace_labels, policy_namespace};

type Labels = BTreeMap<String, String>;

/// Whether `labels` satisfy `selector`: every matchLabels pair and every
/// matchExpressions requirement (so `{}` selects everything). An operator
/// validation would reject matches nothing, so a bad selector grants nothing.
pub(super) fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| requirement_matches(requirement, labels))
}

fn requirement_matches(requirement: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|value| values.contains(value)),
        "NotIn" => value.is_none_or(|value| !values.contains(value)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// The endpoints and namespaces policies are judged against.
pub(super) struct World<'a> {
    pub endpoints: &'a [Endpoint],
    namespaces: BTreeMap<&'a str, Labels>,
}

impl<'a> World<'a> {
    pub fn new(endpoints: &'a [Endpoint], namespaces: &'a [Namespace]) -> Self {
        let namespaces = namespaces
            .iter()
            .map(|namespace| {
                let labels = namespace_labels(&namespace.name, namespace.labels.clone());
                (namespace.name.as_str(), labels)
            })
            .collect();
        World {
            endpoints,
            namespaces,
        }
    }

    /// A namespace's labels; one nobody listed exists with its name label only.
    fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(namespace_labels(name, Labels::new())),
        }
    }

    /// The endpoints a peer with pod and/or namespace selectors names; a
    /// podSelector alone looks in the policy's own namespace.
    pub fn peer_endpoints(
        &self,
        peer: &NetworkPolicyPeer,
        policy_namespace: &str,
    ) -> Vec<&'a Endpoint> {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return Vec::new();
        }
        let in_namespace = |endpoint: &Endpoint| match &peer.namespace_selector {
            Some(selector) => matches(selector, &self.namespace_labels(endpoint.namespace())),
            None => endpoint.namespace() == policy_namespace,
        };
        let pod_matches = |endpoint: &Endpoint| {
            peer.pod_selector
                .as_ref()
                .is_none_or(|selector| matches(selector, &endpoint.labels))
        };
        self.endpoints
            .iter()
            .filter(|endpoint| in_namespace(endpoint) && pod_matches(endpoint))
            .collect()
    }
}

/// Whether `policy` applies to `endpoint`: same namespace, and its
/// podSelector matches (a missing podSelector, which validation rejects,
/// is read as Go reads it: the empty selector).
pub(super) fn selects(policy: &NetworkPolicy, endpoint: &Endpoint) -> bool {
    let Some(spec) = &policy.spec else {
        return false;
    };
    policy_namespace(policy) == endpoint.namespace()
        && spec
            .pod_selector
            .as_ref()
            .is_none_or(|selector| matches(selector, &endpoint.labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_norway::from_str(yaml).unwrap()
    }

    fn endpoint(name: &str, namespace: &str, pairs: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            name: name.into(),
            namespace: namespace.into(),
            labels: labels(pairs),
            addresses: vec![],
            named_ports: vec![],
            local: true,
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(matches(&selector("{}"), &labels(&[])));
        assert!(matches(&selector("{}"), &labels(&[("app", "web")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let web_prod = selector("matchLabels: {app: web, env: prod}");
        assert!(matches(
            &web_prod,
            &labels(&[("app", "web"), ("env", "prod"), ("x", "y")])
        ));
        assert!(!matches(&web_prod, &labels(&[("app", "web")])));
        assert!(!matches(
            &web_prod,
            &labels(&[("app", "web"), ("env", "dev")])
        ));
    }

    #[test]
    fn each_expression_operator() {
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let bare = labels(&[]);
        let case = |expression: &str, expected: [bool; 3]| {
            let selector = selector(&format!("matchExpressions: [{expression}]"));
            let got = [&web, &db, &bare].map(|labels| matches(&selector, labels));
            assert_eq!(got, expected, "{expression}");
        };
        case(
            "{key: app, operator: In, values: [web, api]}",
            [true, false, false],
        );
        case(
            "{key: app, operator: NotIn, values: [web, api]}",
            [false, true, true],
        );
        case("{key: app, operator: Exists}", [true, true, false]);
        case("{key: app, operator: DoesNotExist}", [false, false, true]);
        case("{key: app, operator: Like}", [false, false, false]);
    }

    #[test]
    fn expressions_and_labels_are_anded() {
        let selector = selector(
            "matchLabels: {env: prod}\nmatchExpressions: [{key: app, operator: In, values: [web]}]",
        );
        assert!(matches(
            &selector,
            &labels(&[("env", "prod"), ("app", "web")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("env", "dev"), ("app", "web")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("env", "prod"), ("app", "db")])
        ));
    }

    #[test]
    fn peers_by_pod_namespace_or_both() {
        let endpoints = [
            endpoint("a", "default", &[("role", "client")]),
            endpoint("b", "prod", &[("role", "client")]),
            endpoint("c", "prod", &[("role", "server")]),
            endpoint("d", "", &[("role", "client")]),
        ];
        let namespaces = [Namespace {
            name: "prod".into(),
            labels: labels(&[("team", "x")]),
        }];
        let world = World::new(&endpoints, &namespaces);
        let names = |peer: &str| {
            let peer: NetworkPolicyPeer = serde_norway::from_str(peer).unwrap();
            world
                .peer_endpoints(&peer, "default")
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("podSelector: {matchLabels: {role: client}}"),
            ["a", "d"]
        );
        assert_eq!(
            names("namespaceSelector: {matchLabels: {team: x}}"),
            ["b", "c"]
        );
        assert_eq!(
            names("namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}"),
            ["a", "d"]
        );
        assert_eq!(
            names("namespaceSelector: {}\npodSelector: {matchLabels: {role: client}}"),
            ["a", "b", "d"]
        );
        assert_eq!(names("ipBlock: {cidr: 10.0.0.0/8}"), Vec::<&str>::new());
    }
}

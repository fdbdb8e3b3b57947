//! Reading NetworkPolicies from YAML and validating them as the Kubernetes
//! API server would, so that a policy netpath accepts is one a cluster
//! accepts too, and an error points at the field to fix.

use std::fmt::Display;

use anyhow::{Context, Result, anyhow};
use ipnet::IpNet;
use k8s_openapi::{
    Resource,
    api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde::Deserialize;

use super::{DEFAULT_NAMESPACE, NetworkPolicy};

/// Parses one YAML file of one or more documents (`---`), each a NetworkPolicy; validates every document
/// and returns them all, or the first error naming the document (1-based index and metadata.name when known)
/// and the field path, e.g. `document 2 (policy "web"): spec.ingress[0].ports[1].endPort: 70 is below port 80`.
/// Empty documents (only comments / whitespace) are skipped. Requires apiVersion `networking.k8s.io/v1`
/// and kind `NetworkPolicy` (error names what was found). metadata.namespace missing -> DEFAULT_NAMESPACE is filled in.
pub fn parse(text: &str) -> Result<Vec<NetworkPolicy>> {
    let mut policies = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("document {number}: not valid YAML"))?;
        if value.is_null() {
            continue;
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(|name| name.as_str())
            .map(|name| format!(" (policy {name:?})"))
            .unwrap_or_default();
        let policy =
            policy_from(value).map_err(|problem| anyhow!("document {number}{name}: {problem}"))?;
        policies.push(policy);
    }
    Ok(policies)
}

/// One document, already read as a tree, as a valid NetworkPolicy.
fn policy_from(value: serde_json::Value) -> Result<NetworkPolicy, String> {
    expect_field(&value, "apiVersion", NetworkPolicy::API_VERSION)?;
    expect_field(&value, "kind", NetworkPolicy::KIND)?;
    let mut policy: NetworkPolicy =
        serde_json::from_value(value).map_err(|error| format!("not a NetworkPolicy: {error}"))?;
    if policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        policy.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    validate(&policy)?;
    Ok(policy)
}

/// Checks a top-level string field up front: k8s-openapi would accept a
/// document without it, and reports a wrong one without naming the field.
fn expect_field(value: &serde_json::Value, field: &str, expected: &str) -> Result<(), String> {
    match value.get(field) {
        Some(serde_json::Value::String(found)) if found == expected => Ok(()),
        Some(found) => Err(format!("{field}: expected {expected:?}, found {found}")),
        None => Err(format!("{field}: missing, expected {expected:?}")),
    }
}

/// Validation as the Kubernetes API server does it for what netpath enforces (called by parse, public for reuse):
/// metadata.name present and a DNS-1123 subdomain; spec present; spec.podSelector present (may be `{}`);
/// label selectors: matchExpressions operators In/NotIn (values non-empty)/Exists/DoesNotExist (values empty);
/// policyTypes only "Ingress"/"Egress", no duplicates; ports: protocol TCP/UDP/SCTP (default TCP);
/// port int 1..=65535 or a named port (IANA_SVC_NAME: 1-15 chars, lowercase alnum and '-', at least one letter);
/// endPort only with a numeric port, >= port, <= 65535; ipBlock.cidr a valid CIDR; each except a valid CIDR
/// strictly inside cidr, same family; a peer has either ipBlock alone or podSelector and/or namespaceSelector.
/// The error reads "field.path: what is wrong".
pub fn validate(policy: &NetworkPolicy) -> Result<(), String> {
    validate_metadata(&policy.metadata)?;
    let spec = policy
        .spec
        .as_ref()
        .ok_or("spec: missing; a NetworkPolicy needs at least `spec: {podSelector: {}}`")?;
    let pod_selector = spec.pod_selector.as_ref().ok_or(
        "spec.podSelector: missing; write `podSelector: {}` to select every pod of the namespace",
    )?;
    validate_selector(pod_selector, "spec.podSelector")?;
    validate_policy_types(spec.policy_types.as_deref().unwrap_or_default())?;
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{index}]");
        validate_peers(
            rule.from.as_deref().unwrap_or_default(),
            &format!("{path}.from"),
        )?;
        validate_ports(
            rule.ports.as_deref().unwrap_or_default(),
            &format!("{path}.ports"),
        )?;
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{index}]");
        validate_peers(
            rule.to.as_deref().unwrap_or_default(),
            &format!("{path}.to"),
        )?;
        validate_ports(
            rule.ports.as_deref().unwrap_or_default(),
            &format!("{path}.ports"),
        )?;
    }
    Ok(())
}

/// "path: problem", the shape of every validation error.
fn at(path: &str, problem: impl Display) -> String {
    format!("{path}: {problem}")
}

fn validate_metadata(metadata: &ObjectMeta) -> Result<(), String> {
    let name = metadata
        .name
        .as_deref()
        .ok_or("metadata.name: missing; every policy needs a name")?;
    if !is_dns1123_subdomain(name) {
        return Err(at(
            "metadata.name",
            format!(
                "{name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
            ),
        ));
    }
    if let Some(namespace) = metadata
        .namespace
        .as_deref()
        .filter(|namespace| !namespace.is_empty())
        && !is_dns1123_label(namespace)
    {
        return Err(at(
            "metadata.namespace",
            format!(
                "{namespace:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn is_dns1123_label(text: &str) -> bool {
    let inner_ok = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    text.len() <= 63 && inner_ok && edge_ok(text.bytes().next()) && edge_ok(text.bytes().last())
}

pub(super) fn is_dns1123_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns1123_label)
}

/// Kubernetes' IANA_SVC_NAME, what a named port must be.
pub(super) fn is_port_name(text: &str) -> bool {
    let allowed = text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (1..=15).contains(&text.len())
        && allowed
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

fn validate_selector(selector: &LabelSelector, path: &str) -> Result<(), String> {
    for key in selector.match_labels.iter().flatten().map(|(key, _)| key) {
        if key.is_empty() {
            return Err(at(&format!("{path}.matchLabels"), "a label key is empty"));
        }
    }
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{path}.matchExpressions[{index}]");
        if requirement.key.is_empty() {
            return Err(at(&format!("{path}.key"), "empty; name the label to test"));
        }
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(at(
                    &format!("{path}.values"),
                    format!("must be non-empty for operator {}", requirement.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(at(
                    &format!("{path}.values"),
                    format!("must be empty for operator {}", requirement.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(at(
                    &format!("{path}.operator"),
                    format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_policy_types(types: &[String]) -> Result<(), String> {
    for (index, policy_type) in types.iter().enumerate() {
        let path = format!("spec.policyTypes[{index}]");
        if policy_type != "Ingress" && policy_type != "Egress" {
            return Err(at(
                &path,
                format!("{policy_type:?} is not one of Ingress, Egress"),
            ));
        }
        if types[..index].contains(policy_type) {
            return Err(at(&path, format!("{policy_type:?} is listed twice")));
        }
    }
    Ok(())
}

fn validate_peers(peers: &[NetworkPolicyPeer], path: &str) -> Result<(), String> {
    for (index, peer) in peers.iter().enumerate() {
        let path = format!("{path}[{index}]");
        let selects = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match &peer.ip_block {
            Some(_) if selects => {
                return Err(at(
                    &path,
                    "ipBlock may not be combined with podSelector or namespaceSelector; make them two peers",
                ));
            }
            Some(block) => validate_ip_block(block, &format!("{path}.ipBlock"))?,
            None if !selects => {
                return Err(at(
                    &path,
                    "must specify ipBlock, podSelector or namespaceSelector",
                ));
            }
            None => {}
        }
        if let Some(selector) = &peer.pod_selector {
            validate_selector(selector, &format!("{path}.podSelector"))?;
        }
        if let Some(selector) = &peer.namespace_selector {
            validate_selector(selector, &format!("{path}.namespaceSelector"))?;
        }
    }
    Ok(())
}

fn parse_cidr(text: &str, path: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
        at(
            path,
            format!("{text:?} is not a CIDR like 10.0.0.0/24 or fd00::/64"),
        )
    })
}

fn validate_ip_block(block: &IPBlock, path: &str) -> Result<(), String> {
    let cidr = parse_cidr(&block.cidr, &format!("{path}.cidr"))?;
    for (index, text) in block.except.iter().flatten().enumerate() {
        let path = format!("{path}.except[{index}]");
        let except = parse_cidr(text, &path)?;
        if except.addr().is_ipv4() != cidr.addr().is_ipv4() {
            return Err(at(
                &path,
                format!("{text:?} is not of the family of cidr {cidr}"),
            ));
        }
        if !cidr.contains(&except) || except.prefix_len() <= cidr.prefix_len() {
            return Err(at(
                &path,
                format!("{text:?} is not strictly inside cidr {cidr}"),
            ));
        }
    }
    Ok(())
}

fn validate_ports(ports: &[NetworkPolicyPort], path: &str) -> Result<(), String> {
    for (index, port) in ports.iter().enumerate() {
        validate_port(port, &format!("{path}[{index}]"))?;
    }
    Ok(())
}

fn validate_port(port: &NetworkPolicyPort, path: &str) -> Result<(), String> {
    if let Some(protocol) = &port.protocol
        && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
    {
        return Err(at(
            &format!("{path}.protocol"),
            format!(
                "{protocol:?} is not one of TCP, UDP, SCTP (uppercase, as Kubernetes spells them)"
            ),
        ));
    }
    let end_path = format!("{path}.endPort");
    match (&port.port, port.end_port) {
        (None, Some(_)) => Err(at(&end_path, "needs a numeric port to start the range")),
        (Some(IntOrString::String(name)), Some(_)) => Err(at(
            &end_path,
            format!("only allowed with a numeric port, not the named port {name:?}"),
        )),
        (Some(IntOrString::String(name)), None) if !is_port_name(name) => Err(at(
            &format!("{path}.port"),
            format!(
                "{name:?} is neither a number nor a port name (1-15 lowercase letters, digits and single '-', with a letter)"
            ),
        )),
        (Some(IntOrString::Int(first)), _) if !(1..=65535).contains(first) => Err(at(
            &format!("{path}.port"),
            format!("{first} is outside 1..=65535"),
        )),
        (Some(IntOrString::Int(first)), Some(last)) if last < *first => {
            Err(at(&end_path, format!("{last} is below port {first}")))
        }
        (_, Some(last)) if last > 65535 => Err(at(&end_path, format!("{last} is above 65535"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector: {}
    ports:
    - port: 80
    - port: http
";

    /// A policy named web with `spec` (YAML indented by two) as its spec.
    fn document_with(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\nspec:\n{spec}"
        )
    }

    fn error_of(spec: &str) -> String {
        format!("{:#}", parse(&document_with(spec)).unwrap_err())
    }

    #[test]
    fn parses_many_documents_skipping_empty_ones() {
        let text = format!(
            "# leading comment\n---\n{WEB}---\n# only a comment\n---\n{}",
            WEB.replace("name: web", "name: api\n  namespace: prod")
        );
        let policies = parse(&text).unwrap();
        assert_eq!(policies.len(), 2);
        assert_eq!(super::super::policy_key(&policies[0]), "default/web");
        assert_eq!(super::super::policy_key(&policies[1]), "prod/api");
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# nothing\n").unwrap(), vec![]);
    }

    #[test]
    fn wrong_kind_or_api_version_names_what_was_found() {
        let wrong_kind = WEB.replace("kind: NetworkPolicy", "kind: Pod");
        let error = format!(
            "{:#}",
            parse(&format!("{WEB}---\n{wrong_kind}")).unwrap_err()
        );
        assert_eq!(
            error,
            r#"document 2 (policy "web"): kind: expected "NetworkPolicy", found "Pod""#
        );
        let wrong_version = WEB.replace("networking.k8s.io/v1", "extensions/v1beta1");
        let error = format!("{:#}", parse(&wrong_version).unwrap_err());
        assert!(
            error.contains(
                r#"apiVersion: expected "networking.k8s.io/v1", found "extensions/v1beta1""#
            ),
            "{error}"
        );
        let no_kind = WEB.replace("kind: NetworkPolicy\n", "");
        assert!(format!("{:#}", parse(&no_kind).unwrap_err()).contains("kind: missing"));
    }

    #[test]
    fn the_documented_error_shape() {
        let spec = "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 22\n    - port: 80\n      endPort: 70\n";
        let text = format!("{WEB}---\n{}", document_with(spec));
        assert_eq!(
            format!("{:#}", parse(&text).unwrap_err()),
            r#"document 2 (policy "web"): spec.ingress[0].ports[1].endPort: 70 is below port 80"#
        );
    }

    #[test]
    fn each_validation_error_names_its_field() {
        let cases = [
            (
                "  podSelector: {}\n  policyTypes: [Ingress, Sideways]\n",
                "spec.policyTypes[1]: \"Sideways\"",
            ),
            (
                "  podSelector: {}\n  policyTypes: [Egress, Egress]\n",
                "spec.policyTypes[1]: \"Egress\" is listed twice",
            ),
            ("  ingress: []\n", "spec.podSelector: missing"),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n",
                "spec.podSelector.matchExpressions[0].values: must be non-empty",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: app, operator: NotIn, values: []}\n",
                "spec.podSelector.matchExpressions[0].values: must be non-empty",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Exists, values: [a]}\n",
                "spec.podSelector.matchExpressions[0].values: must be empty",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: app, operator: DoesNotExist, values: [a]}\n",
                "matchExpressions[0].values: must be empty",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Like}\n",
                "spec.podSelector.matchExpressions[0].operator: \"Like\"",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: ICMP, port: 1}\n",
                "spec.ingress[0].ports[0].protocol: \"ICMP\"",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 0\n",
                "spec.ingress[0].ports[0].port: 0 is outside",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 70000\n",
                "spec.ingress[0].ports[0].port: 70000 is outside",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - port: Web_Port\n",
                "spec.ingress[0].ports[0].port: \"Web_Port\"",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - port: a-very-long-port-name\n",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - ports:\n    - port: \"8080\"\n",
                "spec.ingress[0].ports[0].port: \"8080\"",
            ),
            (
                "  podSelector: {}\n  egress:\n  - ports:\n    - {port: http, endPort: 90}\n",
                "spec.egress[0].ports[0].endPort: only allowed with a numeric port",
            ),
            (
                "  podSelector: {}\n  egress:\n  - ports:\n    - {endPort: 90}\n",
                "spec.egress[0].ports[0].endPort: needs a numeric port",
            ),
            (
                "  podSelector: {}\n  egress:\n  - ports:\n    - {port: 80, endPort: 65536}\n",
                "spec.egress[0].ports[0].endPort: 65536 is above 65535",
            ),
            (
                "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/33}\n",
                "spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/33\"",
            ),
            (
                "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n",
                "spec.egress[0].to[0].ipBlock.except[0]: \"11.0.0.0/16\" is not strictly inside",
            ),
            (
                "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}\n",
                "ipBlock.except[0]: \"10.0.0.0/8\" is not strictly inside",
            ),
            (
                "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [\"fd00::/64\"]}\n",
                "ipBlock.except[0]: \"fd00::/64\" is not of the family",
            ),
            (
                "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [nonsense]}\n",
                "ipBlock.except[0]: \"nonsense\" is not a CIDR",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
                "spec.ingress[0].from[0]: ipBlock may not be combined",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - from:\n    - {}\n",
                "spec.ingress[0].from[0]: must specify",
            ),
            (
                "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: x, operator: In}]\n",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
        ];
        for (spec, expected) in cases {
            let error = error_of(spec);
            assert!(
                error.contains(expected),
                "for\n{spec}expected {expected:?} in {error:?}"
            );
            assert!(
                error.starts_with("document 1 (policy \"web\"): "),
                "{error}"
            );
        }
    }

    #[test]
    fn metadata_and_spec_are_required() {
        let no_spec =
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n";
        assert!(format!("{:#}", parse(no_spec).unwrap_err()).contains("spec: missing"));
        let no_name = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}\nspec:\n  podSelector: {}\n";
        assert_eq!(
            format!("{:#}", parse(no_name).unwrap_err()),
            "document 1: metadata.name: missing; every policy needs a name"
        );
        let bad_name = no_name.replace("metadata: {}", "metadata:\n  name: Web");
        assert!(
            format!("{:#}", parse(&bad_name).unwrap_err())
                .contains("metadata.name: \"Web\" is not a DNS-1123 subdomain")
        );
        let bad_namespace =
            no_name.replace("metadata: {}", "metadata:\n  name: web\n  namespace: a.b");
        assert!(
            format!("{:#}", parse(&bad_namespace).unwrap_err())
                .contains("metadata.namespace: \"a.b\"")
        );
    }

    #[test]
    fn accepts_what_kubernetes_accepts() {
        let spec = "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In, values: [a, b]}\n    - {key: tier, operator: DoesNotExist}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: \"fd00::/48\", except: [\"fd00::/64\"]}\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: db}}\n    ports:\n    - {protocol: UDP, port: 53}\n    - {protocol: SCTP}\n    - {port: 32000, endPort: 32768}\n    - port: dns-tcp\n";
        let policies = parse(&document_with(spec)).unwrap();
        assert_eq!(
            policies[0].metadata.namespace.as_deref(),
            Some(DEFAULT_NAMESPACE)
        );
        assert!(
            is_port_name("http")
                && is_port_name("h2c")
                && !is_port_name("80")
                && !is_port_name("-a")
                && !is_port_name("a--b")
        );
        assert!(
            is_dns1123_subdomain("web.prod-1")
                && !is_dns1123_subdomain("web..prod")
                && !is_dns1123_subdomain("")
        );
    }
}

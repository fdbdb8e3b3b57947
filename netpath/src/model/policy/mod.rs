//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) as plain data: parse
//! and validate it from YAML, find what its selectors select, compile it to
//! per-container allow rules for the datapath's prefix tables, and explain
//! why a flow would be allowed or denied. Nothing here touches the machine.
//!
//! The semantics are Kubernetes' own: a container is isolated in a direction
//! once any policy of that type selects it, and is then allowed exactly the
//! union of what those policies allow (there are no deny rules and no order).

mod check;
mod cidr;
mod compile;
mod parse;
mod select;
mod table;
#[cfg(test)]
pub(crate) mod testing;

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

pub use check::{Decision, Judgement, check};
pub use compile::{compile, has_type};
pub use parse::{parse, validate};
pub use table::{flatten, port_prefixes};

/// The namespace a container without one is in.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label Kubernetes puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The transport protocols a NetworkPolicy port can name: `TCP`, `UDP`,
/// `SCTP` as Kubernetes writes them (lowercase is taken too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[serde(alias = "tcp")]
    Tcp,
    #[serde(alias = "udp")]
    Udp,
    #[serde(alias = "sctp")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number, as the datapath sees it in the IP header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!("protocol {text:?} is not one of TCP, UDP, SCTP")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// A port a container declares by name (a Kubernetes containerPort with
/// a name), which policies' named ports mean: `{ name = "http", port = 80,
/// protocol = "TCP" }` in a `[[container]]`, `--named-port http=tcp/80`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    pub port: u16,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl FromStr for NamedPort {
    type Err = String;

    /// `NAME=PROTOCOL/PORT` or `NAME=PORT` (TCP), e.g. `dns=udp/53`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || format!("named port {text:?} is not NAME=PROTOCOL/PORT (e.g. http=tcp/80)");
        let (name, port) = text.split_once('=').ok_or_else(shape)?;
        let (protocol, port) = match port.split_once('/') {
            Some((protocol, port)) => (protocol.parse()?, port),
            None => (Protocol::Tcp, port),
        };
        let port = port.parse().map_err(|_| shape())?;
        Ok(NamedPort {
            name: name.to_owned(),
            protocol,
            port,
        })
    }
}

/// A container as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Container or pod name.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Its own addresses (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// On this node: its policies are enforced here (remote ones are only peers).
    pub local: bool,
}

impl Endpoint {
    /// Its namespace, [`DEFAULT_NAMESPACE`] when it names none.
    pub fn namespace(&self) -> &str {
        if self.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &self.namespace
        }
    }

    /// "namespace/name", as [`EndpointRules::endpoint`] names it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name)
    }
}

/// What policies know a container by, as Kubernetes knows a pod: its
/// namespace and labels, which selectors select, and the ports it
/// declares by name (a topology's `[[container]]` and `port add` set them;
/// an overlay's node records carry them to the other nodes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            named_ports: Vec::new(),
        }
    }
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

impl Identity {
    /// An identity from a namespace (None: [`DEFAULT_NAMESPACE`]),
    /// `KEY=VALUE` labels and `NAME=PROTOCOL/PORT` named ports, validated
    /// as Kubernetes validates them.
    pub fn new(
        namespace: Option<&str>,
        labels: &[String],
        named_ports: &[String],
    ) -> Result<Identity, String> {
        let mut identity = Identity {
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
            labels: BTreeMap::new(),
            named_ports: named_ports
                .iter()
                .map(|text| text.parse())
                .collect::<Result<_, _>>()?,
        };
        for label in labels {
            let (key, value) = label
                .split_once('=')
                .ok_or_else(|| format!("label {label:?} is not KEY=VALUE"))?;
            identity.labels.insert(key.to_owned(), value.to_owned());
        }
        identity.validate()?;
        Ok(identity)
    }

    /// The namespace a DNS-1123 label, each label key a qualified name
    /// (an optional DNS subdomain prefix and `/`, then up to 63
    /// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric),
    /// each value empty or such a name.
    pub fn validate(&self) -> Result<(), String> {
        if !parse::is_dns1123_label(&self.namespace) {
            return Err(format!(
                "namespace {:?} is no DNS-1123 label (lowercase letters, digits, '-'; at most 63)",
                self.namespace
            ));
        }
        for (key, value) in &self.labels {
            let name = match key.split_once('/') {
                Some((prefix, name)) if parse::is_dns1123_subdomain(prefix) => name,
                Some(_) => {
                    return Err(format!("label key {key:?}: its prefix is no DNS subdomain"));
                }
                None => key.as_str(),
            };
            if !is_label_name(name) {
                return Err(format!(
                    "label key {key:?} is not a qualified name (at most 63 letters, digits, '-', \
                     '_', '.', beginning and ending with a letter or digit)"
                ));
            }
            if !value.is_empty() && !is_label_name(value) {
                return Err(format!(
                    "label {key}={value}: the value is not a valid label value"
                ));
            }
        }
        for (n, named) in self.named_ports.iter().enumerate() {
            if !parse::is_port_name(&named.name) {
                return Err(format!(
                    "named port {:?} is no IANA service name (1 to 15 lowercase letters, digits \
                     and single '-', at least one letter)",
                    named.name
                ));
            }
            if named.port == 0 {
                return Err(format!(
                    "named port {}: the port must be 1 to 65535",
                    named.name
                ));
            }
            if self.named_ports[..n]
                .iter()
                .any(|earlier| earlier.name == named.name)
            {
                return Err(format!("named port {} is declared twice", named.name));
            }
        }
        Ok(())
    }
}

/// Kubernetes' label name and value syntax.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The labels of namespace `name`: `extra` plus the [`NAMESPACE_NAME_LABEL`]
/// Kubernetes sets (which wins over an `extra` of the same key, as there).
pub fn namespace_labels<K: Into<String>, V: Into<String>>(
    name: &str,
    extra: impl IntoIterator<Item = (K, V)>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    labels
}

/// The namespace a policy is in, [`DEFAULT_NAMESPACE`] when it names none.
pub fn policy_namespace(policy: &NetworkPolicy) -> &str {
    policy
        .metadata
        .namespace
        .as_deref()
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// The key a policy is stored and replaced by: "namespace/name".
pub fn policy_key(policy: &NetworkPolicy) -> String {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    format!("{}/{name}", policy_namespace(policy))
}

/// The direction a rule controls, seen from the container it protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Inclusive port range of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.first..=self.last).contains(&port)
    }
}

/// What a rule lets through to/from a peer: every protocol (a rule with no `ports`; this includes ICMP),
/// or these ranges only. A canonical form: ranges sorted, overlapping/adjacent ranges of one protocol merged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Ports {
    All,
    Only(Vec<PortRange>),
}

impl Ports {
    /// `ranges` in the canonical form.
    pub fn only(mut ranges: Vec<PortRange>) -> Ports {
        ranges.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(previous)
                    if previous.protocol == range.protocol
                        && u32::from(range.first) <= u32::from(previous.last) + 1 =>
                {
                    previous.last = previous.last.max(range.last);
                }
                _ => merged.push(range),
            }
        }
        Ports::Only(merged)
    }

    pub fn union(&self, other: &Ports) -> Ports {
        match (self, other) {
            (Ports::Only(mine), Ports::Only(theirs)) => {
                Ports::only(mine.iter().chain(theirs).copied().collect())
            }
            _ => Ports::All,
        }
    }

    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Only(ranges) => ranges.iter().any(|range| range.contains(protocol, port)),
        }
    }

    /// Whether this lets nothing through (a rule whose named ports resolved to none).
    pub fn is_nothing(&self) -> bool {
        matches!(self, Ports::Only(ranges) if ranges.is_empty())
    }
}

/// One compiled allow rule: traffic with peers in `peer` on `ports`, allowed by policy `policy` (its key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub peer: IpNet,
    pub ports: Ports,
    pub policy: String,
}

/// A local container's compiled rules for one of its addresses: per direction, None if no policy of that
/// type selects it (unrestricted), else the allow rules (empty = deny everything in that direction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRules {
    /// "namespace/name".
    pub endpoint: String,
    pub address: IpAddr,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(first: u16, last: u16) -> PortRange {
        PortRange {
            protocol: Protocol::Tcp,
            first,
            last,
        }
    }

    #[test]
    fn protocol_parses_any_case_and_shows_lowercase() {
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("udp".parse::<Protocol>().unwrap(), Protocol::Udp);
        assert_eq!("Sctp".parse::<Protocol>().unwrap(), Protocol::Sctp);
        assert!(
            "icmp"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("TCP, UDP, SCTP")
        );
        assert_eq!(Protocol::Sctp.to_string(), "sctp");
        assert_eq!(
            [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].map(Protocol::number),
            [6, 17, 132]
        );
    }

    #[test]
    fn ports_merge_overlapping_and_adjacent_ranges_of_one_protocol() {
        let udp = PortRange {
            protocol: Protocol::Udp,
            first: 81,
            last: 81,
        };
        let ports = Ports::only(vec![
            tcp(90, 100),
            tcp(80, 80),
            udp,
            tcp(81, 89),
            tcp(95, 120),
        ]);
        assert_eq!(ports, Ports::Only(vec![tcp(80, 120), udp]));
        assert_eq!(
            Ports::only(vec![tcp(1, 2), tcp(4, 5)]),
            Ports::Only(vec![tcp(1, 2), tcp(4, 5)])
        );
        assert_eq!(
            Ports::only(vec![tcp(65535, 65535), tcp(0, 65535)]),
            Ports::Only(vec![tcp(0, 65535)])
        );
    }

    #[test]
    fn union_with_all_is_all_and_allows_checks_protocol() {
        let web = Ports::Only(vec![tcp(80, 80)]);
        assert_eq!(web.union(&Ports::All), Ports::All);
        assert_eq!(
            web.union(&Ports::Only(vec![tcp(81, 81)])),
            Ports::Only(vec![tcp(80, 81)])
        );
        assert!(web.allows(Protocol::Tcp, 80));
        assert!(!web.allows(Protocol::Udp, 80));
        assert!(!web.allows(Protocol::Tcp, 81));
        assert!(Ports::All.allows(Protocol::Sctp, 1));
        assert!(Ports::Only(vec![]).is_nothing());
    }

    #[test]
    fn namespace_labels_always_carry_the_name() {
        let labels = namespace_labels("prod", [("team", "a"), (NAMESPACE_NAME_LABEL, "wrong")]);
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[NAMESPACE_NAME_LABEL], "prod");
    }
}

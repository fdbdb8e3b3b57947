//! What netpath is asked to build, as plain data: MACs, names, settings,
//! topology specs and their validation, address pools, CNI configurations,
//! Kubernetes network policies.
//! Nothing here touches the machine (beyond reading a config file), so all
//! of it is unit-tested without root.

pub mod bandwidth;
pub mod cni;
pub mod ipam;
pub mod mac;
pub mod naming;
pub mod overlay;
pub mod policy;
pub mod settings;
pub mod source;
pub mod spec;

pub use mac::Mac;
pub use settings::{Mode, Settings};
pub use spec::{ContainerSpec, TopologySpec};

/// A config value that is either one string or a list of them (a subnet,
/// or an IPv4 and an IPv6 one), in TOML and JSON alike.
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <OneOrMany as serde::Deserialize>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

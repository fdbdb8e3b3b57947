//! What netpath is asked to build, as plain data: MACs, names, settings,
//! topology specs and their validation, address pools, CNI configurations.
//! Nothing here touches the machine (beyond reading a config file), so all
//! of it is unit-tested without root.

pub mod cni;
pub mod ipam;
pub mod mac;
pub mod naming;
pub mod settings;
pub mod spec;

pub use mac::Mac;
pub use settings::{Mode, Settings};
pub use spec::{ContainerSpec, TopologySpec};

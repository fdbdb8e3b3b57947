//! Every name netpath gives an object it creates, in one place: a reader
//! (and `down`) can tell from a name or alias what is netpath's.

use anyhow::{Result, ensure};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// The container-side veth end inside each topology container's namespace.
pub const CONTAINER_IFNAME: &str = "eth0";
/// Prefix of the alias netpath writes on every link it creates.
pub const OWNER_ALIAS_PREFIX: &str = "netpath:";
/// Datapaths of the CNI plugin are keyed `_cni-BRIDGE`; topology names
/// cannot start with '_', so the two never collide.
const CNI_DATAPATH_PREFIX: &str = "_cni-";

/// The alias on every link of `owner` (a topology or CNI datapath): what
/// netpath may delete.
pub fn owner_alias(owner: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}{owner}")
}

/// The alias on a CNI pod's host veth: its owner's mark and the container
/// it belongs to (ID and interface). The veth's name is a 32-bit hash of
/// the two, which another container can share, so a link is a container's
/// by its alias (or its record), never by its name alone.
pub fn pod_alias(owner: &str, container_id: &str, ifname: &str) -> String {
    format!("{} {container_id}/{ifname}", owner_alias(owner))
}

pub fn bridge_name(topology: &str) -> String {
    format!("{topology}-br")
}

/// Host-side veth of a container; also the name of its network namespace.
pub fn port_name(topology: &str, container: &str) -> String {
    format!("{topology}-{container}")
}

/// Accepts a container name or its host-side veth name.
pub fn container_of<'a>(topology: &str, port: &'a str) -> &'a str {
    port.strip_prefix(topology)
        .and_then(|p| p.strip_prefix('-'))
        .unwrap_or(port)
}

/// The nftables table of a topology's `--nat` rules.
pub fn nat_table(topology: &str) -> String {
    format!("netpath-{topology}")
}

/// The datapath (pins, lock) of the CNI plugin's containers on `bridge`.
pub fn cni_datapath(bridge: &str) -> String {
    format!("{CNI_DATAPATH_PREFIX}{bridge}")
}

/// The bridge of a CNI datapath name, if it is one.
pub fn cni_bridge_of(datapath: &str) -> Option<&str> {
    datapath.strip_prefix(CNI_DATAPATH_PREFIX)
}

/// Checks a datapath key (a topology name or `_cni-BRIDGE`), so that none
/// reaches outside the directory of pins or records it names a file in.
pub fn validate_datapath(datapath: &str) -> Result<()> {
    match cni_bridge_of(datapath) {
        Some(bridge) => validate_ifname("CNI bridge", bridge),
        None => validate_topology_name(datapath),
    }
}

/// Whose datapath `datapath` is, for messages: "topology np", "the CNI
/// network on bridge cni0".
pub fn describe_datapath(datapath: &str) -> String {
    match cni_bridge_of(datapath) {
        Some(bridge) => format!("the CNI network on bridge {bridge}"),
        None => format!("topology {datapath}"),
    }
}

/// Host-side veth of a CNI container: short, stable, unique per
/// (container, interface).
pub fn cni_host_veth(container_id: &str, ifname: &str) -> String {
    format!(
        "np{:08x}",
        stable_hash(format!("{container_id}/{ifname}").as_bytes()) as u32
    )
}

/// The WireGuard device of datapath `datapath` on an overlay: short (any
/// datapath key fits), and netpath's by the owner alias it carries.
pub fn wireguard_device_name(datapath: &str) -> String {
    format!("npwg{:08x}", stable_hash(datapath.as_bytes()) as u32)
}

/// FNV-1a: a hash that is the same in every build and on every machine,
/// for names and MACs derived from stable inputs.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// A topology name is a prefix of interface, namespace and file names: it
/// is checked before any of them is touched.
pub fn validate_topology_name(name: &str) -> Result<()> {
    ensure!(
        is_simple_name(name),
        "topology name {name:?} must be non-empty, start with a letter or digit, and use only letters, digits, '-' and '_'"
    );
    let bridge = bridge_name(name);
    ensure!(
        bridge.len() <= IFNAME_MAX,
        "topology name {name:?} is too long: bridge name {bridge:?} would exceed {IFNAME_MAX} bytes"
    );
    Ok(())
}

pub fn validate_container_name(topology: &str, name: &str) -> Result<()> {
    ensure!(
        is_simple_name(name),
        "container name {name:?} must be non-empty, start with a letter or digit, and use only letters, digits, '-' and '_'"
    );
    let port = port_name(topology, name);
    ensure!(
        port.len() <= IFNAME_MAX,
        "interface name {port:?} (topology {topology:?} + container {name:?}) is longer than {IFNAME_MAX} bytes; use shorter names"
    );
    Ok(())
}

/// An interface name the kernel accepts and that is safe in a file name.
pub fn validate_ifname(what: &str, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= IFNAME_MAX
            && !name.contains(['/', ' ', '.', ':', '%'])
            && name != "..",
        // '%': the kernel takes "np%d" as a template and makes a new name
        // (np0, np1, ...) each time, which nothing could find again.
        "{what} {name:?} is not a valid interface name (1 to {IFNAME_MAX} bytes, no '/', ' ', '.', ':', '%')"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_or_overflow_are_refused() {
        for bad in ["", "../x", "a/b", "-x", "x y", "a-very-long-name"] {
            assert!(validate_topology_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topology_name("np").is_ok());
        assert!(validate_container_name("np", "c0").is_ok());
        assert!(validate_container_name("np", "a-long-container").is_err());
        assert!(validate_ifname("bridge", "../x").is_err());
    }

    #[test]
    fn cni_names_round_trip_and_never_look_like_topologies() {
        assert_eq!(cni_bridge_of(&cni_datapath("cni0")), Some("cni0"));
        assert!(validate_topology_name(&cni_datapath("cni0")).is_err());
        assert_eq!(cni_host_veth("abc", "eth0"), cni_host_veth("abc", "eth0"));
        assert_ne!(cni_host_veth("abc", "eth0"), cni_host_veth("abd", "eth0"));
        assert_eq!(container_of("np", "np-c1"), "c1");
        assert_eq!(container_of("np", "c1"), "c1");
    }
}

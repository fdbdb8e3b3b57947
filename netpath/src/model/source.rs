//! What a container may send, as the source check holds it: the one
//! builder of a `PortPolicy` for a local port (its own addresses) and for a
//! container on another node (its own addresses, or its node's subnets if
//! it routes), so both are checked by the same rules.

use std::net::IpAddr;

use ipnet::IpNet;
use netpath_common::{PORT_IPV4_SLOTS, PORT_IPV6_SLOTS, PORT_SOURCE_CHECK, PortPolicy};

use super::Mac;

/// The policy of a container with `mac`, allowed to send from its
/// link-local address and from `allowed` (each slot a prefix); an error if
/// they do not fit the check's slots.
pub fn source_policy(
    mac: Mac,
    source_check: bool,
    allowed: impl IntoIterator<Item = IpNet>,
) -> Result<PortPolicy, String> {
    let mut policy = PortPolicy {
        mac: mac.0,
        flags: if source_check { PORT_SOURCE_CHECK } else { 0 },
        ..Default::default()
    };
    let link_local = IpNet::from(IpAddr::V6(mac.ipv6_link_local()));
    for net in std::iter::once(link_local).chain(allowed) {
        let fits = match net {
            IpNet::V4(v4) => policy.allow_ipv4(v4.network().octets(), v4.prefix_len()),
            IpNet::V6(v6) => policy.allow_ipv6(v6.network().octets(), v6.prefix_len()),
        };
        if !fits {
            return Err(format!(
                "container {mac} may send from more than the source check holds \
                 ({PORT_IPV4_SLOTS} IPv4, {} IPv6 besides the link-local one)",
                PORT_IPV6_SLOTS - 1
            ));
        }
    }
    Ok(policy)
}

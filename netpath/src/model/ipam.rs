//! Address pools over IPv4 and IPv6 subnets: the first host address of a
//! subnet is the gateway (on the bridge), containers get the lowest free
//! ones. One allocator serves topologies and the CNI plugin alike.

use std::net::IpAddr;

use anyhow::{Context, Result, bail, ensure};
use ipnet::IpNet;

/// Parses a subnet like `10.77.0.0/24` or `fd00:77::/64`.
pub fn parse_subnet(text: &str) -> Result<IpNet> {
    let net: IpNet = text.parse().with_context(|| {
        format!("subnet {text:?} is not a CIDR like 10.77.0.0/24 or fd00:77::/64")
    })?;
    if net.network() != net.addr() {
        bail!(
            "subnet {text:?} has host bits set; did you mean {}?",
            net.trunc()
        );
    }
    let (longest, family) = match net {
        IpNet::V4(_) => (30, "IPv4"),
        IpNet::V6(_) => (126, "IPv6"),
    };
    ensure!(
        net.prefix_len() <= longest,
        "{family} subnet {text:?} is too small: use a prefix of /{longest} or shorter"
    );
    Ok(net)
}

/// Parses one or two subnets, at most one per family.
pub fn parse_subnets(texts: &[String]) -> Result<Vec<IpNet>> {
    let subnets: Vec<IpNet> = texts
        .iter()
        .map(|t| parse_subnet(t))
        .collect::<Result<_>>()?;
    ensure!(!subnets.is_empty(), "give at least one subnet");
    let v4 = subnets.iter().filter(|s| s.addr().is_ipv4()).count();
    ensure!(
        v4 <= 1 && subnets.len() - v4 <= 1,
        "give at most one IPv4 and one IPv6 subnet (got {})",
        texts.join(", ")
    );
    Ok(subnets)
}

/// The subnet's gateway: its first host address, with the subnet's prefix.
pub fn gateway(subnet: IpNet) -> IpNet {
    let first = nth_host(subnet, 1).expect("validated subnets have hosts");
    IpNet::new(first, subnet.prefix_len()).expect("prefix from a valid net")
}

/// Host addresses a subnet offers containers (without network, gateway and,
/// for IPv4, broadcast), saturating for huge IPv6 subnets.
pub fn capacity(subnet: IpNet) -> u128 {
    let bits = (subnet.max_prefix_len() - subnet.prefix_len()) as u32;
    let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
    let reserved = if subnet.addr().is_ipv4() { 3 } else { 2 };
    size.saturating_sub(reserved)
}

fn nth_host(subnet: IpNet, n: u128) -> Option<IpAddr> {
    if n >= capacity(subnet) + 2 {
        return None;
    }
    Some(match subnet {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.network()) + n as u32).into()),
        IpNet::V6(net) => IpAddr::V6((u128::from(net.network()) + n).into()),
    })
}

/// Whether `addr` may be given to a container of `subnet`.
pub fn check_container_address(subnet: IpNet, addr: IpNet) -> Result<()> {
    ensure!(
        subnet.contains(&addr.addr()) && addr.prefix_len() == subnet.prefix_len(),
        "address {addr} is not in subnet {subnet}"
    );
    ensure!(
        addr.addr() != gateway(subnet).addr(),
        "address {} is the gateway (the bridge's address)",
        addr.addr()
    );
    let broadcast = subnet.addr().is_ipv4() && addr.addr() == subnet.broadcast();
    ensure!(
        addr.addr() != subnet.network() && !broadcast,
        "address {} is the subnet's network or broadcast address",
        addr.addr()
    );
    Ok(())
}

/// Accepts `10.77.0.9`, `10.77.0.9/24` or an IPv6 address; the prefix must
/// be that of the subnet of the same family in `subnets`, or that of the
/// overlay network in `overlay` that holds the address (as `status` shows a
/// container on an overlay). The address comes back with the subnet's.
pub fn parse_address(text: &str, subnets: &[IpNet], overlay: &[IpNet]) -> Result<IpNet> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u8>()
                    .with_context(|| format!("address {text:?}: bad prefix"))?,
            ),
        ),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("address {text:?} is not an IP address or CIDR"))?;
    let subnet = subnets
        .iter()
        .find(|s| s.addr().is_ipv4() == addr.is_ipv4())
        .with_context(|| format!("address {text:?}: the topology has no subnet of its family"))?;
    if let Some(prefix) = prefix {
        let network = overlay.iter().find(|n| n.contains(&addr));
        ensure!(
            prefix == subnet.prefix_len() || network.is_some_and(|n| n.prefix_len() == prefix),
            "address {text:?} has prefix /{prefix} but the subnet {subnet} is /{}{}",
            subnet.prefix_len(),
            network.map_or(String::new(), |n| format!(
                " and the overlay network {n} /{}",
                n.prefix_len()
            ))
        );
    }
    Ok(IpNet::new(addr, subnet.prefix_len())?)
}

/// The lowest address of `subnet` a container may have that `used` does
/// not already hold.
pub fn allocate(subnet: IpNet, used: impl Fn(IpAddr) -> bool) -> Option<IpNet> {
    (2..capacity(subnet) + 2)
        .map_while(|n| nth_host(subnet, n))
        .filter(|a| !(subnet.addr().is_ipv4() && *a == subnet.broadcast()))
        .find(|a| !used(*a))
        .map(|a| IpNet::new(a, subnet.prefix_len()).expect("prefix from a valid net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn gateways_and_first_addresses_in_both_families() {
        assert_eq!(gateway(net("10.77.0.0/24")), net("10.77.0.1/24"));
        assert_eq!(gateway(net("fd00:77::/64")), net("fd00:77::1/64"));
        assert_eq!(
            allocate(net("10.77.0.0/24"), |_| false),
            Some(net("10.77.0.2/24"))
        );
        assert_eq!(
            allocate(net("fd00:77::/64"), |_| false),
            Some(net("fd00:77::2/64"))
        );
        let taken: IpAddr = "fd00:77::2".parse().unwrap();
        assert_eq!(
            allocate(net("fd00:77::/64"), |a| a == taken),
            Some(net("fd00:77::3/64"))
        );
    }

    #[test]
    fn small_subnets_run_out_and_never_hand_out_broadcast() {
        let s = net("10.0.0.0/30");
        assert_eq!(capacity(s), 1);
        assert_eq!(allocate(s, |_| false), Some(net("10.0.0.2/30")));
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(allocate(s, |a| a == two), None);
        assert_eq!(capacity(net("fd00::/64")), (1u128 << 64) - 2);
        assert_eq!(capacity(net("fd00::/8")), (1u128 << 120) - 2);
    }

    #[test]
    fn subnets_and_addresses_are_checked() {
        assert!(
            parse_subnet("10.0.0.1/24")
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        assert!(parse_subnet("10.0.0.0/31").is_err());
        assert!(parse_subnet("fd00::/127").is_err());
        assert!(parse_subnets(&["10.0.0.0/24".into(), "10.1.0.0/24".into()]).is_err());
        let both = parse_subnets(&["10.0.0.0/24".into(), "fd00::/64".into()]).unwrap();
        assert_eq!(
            parse_address("fd00::9", &both, &[]).unwrap(),
            net("fd00::9/64")
        );
        assert_eq!(
            parse_address("10.0.0.9", &both, &[]).unwrap(),
            net("10.0.0.9/24")
        );
        assert!(parse_address("10.0.0.9/16", &both, &[]).is_err());
        // On an overlay, with the overlay network's prefix as `status`
        // shows it; the subnet's prefix is kept.
        let overlay = [net("10.0.0.0/16")];
        assert_eq!(
            parse_address("10.0.0.9/16", &both, &overlay).unwrap(),
            net("10.0.0.9/24")
        );
        assert!(parse_address("10.0.0.9/8", &both, &overlay).is_err());
        assert!(check_container_address(both[0], net("10.0.0.1/24")).is_err());
        assert!(check_container_address(both[0], net("10.0.0.255/24")).is_err());
        assert!(check_container_address(both[1], net("fd00::/64")).is_err());
        assert!(check_container_address(both[1], net("fd00::ffff/64")).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 3000, ..Default::default() })]
        #[test]
        fn parsers_never_panic(text in "(?s).{0,48}") {
            let _ = parse_subnet(&text);
            let _ = parse_address(&text, &[net("10.0.0.0/24"), net("fd00::/64")], &[net("10.0.0.0/16")]);
        }
    }
}

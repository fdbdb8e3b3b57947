//! Prefix arithmetic for ipBlock: a CIDR minus its `except` CIDRs, as the
//! fewest prefixes that cover exactly what is left, which is what a
//! longest-prefix-match table can hold.

use ipnet::IpNet;

/// `whole` minus every one of `holes`, as the fewest prefixes covering exactly the rest.
pub(super) fn subtract(whole: IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    let mut remaining = vec![whole.trunc()];
    for hole in holes {
        let hole = hole.trunc();
        remaining = remaining
            .into_iter()
            .flat_map(|net| subtract_one(net, hole))
            .collect();
    }
    IpNet::aggregate(&remaining)
}

/// `net` minus `hole`: walking down from `net` to `hole` one bit at a time,
/// the half that does not hold `hole` is kept at each step.
fn subtract_one(net: IpNet, hole: IpNet) -> Vec<IpNet> {
    if hole.contains(&net) {
        return Vec::new();
    }
    if !net.contains(&hole) {
        return vec![net];
    }
    let mut kept = Vec::new();
    let mut current = net;
    while current != hole {
        let Some((low, high)) = halves(current) else {
            break;
        };
        let (toward_hole, other) = if low.contains(&hole) {
            (low, high)
        } else {
            (high, low)
        };
        kept.push(other);
        current = toward_hole;
    }
    kept
}

/// The two prefixes one bit longer that make up `net` (None for a host prefix).
fn halves(net: IpNet) -> Option<(IpNet, IpNet)> {
    let mut subnets = net.subnets(net.prefix_len() + 1).ok()?;
    Some((subnets.next()?, subnets.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn documentation_example() {
        let left = subtract("172.17.0.0/16".parse().unwrap(), &nets(&["172.17.1.0/24"]));
        assert_eq!(
            left,
            nets(&[
                "172.17.0.0/24",
                "172.17.2.0/23",
                "172.17.4.0/22",
                "172.17.8.0/21",
                "172.17.16.0/20",
                "172.17.32.0/19",
                "172.17.64.0/18",
                "172.17.128.0/17",
            ])
        );
    }

    #[test]
    fn nested_and_adjacent_holes_stay_minimal() {
        let left = subtract(
            "10.0.0.0/24".parse().unwrap(),
            &nets(&["10.0.0.0/25", "10.0.0.0/26", "10.0.0.128/26"]),
        );
        assert_eq!(left, nets(&["10.0.0.192/26"]));
        let left = subtract(
            "10.0.0.0/30".parse().unwrap(),
            &nets(&["10.0.0.1/32", "10.0.0.2/32"]),
        );
        assert_eq!(left, nets(&["10.0.0.0/32", "10.0.0.3/32"]));
        let untouched = subtract(
            "10.0.0.0/24".parse().unwrap(),
            &nets(&["10.0.1.0/24", "fd00::/8"]),
        );
        assert_eq!(untouched, nets(&["10.0.0.0/24"]));
        assert_eq!(
            subtract("10.0.0.0/24".parse().unwrap(), &nets(&["10.0.0.0/16"])),
            vec![]
        );
    }

    #[test]
    fn exact_coverage_counted_by_address() {
        let whole: IpNet = "10.1.0.0/22".parse().unwrap();
        let holes = nets(&[
            "10.1.0.7/32",
            "10.1.1.0/26",
            "10.1.3.128/25",
            "10.1.1.32/27",
        ]);
        let left = subtract(whole, &holes);
        for host in whole.hosts().chain([whole.network(), whole.broadcast()]) {
            let holed = holes.iter().any(|hole| hole.contains(&host));
            let covered = left.iter().filter(|net| net.contains(&host)).count();
            assert_eq!(covered, usize::from(!holed), "{host}");
        }
    }

    #[test]
    fn ipv6() {
        let left = subtract("fd00::/126".parse().unwrap(), &nets(&["fd00::3/128"]));
        assert_eq!(left, nets(&["fd00::/127", "fd00::2/128"]));
    }
}

//! MAC addresses: parsing, printing, and the one way netpath derives a MAC.

use std::{fmt, str::FromStr};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use super::naming::stable_hash;

/// A MAC address, written `02:00:5e:10:00:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// A locally administered unicast MAC that is stable for `seed` and not
    /// `taken`: the same container gets the same MAC every time.
    pub fn derive(seed: &str, taken: impl Fn(Mac) -> bool) -> Mac {
        let mut hash = stable_hash(seed.as_bytes());
        loop {
            let b = hash.to_be_bytes();
            let mac = Mac([0x02, b[3], b[4], b[5], b[6], b[7]]);
            if !taken(mac) {
                return mac;
            }
            hash = stable_hash(&b);
        }
    }

    /// The IPv6 link-local address a Linux interface with this MAC gets
    /// (modified EUI-64, RFC 4291 appendix A). netpath sets the container
    /// interface's address generation mode to EUI-64, so this is its address.
    pub fn ipv6_link_local(&self) -> std::net::Ipv6Addr {
        let m = self.0;
        std::net::Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        ensure!(
            parts.len() == 6,
            "MAC address {s:?} must be six hex bytes separated by ':'"
        );
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(&parts) {
            ensure!(
                part.len() == 2,
                "MAC address {s:?}: each byte is two hex digits"
            );
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC address {s:?}: {part:?} is not hex"))?;
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_local_is_modified_eui64() {
        let mac: super::Mac = "02:00:5e:10:00:01".parse().unwrap();
        assert_eq!(
            mac.ipv6_link_local(),
            "fe80::5eff:fe10:1".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }

    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mac: Mac = "02:AB:00:00:00:01".parse().unwrap();
        assert_eq!(mac.to_string(), "02:ab:00:00:00:01");
        for bad in ["", "02:ab", "02:ab:00:00:00:zz", "002:ab:00:00:00:01"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_macs_are_stable_local_unicast_and_avoid_taken_ones() {
        let first = Mac::derive("np/10.0.0.2", |_| false);
        assert_eq!(first, Mac::derive("np/10.0.0.2", |_| false));
        assert!(first.is_unicast() && first.0[0] & 2 != 0, "{first}");
        let second = Mac::derive("np/10.0.0.2", |m| m == first);
        assert_ne!(first, second);
        assert!(second.is_unicast());
    }

    proptest::proptest! {
        #[test]
        fn macs_round_trip(bytes in proptest::prelude::any::<[u8; 6]>()) {
            let mac = Mac(bytes);
            proptest::prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
        }
    }
}

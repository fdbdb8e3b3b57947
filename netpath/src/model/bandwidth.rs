//! A container's rate limits, as CNI's `bandwidth` capability gives them
//! (`runtimeConfig.bandwidth`: rates in bits per second, bursts in bits;
//! Kubernetes' `kubernetes.io/ingress-bandwidth` and `egress-bandwidth`
//! annotations, which containerd and CRI-O pass that way).

use serde::{Deserialize, Serialize};

/// `runtimeConfig.bandwidth`, field for field. A rate of 0 (or none) is
/// no limit that way. containerd (go-cni's `BandWidth`, no JSON tags)
/// writes the names capitalized, `IngressRate`; Go plugins read either,
/// as Go's JSON matches names without case, so both are taken here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero", alias = "IngressRate")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero", alias = "IngressBurst")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero", alias = "EgressRate")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero", alias = "EgressBurst")]
    pub egress_burst: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Bandwidth {
    /// Whether it is no limit at all (nothing to record).
    pub fn is_unlimited(&self) -> bool {
        *self == Bandwidth::default()
    }

    /// Whether it limits either way.
    pub fn limits(&self) -> bool {
        self.limits_ingress() || self.egress_rate >= 8
    }

    /// Whether it limits what the container is sent.
    pub fn limits_ingress(&self) -> bool {
        self.ingress_rate >= 8
    }

    /// What the programs hold for it (see `netpath_common::rate`).
    pub fn rates(&self) -> netpath_common::rate::PortRates {
        use netpath_common::rate::RateLimit;
        netpath_common::rate::PortRates {
            egress: RateLimit::new(self.egress_rate, self.egress_burst).unwrap_or_default(),
            ingress: RateLimit::new(self.ingress_rate, self.ingress_burst).unwrap_or_default(),
        }
    }

    /// Refuses what no policer can hold: a rate below one byte a second
    /// (other than 0, no limit), a burst without its rate.
    pub fn validate(&self) -> Result<(), String> {
        for (way, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            if rate != 0 && rate < 8 {
                return Err(format!(
                    "bandwidth: {way}Rate {rate} is below 8 bits per second (a byte a second); \
                     0 is no limit"
                ));
            }
            if rate == 0 && burst != 0 {
                return Err(format!(
                    "bandwidth: {way}Burst {burst} without an {way}Rate"
                ));
            }
        }
        Ok(())
    }

    /// As `ip`-style text: `ingress 20Mbit egress 40Mbit`, or `-`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (way, rate) in [("ingress", self.ingress_rate), ("egress", self.egress_rate)] {
            if rate >= 8 {
                parts.push(format!("{way} {}", human_rate(rate)));
            }
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// `tc`'s way of writing a rate: 20Mbit, 1500Kbit, 800bit.
fn human_rate(bits: u64) -> String {
    match bits {
        b if b % 1_000_000 == 0 => format!("{}Mbit", b / 1_000_000),
        b if b % 1_000 == 0 => format!("{}Kbit", b / 1_000),
        b => format!("{b}bit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_parses_validates_and_reads_as_tc_writes_rates() {
        let b: Bandwidth = serde_json::from_value(serde_json::json!({
            "ingressRate": 20_000_000u64, "ingressBurst": 4_294_967_295u64,
            "egressRate": 1_500_000u64}))
        .unwrap();
        assert!(b.limits() && b.limits_ingress());
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(b.describe(), "ingress 20Mbit egress 1500Kbit");
        assert_eq!(b.rates().egress.bytes_per_s, 187_500);
        assert_eq!(Bandwidth::default().describe(), "-");
        assert!(!Bandwidth::default().limits());
        let bad = |v| {
            serde_json::from_value::<Bandwidth>(v)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate().map(|_| b))
        };
        assert!(bad(serde_json::json!({"egressRate": 4})).is_err());
        assert!(bad(serde_json::json!({"egressBurst": 100})).is_err());
        assert!(bad(serde_json::json!({"ingressRate": "fast"})).is_err());
        assert!(
            bad(serde_json::json!({"ingresRate": 10})).is_err(),
            "a misspelt field passed"
        );
    }
}

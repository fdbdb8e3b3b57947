//! What a benchmark run reports: the targets and metrics, every sample,
//! medians with their ratios to a baseline and a bound (on one host the
//! bridge and the wire, across hosts the kernel's vxlan design and the
//! underlay), and the table.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Linux bridge alone (netpath's `bridge` mode).
    Bridge,
    /// The Linux bridge with `--policy`'s policy in force as nftables
    /// rules (sets; the bridge family's forward hook, or through
    /// br_netfilter where the kernel has no bridge connection tracking).
    #[value(name = "bridge-nft")]
    #[serde(rename = "bridge+nft")]
    BridgeNft,
    /// The Linux bridge with `--policy`'s policy in force as iptables rules
    /// in FORWARD, through br_netfilter.
    #[value(name = "bridge-iptables")]
    #[serde(rename = "bridge+iptables")]
    BridgeIptables,
    Xdp,
    Tc,
    /// netkit mode (Linux 6.7+ with CONFIG_NETKIT): netkit pairs, the tc
    /// program on their peer hook.
    Netkit,
    /// Two namespaces joined by one veth pair: the bound for any veth datapath.
    Wire,
    /// Across hosts (`--overlay`, not a `--targets` choice): netpath's
    /// overlay, a container on each of two hosts.
    #[value(skip)]
    Overlay,
    /// Across hosts: the kernel's design as Flannel builds it, a vxlan
    /// device as a port of each host's bridge, static FDB and ARP entries.
    #[value(skip)]
    Vxlan,
    /// Across hosts: host to host over the underlay, the bound for any overlay.
    #[value(skip)]
    Underlay,
    /// tc mode with a realistic network policy in force (`--policy`): 50
    /// policies, 500 ipBlocks, ports; the measured flows allowed.
    #[value(name = "tc-policy")]
    #[serde(rename = "tc+policy")]
    TcPolicy,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Bridge => "bridge",
            Target::BridgeNft => "bridge+nft",
            Target::BridgeIptables => "bridge+iptables",
            Target::Xdp => "xdp",
            Target::Tc => "tc",
            Target::Netkit => "netkit",
            Target::Wire => "wire",
            Target::Overlay => "overlay",
            Target::Vxlan => "vxlan",
            Target::Underlay => "underlay",
            Target::TcPolicy => "tc+policy",
        })
    }
}

impl Target {
    /// Every target `--overlay` measures: containers on two hosts.
    pub const CROSS_HOST: [Target; 3] = [Target::Overlay, Target::Vxlan, Target::Underlay];

    /// Every target `--policy` measures: tc mode without and with a policy,
    /// against the bridge and the wire as always, and against the bridge
    /// with the same policy in nftables and in iptables (its rivals).
    pub const POLICY: [Target; 6] = [
        Target::Bridge,
        Target::BridgeNft,
        Target::BridgeIptables,
        Target::Tc,
        Target::TcPolicy,
        Target::Wire,
    ];

    /// The designs netpath with a policy is compared with beside the
    /// baseline: the bridge with the same policy in the kernel's firewalls.
    pub const POLICY_RIVALS: [Target; 2] = [Target::BridgeNft, Target::BridgeIptables];

    /// Its name in a ratio's column heading: `x` + this.
    pub(super) fn column(self) -> String {
        match self {
            Target::BridgeNft => "NFT".into(),
            Target::BridgeIptables => "IPT".into(),
            _ => self.to_string().to_uppercase(),
        }
    }

    /// One letter for its throw-away topology's name, unique per target.
    pub(super) fn initial(self) -> char {
        match self {
            Target::TcPolicy => 'p',
            Target::BridgeNft => 'n',
            Target::BridgeIptables => 'i',
            Target::Netkit => 'k',
            _ => self.to_string().chars().next().unwrap_or('x'),
        }
    }

    /// What a comparison with this target is called in the chart's heading.
    pub(super) fn described(self) -> &'static str {
        match self {
            Target::Bridge => "the Linux bridge",
            Target::BridgeNft => "the bridge with the policy in nftables",
            Target::BridgeIptables => "the bridge with the policy in iptables",
            Target::Xdp => "xdp mode",
            Target::Tc => "tc mode",
            Target::Netkit => "netkit mode",
            Target::Wire => "the veth wire",
            Target::Overlay => "netpath's overlay",
            Target::Vxlan => "the kernel's vxlan design",
            Target::Underlay => "the underlay",
            Target::TcPolicy => "tc mode with a policy",
        }
    }
}

/// What every row is compared with: the design to beat and the bound no
/// datapath of its kind passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub baseline: Target,
    pub bound: Target,
    /// More designs every row is compared with (`--policy`: the bridge
    /// with the same policy in nftables and in iptables).
    #[serde(skip_serializing_if = "<[Target]>::is_empty")]
    pub rivals: &'static [Target],
}

impl Reference {
    /// Across hosts, the kernel's vxlan design and the underlay; on one
    /// host, the Linux bridge and the wire.
    pub fn for_targets(targets: &[Target]) -> Reference {
        if targets.iter().any(|t| Target::CROSS_HOST.contains(t)) {
            Reference {
                baseline: Target::Vxlan,
                bound: Target::Underlay,
                rivals: &[],
            }
        } else {
            let rivals: &'static [Target] =
                if targets.iter().any(|t| Target::POLICY_RIVALS.contains(t)) {
                    &Target::POLICY_RIVALS
                } else {
                    &[]
                };
            Reference {
                baseline: Target::Bridge,
                bound: Target::Wire,
                rivals,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Tcp1Gbps,
    Tcp1ReverseGbps,
    Tcp4Gbps,
    Tcp4ReverseGbps,
    Udp64Pps,
    RttP50Us,
    RttP99Us,
    /// New TCP connections a second, each connected, answered with its
    /// close, and closed (`--policy`: each is a new flow to judge).
    ConnectionsKps,
}

impl Metric {
    pub(super) const ALL: [Metric; 8] = [
        Metric::Tcp1Gbps,
        Metric::Tcp1ReverseGbps,
        Metric::Tcp4Gbps,
        Metric::Tcp4ReverseGbps,
        Metric::Udp64Pps,
        Metric::RttP50Us,
        Metric::RttP99Us,
        Metric::ConnectionsKps,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Metric::Tcp1Gbps => "TCP 1 stream (Gbit/s)",
            Metric::Tcp1ReverseGbps => "TCP 1 stream, reverse (Gbit/s)",
            Metric::Tcp4Gbps => "TCP 4 streams (Gbit/s)",
            Metric::Tcp4ReverseGbps => "TCP 4 streams, reverse (Gbit/s)",
            Metric::Udp64Pps => "UDP 64 B delivered (kpps)",
            Metric::RttP50Us => "request/response p50 RTT (us)",
            Metric::RttP99Us => "request/response p99 RTT (us)",
            Metric::ConnectionsKps => "TCP connect + close (thousand/s)",
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Metric::Tcp1Gbps => "TCP 1",
            Metric::Tcp1ReverseGbps => "TCP 1 rev",
            Metric::Tcp4Gbps => "TCP 4",
            Metric::Tcp4ReverseGbps => "TCP 4 rev",
            Metric::Udp64Pps => "UDP 64B pps",
            Metric::RttP50Us => "RTT p50",
            Metric::RttP99Us => "RTT p99",
            Metric::ConnectionsKps => "conn/s",
        }
    }

    pub(super) fn higher_is_better(self) -> bool {
        !matches!(self, Metric::RttP50Us | Metric::RttP99Us)
    }

    /// Unit of the CPU cost recorded beside the metric.
    pub(super) fn cpu_unit(self) -> Option<&'static str> {
        match self {
            Metric::Tcp1Gbps
            | Metric::Tcp1ReverseGbps
            | Metric::Tcp4Gbps
            | Metric::Tcp4ReverseGbps => Some("CPU ms per Gbit"),
            Metric::Udp64Pps => Some("CPU ns per packet"),
            Metric::RttP50Us | Metric::RttP99Us | Metric::ConnectionsKps => None,
        }
    }
}

/// One measured value and the CPU it cost.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub value: f64,
    pub cpu: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub metric: Metric,
    pub label: &'static str,
    pub target: Target,
    pub runs: Vec<Sample>,
    pub median: f64,
    /// How far the runs lie apart: (largest - smallest) / median, 0 for one
    /// run. A ratio between two targets nearer 1 than their spreads is
    /// within the run-to-run noise.
    pub spread: f64,
    pub cpu_unit: Option<&'static str>,
    pub cpu_median: Option<f64>,
    /// The median over the baseline's (see [`Reference`]).
    pub vs_baseline: Option<f64>,
    pub vs_bound: Option<f64>,
    /// The median over each rival's (see [`Reference::rivals`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub vs_rivals: BTreeMap<Target, f64>,
    pub cpu_vs_baseline: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ScaleRow {
    pub containers: usize,
    pub target: Target,
    pub up_s: f64,
    pub down_s: f64,
    /// TCP 1-stream Gbit/s between a random pair, by extra FDB entries.
    pub tcp1_gbps_by_fdb_extra: BTreeMap<u32, f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cpus: usize,
    pub seconds: u64,
    pub repeat: usize,
    pub udp_generator: &'static str,
    #[serde(flatten)]
    pub reference: Reference,
    pub rows: Vec<Row>,
    pub scale: Vec<ScaleRow>,
    /// How beds were built where the kernel decided it (e.g. which hook
    /// the nftables baseline's rules run in).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The running kernel's release, for the report's heading.
pub(super) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .into()
}

pub(super) fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100): the smallest value
/// with at least p % of the values at or below it, so always one that was
/// measured (with fewer than 100 values, p99 is the largest).
pub(super) fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The smallest and the largest of `values`; None for none.
pub(super) fn extremes(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |range, v| match range {
        None => Some((v, v)),
        Some((low, high)) => Some((f64::min(low, v), f64::max(high, v))),
    })
}

/// (largest - smallest) / median of the runs' values; 0 for no runs or a
/// median of 0.
fn spread(runs: &[Sample], median: f64) -> f64 {
    match extremes(runs.iter().map(|s| s.value)) {
        Some((low, high)) if median != 0.0 => (high - low) / median,
        _ => 0.0,
    }
}

pub(super) fn rows(
    samples: &BTreeMap<(Metric, Target), Vec<Sample>>,
    reference: Reference,
) -> Vec<Row> {
    let medians: BTreeMap<(Metric, Target), (f64, Option<f64>)> = samples
        .iter()
        .map(|(key, runs)| {
            let value = median(&mut runs.iter().map(|s| s.value).collect::<Vec<_>>());
            let mut cpus: Vec<f64> = runs.iter().filter_map(|s| s.cpu).collect();
            let cpu = (!cpus.is_empty()).then(|| median(&mut cpus));
            (*key, (value, cpu))
        })
        .collect();
    samples
        .iter()
        .map(|((metric, target), runs)| {
            let (median, cpu_median) = medians[&(*metric, *target)];
            let ratio = |other: Target| medians.get(&(*metric, other)).map(|(v, _)| median / v);
            let cpu_vs_baseline = match (
                cpu_median,
                medians
                    .get(&(*metric, reference.baseline))
                    .and_then(|(_, c)| *c),
            ) {
                (Some(mine), Some(baseline)) => Some(mine / baseline),
                _ => None,
            };
            Row {
                metric: *metric,
                label: metric.label(),
                target: *target,
                runs: runs.clone(),
                median,
                spread: spread(runs, median),
                cpu_unit: metric.cpu_unit(),
                cpu_median,
                vs_baseline: ratio(reference.baseline),
                vs_bound: ratio(reference.bound),
                vs_rivals: reference
                    .rivals
                    .iter()
                    .filter_map(|rival| ratio(*rival).map(|r| (*rival, r)))
                    .collect(),
                cpu_vs_baseline,
            }
        })
        .collect()
}

/// The aligned result table: one row per metric and target.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "netpath bench: kernel {}, {} CPUs, {} s x {} runs (medians; ratios from the same run; \
         SPREAD: the runs' range over the median)\n",
        report.kernel, report.cpus, report.seconds, report.repeat
    );
    let (baseline, bound) = (
        report.reference.baseline.to_string().to_uppercase(),
        report.reference.bound.to_string().to_uppercase(),
    );
    let width = report
        .rows
        .iter()
        .map(|r| r.target.to_string().len())
        .max()
        .unwrap_or(0)
        .max(8);
    let rivals: String = report
        .reference
        .rivals
        .iter()
        .map(|rival| format!(" {:>9}", format!("x{}", rival.column())))
        .collect();
    out.push_str(&format!(
        "{:<32} {:<width$} {:>10} {:>7} {:>9} {:>9}{rivals}  {:>10} {:>9}  {}\n",
        "TEST",
        "TARGET",
        "MEDIAN",
        "SPREAD",
        format!("x{baseline}"),
        format!("x{bound}"),
        "CPU",
        format!("CPUx{}", &baseline[..2]),
        "CPU UNIT"
    ));
    let f = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    for row in &report.rows {
        let rivals: String = report
            .reference
            .rivals
            .iter()
            .map(|rival| format!(" {:>9}", f(row.vs_rivals.get(rival).copied(), 3)))
            .collect();
        out.push_str(&format!(
            "{:<32} {:<width$} {:>10.2} {:>6.0}% {:>9} {:>9}{rivals}  {:>10} {:>9}  {}\n",
            row.label,
            row.target.to_string(),
            row.median,
            row.spread * 100.0,
            f(row.vs_baseline, 3),
            f(row.vs_bound, 3),
            f(row.cpu_median, 2),
            f(row.cpu_vs_baseline, 3),
            row.cpu_unit.unwrap_or("")
        ));
    }
    if !report.scale.is_empty() {
        out.push_str(
            "\nscale: TCP 1 stream between a random pair (Gbit/s), by extra FDB entries\n",
        );
        out.push_str(&format!(
            "{:>10} {:<7} {:>8} {:>8}  {}\n",
            "CONTAINERS", "TARGET", "UP s", "DOWN s", "GBIT/S BY EXTRA FDB ENTRIES"
        ));
        for s in &report.scale {
            let by: Vec<String> = s
                .tcp1_gbps_by_fdb_extra
                .iter()
                .map(|(k, v)| format!("{k}: {v:.2}"))
                .collect();
            out.push_str(&format!(
                "{:>10} {:<7} {:>8.2} {:>8.2}  {}\n",
                s.containers,
                s.target.to_string(),
                s.up_s,
                s.down_s,
                by.join("  ")
            ));
        }
    }
    out.push_str(&format!("UDP generator: {}\n", report.udp_generator));
    for note in &report.notes {
        out.push_str(&format!("{note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f64, cpu: Option<f64>) -> Sample {
        Sample { value, cpu }
    }

    #[test]
    fn medians_of_odd_and_even_runs() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn percentiles_are_measured_values_by_nearest_rank() {
        let mut hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut hundred, 99.0), 99.0);
        assert_eq!(percentile(&mut hundred, 50.0), 50.0);
        let mut twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut twenty, 99.0), 20.0);
        assert_eq!(percentile(&mut twenty, 90.0), 18.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
    }

    #[test]
    fn on_one_host_rows_carry_ratios_to_the_bridge_and_the_wire() {
        let mut samples = BTreeMap::new();
        samples.insert(
            (Metric::Tcp1Gbps, Target::Bridge),
            vec![
                sample(10.0, Some(100.0)),
                sample(12.0, Some(80.0)),
                sample(11.0, Some(90.0)),
            ],
        );
        samples.insert(
            (Metric::Tcp1Gbps, Target::Tc),
            vec![sample(22.0, Some(45.0)), sample(20.0, Some(45.0))],
        );
        samples.insert((Metric::Tcp1Gbps, Target::Wire), vec![sample(21.0, None)]);
        let reference = Reference::for_targets(&[Target::Bridge, Target::Tc, Target::Wire]);
        let rows = rows(&samples, reference);
        let tc = rows.iter().find(|r| r.target == Target::Tc).unwrap();
        assert_eq!(tc.median, 21.0);
        assert_eq!(tc.vs_baseline, Some(21.0 / 11.0));
        assert_eq!(tc.vs_bound, Some(1.0));
        assert_eq!(tc.cpu_vs_baseline, Some(45.0 / 90.0));
        let bridge = rows.iter().find(|r| r.target == Target::Bridge).unwrap();
        assert_eq!(bridge.spread, 2.0 / 11.0);
        let wire = rows.iter().find(|r| r.target == Target::Wire).unwrap();
        assert_eq!((wire.cpu_median, wire.cpu_vs_baseline), (None, None));
        assert_eq!(wire.spread, 0.0);
        let table = table(&report(reference, rows));
        assert!(
            table.contains("TCP 1 stream (Gbit/s)")
                && table.contains("1.909")
                && table.contains("xBRIDGE")
                && table.contains("CPUxBR"),
            "{table}"
        );
        let bridge_line = table.lines().find(|l| l.contains("bridge")).unwrap();
        assert!(bridge_line.contains(" 18% "), "{table}");
    }

    #[test]
    fn across_hosts_the_overlay_is_compared_with_the_kernel_design_and_the_underlay() {
        let mut samples = BTreeMap::new();
        for (target, p50) in [
            (Target::Overlay, 40.0),
            (Target::Vxlan, 50.0),
            (Target::Underlay, 32.0),
        ] {
            samples.insert((Metric::RttP50Us, target), vec![sample(p50, None)]);
        }
        let reference = Reference::for_targets(&Target::CROSS_HOST);
        assert_eq!(
            (reference.baseline, reference.bound),
            (Target::Vxlan, Target::Underlay)
        );
        let rows = rows(&samples, reference);
        let overlay = rows.iter().find(|r| r.target == Target::Overlay).unwrap();
        assert_eq!(
            (overlay.vs_baseline, overlay.vs_bound),
            (Some(0.8), Some(1.25))
        );
        let table = table(&report(reference, rows));
        assert!(
            table.contains("xVXLAN") && table.contains("xUNDERLAY") && table.contains("underlay"),
            "{table}"
        );
    }

    #[test]
    fn policy_rows_carry_ratios_to_the_bridge_with_the_policy_in_nft_and_iptables() {
        let mut samples = BTreeMap::new();
        for (target, kpps) in [
            (Target::Bridge, 200.0),
            (Target::BridgeNft, 160.0),
            (Target::BridgeIptables, 100.0),
            (Target::TcPolicy, 400.0),
            (Target::Wire, 500.0),
        ] {
            samples.insert((Metric::Udp64Pps, target), vec![sample(kpps, None)]);
        }
        let reference = Reference::for_targets(&Target::POLICY);
        assert_eq!(reference.rivals, Target::POLICY_RIVALS);
        assert!(
            Reference::for_targets(&[Target::Bridge, Target::Tc])
                .rivals
                .is_empty()
        );
        let rows = rows(&samples, reference);
        let netpath = rows.iter().find(|r| r.target == Target::TcPolicy).unwrap();
        assert_eq!(netpath.vs_rivals[&Target::BridgeNft], 2.5);
        assert_eq!(netpath.vs_rivals[&Target::BridgeIptables], 4.0);
        let json = serde_json::to_value(netpath).unwrap();
        assert_eq!(json["vs_rivals"]["bridge+iptables"], 4.0);
        let table = table(&report(reference, rows));
        let line = table.lines().find(|l| l.contains("tc+policy")).unwrap();
        assert!(table.contains("xNFT") && table.contains("xIPT"), "{table}");
        assert!(line.contains("2.500") && line.contains("4.000"), "{table}");
        assert!(table.contains("bridge+iptables "), "{table}");
    }

    fn report(reference: Reference, rows: Vec<Row>) -> Report {
        Report {
            kernel: "k".into(),
            cpus: 2,
            seconds: 1,
            repeat: 3,
            udp_generator: "g",
            reference,
            rows,
            scale: Vec::new(),
            notes: Vec::new(),
        }
    }
}

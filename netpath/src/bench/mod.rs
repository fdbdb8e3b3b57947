//! `netpath bench`: netpath's modes against the Linux bridge and a direct
//! veth pair (the wire), measured in one run, interleaved, as medians.

mod chart;

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use log::warn;
use rtnetlink::Handle;
use serde::Serialize;
use serde_json::Value;

use crate::{
    datapath::{self, fdb::Fdb},
    host::{netlink, netns, plumbing},
    model::{Mac, Mode, Settings, TopologySpec, naming::port_name, spec::DEFAULT_MTU},
    ops::topology,
};

/// What a measurement runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Linux bridge alone (netpath's `bridge` mode).
    Bridge,
    Xdp,
    Tc,
    /// Two namespaces joined by one veth pair: the bound for any veth datapath.
    Wire,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Bridge => "bridge",
            Target::Xdp => "xdp",
            Target::Tc => "tc",
            Target::Wire => "wire",
        })
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
}

impl Metric {
    const ALL: [Metric; 7] = [
        Metric::Tcp1Gbps,
        Metric::Tcp1ReverseGbps,
        Metric::Tcp4Gbps,
        Metric::Tcp4ReverseGbps,
        Metric::Udp64Pps,
        Metric::RttP50Us,
        Metric::RttP99Us,
    ];

    fn label(self) -> &'static str {
        match self {
            Metric::Tcp1Gbps => "TCP 1 stream (Gbit/s)",
            Metric::Tcp1ReverseGbps => "TCP 1 stream, reverse (Gbit/s)",
            Metric::Tcp4Gbps => "TCP 4 streams (Gbit/s)",
            Metric::Tcp4ReverseGbps => "TCP 4 streams, reverse (Gbit/s)",
            Metric::Udp64Pps => "UDP 64 B delivered (kpps)",
            Metric::RttP50Us => "request/response p50 RTT (us)",
            Metric::RttP99Us => "request/response p99 RTT (us)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Metric::Tcp1Gbps => "TCP 1",
            Metric::Tcp1ReverseGbps => "TCP 1 rev",
            Metric::Tcp4Gbps => "TCP 4",
            Metric::Tcp4ReverseGbps => "TCP 4 rev",
            Metric::Udp64Pps => "UDP 64B pps",
            Metric::RttP50Us => "RTT p50",
            Metric::RttP99Us => "RTT p99",
        }
    }

    fn higher_is_better(self) -> bool {
        !matches!(self, Metric::RttP50Us | Metric::RttP99Us)
    }

    /// Unit of the CPU cost recorded beside the metric.
    fn cpu_unit(self) -> Option<&'static str> {
        match self {
            Metric::Tcp1Gbps | Metric::Tcp1ReverseGbps | Metric::Tcp4Gbps | Metric::Tcp4ReverseGbps => {
                Some("CPU ms per Gbit")
            }
            Metric::Udp64Pps => Some("CPU ns per packet"),
            Metric::RttP50Us | Metric::RttP99Us => None,
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
    pub cpu_unit: Option<&'static str>,
    pub cpu_median: Option<f64>,
    pub vs_bridge: Option<f64>,
    pub vs_wire: Option<f64>,
    pub cpu_vs_bridge: Option<f64>,
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
    pub rows: Vec<Row>,
    pub scale: Vec<ScaleRow>,
}

pub struct Options {
    pub seconds: u64,
    pub repeat: usize,
    pub targets: Vec<Target>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub scale: bool,
}

/// Two endpoints to measure between.
struct Bed {
    target: Target,
    name: String,
    client: String,
    server: String,
    server_ip: String,
}

/// `prefix` + pid + the target's initial: unique per process and target.
fn bench_name(prefix: &str, target: Target) -> String {
    format!("{prefix}{}{}", std::process::id() % 10000, &target.to_string()[..1])
}

fn mode_of(target: Target) -> Option<Mode> {
    match target {
        Target::Bridge => Some(Mode::Bridge),
        Target::Xdp => Some(Mode::Xdp),
        Target::Tc => Some(Mode::Tc),
        Target::Wire => None,
    }
}

/// Runs the benchmark; Ctrl-C stops it and still removes every topology.
pub async fn run(handle: &Handle, options: Options) -> Result<Report> {
    if options.targets.is_empty() || options.repeat == 0 || options.seconds == 0 {
        bail!("nothing to measure: give at least one target, --repeat >= 1 and --seconds >= 1");
    }
    let mut beds = Vec::new();
    let result = tokio::select! {
        result = measure(handle, &options, &mut beds) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    for bed in &beds {
        if let Err(e) = remove_bed(handle, bed).await {
            warn!("removing benchmark topology {}: {e:#}", bed.name);
        }
    }
    let report = result?;
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &options.plot {
        std::fs::write(path, chart::svg(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

async fn measure(handle: &Handle, options: &Options, beds: &mut Vec<Bed>) -> Result<Report> {
    for (i, target) in options.targets.iter().enumerate() {
        eprintln!("bench: setting up {target}");
        let bed = make_bed(handle, bench_name("nb", *target), *target, i, 2, netpath_common::FDB_CAPACITY).await?;
        beds.push(bed);
    }
    let tests = 6;
    let total = options.repeat * tests * beds.len();
    let per_run = options.seconds as f64 + 0.7;
    let mut samples: BTreeMap<(Metric, Target), Vec<Sample>> = BTreeMap::new();
    let mut done = 0;
    for rep in 0..options.repeat {
        for test in 0..tests {
            // Interleave: rotate the order each round so drift hits all alike.
            for k in 0..beds.len() {
                let bed = &beds[(k + rep + test) % beds.len()];
                let left = (total - done) as f64 * per_run;
                eprintln!(
                    "bench: [{}/{total}] round {}/{}: {} on {} (about {:.0} s left)",
                    done + 1,
                    rep + 1,
                    options.repeat,
                    test_name(test),
                    bed.target,
                    left
                );
                for (metric, sample) in run_test(bed, test, options.seconds).await? {
                    samples.entry((metric, bed.target)).or_default().push(sample);
                }
                done += 1;
            }
        }
    }
    let scale = if options.scale { scale_sweep(handle, options.seconds).await? } else { Vec::new() };
    Ok(Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        seconds: options.seconds,
        repeat: options.repeat,
        udp_generator: "iperf3 -u -b 0 -l 64 (one sender thread: the sender may bound the rate)",
        rows: rows(&samples),
        scale,
    })
}

fn test_name(test: usize) -> &'static str {
    ["TCP 1 stream", "TCP 1 stream reverse", "TCP 4 streams", "TCP 4 streams reverse", "UDP 64 B", "RTT"][test]
}

async fn run_test(bed: &Bed, test: usize, seconds: u64) -> Result<Vec<(Metric, Sample)>> {
    Ok(match test {
        0 => vec![(Metric::Tcp1Gbps, tcp(bed, seconds, 1, false).await?)],
        1 => vec![(Metric::Tcp1ReverseGbps, tcp(bed, seconds, 1, true).await?)],
        2 => vec![(Metric::Tcp4Gbps, tcp(bed, seconds, 4, false).await?)],
        3 => vec![(Metric::Tcp4ReverseGbps, tcp(bed, seconds, 4, true).await?)],
        4 => vec![(Metric::Udp64Pps, udp64(bed, seconds).await?)],
        _ => {
            let (p50, p99) = rtt(bed, seconds).await?;
            vec![
                (Metric::RttP50Us, Sample { value: p50, cpu: None }),
                (Metric::RttP99Us, Sample { value: p99, cpu: None }),
            ]
        }
    })
}

/// Busy CPU time of the whole machine so far, in seconds (from /proc/stat).
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).take(6).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy / ticks)
}

async fn iperf(bed: &Bed, seconds: u64, args: &[&str]) -> Result<(Value, f64)> {
    let mut server = netns::command(&bed.server, "iperf3")?
        .args(["-s", "-1", "-B", &bed.server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 server (is iperf3 installed? `cargo xtask setup`)")?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cpu_before = busy_cpu_seconds()?;
    let out = netns::command(&bed.client, "iperf3")?
        .args(["-c", &bed.server_ip, "-t", &seconds.to_string(), "-J"])
        .args(args)
        .output()
        .await
        .context("running iperf3")?;
    let cpu = busy_cpu_seconds()? - cpu_before;
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    let report: Value = serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(error) = report.get("error") {
        bail!("iperf3 {args:?} on {}: {error}", bed.target);
    }
    Ok((report, cpu))
}

async fn tcp(bed: &Bed, seconds: u64, streams: u32, reverse: bool) -> Result<Sample> {
    let streams = streams.to_string();
    let mut args = vec!["-P", streams.as_str()];
    if reverse {
        args.push("-R");
    }
    let (report, cpu) = iperf(bed, seconds, &args).await?;
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no sum_received")?;
    let gbits = report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) * 8.0 / 1e9;
    Ok(Sample { value: bps / 1e9, cpu: (gbits > 0.0).then(|| cpu * 1000.0 / gbits) })
}

async fn udp64(bed: &Bed, seconds: u64) -> Result<Sample> {
    let (report, cpu) = iperf(bed, seconds, &["-u", "-b", "0", "-l", "64"]).await?;
    let sum = &report["end"]["sum"];
    let sent = sum["packets"].as_f64().context("iperf3: no UDP packet count")?;
    let delivered = sent - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64);
    Ok(Sample { value: delivered / secs / 1000.0, cpu: (delivered > 0.0).then(|| cpu * 1e9 / delivered) })
}

/// Round-trip percentiles from sockperf ping-pong, in microseconds.
async fn rtt(bed: &Bed, seconds: u64) -> Result<(f64, f64)> {
    let port = "11111";
    let mut server = netns::command(&bed.server, "sockperf")?
        .args(["sr", "-i", &bed.server_ip, "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sockperf server (is sockperf installed? `cargo xtask setup`)")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = netns::command(&bed.client, "sockperf")?
        .args(["pp", "-i", &bed.server_ip, "-p", port, "-t", &seconds.to_string(), "--full-rtt"])
        .output()
        .await
        .context("running sockperf")?;
    let _ = server.kill().await;
    let text = String::from_utf8_lossy(&out.stdout);
    let percentile = |p: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("sockperf printed no {p} percentile on {}: {text}", bed.target))
    };
    Ok((percentile("50.000")?, percentile("99.000")?))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn rows(samples: &BTreeMap<(Metric, Target), Vec<Sample>>) -> Vec<Row> {
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
            let cpu_vs_bridge = match (cpu_median, medians.get(&(*metric, Target::Bridge)).and_then(|(_, c)| *c)) {
                (Some(mine), Some(bridge)) => Some(mine / bridge),
                _ => None,
            };
            Row {
                metric: *metric,
                label: metric.label(),
                target: *target,
                runs: runs.clone(),
                median,
                cpu_unit: metric.cpu_unit(),
                cpu_median,
                vs_bridge: ratio(Target::Bridge),
                vs_wire: ratio(Target::Wire),
                cpu_vs_bridge,
            }
        })
        .collect()
}

/// The aligned result table: one row per metric and target.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "netpath bench: kernel {}, {} CPUs, {} s x {} runs (medians; ratios from the same run)\n",
        report.kernel, report.cpus, report.seconds, report.repeat
    );
    out.push_str(&format!(
        "{:<32} {:<7} {:>10} {:>9} {:>9}  {:>10} {:>9}  {}\n",
        "TEST", "TARGET", "MEDIAN", "xBRIDGE", "xWIRE", "CPU", "CPUxBR", "CPU UNIT"
    ));
    let f = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
    for row in &report.rows {
        out.push_str(&format!(
            "{:<32} {:<7} {:>10.2} {:>9} {:>9}  {:>10} {:>9}  {}\n",
            row.label,
            row.target.to_string(),
            row.median,
            f(row.vs_bridge, 3),
            f(row.vs_wire, 3),
            f(row.cpu_median, 2),
            f(row.cpu_vs_bridge, 3),
            row.cpu_unit.unwrap_or("")
        ));
    }
    if !report.scale.is_empty() {
        out.push_str("\nscale: TCP 1 stream between a random pair (Gbit/s), by extra FDB entries\n");
        out.push_str(&format!("{:>10} {:<7} {:>8} {:>8}  {}\n", "CONTAINERS", "TARGET", "UP s", "DOWN s", "GBIT/S BY EXTRA FDB ENTRIES"));
        for s in &report.scale {
            let by: Vec<String> = s.tcp1_gbps_by_fdb_extra.iter().map(|(k, v)| format!("{k}: {v:.2}")).collect();
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
    out
}

async fn make_bed(handle: &Handle, name: String, target: Target, index: usize, containers: usize, fdb_size: u32) -> Result<Bed> {
    let subnet = format!("10.250.{index}.0/24");
    let Some(mode) = mode_of(target) else {
        return make_wire(&name, &subnet);
    };
    let settings = Settings {
        name: Some(name.clone()),
        containers: Some(containers),
        subnet: vec![subnet],
        mode: Some(mode),
        fdb_size: Some(fdb_size),
        ..Default::default()
    };
    let spec = TopologySpec::resolve(settings)?;
    let server = &spec.containers[1];
    let bed = Bed {
        target,
        name: name.clone(),
        client: port_name(&name, &spec.containers[0].name),
        server: port_name(&name, &server.name),
        server_ip: server.ips[0].addr().to_string(),
    };
    topology::up(handle, spec).await?;
    Ok(bed)
}

/// Two namespaces `NAME-a` and `NAME-b` joined by one veth pair.
fn make_wire(name: &str, subnet: &str) -> Result<Bed> {
    let net: IpNet = subnet.parse()?;
    let mut hosts = net.hosts();
    let (a_ip, b_ip) = (hosts.next().context("wire subnet")?, hosts.next().context("wire subnet")?);
    let (a_ip, b_ip) = (IpNet::new(a_ip, net.prefix_len())?, IpNet::new(b_ip, net.prefix_len())?);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let bed = Bed { target: Target::Wire, name: name.into(), client: a.clone(), server: b.clone(), server_ip: b_ip.addr().to_string() };
    netns::create(&a)?;
    netns::create(&b)?;
    let (a_path, b_path) = (netns::path(&a), netns::path(&b));
    let owner = name.to_owned();
    netns::run_in(&a, move |h| async move {
        let wire = plumbing::Plug {
            host_veth: "eth0",
            netns: &b_path,
            ifname: "eth0",
            mac: None,
            mtu: DEFAULT_MTU,
            bridge: None,
            owner: &owner,
            addresses: &[b_ip],
            gateways: &[],
        };
        plumbing::plug(&h, &wire).await.map(drop)
    })?;
    plumbing::configure_inside(&a_path, "eth0", &[a_ip], &[])?;
    Ok(bed)
}

async fn remove_bed(handle: &Handle, bed: &Bed) -> Result<()> {
    if bed.target == Target::Wire {
        netns::delete(&bed.client)?;
        netns::delete(&bed.server)?;
        return Ok(());
    }
    topology::down(handle, &bed.name).await.map(|_| ())
}

/// A small deterministic generator, so runs pick the same "random" pairs.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

const SCALE_CONTAINERS: [usize; 4] = [2, 8, 32, 128];
const SCALE_FDB_EXTRA: [u32; 3] = [0, 10_000, 100_000];

async fn scale_sweep(handle: &Handle, seconds: u64) -> Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    let mut rng = Lcg(0x6e70);
    for containers in SCALE_CONTAINERS {
        for (index, target) in [Target::Bridge, Target::Xdp, Target::Tc].into_iter().enumerate() {
            eprintln!("bench: scale: {containers} containers, {target}");
            let started = Instant::now();
            let mut bed = make_bed(handle, bench_name("ns", target), target, 10 + index, containers, 131_072).await?;
            let up_s = started.elapsed().as_secs_f64();
            let result = async {
                let (i, mut j) = (rng.next(containers), rng.next(containers));
                if i == j {
                    j = (j + 1) % containers;
                }
                bed.client = port_name(&bed.name, &format!("c{i}"));
                bed.server = port_name(&bed.name, &format!("c{j}"));
                bed.server_ip = format!("10.250.{}.{}", 10 + index, j + 2);
                let mut by_extra = BTreeMap::new();
                for extra in SCALE_FDB_EXTRA {
                    if extra > 0 && target == Target::Bridge {
                        continue;
                    }
                    if extra > 0 {
                        fill_fdb(handle, &bed.name, extra - by_extra.keys().copied().max().unwrap_or(0)).await?;
                    }
                    by_extra.insert(extra, tcp(&bed, seconds, 1, false).await?.value);
                }
                anyhow::Ok(by_extra)
            }
            .await;
            let started = Instant::now();
            remove_bed(handle, &bed).await?;
            rows.push(ScaleRow {
                containers,
                target,
                up_s,
                down_s: started.elapsed().as_secs_f64(),
                tcp1_gbps_by_fdb_extra: result?,
            });
        }
    }
    Ok(rows)
}

/// Adds `count` static entries for MACs no container has, on port c0.
async fn fill_fdb(handle: &Handle, topology: &str, count: u32) -> Result<()> {
    let port = netlink::link_by_name(handle, &port_name(topology, "c0")).await?.context("port c0 missing")?;
    let mut table = Fdb::open(&datapath::maps(topology)?)?;
    let base = table.entries()?.len() as u32;
    for n in base..base + count {
        let b = n.to_be_bytes();
        table.add_static(Mac([0x06, 0xfd, b[0], b[1], b[2], b[3]]), port.index)?;
    }
    Ok(())
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
    fn rows_carry_medians_and_ratios_to_the_bridge_and_the_wire() {
        let mut samples = BTreeMap::new();
        samples.insert((Metric::Tcp1Gbps, Target::Bridge), vec![sample(10.0, Some(100.0)), sample(12.0, Some(80.0)), sample(11.0, Some(90.0))]);
        samples.insert((Metric::Tcp1Gbps, Target::Tc), vec![sample(22.0, Some(45.0)), sample(20.0, Some(45.0))]);
        samples.insert((Metric::Tcp1Gbps, Target::Wire), vec![sample(21.0, None)]);
        let rows = rows(&samples);
        let tc = rows.iter().find(|r| r.target == Target::Tc).unwrap();
        assert_eq!(tc.median, 21.0);
        assert_eq!(tc.vs_bridge, Some(21.0 / 11.0));
        assert_eq!(tc.vs_wire, Some(1.0));
        assert_eq!(tc.cpu_vs_bridge, Some(45.0 / 90.0));
        let wire = rows.iter().find(|r| r.target == Target::Wire).unwrap();
        assert_eq!((wire.cpu_median, wire.cpu_vs_bridge), (None, None));
        let table = table(&Report {
            kernel: "k".into(),
            cpus: 2,
            seconds: 1,
            repeat: 3,
            udp_generator: "g",
            rows,
            scale: Vec::new(),
        });
        assert!(table.contains("TCP 1 stream (Gbit/s)") && table.contains("1.909"), "{table}");
    }
}

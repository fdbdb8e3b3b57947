//! `netpath bench --cni`: how long a pod's network takes to set up and tear
//! down, netpath-cni against the reference CNI `bridge` plugin, both driven
//! as a runtime drives them (CNI_* environment, configuration on stdin, one
//! process per call) in one run, interleaved so machine noise hits both.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use log::warn;
use rtnetlink::Handle;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::report::{cpus, kernel, median, percentile};
use crate::{
    host::{netlink, netns},
    store,
};

/// Debian's containernetworking-plugins: the reference `bridge` plugin and
/// the `host-local` IPAM both plugins delegate to.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The file ip_forward: the bridge plugin turns it on for `isGateway`.
const IPV4_FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

pub struct CniOptions {
    /// Pods ADDed one after another, then DELed, per plugin.
    pub sequential: usize,
    /// Pods ADDed all at once, then DELed all at once, per plugin.
    pub concurrent: usize,
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plugin {
    Netpath,
    /// The reference plugin.
    Bridge,
}

impl fmt::Display for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plugin::Netpath => "netpath",
            Plugin::Bridge => "bridge",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A network's first pod (its ADD makes the network) and last pod (its
    /// DEL winds it up), around the other phases.
    #[serde(rename = "first/last")]
    FirstLast,
    Sequential,
    Concurrent,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::FirstLast => "first/last",
            Phase::Sequential => "sequential",
            Phase::Concurrent => "concurrent",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CniCommand {
    Add,
    Del,
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        })
    }
}

#[derive(Debug, Serialize)]
pub struct CniRow {
    pub phase: Phase,
    pub command: CniCommand,
    pub plugin: Plugin,
    /// Every call's time, from spawning the plugin to its exit.
    pub runs_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// This plugin's figure over the bridge plugin's, same phase and command.
    pub p50_vs_bridge: f64,
    pub p99_vs_bridge: f64,
}

#[derive(Debug, Serialize)]
pub struct CniReport {
    pub kernel: String,
    pub cpus: usize,
    pub sequential_pods: usize,
    pub concurrent_pods: usize,
    pub ipam: &'static str,
    pub rows: Vec<CniRow>,
}

/// One plugin's network: the binary a runtime would run, its bridge and
/// its configuration.
struct Network {
    plugin: Plugin,
    binary: PathBuf,
    bridge: String,
    conf: Vec<u8>,
}

/// A pod: its container ID and the network namespace the bench made for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pod {
    container_id: String,
    netns: String,
}

/// What the bench made and must remove, whatever happens.
#[derive(Default)]
struct Made {
    netns: Vec<String>,
    /// (network index, pod) of every ADD begun and not DELed since: an
    /// ADD that failed halfway needs its DEL too.
    attached: BTreeSet<(usize, Pod)>,
}

/// The pod figures of both plugins; Ctrl-C stops at the next plugin call
/// (none is killed halfway) and still removes everything.
pub async fn run(handle: &Handle, options: CniOptions) -> Result<CniReport> {
    ensure!(
        options.sequential >= 1 && options.concurrent >= 1,
        "nothing to measure: give --pods >= 1 and --concurrent >= 1"
    );
    let data_dir = std::env::temp_dir().join(format!("netpath-bench-cni-{}", std::process::id()));
    let networks = networks(&data_dir)?;
    let forwarding_before = std::fs::read_to_string(IPV4_FORWARDING)
        .with_context(|| format!("reading {IPV4_FORWARDING}"))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let interrupted = interrupted.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "bench --cni: interrupted; finishing the calls under way, then cleaning up"
                );
                interrupted.store(true, Ordering::Relaxed);
            }
        }
    });
    let mut made = Made::default();
    let result = measure(&networks, &options, &interrupted, &mut made).await;
    watcher.abort();
    clean_up(handle, &networks, &made).await;
    if let Err(e) = std::fs::remove_dir_all(&data_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(
            "removing host-local's addresses in {}: {e}",
            data_dir.display()
        );
    }
    if let Err(e) = std::fs::write(IPV4_FORWARDING, &forwarding_before) {
        warn!(
            "restoring {IPV4_FORWARDING} to {}: {e}",
            forwarding_before.trim()
        );
    }
    let report = result?;
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// netpath-cni beside the running `netpath`, and the reference plugin;
/// both on bridges of this run's own and with host-local addresses kept in
/// `data_dir`, so both pay for the same IPAM.
fn networks(data_dir: &Path) -> Result<[Network; 2]> {
    let exe = std::env::current_exe().context("locating the running netpath binary")?;
    let netpath_cni = exe.with_file_name("netpath-cni");
    ensure!(
        netpath_cni.is_file(),
        "netpath-cni is not beside {} (at {}): build it with `cargo build --release -p netpath`, \
         which builds both binaries",
        exe.display(),
        netpath_cni.display()
    );
    let reference = Path::new(REFERENCE_PLUGINS);
    for plugin in ["bridge", "host-local"] {
        ensure!(
            reference.join(plugin).is_file(),
            "the reference CNI plugin {plugin} is not in {REFERENCE_PLUGINS}: install Debian's \
             containernetworking-plugins"
        );
    }
    let tag = std::process::id() % 10000;
    let network = |plugin: Plugin, binary: PathBuf, index: usize| {
        let bridge = format!("nbc{tag}{}", &plugin.to_string()[..1]);
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": format!("netpath-bench-{plugin}"),
            "type": binary.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            "bridge": bridge,
            "ipam": {
                "type": "host-local",
                "subnet": format!("10.249.{index}.0/24"),
                "dataDir": data_dir,
            },
        });
        if plugin == Plugin::Bridge {
            // A gateway address on the bridge and a default route in the
            // pod, as netpath-cni sets up.
            conf["isGateway"] = json!(true);
        }
        Network {
            plugin,
            binary,
            bridge,
            conf: conf.to_string().into_bytes(),
        }
    };
    Ok([
        network(Plugin::Netpath, netpath_cni, 0),
        network(Plugin::Bridge, reference.join("bridge"), 1),
    ])
}

async fn measure(
    networks: &[Network; 2],
    options: &CniOptions,
    interrupted: &AtomicBool,
    made: &mut Made,
) -> Result<CniReport> {
    let mut samples: BTreeMap<(Phase, CniCommand, Plugin), Vec<f64>> = BTreeMap::new();
    let check = || -> Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    };

    // One pod stays attached through the measured phases, as on a node in
    // service: neither plugin makes or winds up its network within them
    // (netpath loads its datapath there; the bridge plugin makes its bridge,
    // and keeps it after the last DEL). That pod's ADD and DEL are the
    // first/last row.
    eprintln!("bench --cni: a first pod per plugin, on an empty network");
    let first = make_pods(networks, Phase::FirstLast, 1, made)?.remove(0);
    for (n, pod) in first.iter().enumerate() {
        check()?;
        let ms = call_tracked(networks, n, CniCommand::Add, pod, made).await?;
        samples
            .entry((Phase::FirstLast, CniCommand::Add, networks[n].plugin))
            .or_default()
            .push(ms);
    }

    eprintln!(
        "bench --cni: {} sequential pods per plugin, ADD then DEL",
        options.sequential
    );
    let pods = make_pods(networks, Phase::Sequential, options.sequential, made)?;
    for command in [CniCommand::Add, CniCommand::Del] {
        for (i, pair) in pods.iter().enumerate() {
            // ABAB, with the first plugin of each round alternating, so
            // neither always runs on the other's warm caches.
            for k in 0..networks.len() {
                check()?;
                let n = (i + k) % networks.len();
                let ms = call_tracked(networks, n, command, &pair[n], made).await?;
                samples
                    .entry((Phase::Sequential, command, networks[n].plugin))
                    .or_default()
                    .push(ms);
            }
        }
    }

    eprintln!(
        "bench --cni: {} concurrent pods per plugin, all ADDs at once, then all DELs",
        options.concurrent
    );
    let pods = make_pods(networks, Phase::Concurrent, options.concurrent, made)?;
    for (round, command) in [CniCommand::Add, CniCommand::Del].into_iter().enumerate() {
        for k in 0..networks.len() {
            check()?;
            let n = (round + k) % networks.len();
            for pod in pods.iter().map(|pair| &pair[n]) {
                made.attached.insert((n, pod.clone()));
            }
            let calls = pods
                .iter()
                .map(|pair| call(&networks[n], command, &pair[n]));
            // Every call is waited for, failed or not: none is left running.
            let results = futures::future::join_all(calls).await;
            let mut times = Vec::new();
            for (pair, result) in pods.iter().zip(results) {
                times.push(result?);
                if command == CniCommand::Del {
                    made.attached.remove(&(n, pair[n].clone()));
                }
            }
            samples
                .entry((Phase::Concurrent, command, networks[n].plugin))
                .or_default()
                .extend(times);
        }
    }

    eprintln!("bench --cni: the last pod per plugin");
    for (n, pod) in first.iter().enumerate().rev() {
        check()?;
        let ms = call_tracked(networks, n, CniCommand::Del, pod, made).await?;
        samples
            .entry((Phase::FirstLast, CniCommand::Del, networks[n].plugin))
            .or_default()
            .push(ms);
    }

    Ok(CniReport {
        kernel: kernel(),
        cpus: cpus(),
        sequential_pods: options.sequential,
        concurrent_pods: options.concurrent,
        ipam: "host-local",
        rows: rows(samples),
    })
}

/// `count` pods per network, each with a network namespace of its own.
fn make_pods(
    networks: &[Network; 2],
    phase: Phase,
    count: usize,
    made: &mut Made,
) -> Result<Vec<[Pod; 2]>> {
    let phase_initial = &phase.to_string()[..1];
    (0..count)
        .map(|i| {
            let mut pod = |network: &Network| -> Result<Pod> {
                let netns = format!("{}{phase_initial}{i}", network.bridge);
                netns::create(&netns)?;
                made.netns.push(netns.clone());
                Ok(Pod {
                    container_id: format!("netpath-bench-{netns}"),
                    netns,
                })
            };
            Ok([pod(&networks[0])?, pod(&networks[1])?])
        })
        .collect()
}

/// [`call`], keeping `made.attached` up to date.
async fn call_tracked(
    networks: &[Network; 2],
    n: usize,
    command: CniCommand,
    pod: &Pod,
    made: &mut Made,
) -> Result<f64> {
    let key = (n, pod.clone());
    if command == CniCommand::Add {
        made.attached.insert(key.clone());
    }
    let ms = call(&networks[n], command, pod).await?;
    if command == CniCommand::Del {
        made.attached.remove(&key);
    }
    Ok(ms)
}

/// Runs the plugin once, as a runtime does; returns how long it took, in
/// milliseconds, from spawning it to its exit.
async fn call(network: &Network, command: CniCommand, pod: &Pod) -> Result<f64> {
    let what = || format!("{} {command} of pod {}", network.plugin, pod.netns);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&network.binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command.to_string())
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", netns::path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", network.binary.display()))?;
    let mut stdin = child.stdin.take().context("the plugin's stdin")?;
    stdin
        .write_all(&network.conf)
        .await
        .with_context(|| format!("{}: writing the configuration", what()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .with_context(|| format!("{}: waiting for the plugin", what()))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// DELs every pod still attached, then removes the namespaces and the
/// bridges (the bridge plugin leaves its bridge; netpath-cni removes its
/// own with the last DEL, unless a DEL failed). Failures are logged: the
/// rest is still removed.
async fn clean_up(handle: &Handle, networks: &[Network; 2], made: &Made) {
    for (n, pod) in &made.attached {
        if let Err(e) = call(&networks[*n], CniCommand::Del, pod).await {
            warn!("cleaning up: {e:#}");
        }
    }
    for name in &made.netns {
        if let Err(e) = netns::delete(name) {
            warn!("cleaning up: {e:#}");
        }
    }
    for network in networks {
        let removed = async {
            if let Some(link) = netlink::link_by_name(handle, &network.bridge).await? {
                netlink::delete_link(handle, link.index).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = removed.await {
            warn!("cleaning up bridge {}: {e:#}", network.bridge);
        }
    }
    let record = store::cni::path(&networks[0].bridge);
    if record.exists() {
        warn!(
            "netpath-cni left its record {} (and pins) after every DEL: a bug; remove them by hand",
            record.display()
        );
    }
}

fn rows(samples: BTreeMap<(Phase, CniCommand, Plugin), Vec<f64>>) -> Vec<CniRow> {
    let figures: BTreeMap<_, (f64, f64)> = samples
        .iter()
        .map(|(key, runs)| {
            let p50 = median(&mut runs.clone());
            let p99 = percentile(&mut runs.clone(), 99.0);
            (*key, (p50, p99))
        })
        .collect();
    samples
        .into_iter()
        .map(|((phase, command, plugin), runs_ms)| {
            let (p50_ms, p99_ms) = figures[&(phase, command, plugin)];
            let (bridge_p50, bridge_p99) = figures[&(phase, command, Plugin::Bridge)];
            CniRow {
                phase,
                command,
                plugin,
                runs_ms,
                p50_ms,
                p99_ms,
                p50_vs_bridge: p50_ms / bridge_p50,
                p99_vs_bridge: p99_ms / bridge_p99,
            }
        })
        .collect()
}

/// The aligned result table: per phase and command, one row per plugin.
pub fn table(report: &CniReport) -> String {
    let mut out = format!(
        "netpath bench --cni: kernel {}, {} CPUs, {} sequential and {} concurrent pods per plugin, \
         {} IPAM (ms per plugin call; ratios from the same run)\n",
        report.kernel, report.cpus, report.sequential_pods, report.concurrent_pods, report.ipam
    );
    out.push_str(&format!(
        "{:<11} {:<7} {:<8} {:>9} {:>9} {:>10} {:>10}\n",
        "PODS", "COMMAND", "PLUGIN", "P50 ms", "P99 ms", "P50xBRIDGE", "P99xBRIDGE"
    ));
    for row in &report.rows {
        out.push_str(&format!(
            "{:<11} {:<7} {:<8} {:>9.2} {:>9.2} {:>10.3} {:>10.3}\n",
            row.phase.to_string(),
            row.command.to_string(),
            row.plugin.to_string(),
            row.p50_ms,
            row.p99_ms,
            row.p50_vs_bridge,
            row.p99_vs_bridge
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_give_each_plugins_percentiles_and_ratios_to_the_bridge_plugin() {
        let mut samples = BTreeMap::new();
        samples.insert(
            (Phase::Sequential, CniCommand::Add, Plugin::Netpath),
            vec![50.0, 40.0, 60.0, 45.0],
        );
        samples.insert(
            (Phase::Sequential, CniCommand::Add, Plugin::Bridge),
            vec![10.0, 12.0, 30.0],
        );
        let rows = rows(samples);
        let netpath = &rows[0];
        assert_eq!(netpath.plugin, Plugin::Netpath);
        assert_eq!((netpath.p50_ms, netpath.p99_ms), (47.5, 60.0));
        assert_eq!(netpath.p50_vs_bridge, 47.5 / 12.0);
        assert_eq!(netpath.p99_vs_bridge, 2.0);
        assert_eq!((rows[1].p50_vs_bridge, rows[1].p99_vs_bridge), (1.0, 1.0));
        let table = table(&CniReport {
            kernel: "k".into(),
            cpus: 2,
            sequential_pods: 4,
            concurrent_pods: 1,
            ipam: "host-local",
            rows,
        });
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("PODS"), "{table}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "sequential",
                "ADD",
                "netpath",
                "47.50",
                "60.00",
                "3.958",
                "2.000"
            ],
            "{table}"
        );
    }
}

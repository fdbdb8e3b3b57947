//! Issue 5: the benchmark runs end to end on a tiny setting, writes every
//! field, and leaves nothing behind, also when interrupted; issue 15 alike
//! for `--overlay`, across two hosts. It asserts no speed.

mod common;

use std::{
    ffi::OsStr,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{Host, Lines, output_within, patience, words};
use netpath::{datapath::object::pin_dir, host::netns, model::naming::cni_datapath, store};
use serde_json::Value;

const METRICS: [&str; 8] = [
    "tcp1_gbps",
    "tcp1_reverse_gbps",
    "tcp4_gbps",
    "tcp4_reverse_gbps",
    "udp64_pps",
    "rtt_p50_us",
    "rtt_p99_us",
    "connections_kps",
];
const TARGETS: [&str; 4] = ["bridge", "xdp", "tc", "wire"];
const CROSS_HOST_TARGETS: [&str; 3] = ["overlay", "vxlan", "underlay"];

/// What the bench calls its beds: `nb` + pid + the target's initial
/// (`p` for tc+policy, `n` for bridge+nft, `i` for bridge+iptables).
fn bed_name(pid: u32, target: &str) -> String {
    let initial = match target {
        "tc+policy" => "p",
        "bridge+nft" => "n",
        "bridge+iptables" => "i",
        _ => &target[..1],
    };
    format!("nb{}{initial}", pid % 10000)
}

/// What is left of the beds of `targets`: links, namespaces (the overlay
/// beds' hosts, underlay and containers are all named after the bed),
/// pins and records; and of the overlay bed's topologies (one per host,
/// the bed's name + a or b) also their overlay records, and the peers file.
fn bench_leftovers(host: &Host, pid: u32, targets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for target in targets {
        let bed = bed_name(pid, target);
        found.extend(host.leftovers(&bed));
        if *target == "overlay" {
            for side in ["a", "b"] {
                let topology = format!("{bed}{side}");
                found.extend(host.leftovers(&topology));
                let record = store::overlay::path(&topology).unwrap();
                if record.exists() {
                    found.push(record.display().to_string());
                }
            }
            let peers = std::env::temp_dir().join(format!("netpath-bench-{bed}-peers.toml"));
            if peers.exists() {
                found.push(peers.display().to_string());
            }
        }
    }
    found
}

/// Every metric on every target: one run, a positive median, ratios to
/// the baseline and the bound, and a positive CPU cost (but for round
/// trips and connections, which have none).
fn assert_every_figure(report: &Value, targets: &[&str]) {
    let rows = report["rows"].as_array().unwrap();
    for metric in METRICS {
        for target in targets {
            let row = rows
                .iter()
                .find(|r| r["metric"] == metric && r["target"] == *target)
                .unwrap_or_else(|| panic!("no row for {metric} on {target}"));
            assert_eq!(row["runs"].as_array().unwrap().len(), 1);
            assert!(
                row["median"].as_f64().unwrap() > 0.0,
                "{metric} on {target}: {row}"
            );
            assert!(
                row["vs_baseline"].as_f64().is_some_and(|r| r > 0.0)
                    && row["vs_bound"].as_f64().is_some_and(|r| r > 0.0),
                "{row}"
            );
            if !metric.starts_with("rtt") && metric != "connections_kps" {
                assert!(
                    row["cpu_median"].as_f64().unwrap() > 0.0,
                    "{metric} on {target}: no CPU cost"
                );
            }
        }
    }
}

/// How long a test of bench may take: its bench alone may take 600 s.
const BENCH_DEADLINE: Duration = Duration::from_secs(900);

/// `netpath bench` of one short round (`--seconds 1 --repeat 1`) with its
/// JSON report in `json` and `extra` arguments, as [`bench`] runs it.
fn one_round(host: &Host, json: &std::path::Path, extra: &[&OsStr]) -> (u32, String, String) {
    let mut args: Vec<&OsStr> = words("--seconds 1 --repeat 1 --json")
        .into_iter()
        .map(OsStr::new)
        .collect();
    args.push(json.as_os_str());
    args.extend_from_slice(extra);
    bench(host, &args)
}

/// Runs `netpath bench ARGS` to its end and asserts it succeeded; returns
/// its pid (the bench's names carry it), stdout and stderr.
fn bench(host: &Host, args: &[&OsStr]) -> (u32, String, String) {
    let child = host
        .netpath_command()
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A bench of a few short runs; minutes mean it hangs.
    let out = output_within(child, Duration::from_secs(600), &format!("bench {args:?}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stdout}{stderr}"
    );
    (pid, stdout, stderr)
}

#[test]
fn bench_runs_end_to_end_and_reports_every_figure() {
    let host = Host::with_deadline(BENCH_DEADLINE);
    let dir = std::env::temp_dir().join(format!("netpath-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, plot) = (dir.join("bench.json"), dir.join("bench.svg"));
    let (pid, stdout, stderr) = one_round(&host, &json, &["--plot".as_ref(), plot.as_os_str()]);
    assert!(
        stdout.contains("xBRIDGE") && stdout.contains("xWIRE"),
        "no table: {stdout}"
    );
    assert!(stderr.contains("[1/28]"), "no progress shown");

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "kernel",
        "cpus",
        "seconds",
        "repeat",
        "udp_generator",
        "baseline",
        "bound",
        "rows",
        "scale",
    ] {
        assert!(report.get(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(
        (&report["baseline"], &report["bound"]),
        (&"bridge".into(), &"wire".into())
    );
    assert_every_figure(&report, &TARGETS);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<rect").count() > 28,
        "chart has no bars"
    );
    assert_eq!(bench_leftovers(&host, pid, &TARGETS), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 24: tc mode with a realistic policy in force beside tc without
/// one, the bridge and the wire, and beside its rivals, the bridge with the
/// same policy in nftables and in iptables (br_netfilter); the policy's
/// time to enforcement shown; every figure positive, with its ratios to
/// both rivals; nothing left behind, the host's br_netfilter setting and
/// nftables tables as they were.
#[test]
fn policy_bench_measures_tc_with_a_policy_in_force() {
    let host = Host::with_deadline(BENCH_DEADLINE);
    let call_iptables = || {
        host.run(|| std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok())
    };
    let (sysctl_before, tables_before) =
        (call_iptables(), host.sh("nft", &["list", "tables"]).stdout);
    let json =
        std::env::temp_dir().join(format!("netpath-bench-policy-{}.json", std::process::id()));
    let (pid, stdout, stderr) = one_round(&host, &json, &["--policy".as_ref()]);
    for row in ["tc+policy", "bridge+nft", "bridge+iptables"] {
        assert!(stdout.contains(row), "no {row} row: {stdout}");
    }
    assert!(
        stdout.contains("xNFT") && stdout.contains("xIPT"),
        "no rival ratios: {stdout}"
    );
    assert!(
        stderr.contains("51 policies, 500 ipBlocks applied and in force"),
        "no enforcement time: {stderr}"
    );
    for rival in ["bridge+nft", "bridge+iptables"] {
        assert!(
            stderr.contains(&format!(
                "bench: {rival}: 51 policies, 500 ipBlocks in force"
            )),
            "{rival}: no policy in force: {stderr}"
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    let targets = [
        "bridge",
        "bridge+nft",
        "bridge+iptables",
        "tc",
        "tc+policy",
        "wire",
    ];
    assert_every_figure(&report, &targets);
    assert_eq!(
        report["rivals"],
        serde_json::json!(["bridge+nft", "bridge+iptables"])
    );
    for row in report["rows"].as_array().unwrap() {
        for rival in ["bridge+nft", "bridge+iptables"] {
            assert!(
                row["vs_rivals"][rival].as_f64().is_some_and(|r| r > 0.0),
                "no ratio to {rival}: {row}"
            );
        }
    }
    assert_eq!(
        report["notes"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(bench_leftovers(&host, pid, &targets), Vec::<String>::new());
    assert_eq!(
        call_iptables(),
        sysctl_before,
        "the host's br_netfilter setting changed"
    );
    assert_eq!(
        String::from_utf8_lossy(&host.sh("nft", &["list", "tables"]).stdout),
        String::from_utf8_lossy(&tables_before),
        "nftables tables left on the host"
    );
}

/// Issue 15: between containers on two hosts, netpath's overlay, the
/// kernel's vxlan design and the underlay, each figure positive with its
/// ratios to the kernel design and the underlay; nothing is left behind.
#[test]
fn overlay_bench_measures_across_hosts_and_leaves_nothing_behind() {
    let host = Host::with_deadline(BENCH_DEADLINE);
    let json =
        std::env::temp_dir().join(format!("netpath-bench-overlay-{}.json", std::process::id()));
    let (pid, stdout, stderr) = one_round(&host, &json, &["--overlay".as_ref()]);
    assert!(
        stdout.contains("xVXLAN") && stdout.contains("xUNDERLAY"),
        "no table: {stdout}"
    );
    assert!(stderr.contains("[1/21]"), "no progress shown: {stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(
        (&report["baseline"], &report["bound"]),
        (&"vxlan".into(), &"underlay".into())
    );
    assert_every_figure(&report, &CROSS_HOST_TARGETS);
    assert_eq!(
        bench_leftovers(&host, pid, &CROSS_HOST_TARGETS),
        Vec::<String>::new()
    );
}

#[test]
fn an_interrupted_bench_leaves_nothing_behind() {
    interrupt_while_measuring(&[], &TARGETS);
}

#[test]
fn an_interrupted_overlay_bench_leaves_nothing_behind() {
    interrupt_while_measuring(&["--overlay"], &CROSS_HOST_TARGETS);
}

/// Ctrl-C to `netpath bench ARGS` while it measures, when the beds of every
/// one of `targets` exist: it fails and removes them all.
fn interrupt_while_measuring(args: &[&str], targets: &[&str]) {
    let host = Host::with_deadline(BENCH_DEADLINE);
    let mut child = host
        .netpath_command()
        .args(["bench", "--seconds", "1", "--repeat", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Every bed is built by the second measurement; the beds take seconds.
    let progress = Lines::of(child.stderr.take().unwrap(), "bench's progress on stderr");
    let deadline = Instant::now() + patience(Duration::from_secs(120));
    while !progress
        .next_before(deadline, &"its second measurement ([2/...])")
        .contains("[2/")
    {}
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = output_within(child, Duration::from_secs(60), "bench after Ctrl-C").status;
    assert!(
        !status.success(),
        "an interrupted bench {args:?} must not report success"
    );
    assert_eq!(bench_leftovers(&host, pid, targets), Vec::<String>::new());
}

/// Issue 14: pod set-up latency of netpath-cni and the reference bridge
/// plugin, on a few pods; every figure is there and positive, and every
/// pod's namespace, veth, bridge and record is gone afterwards.
#[test]
fn cni_bench_measures_both_plugins_and_leaves_nothing_behind() {
    let host = Host::with_deadline(BENCH_DEADLINE);
    let json = std::env::temp_dir().join(format!("netpath-bench-cni-{}.json", std::process::id()));
    let (pid, stdout, _) = bench(
        &host,
        &[
            "--cni".as_ref(),
            "--pods".as_ref(),
            "3".as_ref(),
            "--concurrent".as_ref(),
            "2".as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ],
    );

    // The table: per pod phase and command, both plugins with positive figures.
    for phase in ["first/last", "sequential", "concurrent"] {
        for command in ["ADD", "DEL"] {
            for plugin in ["netpath", "bridge"] {
                let row = stdout
                    .lines()
                    .find(|l| l.split_whitespace().take(3).eq([phase, command, plugin]))
                    .unwrap_or_else(|| panic!("no {phase} {command} row of {plugin}:\n{stdout}"));
                let figures: Vec<f64> = row
                    .split_whitespace()
                    .skip(3)
                    .map(|f| f.parse().unwrap())
                    .collect();
                assert!(
                    figures.len() == 4 && figures.iter().all(|f| *f > 0.0),
                    "{row}"
                );
            }
        }
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // Three phases x two commands x two plugins.
    assert_eq!(rows.len(), 12, "{report}");
    for row in rows {
        // The first pod's ADD and the last pod's DEL are one run each.
        let pods = match row["phase"].as_str().unwrap() {
            "first/last" => 1,
            "sequential" => 3,
            _ => 2,
        };
        assert_eq!(row["runs_ms"].as_array().unwrap().len(), pods, "{row}");
    }

    // What the bench calls its things: `nbc` + pid + the plugin's initial.
    let prefix = format!("nbc{}", pid % 10000);
    let links =
        String::from_utf8_lossy(&host.sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    assert!(
        !links.contains(": np") && !links.contains(&prefix) && !links.contains(": veth"),
        "pod veths or bridges left behind:\n{links}"
    );
    let namespaces: Vec<String> = std::fs::read_dir(netns::NETNS_DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(
        namespaces,
        Vec::<String>::new(),
        "pod namespaces left behind"
    );
    for plugin in ["n", "b"] {
        let bridge = format!("{prefix}{plugin}");
        let record = store::cni::path(&bridge);
        assert!(!record.exists(), "{} left behind", record.display());
        let pins = pin_dir(&cni_datapath(&bridge));
        assert!(!pins.exists(), "{} left behind", pins.display());
    }
}

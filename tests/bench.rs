//! Issue 5: the benchmark runs end to end on a tiny setting, writes every
//! field, and leaves nothing behind, also when interrupted. It asserts no speed.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use common::Host;
use serde_json::Value;

const METRICS: [&str; 7] = [
    "tcp1_gbps",
    "tcp1_reverse_gbps",
    "tcp4_gbps",
    "tcp4_reverse_gbps",
    "udp64_pps",
    "rtt_p50_us",
    "rtt_p99_us",
];
const TARGETS: [&str; 4] = ["bridge", "xdp", "tc", "wire"];

/// What the bench calls its topologies: `nb` + pid + the target's initial.
fn bench_leftovers(host: &Host, pid: u32) -> Vec<String> {
    TARGETS
        .iter()
        .flat_map(|t| host.leftovers(&format!("nb{}{}", pid % 10000, &t[..1])))
        .collect()
}

#[test]
fn bench_runs_end_to_end_and_reports_every_figure() {
    let host = Host::new();
    let dir = std::env::temp_dir().join(format!("netpath-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, plot) = (dir.join("bench.json"), dir.join("bench.svg"));
    let child = host
        .netpath_command()
        .args(["bench", "--seconds", "1", "--repeat", "1", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("xBRIDGE") && stdout.contains("xWIRE"),
        "no table: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[1/24]"),
        "no progress shown"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "kernel",
        "cpus",
        "seconds",
        "repeat",
        "udp_generator",
        "rows",
        "scale",
    ] {
        assert!(report.get(key).is_some(), "JSON lacks {key}");
    }
    let rows = report["rows"].as_array().unwrap();
    for metric in METRICS {
        for target in TARGETS {
            let row = rows
                .iter()
                .find(|r| r["metric"] == metric && r["target"] == target)
                .unwrap_or_else(|| panic!("no row for {metric} on {target}"));
            assert_eq!(row["runs"].as_array().unwrap().len(), 1);
            assert!(
                row["median"].as_f64().unwrap() > 0.0,
                "{metric} on {target}: {row}"
            );
            assert!(
                row["vs_bridge"].as_f64().is_some() && row["vs_wire"].as_f64().is_some(),
                "{row}"
            );
            if !metric.starts_with("rtt") {
                assert!(
                    row["cpu_median"].as_f64().unwrap() > 0.0,
                    "{metric} on {target}: no CPU cost"
                );
            }
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<rect").count() > 28,
        "chart has no bars"
    );
    assert_eq!(bench_leftovers(&host, pid), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_interrupted_bench_leaves_nothing_behind() {
    let host = Host::new();
    let mut child = host
        .netpath_command()
        .args(["bench", "--seconds", "1", "--repeat", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut progress = BufReader::new(child.stderr.take().unwrap()).lines();
    // Interrupt while measuring, when every topology exists.
    assert!(
        progress.any(|l| l.unwrap().contains("[2/")),
        "bench showed no progress"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "an interrupted bench must not report success"
    );
    assert_eq!(bench_leftovers(&host, pid), Vec::<String>::new());
}

//! `cargo xtask test --kernel K`: netpath's integration tests inside a
//! Debian kernel booted in qemu. The guest runs this machine's own
//! userland (its `/` over 9p, read-only, under a tmpfs overlay), so the
//! test binaries built here run there unchanged; results come back through
//! a second, writable 9p share.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    build, initramfs,
    kernel::{self, Kernel, SERIES, Selection, Series},
};

/// The integration tests the matrix runs: binary, then exact test names.
/// Up/down in every mode, the bridge-counter proof that xdp and tc carry
/// TCP, UDP and ping, the FDB, mode switches, pins surviving the loader,
/// trace, and the overlay's data plane.
const SELECTION: &[(&str, &[&str])] = &[
    (
        "datapath_load",
        &[
            "every_program_passes_the_verifier",
            "pins_of_another_layout_are_refused",
        ],
    ),
    // The programs' decision on crafted frames, on this kernel's verifier and helpers.
    ("decision", &[]),
    (
        "topology",
        &[
            "four_containers_reach_each_other_and_status_matches_the_machine",
            "down_removes_everything_and_is_idempotent",
        ],
    ),
    (
        "fast_path",
        &[
            "bridge_mode_shows_up_on_the_bridge_counter",
            "xdp_mode_carries_bulk_traffic",
            "tc_mode_carries_bulk_traffic",
            "what_the_fast_path_does_not_know_still_works",
            "fdb_lists_every_container_and_learned_entries_age_out",
            "the_datapath_survives_a_killed_loader_and_is_adopted",
            "mode_switches_live_without_losing_the_ping",
            "every_mode_switch_leaves_the_target_modes_offloads",
            "tc_mode_carries_ipv6_bulk_traffic",
            "tc_mode_through_tcx_links_carries_the_traffic",
            "run_brings_up_the_default_topology_in_the_kernels_default_mode",
        ],
    ),
    (
        "observability",
        &[
            "trace_writes_a_pcap_that_tcpdump_reads",
            "a_killed_tracer_stops_tracing_and_a_second_is_refused",
        ],
    ),
    ("reliability", &["a_port_gone_without_run_is_no_black_hole"]),
    // Encap and decap through the collect-metadata vxlan device, the
    // underlay check, VNI isolation, the outer source address (pinned from
    // 6.0, a warning before), unclaimed VXLAN dropped by nftables, and the
    // overlay over WireGuard (the module Debian builds). The etcd test is left to the native
    // run: its deadlines (1 s to program a change) measure etcd and the
    // control plane, not the kernel, and a TCG guest misses them.
    (
        "overlay",
        &[
            "three_hosts_carry_ping_tcp_and_udp_on_the_fast_path",
            "a_frame_from_an_unknown_underlay_address_is_dropped_and_counted",
            "two_overlays_on_the_same_hosts_are_isolated",
            "the_outer_source_is_the_nodes_underlay_address",
            "vxlan_no_overlay_claims_is_dropped_and_counted",
            "the_overlay_over_wireguard_is_sealed_and_forged_tunnel_traffic_is_dropped",
            // Network policy across nodes: ingress judged by the vxlan
            // device's program, remote pods selected by their records.
            "network_policy_holds_across_the_overlay",
            // `upgrade` replacing the decap program: a clsact filter's
            // before 6.6, a tcx link's after.
            "upgrade_replaces_the_decap_program_on_the_vxlan_device",
            // Before tcx (6.6), no underlay hook: the vxlan device
            // decapsulates everything.
            "vxlan_to_containers_is_decapsulated_on_the_underlay_not_by_the_vxlan_device",
        ],
    ),
    // Network policy: the judgement's BPF-to-BPF calls, the LPM tables and
    // connection tracking on this kernel's verifier and maps; the policy's
    // own program on a host veth's egress (clsact). The xdp and bridge
    // mode tables run natively only: their judgement is the same code, and
    // each table costs minutes under TCG.
    (
        "policy",
        &[
            "the_policy_case_table_holds_in_tc_mode",
            "frames_the_host_routes_meet_the_policy",
        ],
    ),
    // The source check on this kernel's verifier; bridge entries that do not move.
    (
        "hostile",
        &[
            "garbage_frames_are_dropped_and_counted",
            "a_forged_victim_keeps_its_traffic",
            "a_vanished_port_leaves_no_entry_and_no_black_hole",
        ],
    ),
];

/// What the kernel with netkit (6.12) runs: netkit mode carrying TCP, UDP
/// and ping past the bridge with every frame judged, the default mode
/// picking netkit and saying so, and network policy and a pod's rates held
/// on netkit pairs (the forwarding program judges a redirected frame once,
/// the policy's program on the primary's egress the bridge's frames); and,
/// with tcx there, the overlay's underlay hook: it decapsulates past the
/// vxlan device, and its checks of the inner frame hold on this verifier.
const NETKIT_SELECTION: &[(&str, &[&str])] = &[
    (
        "fast_path",
        &[
            "netkit_mode_carries_bulk_traffic",
            "run_brings_up_the_default_topology_in_the_kernels_default_mode",
        ],
    ),
    ("policy", &["the_policy_case_table_holds_in_netkit_mode"]),
    ("cni", &["a_pods_bandwidth_holds_both_ways_on_netkit_pairs"]),
    (
        "overlay",
        &[
            "vxlan_to_containers_is_decapsulated_on_the_underlay_not_by_the_vxlan_device",
            "decap_checks_the_inner_frame_as_the_senders_port_would",
        ],
    ),
];

/// Test binaries of the selection a kernel cannot run, and why; the report
/// lists them as not run, never as passed.
const NOT_ON: &[(&str, &str, &str)] = &[(
    "5.10",
    "decision",
    "BPF_PROG_TEST_RUN of 5.10 takes no xdp_md context (5.16) and refuses the __sk_buff fields the tests set",
)];

/// NETPATH_TEST_SLOW for the tests in the guest: how much longer their
/// fixed waits (e.g. for a server to start) should be under TCG.
const TEST_SLOWDOWN: u32 = 10;

/// Modules netpath and its tests use that Debian builds as modules; the
/// guest loads each one its kernel has (some are built in, some absent).
const GUEST_MODULES: &[&str] = &[
    "veth",
    "bridge",
    "8021q",
    "ipv6",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "nf_tables",
    "nft_counter",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
    "nft_masq",
    "nft_meta_bridge",
    "nf_conntrack_bridge",
    "vxlan",
    "wireguard",
];

/// Kernels named by `--kernel` (repeated, comma lists, or `all`), in order.
pub fn parse(names: &[String]) -> Result<Vec<&'static Series>> {
    let mut chosen: Vec<&'static Series> = Vec::new();
    for name in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
        let wanted: Vec<&'static Series> = match name {
            "all" => SERIES.iter().collect(),
            _ => SERIES.iter().filter(|s| s.name == name).collect(),
        };
        if wanted.is_empty() {
            let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
            bail!(
                "unknown kernel {name:?}: --kernel takes {} or all",
                known.join(", ")
            );
        }
        for series in wanted {
            if !chosen.iter().any(|c| c.name == series.name) {
                chosen.push(series);
            }
        }
    }
    Ok(chosen)
}

/// What one test binary runs in the guest.
struct TestRun {
    name: String,
    executable: PathBuf,
    filters: Vec<String>,
}

/// Outcome of one kernel.
struct Outcome {
    series: &'static str,
    release: String,
    passed: Vec<String>,
    failed: Vec<String>,
    /// Why the run as a whole failed (boot, timeout, crash), if it did.
    problem: Option<String>,
    wall: Duration,
    /// Test binaries this kernel cannot run, with the reason.
    not_run: Vec<String>,
}

/// Builds the tests natively, then boots each kernel in turn and runs them
/// inside; prints a table and fails if any test failed on any kernel.
/// `only`, when not empty, replaces the selection: `BINARY` or `BINARY::TEST`.
pub fn test(kernels: &[&'static Series], only: &[String], timeout: Duration) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "cargo xtask test --kernel shares the host's / with qemu and needs root: run it as root, e.g. `sudo -E cargo xtask test --kernel 6.1`"
        );
    }
    let executables = test_binaries()?;
    let guests = kernels
        .iter()
        .map(|series| {
            let chosen = match (only.is_empty(), series.selection) {
                (false, _) => chosen_by(only),
                (true, Selection::Matrix) => listed(SELECTION),
                (true, Selection::Netkit) => listed(NETKIT_SELECTION),
            };
            Ok((*series, kernel::get(series)?, runs(chosen, &executables)?))
        })
        .collect::<Result<Vec<_>>>()?;
    // Side by side, as many at once as the host has cores, each core taking
    // the next kernel when its guest is done: a TCG guest keeps about one
    // host core busy whatever its vCPUs (measured: 393 CPU-seconds of qemu
    // in 383 s of wall time), so one after the other they leave the other
    // cores idle.
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::Mutex::new(guests.iter());
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..at_once.min(guests.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let guest = next.lock().expect("a runner panicked").next();
                        let Some((series, kernel, runs)) = guest else {
                            return done;
                        };
                        done.push(run_kernel(series, kernel, runs, timeout));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a guest's runner panicked"))
            .collect()
    });
    let mut outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;
    outcomes.sort_by_key(|o| SERIES.iter().position(|s| s.name == o.series));
    report(&outcomes);
    if outcomes
        .iter()
        .any(|o| !o.failed.is_empty() || o.problem.is_some())
    {
        bail!(
            "the kernel matrix has failures (logs in {})",
            results_root().display()
        );
    }
    Ok(())
}

/// `cargo test --no-run` builds the test binaries (and the netpath binary
/// they run); cargo prints where each binary is.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = build::cargo("stable")
        .args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(path)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            executables.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    Ok(executables)
}

/// A selection as binaries and test names.
fn listed(selection: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    selection
        .iter()
        .map(|(binary, tests)| {
            (
                binary.to_string(),
                tests.iter().map(|t| t.to_string()).collect(),
            )
        })
        .collect()
}

/// `--kernel`'s arguments, `BINARY` or `BINARY::TEST`, as binaries and test
/// names.
fn chosen_by(only: &[String]) -> Vec<(String, Vec<String>)> {
    let mut chosen: Vec<(String, Vec<String>)> = Vec::new();
    for spec in only {
        let (binary, test) = match spec.split_once("::") {
            Some((b, t)) => (b, Some(t.to_owned())),
            None => (spec.as_str(), None),
        };
        match chosen.iter_mut().find(|(b, _)| b == binary) {
            Some((_, tests)) => tests.extend(test),
            None => chosen.push((binary.to_owned(), test.into_iter().collect())),
        }
    }
    chosen
}

/// The runs of `selection`'s binaries, found among `executables`.
fn runs(
    selection: Vec<(String, Vec<String>)>,
    executables: &[(String, PathBuf)],
) -> Result<Vec<TestRun>> {
    selection
        .into_iter()
        .map(|(name, filters)| {
            let executable = executables
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| p.clone())
                .with_context(|| {
                    format!(
                        "no integration test binary {name} (known: {})",
                        known(executables)
                    )
                })?;
            Ok(TestRun {
                name,
                executable,
                filters,
            })
        })
        .collect()
}

fn known(executables: &[(String, PathBuf)]) -> String {
    executables
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn results_root() -> PathBuf {
    build::workspace_root().join("target/kernel-matrix")
}

fn run_kernel(
    series: &'static Series,
    kernel: &Kernel,
    runs: &[TestRun],
    timeout: Duration,
) -> Result<Outcome> {
    let not_run: Vec<String> = NOT_ON
        .iter()
        .filter(|(kernel, binary, _)| {
            *kernel == series.name && runs.iter().any(|r| r.name == *binary)
        })
        .map(|(_, binary, why)| format!("{binary}: {why}"))
        .collect();
    let runs: Vec<&TestRun> = runs
        .iter()
        .filter(|r| {
            !NOT_ON
                .iter()
                .any(|(k, b, _)| *k == series.name && *b == r.name)
        })
        .collect();
    let runs = runs.as_slice();
    let started = Instant::now();
    let share = results_root().join(series.name).join("share");
    let problem = boot(
        series,
        kernel,
        &share,
        &stage_two(kernel, runs),
        "the selected tests",
        timeout,
    )?;
    let wall = started.elapsed();

    let mut outcome = Outcome {
        series: series.name,
        release: kernel.release.clone(),
        passed: Vec::new(),
        failed: Vec::new(),
        problem,
        wall,
        not_run,
    };
    for run in runs {
        let log = fs::read_to_string(share.join(format!("{}.log", run.name))).unwrap_or_default();
        let rc = fs::read_to_string(share.join(format!("{}.rc", run.name))).ok();
        let (mut passed, mut failed) = (0, 0);
        for line in log.lines() {
            let Some(rest) = line.strip_prefix("test ") else {
                continue;
            };
            if let Some(test) = rest.strip_suffix(" ... ok") {
                outcome.passed.push(format!("{}::{test}", run.name));
                passed += 1;
            } else if let Some(test) = rest.strip_suffix(" ... FAILED") {
                outcome.failed.push(format!("{}::{test}", run.name));
                failed += 1;
            }
        }
        // A binary that did not run, crashed, or ran nothing is a failure,
        // never a quiet pass.
        let problem = match rc.as_deref().map(str::trim) {
            None => Some(format!("{} did not finish", run.name)),
            Some("0") if passed == 0 => Some(format!("{} ran no test", run.name)),
            Some(code) if code != "0" && failed == 0 => {
                Some(format!("{} exited with {code} (see its log)", run.name))
            }
            _ => None,
        };
        if outcome.problem.is_none() {
            outcome.problem = problem;
        }
    }
    if outcome.problem.is_none() && !share.join("exit").exists() {
        outcome.problem =
            Some("the guest stopped before the tests finished (see console.log)".into());
    }
    Ok(outcome)
}

/// Stage two, run by the host's /bin/sh as PID 1 of the guest in the new
/// root: fresh kernel filesystems, the kernel's modules, then the tests.
fn stage_two(kernel: &Kernel, runs: &[&TestRun]) -> String {
    let mut script = guest_setup(kernel);
    for run in runs {
        // Ignored tests need a kernel the host may not have (netkit's):
        // a guest that has it runs them when named.
        let exact = if run.filters.is_empty() {
            ""
        } else {
            " --exact --include-ignored"
        };
        script.push_str(&format!(
            "echo \"vm: {name}\"\n({exe} --test-threads=1 --show-output{exact} {filters} 2>&1; echo $? > /vmout/{name}.rc) | tee /vmout/{name}.log\n",
            name = run.name,
            exe = run.executable.display(),
            filters = run.filters.join(" "),
        ));
    }
    script.push_str(POWER_OFF);
    script
}

/// The end of every guest's script: marks it done and powers the guest off.
const POWER_OFF: &str = "echo done > /vmout/exit\nsync\necho o > /proc/sysrq-trigger\nsleep 10\n";

/// The start of every guest's script: file systems, the kernel's modules,
/// the checkout as the working directory.
fn guest_setup(kernel: &Kernel) -> String {
    let workdir = build::workspace_root().join("netpath");
    format!(
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 NETPATH_TEST_SLOW={slow}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
# /tmp stays the overlay's: writable, and the host's own /tmp (a checkout
# may live there) shows through.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "vm: $(uname -r): userland from the host after $(cut -d' ' -f1 /proc/uptime) s"
mkdir -p /lib/modules/{release}
mount --bind {modules} /lib/modules/{release}
modprobe -aq {guest_modules} || for m in {guest_modules}; do
    grep -q "^$m " /proc/modules || grep -q "/$m.ko" /lib/modules/{release}/modules.builtin || echo "vm: {release} has no module $m"
done
ip link set lo up
echo "vm: modules loaded after $(cut -d' ' -f1 /proc/uptime) s"
cd {workdir}
# What still runs, every 30 s: shows where a guest that timed out hung.
(while sleep 30; do ps -eo pid,etimes,args > /vmout/ps.new && mv /vmout/ps.new /vmout/ps.txt; done) &
"#,
        release = kernel.release,
        modules = kernel.modules.display(),
        guest_modules = GUEST_MODULES.join(" "),
        workdir = workdir.display(),
        slow = TEST_SLOWDOWN,
    )
}

/// `netpath bench ARGS` inside `series`' kernel: its report on this
/// terminal and in the guest's share (`--json` and `--plot` paths are the
/// guest's, which sees the host's `/` read-only but /tmp).
pub fn bench(series: &'static Series, args: &[String], timeout: Duration) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "cargo xtask bench --kernel shares the host's / with qemu and needs root: run it as root"
        );
    }
    let kernel = kernel::get(series)?;
    let share = results_root()
        .join(format!("{}-bench", series.name))
        .join("share");
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut script = guest_setup(&kernel);
    script.push_str(&format!(
        "({netpath} bench {args} 2>&1; echo $? > /vmout/bench.rc) | tee /vmout/bench.log\n",
        netpath = build::netpath_binary().display(),
        args = quoted.join(" "),
    ));
    script.push_str(POWER_OFF);
    let problem = boot(series, &kernel, &share, &script, "netpath bench", timeout)?;
    let rc = fs::read_to_string(share.join("bench.rc")).unwrap_or_default();
    match (problem, rc.trim()) {
        (None, "0") => Ok(()),
        (problem, rc) => bail!(
            "netpath bench in the {} guest failed (exit {rc:?}{}; log {})",
            series.name,
            problem.map(|p| format!(", {p}")).unwrap_or_default(),
            share.join("bench.log").display()
        ),
    }
}

fn qemu(kernel: &Kernel, initrd: &Path, share: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // KVM here is a software module without vmx/svm: qemu aborts with it.
    // TCG on one host thread for both vCPUs: a guest kept about one host
    // core busy with a thread per vCPU anyway (393 CPU-seconds in 383 s),
    // and under multi-threaded TCG guests' kernels died of what no real
    // CPU does: an int3 oops (a static key patched while another vCPU ran
    // it) and a double fault on 6.12, both CPUs locked up in softirq for
    // minutes on 6.1, each in a test that passed on the runs before.
    cmd.args([
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-m",
        "2G",
        "-smp",
        "2",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&kernel.image)
    .arg("-initrd")
    .arg(initrd)
    // panic=-1: a guest that panics reboots, which -no-reboot turns into exit.
    .args([
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 mitigations=off",
    ])
    .args([
        "-virtfs",
        "local,path=/,mount_tag=root,readonly=on,multidevs=remap,security_model=none",
    ])
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=out,security_model=none",
        share.display()
    ));
    cmd
}

/// Boots `kernel` with `script` as the guest's second stage, its results
/// in `share` (emptied first; the guest's `/vmout`), and waits for the
/// guest to power off or for `timeout`; returns what went wrong, if
/// anything.
fn boot(
    series: &Series,
    kernel: &Kernel,
    share: &Path,
    script: &str,
    what: &str,
    timeout: Duration,
) -> Result<Option<String>> {
    let dir = share.parent().context("a share has a parent directory")?;
    let _ = fs::remove_dir_all(share);
    fs::create_dir_all(share).with_context(|| format!("creating {}", share.display()))?;
    let initrd = dir.join("initramfs.cpio");
    initramfs::build(kernel, &initrd)?;
    fs::write(share.join("run.sh"), script)?;
    eprintln!(
        "kernel {}: booting {} (TCG) for {what}, timeout {} s",
        series.name,
        kernel.release,
        timeout.as_secs()
    );
    let mut qemu = qemu(kernel, &initrd, share)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let console = copy_console(&mut qemu, series.name, &dir.join("console.log"))?;
    let problem = wait_with_timeout(&mut qemu, timeout)?;
    let _ = console.join();
    Ok(problem)
}

/// Shows the guest's console with a `[K]` prefix and keeps it in `log`.
fn copy_console(qemu: &mut Child, name: &str, log: &Path) -> Result<thread::JoinHandle<()>> {
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let prefix = format!("[{name}] ");
    Ok(thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            eprintln!("{prefix}{line}");
            let _ = writeln!(file, "{line}");
        }
    }))
}

/// Waits for qemu; kills it after `timeout`, so a hung guest fails the
/// kernel instead of hanging the matrix.
fn wait_with_timeout(qemu: &mut Child, timeout: Duration) -> Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = qemu.try_wait()? {
            return Ok((!status.success()).then(|| format!("qemu exited with {status}")));
        }
        if Instant::now() >= deadline {
            qemu.kill()?;
            qemu.wait()?;
            return Ok(Some(format!(
                "timed out after {} s: killed (ps.txt lists what ran)",
                timeout.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn report(outcomes: &[Outcome]) {
    eprintln!("\nkernel matrix:");
    eprintln!(
        "{:<7} {:<22} {:>6} {:>6} {:>8}  result",
        "kernel", "release", "passed", "failed", "wall"
    );
    for o in outcomes {
        let result = match &o.problem {
            Some(problem) => problem.clone(),
            None if o.failed.is_empty() => "ok".into(),
            None => "FAILED".into(),
        };
        eprintln!(
            "{:<7} {:<22} {:>6} {:>6} {:>7}s  {result}",
            o.series,
            o.release,
            o.passed.len(),
            o.failed.len(),
            o.wall.as_secs()
        );
    }
    for o in outcomes {
        for (verdict, tests) in [
            ("passed", &o.passed),
            ("FAILED", &o.failed),
            ("not run", &o.not_run),
        ] {
            if !tests.is_empty() {
                eprintln!("\n{verdict} on {} ({}):", o.series, o.release);
                for test in tests {
                    eprintln!("  {test}");
                }
            }
        }
    }
}

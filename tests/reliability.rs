//! Issue 6: load, churn, loader faults, limits, bad frames, isolation and
//! bad input. Each test would fail if the behaviour broke.

mod common;

use std::{
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use common::{
    BridgeForwardCounter, Host, Running, Topology, capture::Capture, frame, in_ns, iperf3,
    link_packets, outside, parse_mac, ping, send_raw_frames, spawn_in, unique_name, words,
};
use netpath::{
    datapath::{
        hooks,
        object::{BPFFS, pin_dir},
    },
    host::netns,
    model::naming::nat_table,
    ops::fault,
    store,
};
use std::os::unix::process::ExitStatusExt;

/// 32 containers, 16 disjoint pairs of iperf3 TCP for 10 s in each mode:
/// every stream completes without stalling, and in xdp and tc mode the fast
/// path carries it: the bridge's forward hook (counted by nftables, outside
/// the programs) sees at most 1% of the frames and the programs redirected
/// at least 99%. Bridge mode is the control: there the bridge counts them.
#[test]
fn sixteen_pairs_of_tcp_in_every_mode() {
    let t = Topology::up(
        "load",
        &[
            "--containers",
            "32",
            "--subnet",
            "10.140.0.0/24",
            "--mode",
            "xdp",
        ],
    );
    let redirected = |t: &Topology| -> u64 {
        t.program_counters()
            .iter()
            .map(|(_, c)| c["redirected"].as_u64().unwrap())
            .sum()
    };
    for mode in ["xdp", "tc", "bridge"] {
        t.netpath_ok(&["mode", "--name", &t.name, mode]);
        assert_eq!(
            t.status()["mode"],
            mode,
            "the topology is not in {mode} mode"
        );
        let servers: Vec<iperf3::Server> = (0..16)
            .map(|p| iperf3::Server::start(&t.ns(&format!("c{}", 2 * p + 1)), 5401))
            .collect();
        // Counted from here: the frames of the iperf3 runs (and the few
        // ARP and IPv6 frames the containers send meanwhile).
        let bridge = BridgeForwardCounter::from_ports_of(&t);
        let sent_before: u64 = (0..32)
            .map(|c| link_packets(&t.ns(&format!("c{c}")), "eth0").1)
            .sum();
        let (verdicts_before, redirected_before) = if mode == "bridge" {
            (0, 0)
        } else {
            (t.all_verdicts(), redirected(&t))
        };
        let clients: Vec<iperf3::Client> = (0..16)
            .map(|p| {
                let server_ip = format!("10.140.0.{}", 2 * p + 3);
                iperf3::Client::start(&t.ns(&format!("c{}", 2 * p)), &server_ip, 5401, 10, &[])
            })
            .collect();
        for (p, client) in clients.into_iter().enumerate() {
            let report = client.report();
            let intervals = report["intervals"].as_array().unwrap();
            assert!(intervals.len() >= 9, "{mode}: pair {p} ended early");
            for (i, interval) in intervals.iter().enumerate() {
                let bps = interval["sum"]["bits_per_second"].as_f64().unwrap();
                assert!(bps > 0.0, "{mode}: pair {p} stalled in second {i}");
            }
            let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
            let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
            // The receiver stops counting when the sender stops: what was in
            // flight then is not lost (TCP), just not counted.
            assert!(
                received > 0 && received * 10 >= sent * 9,
                "{mode}: pair {p}: {received} of {sent} bytes"
            );
        }
        for server in servers {
            server.finish();
        }
        let sent: u64 = (0..32)
            .map(|c| link_packets(&t.ns(&format!("c{c}")), "eth0").1)
            .sum::<u64>()
            - sent_before;
        let through_bridge = bridge.packets();
        println!(
            "{mode}: the containers sent {sent} frames, the bridge forwarded {through_bridge}"
        );
        assert!(
            sent > 10_000,
            "{mode}: only {sent} frames sent: too little traffic to tell the paths apart"
        );
        if mode == "bridge" {
            // The control: without programs the bridge forwards them all,
            // so the counter above can tell the paths apart.
            assert!(
                through_bridge * 10 >= sent * 9,
                "bridge: the bridge forwarded only {through_bridge} of {sent} frames"
            );
            continue;
        }
        assert!(
            through_bridge * 100 <= sent,
            "{mode}: the bridge forwarded {through_bridge} of {sent} frames (> 1%): the fast path is bypassed"
        );
        let redirected = redirected(&t) - redirected_before;
        assert!(
            redirected * 100 >= sent * 99,
            "{mode}: the programs redirected {redirected} of {sent} frames (< 99%)"
        );
        // Every frame the containers sent met a verdict of the programs.
        let decided = t.all_verdicts() - verdicts_before;
        assert!(
            decided.abs_diff(sent) <= 50 + sent / 1000,
            "{mode}: {sent} frames sent, {decided} decided"
        );
    }
}

/// Ports come and go, one namespace is deleted behind netpath's back, and a
/// container comes back with the same MAC on a new port, while other pairs
/// keep their traffic.
#[test]
fn churn_under_load() {
    let mut run = Running::start("churn", &["--containers", "5", "--subnet", "10.141.0.0/24"]);
    let (t, name) = (&run.topology, run.topology.name.clone());
    let pinger = spawn_in(
        &t.ns("c0"),
        &[
            "ping",
            "-c",
            "300",
            "-i",
            "0.02",
            "-W",
            "1",
            "-q",
            "10.141.0.3",
        ],
    );
    let server = iperf3::Server::start(&t.ns("c3"), 5402);
    let client = iperf3::Client::start(&t.ns("c2"), "10.141.0.5", 5402, 5, &[]);

    t.netpath_ok(&["port", "add", "--name", &name, "x1"]);
    t.netpath_ok(&["port", "del", "--name", &name, "x1"]);
    let status = t.status();
    let c4 = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["netns"] == t.ns("c4"))
        .unwrap()
        .clone();
    let (c4_mac, c4_ifindex) = (
        c4["mac"].as_str().unwrap().to_owned(),
        c4["ifindex"].as_u64().unwrap(),
    );
    // A crashed runtime: the namespace goes, netpath is not asked.
    assert!(
        outside("ip", &["netns", "del", &t.ns("c4")])
            .status
            .success()
    );
    common::within(
        Duration::from_secs(3),
        "run forgetting the vanished port's entries and record",
        || {
            t.fdb()
                .iter()
                .all(|e| e["ifindex"].as_u64() != Some(c4_ifindex))
                && !t.status()["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["netns"] == t.ns("c4"))
        },
    );
    // The container comes back on a new port, same MAC, same address.
    let started = Instant::now();
    t.netpath_ok(&[
        "port",
        "add",
        "--name",
        &name,
        "c4b",
        "--mac",
        &c4_mac,
        "--ip",
        "10.141.0.6/24",
    ]);
    let entry = t
        .fdb()
        .into_iter()
        .find(|e| e["mac"] == c4_mac.as_str())
        .expect("MAC back in the FDB");
    assert_eq!(entry["ifname"], t.ns("c4b").as_str());
    assert!(
        ping(&t.ns("c0"), "10.141.0.6"),
        "the re-created container gets no traffic"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // The report asserts that iperf3 between c2 and c3 did not break.
    client.report();
    server.finish();
    let out = common::output_within(pinger, Duration::from_secs(60), "the pinger");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains(" 300 received"),
        "c0 -> c1 lost packets during churn: {summary}"
    );
    assert!(run.interrupt());
    assert_eq!(run.topology.leftovers(&name), Vec::<String>::new());
}

/// `up` of a NAT topology in tc mode, so that every phase exists: record,
/// bridge, containers, NAT, maps, attach per port, built.
const FAULT_CONTAINERS: usize = 3;

fn faulty_up_args(name: &str) -> Vec<String> {
    [
        "up",
        "--name",
        name,
        "--containers",
        "3",
        "--subnet",
        "10.142.0.0/24",
        "--mode",
        "tc",
        "--nat",
    ]
    .map(String::from)
    .to_vec()
}

/// Every fault point of such an `up`, in the order `up` reaches them.
fn fault_points() -> Vec<fault::Point> {
    use fault::Point;
    let mut points = vec![Point::Record, Point::Bridge];
    points.extend((0..FAULT_CONTAINERS).map(Point::Container));
    points.extend([Point::Nat, Point::Maps]);
    points.extend((0..FAULT_CONTAINERS).map(Point::Attached));
    points.push(Point::Built);
    points
}

/// Runs a faulty `up` of `name` with `NETPATH_FAULT=point:action`.
fn up_with_fault(
    host: &Host,
    name: &str,
    point: fault::Point,
    action: &str,
) -> std::process::Output {
    host.netpath_command()
        .args(faulty_up_args(name))
        .env(fault::FAULT_ENV, format!("{point}:{action}"))
        .output()
        .expect("running netpath up")
}

/// The host's IPv4 forwarding sysctl (the faulty topologies' only family).
fn ip_forward(host: &Host) -> String {
    String::from_utf8_lossy(&host.sh("sysctl", &["-n", "net.ipv4.ip_forward"]).stdout)
        .trim()
        .to_owned()
}

/// Ports of topology `name` that have netpath's tc program attached.
fn ports_with_tc_program(host: &Host, name: &str) -> usize {
    match hooks::TcMethod::chosen() {
        // tcx links are pinned, one per port.
        hooks::TcMethod::Tcx => std::fs::read_dir(hooks::Hook::Tc.dir(&pin_dir(name)))
            .map(|d| d.count())
            .unwrap_or(0),
        // clsact filters are not pinned: ask the kernel.
        hooks::TcMethod::Clsact => (0..FAULT_CONTAINERS)
            .filter(|c| {
                let out = host.sh(
                    "tc",
                    &["filter", "show", "dev", &format!("{name}-c{c}"), "ingress"],
                );
                String::from_utf8_lossy(&out.stdout).contains(netpath_common::programs::TC_FORWARD)
            })
            .count(),
    }
}

/// What a loader killed at `point` must have left: proof that the kill hit
/// that phase, not an earlier or later one.
fn assert_killed_at(host: &Host, name: &str, point: fault::Point) {
    use fault::Point;
    let record = store::topology::load(name)
        .expect("reading the record")
        .unwrap_or_else(|| panic!("{point}: no record"));
    assert!(!record.complete, "{point}: the record says complete");
    let bridge_exists = host
        .sh("ip", &["link", "show", &format!("{name}-br")])
        .status
        .success();
    assert_eq!(bridge_exists, point != Point::Record, "{point}: bridge");
    let containers = (0..FAULT_CONTAINERS)
        .filter(|c| netns::exists(&format!("{name}-c{c}")))
        .count();
    let expected_containers = match point {
        Point::Record | Point::Bridge => 0,
        Point::Container(n) => n + 1,
        _ => FAULT_CONTAINERS,
    };
    assert_eq!(
        containers, expected_containers,
        "{point}: container namespaces"
    );
    let nat_on = !matches!(point, Point::Record | Point::Bridge | Point::Container(_));
    assert_eq!(nat_table_exists(host, name), nat_on, "{point}: NAT table");
    assert_eq!(
        ip_forward(host),
        if nat_on { "1" } else { "0" },
        "{point}: ip_forward"
    );
    let maps_pinned = matches!(point, Point::Maps | Point::Attached(_) | Point::Built);
    assert_eq!(
        pin_dir(name)
            .join(netpath_common::maps::FDB_STATIC)
            .exists(),
        maps_pinned,
        "{point}: pinned maps"
    );
    let attached = match point {
        Point::Attached(n) => n + 1,
        Point::Built => FAULT_CONTAINERS,
        _ => 0,
    };
    assert_eq!(
        ports_with_tc_program(host, name),
        attached,
        "{point}: ports with the tc program"
    );
}

fn nat_table_exists(host: &Host, name: &str) -> bool {
    host.sh("nft", &["list", "table", "inet", &nat_table(name)])
        .status
        .success()
}

/// Nothing of topology `name` on `host`: links, namespaces, NAT table, pins,
/// record and locks, its claim on the NAT record, and forwarding as before.
fn assert_nothing_left(host: &Host, name: &str, when: &str) {
    assert_eq!(host.leftovers(name), Vec::<String>::new(), "{when}");
    let nat_users = host
        .run(|| store::nat::NatRecord::load(&store::nat::key()?))
        .expect("reading the NAT record")
        .users;
    assert!(
        !nat_users.contains(name),
        "{when}: {name} still counted as a NAT user"
    );
    assert_eq!(ip_forward(host), "0", "{when}: ip_forward not restored");
}

/// SIGKILL at every named phase of `up` (`NETPATH_FAULT=POINT:kill`): a
/// following `down` removes everything, and so does a repeated `up` (which
/// must then build a working topology) followed by `down`.
#[test]
fn sigkill_during_up_is_recovered() {
    let host = Host::new();
    assert_eq!(ip_forward(&host), "0", "a new namespace forwards nothing");
    for point in fault_points() {
        for recovery in ["down", "up"] {
            let name = unique_name("kil");
            let t = Topology::adopt(&host, &name);
            let out = up_with_fault(&host, &name, point, "kill");
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{point}: up was not killed there ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_killed_at(&host, &name, point);
            if recovery == "up" {
                host.netpath_ok(
                    &faulty_up_args(&name)
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>(),
                );
                assert_eq!(
                    t.status()["ports"].as_array().unwrap().len(),
                    FAULT_CONTAINERS,
                    "{point}: up after kill"
                );
                let before = t.counter(&t.ns("c0"), "redirected");
                assert!(
                    ping(&t.ns("c0"), "10.142.0.4"),
                    "{point}: c0 cannot reach c2 after up recovered"
                );
                assert!(
                    t.counter(&t.ns("c0"), "redirected") > before,
                    "{point}: no fast path after up recovered"
                );
                assert_eq!(
                    ports_with_tc_program(&host, &name),
                    FAULT_CONTAINERS,
                    "{point}: programs after up recovered"
                );
            }
            host.netpath_ok(&["down", "--name", &name]);
            assert_nothing_left(
                &host,
                &name,
                &format!("SIGKILL at {point}, then {recovery}"),
            );
        }
    }
}

/// A failure at every named phase of `up` (`NETPATH_FAULT=POINT:fail`) is
/// reported and rolled back to nothing, without a `down`.
#[test]
fn a_failure_at_every_phase_of_up_rolls_back() {
    let host = Host::new();
    for point in fault_points() {
        let name = unique_name("flt");
        let _t = Topology::adopt(&host, &name);
        let out = up_with_fault(&host, &name, point, "fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{point}: {stderr}");
        assert!(
            stderr.contains(&format!("injected fault at {point}"))
                && stderr.contains("rolled back"),
            "{point}: {stderr}"
        );
        assert_nothing_left(&host, &name, &format!("failure at {point}"));
    }
}

/// Two `up`s at once: one builds, the other is refused or finds it built;
/// two `run`s at once: the second is refused.
#[test]
fn two_loaders_on_one_topology() {
    let host = Host::new();
    let name = unique_name("two");
    let t = Topology::adopt(&host, &name);
    let topology = format!("--name {name} --containers 16 --subnet 10.143.0.0/24");
    let spawn = || {
        host.netpath_command()
            .arg("up")
            .args(words(&topology))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a, b].map(|up| common::output_within(up, Duration::from_secs(60), "an up"));
    let created = outs
        .iter()
        .filter(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("containers, mode")
        })
        .count();
    assert_eq!(created, 1, "exactly one up must build the topology");
    for out in &outs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() || text.contains("being changed by another netpath process"),
            "unexpected outcome: {text}"
        );
    }
    assert_eq!(t.status()["ports"].as_array().unwrap().len(), 16);
    assert!(ping(&t.ns("c0"), "10.143.0.17"));

    let run = host
        .netpath_command()
        .arg("run")
        .args(words(&topology))
        .arg("--keep")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::within(
        Duration::from_secs(10),
        "the first run taking its lock",
        || common::is_locked(&common::run_lock_path(&name)),
    );
    let second = host.netpath(&words(&format!("run {topology}")));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    common::output_within(run, Duration::from_secs(30), "netpath run after Ctrl-C");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already run by another"),
        "{:?}",
        second
    );
}

#[test]
fn jumbo_frames_work_or_are_refused_clearly() {
    for (i, mode) in ["tc", "bridge"].iter().enumerate() {
        let subnet = format!("10.{}.0.0/24", 145 + i);
        let t = Topology::up(
            "jum",
            &words(&format!(
                "--containers 2 --subnet {subnet} --mode {mode} --mtu 9000"
            )),
        );
        let peer = format!("10.{}.0.3", 145 + i);
        let out = in_ns(
            &t.ns("c0"),
            &[
                "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "8900", &peer,
            ],
        );
        assert!(
            out.status.success(),
            "{mode}: 8900-byte unfragmented ping failed"
        );
        let server = iperf3::Server::start(&t.ns("c1"), 5403);
        let client = iperf3::Client::start(&t.ns("c0"), &peer, 5403, 1, &["-M", "8900"]);
        // The report asserts that jumbo TCP worked.
        client.report();
        server.finish();
    }
    let host = Host::new();
    let name = unique_name("jx");
    let out = host.netpath(&words(&format!(
        "up --name {name} --containers 2 --subnet 10.147.0.0/24 --mode xdp --mtu 9000"
    )));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("xdp mode carries frames up to MTU"));
    assert_eq!(host.leftovers(&name), Vec::<String>::new());
    // Within its limit xdp mode carries large frames too.
    let t = Topology::up_on(
        &host,
        "jx",
        &words("--containers 2 --subnet 10.147.0.0/24 --mode xdp --mtu 3500"),
    );
    let out = in_ns(
        &t.ns("c0"),
        &words("ping -c 2 -W 2 -M do -s 3400 10.147.0.3"),
    );
    assert!(out.status.success(), "xdp: 3400-byte ping failed");
}

/// IPv6 (ND through the bridge, unicast on the fast path) works in both
/// fast modes; VLAN-tagged frames from a container that checks its sources
/// are dropped, counted (the check cannot see the sender behind the tag).
/// This kernel has no 8021q (no VLAN devices), so tagged frames are sent raw.
#[test]
fn ipv6_works_and_vlan_frames_are_refused() {
    for (i, mode) in ["xdp", "tc"].iter().enumerate() {
        let subnets = [
            format!("10.{}.0.0/24", 148 + i),
            format!("fd00:{}::/64", 148 + i),
        ];
        let t = Topology::up(
            "v6",
            &[
                "--containers",
                "2",
                "--subnet",
                &subnets[0],
                "--subnet",
                &subnets[1],
                "--mode",
                mode,
            ],
        );
        let (c0, c1) = (t.ns("c0"), t.ns("c1"));
        let before = t.counter(&c0, "redirected");
        let out = in_ns(
            &c0,
            &[
                "ping",
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &format!("fd00:{}::3", 148 + i),
            ],
        );
        assert!(out.status.success(), "{mode}: IPv6 ping failed");
        assert!(
            t.counter(&c0, "redirected") >= before + 3,
            "{mode}: IPv6 unicast did not take the fast path"
        );
        assert!(
            t.counter(&c0, "pass_multicast") > 0,
            "{mode}: ND did not go to the bridge"
        );

        let c1_mac = parse_mac(t.status()["ports"][1]["mac"].as_str().unwrap());
        let c0_mac = parse_mac(t.status()["ports"][0]["mac"].as_str().unwrap());
        // 802.1Q tag, VLAN 10, then IPv4.
        let tagged = frame(
            c1_mac,
            c0_mac,
            0x8100,
            &[&[0x00, 0x0a, 0x08, 0x00][..], &[0x45; 42]].concat(),
        );
        let rx_before = link_packets(&c1, "eth0").0;
        let refused_before = t.counter(&c0, "drop_protocol");
        assert_eq!(send_raw_frames(&c0, "eth0", &vec![tagged; 20]), 20);
        sleep(Duration::from_millis(200));
        assert_eq!(
            t.counter(&c0, "drop_protocol") - refused_before,
            20,
            "{mode}: tagged frames not refused"
        );
        // (c1 may hear some IPv6 chatter of c0 meanwhile, never 20 frames.)
        assert!(
            link_packets(&c1, "eth0").0 - rx_before < 20,
            "{mode}: tagged frames arrived"
        );
    }
}

/// Two topologies side by side (on one host) share nothing; pins are root's alone.
#[test]
fn topologies_are_isolated_and_pins_are_private() {
    let host = Host::new();
    let a = Topology::up_on(
        &host,
        "isa",
        &["--containers", "2", "--subnet", "10.152.0.0/24"],
    );
    let b = Topology::up_on(
        &host,
        "isb",
        &["--containers", "2", "--subnet", "10.153.0.0/24"],
    );
    let b_macs: Vec<[u8; 6]> = b.status()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| parse_mac(p["mac"].as_str().unwrap()))
        .collect();
    let a_mac_text = a.status()["ports"][0]["mac"].as_str().unwrap().to_owned();
    let a_mac = parse_mac(&a_mac_text);
    let unknown_before = a.counter(&a.ns("c0"), "pass_unknown");
    // Watch B's containers for any frame from A's c0.
    let filter = format!("ether src {a_mac_text}");
    let captures = Capture::start_all(&[(b.ns("c0"), &filter), (b.ns("c1"), &filter)]);
    let frames: Vec<Vec<u8>> = b_macs
        .iter()
        .flat_map(|m| {
            (0..50).map(|_| common::packets::ipv4(*m, a_mac, [10, 152, 0, 2], [10, 153, 0, 2]))
        })
        .collect();
    assert_eq!(send_raw_frames(&a.ns("c0"), "eth0", &frames), 100);
    for (capture, c) in captures.into_iter().zip(["c0", "c1"]) {
        let seen = capture.frames();
        assert!(
            seen.is_empty(),
            "frames of topology {} reached {c} of topology {}: {seen:?}",
            a.name,
            b.name
        );
    }
    assert_eq!(
        a.counter(&a.ns("c0"), "pass_unknown") - unknown_before,
        100,
        "B's MACs are unknown in A"
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = pin_dir(&a.name);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut pending = vec![dir.clone()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(
                mode & 0o077,
                0,
                "{} is open to others ({mode:o})",
                entry.path().display()
            );
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
}

/// Bad input to the verbs: a clear error, a documented exit code, and
/// nothing changed on the machine.
#[test]
fn bad_input_to_every_verb() {
    let t = Topology::up("cli", &["--containers", "2", "--subnet", "10.154.0.0/24"]);
    let ghost = unique_name("ghost");
    let fdb_before = t.fdb().len();
    let add_x = ["port", "add", "--name", &t.name, "x"];
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["up", "--bogus"], 2, "unexpected argument"),
        (vec!["up", "--name", &ghost, "--ageing", "0"], 1, "ageing"),
        (vec!["up", "--name", &ghost, "--mtu", "20"], 1, "MTU 20"),
        (
            vec!["up", "--name", &ghost, "--fdb-size", "1"],
            1,
            "FDB size",
        ),
        (
            vec!["up", "--name", &ghost, "--mode", "warp"],
            2,
            "invalid value",
        ),
        (vec!["status", "--name", &ghost], 1, "not up"),
        (vec!["port", "add", "--name", &ghost, "x"], 1, "not up"),
        (
            vec!["port", "add", "--name", &t.name, "c0"],
            1,
            "used twice",
        ),
        (
            [&add_x[..], &["--ip", "10.99.0.5/24"]].concat(),
            1,
            "not in subnet",
        ),
        (
            [&add_x[..], &["--mac", "zz:00:00:00:00:00"]].concat(),
            2,
            "not hex",
        ),
        (vec!["port", "del", "--name", &t.name, "nope"], 1, "no port"),
        (
            vec![
                "fdb",
                "add",
                "--name",
                &t.name,
                "01:00:5e:00:00:01",
                "--port",
                "c0",
            ],
            1,
            "not a unicast",
        ),
        (
            vec![
                "fdb",
                "add",
                "--name",
                &t.name,
                "02:00:00:00:00:01",
                "--port",
                "nope",
            ],
            1,
            "no port",
        ),
        (
            vec!["fdb", "del", "--name", &t.name, "02:00:00:00:00:77"],
            1,
            "no FDB entry",
        ),
        (vec!["fdb", "dump", "--name", &ghost], 1, "is topology"),
        (vec!["stats", "--name", &ghost], 1, "is topology"),
        (vec!["mode", "--name", &ghost, "tc"], 1, "not up"),
        (vec!["down", "--name", "bad name"], 1, "topology name"),
    ];
    for (args, code, expected) in cases {
        let out = t.netpath(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "netpath {args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "netpath {args:?}: expected {expected:?} in {stderr}"
        );
    }
    assert_eq!(t.leftovers(&ghost), Vec::<String>::new());
    assert_eq!(t.fdb().len(), fdb_before);
    assert_eq!(t.status()["ports"].as_array().unwrap().len(), 2);
}

/// `ip netns exec` runs netpath in a mount namespace of its own, with a
/// /sys of its own and no bpffs on /sys/fs/bpf: pins made there would go
/// when the command exits, and the datapath's links and FDB with them.
/// `up` refuses, names the way around, and leaves nothing behind.
#[test]
fn up_under_ip_netns_exec_is_refused_with_the_way_around() {
    let host = Host::new();
    let name = unique_name("nsx");
    let out = outside(
        "ip",
        &[
            "netns",
            "exec",
            &host.name,
            env!("CARGO_BIN_EXE_netpath"),
            "up",
            "--name",
            &name,
            "--containers",
            "2",
            "--subnet",
            "10.155.0.0/24",
            "--mode",
            "tc",
        ],
    );
    host.assert_refused(
        &out,
        &name,
        &["its parent does not share", "nsenter --net="],
    );
}

/// A `--name` that would reach outside netpath's directories (`../x`) is
/// refused by every verb before any file is touched.
#[test]
fn every_verb_refuses_a_name_that_escapes() {
    let host = Host::new();
    let victim = unique_name("esc");
    let escaping = format!("../{victim}");
    let bystanders: Vec<std::path::PathBuf> = ["lock", "run.lock", "trace.lock", "json"]
        .iter()
        .map(|suffix| std::path::Path::new("/run").join(format!("{victim}.{suffix}")))
        .collect();
    for path in &bystanders {
        std::fs::write(path, "not netpath's").unwrap();
    }
    let n = escaping.as_str();
    let verbs: Vec<Vec<&str>> = vec![
        vec!["up", "--name", n],
        vec!["run", "--name", n],
        vec!["down", "--name", n],
        vec!["status", "--name", n],
        vec!["mode", "--name", n, "tc"],
        vec!["port", "add", "--name", n, "x"],
        vec!["port", "del", "--name", n, "x"],
        vec!["fdb", "dump", "--name", n],
        vec![
            "fdb",
            "add",
            "--name",
            n,
            "02:00:00:00:00:01",
            "--port",
            "x",
        ],
        vec!["fdb", "del", "--name", n, "02:00:00:00:00:01"],
        vec!["fdb", "flush", "--name", n],
        vec!["stats", "--name", n],
        vec!["trace", "--name", n, "--count", "1"],
        vec!["monitor", "--name", n],
    ];
    for args in &verbs {
        let out = host.netpath(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "netpath {args:?}: {stderr}");
        assert!(
            stderr.contains("name"),
            "netpath {args:?} does not say what is wrong: {stderr}"
        );
    }
    for path in &bystanders {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "not netpath's",
            "{} was touched",
            path.display()
        );
        std::fs::remove_file(path).unwrap();
    }
    assert!(!std::path::Path::new(BPFFS).join(&victim).exists());
}

/// A container's namespace deleted while no `netpath run` watches leaves a
/// stale FDB entry; frames to it are passed to the bridge and counted, never
/// dropped silently by a redirect to a device that is gone.
#[test]
fn a_port_gone_without_run_is_no_black_hole() {
    for mode in ["tc", "xdp"] {
        let t = Topology::up(
            "hole",
            &[
                "--containers",
                "2",
                "--subnet",
                "10.146.0.0/24",
                "--mode",
                mode,
            ],
        );
        let c1_mac = t.status()["ports"][1]["mac"].as_str().unwrap().to_owned();
        assert!(ping(&t.ns("c0"), "10.146.0.3"));
        let c0 = t.ns("c0");
        // Read before the port goes: every netpath command forgets vanished ports.
        let before = (
            t.counter(&c0, "redirected"),
            t.counter(&c0, "pass_redirect_failed"),
        );
        // The kernel dismantles the namespace (and so c1's veth) a moment later.
        t.delete_namespace(&t.ns("c1"), &t.ns("c1"));
        // c0 still believes c1 is there (its neighbour entry), as a peer would.
        in_ns(
            &t.ns("c0"),
            &[
                "ip",
                "neigh",
                "replace",
                "10.146.0.3",
                "lladdr",
                &c1_mac,
                "dev",
                "eth0",
            ],
        );
        in_ns(
            &c0,
            &[
                "ping",
                "-c",
                "20",
                "-i",
                "0.01",
                "-W",
                "1",
                "-q",
                "10.146.0.3",
            ],
        );
        let after = (
            t.counter(&c0, "redirected"),
            t.counter(&c0, "pass_redirect_failed"),
        );
        assert_eq!(
            after.0, before.0,
            "{mode}: frames redirected to a port that is gone"
        );
        assert!(
            after.1 >= before.1 + 20,
            "{mode}: {} of 20 frames to the vanished port reached the bridge",
            after.1 - before.1
        );
    }
}

/// An agent restarted after a crash runs its own command line again: the
/// topology as `port add` and `port del` left it is adopted, not refused
/// (issue 23: "already up and differs from what was asked: container web
/// ... (asked c1 ...)"), and its containers keep their traffic. Another
/// command line is still refused.
#[test]
fn the_same_command_line_adopts_what_port_add_and_del_changed() {
    let args = words("--containers 2 --subnet 10.164.0.0/24");
    let t = Topology::up("asis", &args);
    for change in ["add {} web --ip 10.164.0.50/24", "del {} c1"] {
        let change = change.replace("{}", &format!("--name {}", t.name));
        t.netpath_ok(&[&["port"][..], &words(&change)].concat());
    }
    let again = t.netpath_ok(&t.up_args(&args));
    assert!(again.contains("already up"), "{again}");
    let namespaces: Vec<String> = t.status()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["netns"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(namespaces, [t.ns("c0"), t.ns("web")], "{}", t.status());
    assert!(ping(&t.ns("c0"), "10.164.0.50"), "web lost its traffic");
    let other = t
        .host
        .netpath(&t.up_args(&words("--containers 3 --subnet 10.164.0.0/24")));
    assert!(
        !other.status.success(),
        "another command line was taken for this topology's"
    );
}

/// Its record lost (the state directory wiped, the pins still there),
/// `down` removed the links but left the pins, the programs, the NAT table
/// and the forwarding sysctl (issue 23). It removes them all now.
#[test]
fn down_without_a_record_removes_the_pins_and_the_nat_table() {
    let t = Topology::up(
        "lost",
        &words("--containers 2 --subnet 10.165.0.0/24 --nat"),
    );
    let forwarding = || {
        String::from_utf8_lossy(&t.host.sh("cat", &["/proc/sys/net/ipv4/ip_forward"]).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(forwarding(), "1", "--nat did not turn forwarding on");
    std::fs::remove_file(store::topology::path(&t.name).unwrap()).unwrap();
    let out = t.netpath_ok(&["down", "--name", &t.name]);
    assert!(out.contains("removed"), "{out}");
    assert!(
        !pin_dir(&t.name).exists(),
        "the pins stayed: {}",
        pin_dir(&t.name).display()
    );
    let table = t
        .host
        .sh("nft", &["list", "table", "inet", &nat_table(&t.name)]);
    assert!(!table.status.success(), "the NAT table stayed");
    assert_eq!(forwarding(), "0", "forwarding was not restored");
    // Only the containers' namespaces stay (nothing says they are its own).
    let left = t.host.leftovers(&t.name);
    assert!(left.iter().all(|l| l.starts_with("netns ")), "{left:?}");
    for container in ["c0", "c1"] {
        netns::delete(&t.ns(container)).expect("deleting a container namespace");
    }
}

/// The NAT record is keyed by the namespace's inode, which a new namespace
/// may reuse: a record left behind (a run killed, /run kept) made `up
/// --nat` in the new namespace take the old record's word that forwarding
/// was already remembered, and leave it off. Users without their table in
/// the namespace are not its own.
#[test]
fn a_stale_nat_record_of_a_reused_namespace_is_ignored() {
    use std::os::unix::fs::MetadataExt;
    let host = Host::new();
    let inode = std::fs::metadata(netns::path(&host.name)).unwrap().ino();
    let stale = std::path::Path::new("/run/netpath").join(format!("nat-{inode}.json"));
    std::fs::write(
        &stale,
        r#"{"forwarding_before": {"/proc/sys/net/ipv4/ip_forward": "0"}, "users": ["gone"]}"#,
    )
    .unwrap();
    let t = Topology::up_on(
        &host,
        "reuse",
        &words("--containers 1 --subnet 10.166.0.0/24 --nat"),
    );
    let forwarding = || {
        String::from_utf8_lossy(&host.sh("cat", &["/proc/sys/net/ipv4/ip_forward"]).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(forwarding(), "1", "--nat left forwarding off");
    t.netpath_ok(&["down", "--name", &t.name]);
    assert_eq!(forwarding(), "0", "down did not restore forwarding");
    assert!(!stale.exists(), "the NAT record outlived its last user");
}

/// A Ctrl-C that comes while `run` is still bringing its topology up ends
/// it once the topology is up, even where SIGINT is inherited as ignored
/// (a background job of a shell, as CI runs): before, the signal came
/// before `run` listened for it and was lost, and `run` went on for good.
#[test]
fn a_ctrl_c_while_run_comes_up_ends_it() {
    let host = Host::new();
    let t = Topology::adopt(&host, &unique_name("int"));
    let mut command = host.netpath_command();
    command
        .args([
            "run",
            "--name",
            &t.name,
            "--containers",
            "2",
            "--subnet",
            "10.147.0.0/24",
        ])
        .args(["--keep"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only the async-signal-safe signal(2) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let run = command.spawn().unwrap();
    // Its lock taken, it brings the topology up.
    common::within(Duration::from_secs(10), "run taking its lock", || {
        common::is_locked(&common::run_lock_path(&t.name))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = common::output_within(
        run,
        Duration::from_secs(20),
        "netpath run after an early Ctrl-C",
    );
    assert!(
        out.status.success(),
        "run after an early Ctrl-C: {:?}",
        out.status
    );
}

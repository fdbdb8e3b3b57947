//! Issue 4: the fast path really carries the traffic. Counts are taken
//! outside the programs (an nftables counter on the bridge's forward hook,
//! veth statistics) beside the programs' own counters.

mod common;

use std::{thread::sleep, time::Duration};

use common::{
    BridgeForwardCounter, Host, Running, Topology, in_ns, iperf3, kernel_has_netkit, link_packets,
    ping, quiet, spawn_in, state_path, unique_name, verdicts, words,
};
use serde_json::Value;

/// `ethtool -S` counter of a host-side veth.
fn ethtool_stat(host: &Host, dev: &str, name: &str) -> u64 {
    ethtool_sum(&host.sh("ethtool", &["-S", dev]), &[name])
}

/// The sum of the counters `names` in the output of one `ethtool -S`.
fn ethtool_sum(ethtool: &std::process::Output, names: &[&str]) -> u64 {
    String::from_utf8_lossy(&ethtool.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| names.contains(k))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// Frames the veth rings on the way into the container behind host veth
/// `port` (in namespace `ns`) dropped, as the kernel counts them: a ring
/// full while the receiving CPU served something else.
fn veth_ring_drops(host: &Host, port: &str, ns: &str) -> u64 {
    const RING_DROPS: [&str; 3] = [
        "rx_queue_0_drops",
        "rx_queue_0_xdp_drops",
        "tx_queue_0_xdp_xmit_errors",
    ];
    ethtool_sum(&in_ns(ns, &["ethtool", "-S", "eth0"]), &RING_DROPS)
        + ethtool_sum(&host.sh("ethtool", &["-S", port]), &RING_DROPS)
}

/// Drives TCP both ways, UDP and a ping flood from c0 to c1 and checks that
/// the bridge forwarded at most 1% of the frames, and that the programs'
/// counters agree with the kernel's.
fn bulk_traffic_takes_the_fast_path(mode: &str, subnets: &[&str], ip1: &str) {
    let mut args = vec!["--containers", "2", "--mode", mode];
    for subnet in subnets {
        args.extend(["--subnet", subnet]);
    }
    let t = Topology::up(mode, &args);
    let (c0, c1) = (t.ns("c0"), t.ns("c1"));
    assert!(ping(&c0, ip1));
    let bridge = BridgeForwardCounter::from_ports_of(&t);
    let before_tx: Vec<u64> = [&c0, &c1]
        .iter()
        .map(|ns| link_packets(ns, "eth0").1)
        .collect();
    let before_host: Vec<(u64, u64)> = ["c0", "c1"]
        .iter()
        .map(|c| {
            (
                t.link_packets(&t.ns(c)).0,
                ethtool_stat(&t, &t.ns(c), "rx_queue_0_xdp_packets"),
            )
        })
        .collect();
    let before_verdicts: Vec<u64> = t
        .program_counters()
        .iter()
        .map(|(_, c)| verdicts(c))
        .collect();

    let tcp = iperf3::brief(&c0, &c1, ip1, 5201, &[]);
    let tcp_reverse = iperf3::brief(&c0, &c1, ip1, 5202, &["-R"]);
    let udp = iperf3::brief(&c0, &c1, ip1, 5203, &["-u", "-b", "200M", "-l", "64"]);
    let flood = in_ns(&c0, &["ping", "-f", "-c", "2000", "-q", ip1]);
    assert!(flood.status.success());
    for (name, report) in [("TCP", &tcp), ("TCP -R", &tcp_reverse)] {
        iperf3::assert_bulk_tcp(&format!("{mode}: {name}"), report);
    }
    let udp_received = udp["end"]["sum"]["packets"].as_u64().unwrap()
        - udp["end"]["sum"]["lost_packets"].as_u64().unwrap_or(0);
    // Enough datagrams that the bridge's share below means something; how
    // many per second is the benchmark's business (a VM of the kernel
    // matrix on a busy 2-core runner delivers under 10,000).
    assert!(
        udp_received > 1_000,
        "{mode}: UDP delivered only {udp_received} packets"
    );

    let sent: Vec<u64> = [&c0, &c1]
        .iter()
        .zip(&before_tx)
        .map(|(ns, b)| link_packets(ns, "eth0").1 - b)
        .collect();
    let total: u64 = sent.iter().sum();
    let through_bridge = bridge.packets();
    println!("{mode}: containers sent {total} frames, the bridge forwarded {through_bridge}");
    assert!(
        through_bridge * 100 <= total,
        "{mode}: the bridge forwarded {through_bridge} of {total} frames (> 1%): the fast path is bypassed"
    );

    // Every frame a container sent reached its host-side veth and one of the
    // program's verdicts; the kernel's own counter says the same.
    let after_verdicts: Vec<u64> = t
        .program_counters()
        .iter()
        .map(|(_, c)| verdicts(c))
        .collect();
    for (i, c) in ["c0", "c1"].iter().enumerate() {
        let port = t.ns(c);
        let decided = after_verdicts[i] - before_verdicts[i];
        let seen_by_kernel = match mode {
            "xdp" => ethtool_stat(&t, &port, "rx_queue_0_xdp_packets") - before_host[i].1,
            // netkit counts a redirected frame only as the sender's
            // transmit (the primary receives none): the container's own
            // counter, `sent`.
            "netkit" => sent[i],
            _ => t.link_packets(&port).0 - before_host[i].0,
        };
        let slack = 5 + sent[i] / 1000;
        println!(
            "{mode}: {port}: sent {} frames, program decided {decided}, kernel counted {seen_by_kernel}",
            sent[i]
        );
        assert!(
            decided.abs_diff(sent[i]) <= slack,
            "{mode}: {port}: program decided {decided} of {} frames",
            sent[i]
        );
        assert!(
            seen_by_kernel.abs_diff(decided) <= slack,
            "{mode}: {port}: kernel counted {seen_by_kernel}, program {decided}"
        );
    }
}

/// netkit mode, where the kernel has netkit (Linux 6.7+ with
/// CONFIG_NETKIT; the 6.12 guest of the kernel matrix): the containers get
/// netkit pairs, the program on each pair's peer hook carries TCP, UDP and
/// ping past the bridge, and every frame meets it. Where the kernel has no
/// netkit, `--mode netkit` is refused before anything is made.
#[test]
fn netkit_mode_carries_bulk_traffic() {
    if kernel_has_netkit() {
        bulk_traffic_takes_the_fast_path("netkit", &["10.126.0.0/24"], "10.126.0.3");
        return;
    }
    let host = Host::new();
    let name = unique_name("nkno");
    let out = host.netpath(&[
        "up",
        "--name",
        &name,
        "--containers",
        "2",
        "--subnet",
        "10.126.0.0/24",
        "--mode",
        "netkit",
    ]);
    host.assert_refused(&out, &name, &["mode netkit needs netkit devices"]);
}

#[test]
fn xdp_mode_carries_bulk_traffic() {
    bulk_traffic_takes_the_fast_path("xdp", &["10.111.0.0/24"], "10.111.0.3");
}

#[test]
fn xdp_mode_carries_ipv6_bulk_traffic() {
    bulk_traffic_takes_the_fast_path("xdp", &["10.114.0.0/24", "fd00:114::/64"], "fd00:114::3");
}

#[test]
fn tc_mode_carries_ipv6_bulk_traffic() {
    bulk_traffic_takes_the_fast_path("tc", &["10.115.0.0/24", "fd00:115::/64"], "fd00:115::3");
}

/// Dual-stack containers find each other through neighbour discovery, which
/// the bridge carries (multicast), and reach each other and the bridge's
/// IPv6 address.
#[test]
fn ipv6_neighbour_discovery_goes_through_the_bridge() {
    let t = Topology::up(
        "nd",
        &[
            "--containers",
            "2",
            "--subnet",
            "10.116.0.0/24",
            "--subnet",
            "fd00:116::/64",
        ],
    );
    let solicitations = BridgeForwardCounter::new(
        &t.host,
        &format!("{}nd", t.name),
        &format!("iifname \"{}-*\" icmpv6 type nd-neighbor-solicit", t.name),
    );
    in_ns(&t.ns("c0"), &["ip", "-6", "neigh", "flush", "all"]);
    assert!(
        ping(&t.ns("c0"), "fd00:116::3"),
        "c0 cannot reach c1 over IPv6"
    );
    assert!(
        ping(&t.ns("c0"), "fd00:116::1"),
        "c0 cannot reach the bridge over IPv6"
    );
    assert!(
        solicitations.packets() >= 1,
        "no neighbour solicitation crossed the bridge"
    );
    let status = t.status();
    assert_eq!(
        status["bridge"]["ips"],
        serde_json::json!(["10.116.0.1/24", "fd00:116::1/64"])
    );
    assert_eq!(
        status["ports"][1]["ips"],
        serde_json::json!(["10.116.0.3/24", "fd00:116::3/64"])
    );
}

#[test]
fn tc_mode_carries_bulk_traffic() {
    bulk_traffic_takes_the_fast_path("tc", &["10.112.0.0/24"], "10.112.0.3");
}

/// tc mode through tcx links (`NETPATH_TC_METHOD=tcx`, Linux 6.6+), the
/// default being clsact: the links carry the traffic (a ping flood, of
/// which the bridge forwards next to no IPv4 frame), and `down` removes them. Before
/// 6.6 the variable is ignored, with a warning, and clsact carries it.
#[test]
fn tc_mode_through_tcx_links_carries_the_traffic() {
    let host = Host::new();
    let t = Topology::adopt(&host, &unique_name("tcx"));
    let up = host
        .netpath_command()
        .env(netpath::datapath::hooks::TC_METHOD_ENV, "tcx")
        .env("RUST_LOG", "info")
        .args([
            "up",
            "--name",
            &t.name,
            "--containers",
            "2",
            "--subnet",
            "10.124.0.0/24",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "{log}");
    let (attached, said) = if netpath::datapath::hooks::TcMethod::kernel_has_tcx() {
        ("tc:netpath_tc", "attach as tcx links")
    } else {
        ("tc-clsact:netpath_tc", "tcx ignored")
    };
    assert!(log.contains(said), "up did not say {said:?}: {log}");
    for port in t.status()["ports"].as_array().unwrap() {
        assert_eq!(port["programs"], serde_json::json!([attached]), "{port}");
    }
    assert!(ping(&t.ns("c0"), "10.124.0.3"));
    let bridge = BridgeForwardCounter::ipv4_from_ports_of(&t);
    let before = t.counter(&t.ns("c0"), "redirected");
    let flood = in_ns(
        &t.ns("c0"),
        &["ping", "-f", "-c", "500", "-q", "10.124.0.3"],
    );
    assert!(flood.status.success());
    assert!(
        t.counter(&t.ns("c0"), "redirected") >= before + 500,
        "the flood did not take the fast path"
    );
    assert!(
        bridge.packets() <= 5,
        "the bridge forwarded {} IPv4 frames of 1000",
        bridge.packets()
    );
}

/// The check above can fail: in bridge mode the bridge carries everything.
#[test]
fn bridge_mode_shows_up_on_the_bridge_counter() {
    let t = Topology::up(
        "brm",
        &[
            "--containers",
            "2",
            "--subnet",
            "10.113.0.0/24",
            "--mode",
            "bridge",
        ],
    );
    let bridge = BridgeForwardCounter::from_ports_of(&t);
    let before = link_packets(&t.ns("c0"), "eth0").1;
    let flood = in_ns(
        &t.ns("c0"),
        &["ping", "-f", "-c", "2000", "-q", "10.113.0.3"],
    );
    assert!(flood.status.success());
    let sent = link_packets(&t.ns("c0"), "eth0").1 - before;
    assert!(
        bridge.packets() >= sent * 9 / 10,
        "bridge forwarded {} of {sent}",
        bridge.packets()
    );
}

/// ARP, broadcast, the bridge's own address and unknown destinations take
/// the bridge in every mode.
#[test]
fn what_the_fast_path_does_not_know_still_works() {
    for (i, mode) in ["xdp", "tc", "bridge"].iter().enumerate() {
        let subnet = format!("10.{}.0.0/24", 114 + i);
        let t = Topology::up(
            "fb",
            &["--containers", "3", "--subnet", &subnet, "--mode", mode],
        );
        let ip = |n: u8| format!("10.{}.0.{n}", 114 + i);
        let (c0, c1) = (t.ns("c0"), t.ns("c1"));
        // c2 must stay silent until it is asked (no IPv6 ND/MLD chatter), so
        // that it is still unknown when c0 sends to it below.
        quiet(&t.ns("c2"));
        // ARP: no neighbour entry, so the first ping must resolve it.
        in_ns(&c0, &["ip", "neigh", "flush", "all"]);
        assert!(ping(&c0, &ip(3)), "{mode}: ARP + ping");
        assert!(ping(&c0, &ip(1)), "{mode}: the bridge's own address");
        // Broadcast ping: c1 answers when it does not ignore broadcasts.
        in_ns(
            &c1,
            &["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"],
        );
        let out = in_ns(&c0, &["ping", "-b", "-c", "2", "-W", "2", &ip(255)]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&ip(3)),
            "{mode}: broadcast ping unanswered"
        );
        if *mode != "bridge" {
            assert!(
                t.counter(&t.ns("c0"), "pass_multicast") > 0,
                "{mode}: broadcast not counted"
            );
            assert!(
                t.counter(&t.ns("c0"), "pass_host") > 0,
                "{mode}: bridge traffic not counted"
            );
            // An unknown destination: forget c2, and let c0 send to its MAC
            // without asking ARP first (which would make c2 answer and be learned).
            let mac = t.status()["ports"][2]["mac"].as_str().unwrap().to_owned();
            in_ns(
                &c0,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    &ip(4),
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                ],
            );
            t.netpath_ok(&["fdb", "del", "--name", &t.name, &mac]);
            let before = t.counter(&t.ns("c0"), "pass_unknown");
            assert!(ping(&c0, &ip(4)), "{mode}: unknown destination");
            assert!(
                t.counter(&t.ns("c0"), "pass_unknown") > before,
                "{mode}: unknown not counted"
            );
        } else {
            assert!(ping(&c0, &ip(4)));
        }
    }
}

#[test]
fn a_forged_source_mac_does_not_steal_traffic() {
    for (i, mode) in ["xdp", "tc"].iter().enumerate() {
        let t = Topology::up(
            "forge",
            &[
                "--containers",
                "3",
                "--subnet",
                &format!("10.{}.0.0/24", 117 + i),
                "--mode",
                mode,
            ],
        );
        let status = t.status();
        let victim_mac = status["ports"][1]["mac"].as_str().unwrap().to_owned();
        let victim_ip = format!("10.{}.0.3", 117 + i);
        let attacker = t.ns("c2");
        // c2 takes c1's MAC and sends frames with it.
        in_ns(
            &attacker,
            &["ip", "link", "set", "dev", "eth0", "address", &victim_mac],
        );
        in_ns(
            &attacker,
            &[
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                &format!("10.{}.0.2", 117 + i),
            ],
        );
        let fdb: Value =
            serde_json::from_str(&t.netpath_ok(&["fdb", "dump", "--name", &t.name, "--json"]))
                .unwrap();
        let entry = fdb
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == victim_mac.as_str())
            .unwrap()
            .clone();
        assert_eq!(entry["state"], "static", "{mode}");
        assert_eq!(
            entry["ifname"],
            t.ns("c1").as_str(),
            "{mode}: static entry moved"
        );
        assert!(
            t.counter(&t.ns("c2"), "drop_spoofed_mac") > 0,
            "{mode}: spoofing not counted"
        );
        let before = link_packets(&t.ns("c1"), "eth0").0;
        assert!(
            ping(&t.ns("c0"), &victim_ip),
            "{mode}: the victim no longer gets its traffic"
        );
        assert!(link_packets(&t.ns("c1"), "eth0").0 > before, "{mode}");
    }
}

#[test]
fn fdb_lists_every_container_and_learned_entries_age_out() {
    let mut run = Running::start(
        "age",
        &[
            "--containers",
            "3",
            "--subnet",
            "10.119.0.0/24",
            "--ageing",
            "2",
        ],
    );
    let (t, name) = (&run.topology, run.topology.name.clone());
    let fdb: Value =
        serde_json::from_str(&t.netpath_ok(&["fdb", "dump", "--name", &name, "--json"])).unwrap();
    let status = t.status();
    for port in status["ports"].as_array().unwrap() {
        let entry = fdb
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == port["mac"])
            .expect("container MAC in FDB");
        assert_eq!(entry["ifname"], port["name"]);
        assert_eq!(entry["state"], "static");
    }
    // A container without the source check (it routes for others) sends
    // from a MAC that is not its own: that one is learned, then ages.
    t.add_router("rt", "10.119.0.9/24");
    let mac = "02:77:77:00:00:09";
    let router = t.ns("rt");
    in_ns(
        &router,
        &["ip", "link", "set", "dev", "eth0", "address", mac],
    );
    quiet(&router);
    // Nor may it probe c0's address a few seconds after the ping (ARP's
    // delay_first_probe_time is 5 s): that would refresh its entry.
    let c0_mac = status["ports"][0]["mac"].as_str().unwrap();
    in_ns(
        &router,
        &[
            "ip",
            "neigh",
            "replace",
            "10.119.0.2",
            "lladdr",
            c0_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    assert!(ping(&t.ns("c0"), "10.119.0.9"));
    let learned = |dump: &str| -> Option<Value> {
        let v: Value = serde_json::from_str(dump).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac)
            .cloned()
    };
    let entry = learned(&t.netpath_ok(&["fdb", "dump", "--name", &name, "--json"]))
        .expect("the router's MAC learned");
    assert_eq!(entry["state"], "learned");
    assert_eq!(entry["ifname"], router.as_str());
    sleep(Duration::from_secs(5));
    assert!(
        learned(&t.netpath_ok(&["fdb", "dump", "--name", &name, "--json"])).is_none(),
        "learned entry did not age out"
    );
    assert!(run.interrupt());
    assert!(!state_path(&name).exists(), "run did not tear down");
}

#[test]
fn the_datapath_survives_a_killed_loader_and_is_adopted() {
    let topology = words("--containers 2 --subnet 10.121.0.0/24 --mode tc");
    let mut run = Running::start("kill", &topology);
    let t = &run.topology;
    let server = iperf3::Server::start(&t.ns("c1"), 5301);
    let client = iperf3::Client::start(&t.ns("c0"), "10.121.0.3", 5301, 3, &[]);
    sleep(Duration::from_secs(1));
    run.child.kill().unwrap(); // SIGKILL
    run.child.wait().unwrap();
    let before = t.counter(&t.ns("c0"), "redirected");
    // The report asserts that iperf3 succeeded after the loader was killed.
    client.report();
    server.finish();
    let after = t.counter(&t.ns("c0"), "redirected");
    assert!(
        after > before,
        "the fast path stopped counting after SIGKILL ({before} -> {after})"
    );
    // A new loader adopts the pinned datapath instead of attaching it twice.
    let again = t.netpath_ok(&t.up_args(&topology));
    assert!(again.contains("already up"), "{again}");
    // Exactly one tc program per port, attached the way this kernel (or
    // NETPATH_TC_METHOD) asks for.
    let attached = match netpath::datapath::hooks::TcMethod::chosen() {
        netpath::datapath::hooks::TcMethod::Tcx => "tc:netpath_tc",
        netpath::datapath::hooks::TcMethod::Clsact => "tc-clsact:netpath_tc",
    };
    for port in t.status()["ports"].as_array().unwrap() {
        assert_eq!(port["programs"], serde_json::json!([attached]), "{port}");
    }
}

#[test]
fn mode_switches_live_without_losing_the_ping() {
    let t = Topology::up(
        "mode",
        &[
            "--containers",
            "2",
            "--subnet",
            "10.122.0.0/24",
            "--mode",
            "xdp",
        ],
    );
    let pinger = spawn_in(
        &t.ns("c0"),
        &words("ping -c 250 -i 0.02 -W 1 -q 10.122.0.3"),
    );
    let modes = ["tc", "bridge", "xdp"];
    for mode in modes {
        sleep(Duration::from_millis(1000));
        t.netpath_ok(&["mode", "--name", &t.name, mode]);
        assert_eq!(t.status()["mode"], mode);
    }
    assert_few_lost(pinger, 250, modes.len() as u64);
    // On a slow (emulated) machine the pinger may be done before the last
    // switch: ping once more in the final mode.
    assert!(ping(&t.ns("c0"), "10.122.0.3"));
    assert!(
        t.counter(&t.ns("c0"), "redirected") > 0,
        "nothing redirected after the switches: {:?}",
        t.program_counters()
    );
}

/// Pings a switch of mode may lose: 0-2 of 250 over three switches, 20 ms
/// apart, in five native runs; 4 of 250 in the TCG guest of Debian's
/// 6.1.0-50 (a switch takes many times longer there), in two matrix runs
/// in a row.
const PINGS_LOST_PER_SWITCH: u64 = 3;

/// The `ping -q` child that sent `sent` pings across `switches` switches
/// of mode lost at most [`PINGS_LOST_PER_SWITCH`] per switch.
fn assert_few_lost(pinger: std::process::Child, sent: u64, switches: u64) {
    let (received, summary) = pings_received(pinger);
    assert!(
        sent - received <= PINGS_LOST_PER_SWITCH * switches,
        "lost {} pings in {switches} switches: {summary}",
        sent - received
    );
}

/// How many replies a `ping -q` child received, and its summary.
fn pings_received(pinger: std::process::Child) -> (u64, String) {
    let out = common::output_within(pinger, Duration::from_secs(60), "the pinger");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {summary}"));
    (received, summary)
}

/// The two offloads xdp mode changes inside a container, as `ethtool -k`
/// shows them: (tx-checksumming, generic-receive-offload).
fn offloads(ns: &str) -> (String, String) {
    let out = String::from_utf8_lossy(&in_ns(ns, &["ethtool", "-k", "eth0"]).stdout).into_owned();
    let get = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    (get("tx-checksumming:"), get("generic-receive-offload:"))
}

/// Every path between modes ends with the offloads of the target mode, the
/// programs of the target mode only, and a running ping loses at most a few
/// packets per switch.
#[test]
fn every_mode_switch_leaves_the_target_modes_offloads() {
    let t = Topology::up(
        "msw",
        &[
            "--containers",
            "2",
            "--subnet",
            "10.123.0.0/24",
            "--mode",
            "tc",
        ],
    );
    let plain = offloads(&t.ns("c0"));
    let xdp = ("off".to_owned(), "on".to_owned());
    assert_ne!(plain, xdp, "veth defaults look like xdp mode's already");
    let pinger = spawn_in(
        &t.ns("c0"),
        &words("ping -c 500 -i 0.02 -W 1 -q 10.123.0.3"),
    );
    let paths = [
        ["xdp", "bridge", "tc"],
        ["tc", "xdp", "bridge"],
        ["bridge", "xdp", "tc"],
    ];
    let mut switches = 0;
    for path in paths {
        for mode in path {
            if t.status()["mode"] == mode {
                continue;
            }
            t.netpath_ok(&["mode", "--name", &t.name, mode]);
            switches += 1;
            sleep(Duration::from_millis(300));
            let want = if mode == "xdp" { &xdp } else { &plain };
            for c in ["c0", "c1"] {
                assert_eq!(
                    &offloads(&t.ns(c)),
                    want,
                    "{c} after switching to {mode} on the path {path:?}"
                );
            }
            let programs: Vec<String> = t.status()["ports"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| {
                    p["programs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                })
                .collect();
            let expected = match mode {
                "bridge" => 0,
                "tc" => 2,
                _ => 4, // xdp on both host ends and XDP_PASS on both container ends
            };
            assert_eq!(
                programs.len(),
                expected,
                "programs after switching to {mode}: {programs:?}"
            );
        }
    }
    assert_few_lost(pinger, 500, switches);
}

/// What `cargo xtask run` runs once it has built netpath: `netpath run` with
/// every default (2 containers, 10.77.0.0/24, and the kernel's default
/// mode: netkit where the kernel has it, else tc). Its programs carry the
/// traffic, attached as netkit links, or in tc mode through clsact (as tcx
/// links where NETPATH_TC_METHOD asks for them, which the log says).
#[test]
fn run_brings_up_the_default_topology_in_the_kernels_default_mode() {
    let mut run = Running::start("dflt", &[]);
    let t = &run.topology;
    let status = t.status();
    // The default is netkit where the kernel has it (tc's program on
    // netkit pairs), and says so.
    let (mode, why) = if kernel_has_netkit() {
        (
            "netkit",
            "mode netkit (the default where the kernel has netkit",
        )
    } else {
        ("tc", "mode tc (the default where the kernel has no netkit")
    };
    assert_eq!(status["mode"], mode);
    assert!(
        run.log().contains(why),
        "run did not say {why:?}: {}",
        run.log()
    );
    assert_eq!(status["subnets"], serde_json::json!(["10.77.0.0/24"]));
    let method = netpath::datapath::hooks::TcMethod::chosen();
    let attached = match method {
        _ if mode == "netkit" => "netkit:netpath_tc",
        netpath::datapath::hooks::TcMethod::Tcx => "tc:netpath_tc",
        netpath::datapath::hooks::TcMethod::Clsact => "tc-clsact:netpath_tc",
    };
    let ports = status["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2);
    for port in ports {
        assert_eq!(port["programs"], serde_json::json!([attached]), "{port}");
    }
    assert!(ping(&t.ns("c0"), "10.77.0.3"));
    let bridge = BridgeForwardCounter::ipv4_from_ports_of(t);
    let before = t.counter(&t.ns("c0"), "redirected");
    assert!(
        in_ns(&t.ns("c0"), &["ping", "-f", "-c", "500", "-q", "10.77.0.3"])
            .status
            .success()
    );
    assert!(
        t.counter(&t.ns("c0"), "redirected") >= before + 500,
        "the flood did not take the fast path"
    );
    assert!(
        bridge.packets() <= 5,
        "the bridge forwarded {} IPv4 frames of 1000",
        bridge.packets()
    );
    if method == netpath::datapath::hooks::TcMethod::Tcx && mode == "tc" {
        assert!(
            run.log().contains("attach as tcx links"),
            "run did not say it attached tcx links: {}",
            run.log()
        );
    }
    assert!(
        run.interrupt(),
        "run did not end cleanly on Ctrl-C: {}",
        run.log()
    );
}

/// The id of the forwarding program on host port `port` of `t`: from its
/// pinned link (tcx, XDP), or the kernel's listing of its clsact filter.
fn forwarding_program_id(t: &Topology, port: &str, hook: &str) -> u32 {
    let pin = netpath::datapath::object::pin_dir(&t.name)
        .join("links")
        .join(hook)
        .join(port);
    if let Ok(link) = aya::programs::links::PinnedLink::from_pin(&pin) {
        let link = aya::programs::links::FdLink::from(link);
        return link.info().unwrap().program_id();
    }
    let out = String::from_utf8_lossy(
        &t.host
            .sh("tc", &["filter", "show", "dev", port, "ingress"])
            .stdout,
    )
    .into_owned();
    out.split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no forwarding program on {port}: {out}"))
}

/// Issue 14: `netpath upgrade` puts freshly loaded programs (what a newer
/// netpath brings) on running ports in place, atomically: a tcx or XDP link
/// update, or the clsact filter's program changed under RCU. Under a TCP
/// stream (paced) and a UDP stream across three upgrades: the TCP stream
/// completes (no reset), no datagram is lost on the way (the receiving
/// socket's own overflow, counted by the kernel, aside), and not one IP frame goes through the
/// bridge; a detach-then-attach would hand the frames of its gap to the
/// bridge, which the fallback hides from the loss figures but not from the
/// bridge's counter.
#[test]
fn upgrade_replaces_the_programs_under_traffic_without_a_gap() {
    for (i, (mode, hook)) in [("tc", "tc"), ("xdp", "xdp")].into_iter().enumerate() {
        let net = 170 + i;
        let (subnet, ip1) = (format!("10.{net}.0.0/24"), format!("10.{net}.0.3"));
        let t = Topology::up(
            &format!("upg{mode}"),
            &["--containers", "2", "--mode", mode, "--subnet", &subnet],
        );
        let (c0, c1) = (t.ns("c0"), t.ns("c1"));
        assert!(ping(&c0, &ip1));
        let ports = [t.ns("c0"), t.ns("c1")];
        let before: Vec<u32> = ports
            .iter()
            .map(|p| forwarding_program_id(&t, p, hook))
            .collect();
        // The streams' frames (IPv6 multicast, such as MLD, belongs to the bridge).
        let bridge = BridgeForwardCounter::new(
            &t.host,
            &format!("{}ip", t.name),
            &format!("iifname \"{}-*\" ip daddr {subnet}", t.name),
        );
        let redirected_before = t.counter(&ports[0], "redirected");
        let overflowed_before = common::snmp(&c1, "Udp", "RcvbufErrors");
        let ring_drops_before = veth_ring_drops(&t, &ports[1], &c1);

        let servers = [
            iperf3::Server::start(&c1, 5301),
            iperf3::Server::start(&c1, 5302),
        ];
        // Paced below what the 2 CPUs carry, so that it does not fill the
        // receiving veth's ring, which drops the datagrams beside it.
        let tcp = iperf3::Client::start(&c0, &ip1, 5301, 4, &["-b", "2G"]);
        let udp = iperf3::Client::start(&c0, &ip1, 5302, 4, &["-u", "-b", "20M", "-l", "512"]);
        for _ in 0..3 {
            sleep(Duration::from_millis(700));
            t.netpath_ok(&["upgrade", "--name", &t.name, "--force"]);
        }
        // Each report asserts that its iperf3 succeeded across the upgrades.
        let reports: Vec<Value> = [tcp, udp].into_iter().map(iperf3::Client::report).collect();
        for server in servers {
            server.finish();
        }
        let after: Vec<u32> = ports
            .iter()
            .map(|p| forwarding_program_id(&t, p, hook))
            .collect();
        assert!(
            before.iter().zip(&after).all(|(b, a)| b != a),
            "{mode}: programs not replaced: {before:?} -> {after:?}"
        );
        let tcp_bytes = reports[0]["end"]["sum_received"]["bytes"].as_u64().unwrap();
        assert!(
            tcp_bytes > 10_000_000,
            "{mode}: the TCP stream carried only {tcp_bytes} bytes"
        );
        let udp = &reports[1]["end"]["sum"];
        assert!(
            udp["packets"].as_u64().unwrap() > 10_000,
            "{mode}: UDP {udp}"
        );
        // What the receiving socket's full buffer dropped is no loss of the
        // datapath's: on 2 CPUs the TCP stream and the upgrades' program
        // loads starve the UDP reader at times (124 of 19,528 under CI).
        // Nor what a veth's ring dropped for a receiving CPU that was busy
        // (5 of 19,527 lost once under CI, with another test beside it).
        let overflowed = common::snmp(&c1, "Udp", "RcvbufErrors") - overflowed_before;
        let ring_dropped = veth_ring_drops(&t, &ports[1], &c1) - ring_drops_before;
        eprintln!(
            "{mode}: UDP across the upgrades: {} of {} lost, {overflowed} dropped by the receiving \
             socket, {ring_dropped} frames by the veth rings",
            udp["lost_packets"], udp["packets"]
        );
        assert_eq!(
            udp["lost_packets"]
                .as_u64()
                .map(|lost| lost.saturating_sub(overflowed + ring_dropped)),
            Some(0),
            "{mode}: datagrams lost across the upgrade, {overflowed} of them by the receiving socket, \
             {ring_dropped} frames by the veth rings: {udp}"
        );
        assert_eq!(
            bridge.packets(),
            0,
            "{mode}: frames of the streams went through the bridge during the upgrade"
        );
        assert!(
            t.counter(&ports[0], "redirected") > redirected_before + 10_000,
            "{mode}: the programs did not carry the streams"
        );
    }
}

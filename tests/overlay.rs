//! Issue 15: a VXLAN overlay across hosts. Each simulated host is a
//! network namespace of its own that netpath runs on (see `common::Host`),
//! with an `eth0`-like interface on an underlay bridge that lives in one
//! more namespace. The peers come from a static peers file made of every
//! node's `netpath overlay export`.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{
    BridgeForwardCounter, Host, Topology, capture::Capture, cni, in_ns, link_packets,
    output_within, packets, parse_mac, ping, spawn_in, unique_name, verdicts, within, words,
};
use netpath::{
    datapath::{
        hooks::{Hook, TcMethod},
        object::pin_dir,
    },
    host::netns,
};
use serde_json::{Value, json};

/// The interface of a host on the underlay.
const UNDERLAY_IF: &str = "underlay";

/// The underlay address of host `i` (its own namespace: no other test sees it).
fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, i as u8 + 1)
}

/// An underlay: a bridge in a namespace of its own, and hosts plugged into it.
struct Cluster {
    hosts: Vec<Arc<Host>>,
    /// Each host's `--underlay`.
    addresses: Vec<Ipv4Addr>,
    underlay: String,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let underlay = format!(
            "npul-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        netns::create(&underlay).expect("creating the underlay namespace");
        let cluster = Cluster {
            hosts: Vec::new(),
            addresses: Vec::new(),
            underlay,
        };
        let underlay = &cluster.underlay;
        sh_ok(&words(&format!("ip -n {underlay} link add ul type bridge")));
        sh_ok(&words(&format!("ip -n {underlay} link set ul up")));
        let mut cluster = cluster;
        for i in 0..count {
            let host = Host::new();
            let port = format!("ul{i}");
            let underlay = &cluster.underlay;
            sh_ok(&words(&format!(
                "ip -n {underlay} link add {port} type veth peer name {UNDERLAY_IF} netns {}",
                host.name
            )));
            sh_ok(&words(&format!(
                "ip -n {underlay} link set {port} master ul up"
            )));
            let addr = format!("{}/24", underlay_ip(i));
            sh_ok(&[
                "ip",
                "-n",
                &host.name,
                "addr",
                "add",
                &addr,
                "dev",
                UNDERLAY_IF,
            ]);
            sh_ok(&["ip", "-n", &host.name, "link", "set", UNDERLAY_IF, "up"]);
            cluster.hosts.push(host);
            cluster.addresses.push(underlay_ip(i));
        }
        cluster
    }

    /// Gives host `i` a second address on the underlay and makes it the
    /// host's `--underlay`: routes still prefer the first.
    fn use_second_address(&mut self, i: usize, second: Ipv4Addr) {
        let addr = format!("{second}/24");
        sh_ok(&[
            "ip",
            "-n",
            &self.hosts[i].name,
            "addr",
            "add",
            &addr,
            "dev",
            UNDERLAY_IF,
        ]);
        self.addresses[i] = second;
    }

    /// One topology per host listed in `on`, all on overlay `vni` (network
    /// 10.88.0.0/16, host i's slice 10.88.(i+1).0/24), with `containers`
    /// containers each; the peers file lists every one of them.
    fn overlay(&self, vni: u32, containers: usize, on: &[usize]) -> Overlay {
        self.overlay_with(vni, containers, on, &[])
    }

    /// As [`Cluster::overlay`], each topology brought up with `extra` too.
    fn overlay_with(&self, vni: u32, containers: usize, on: &[usize], extra: &[&str]) -> Overlay {
        self.overlay_with_each(vni, containers, on, |_| {
            extra.iter().map(|s| s.to_string()).collect()
        })
    }

    /// As [`Cluster::overlay`], host `i`'s topology brought up with
    /// `extra(i)` too.
    fn overlay_with_each(
        &self,
        vni: u32,
        containers: usize,
        on: &[usize],
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Overlay {
        let peers = std::env::temp_dir().join(format!("netpath-peers-{}.toml", unique_name("ov")));
        std::fs::write(&peers, "").unwrap();
        let mut overlay = Overlay {
            topologies: Vec::new(),
            logs: Vec::new(),
            peers,
        };
        for &i in on {
            let host = &self.hosts[i];
            let topology = Topology::adopt(host, &unique_name("ov"));
            let (subnet, vni, ul) = (
                format!("10.88.{}.0/24", i + 1),
                vni.to_string(),
                self.addresses[i].to_string(),
            );
            let containers = containers.to_string();
            let mut args = vec![
                "up",
                "--name",
                &topology.name,
                "--containers",
                &containers,
                "--subnet",
                &subnet,
                "--vni",
                &vni,
                "--underlay",
                &ul,
                "--overlay-network",
                "10.88.0.0/16",
                "--peers",
                overlay.peers.to_str().unwrap(),
            ];
            let extra = extra(i);
            args.extend(extra.iter().map(String::as_str));
            let up = host.netpath(&args);
            let log = String::from_utf8_lossy(&up.stderr).into_owned();
            assert!(up.status.success(), "netpath {args:?} failed: {log}");
            overlay.topologies.push(topology);
            overlay.logs.push(log);
        }
        let records: String = overlay
            .topologies
            .iter()
            .map(|t| t.netpath_ok(&["overlay", "export", "--name", &t.name]))
            .collect();
        overlay.add_peers(&records);
        overlay
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.underlay) {
            eprintln!("deleting underlay namespace {}: {e:#}", self.underlay);
        }
    }
}

/// A topology per host on one overlay, and its peers file.
struct Overlay {
    topologies: Vec<Topology>,
    /// What each topology's `up` logged.
    logs: Vec<String>,
    peers: PathBuf,
}

impl Overlay {
    /// Appends node records to the peers file and has every node read it.
    fn add_peers(&self, records: &str) {
        let mut text = std::fs::read_to_string(&self.peers).unwrap();
        text.push_str(records);
        std::fs::write(&self.peers, text).unwrap();
        for t in &self.topologies {
            t.netpath_ok(&["overlay", "sync", "--name", &t.name]);
        }
    }

    /// The container namespace of container `c` on the overlay's `i`th node.
    fn ns(&self, i: usize, c: usize) -> String {
        self.topologies[i].ns(&format!("c{c}"))
    }

    /// `overlay status --json` of the `i`th node.
    fn status(&self, i: usize) -> Value {
        let t = &self.topologies[i];
        serde_json::from_str(&t.netpath_ok(&["overlay", "status", "--name", &t.name, "--json"]))
            .unwrap()
    }

    /// A counter of the `i`th node's vxlan device program.
    fn overlay_counter(&self, i: usize, name: &str) -> u64 {
        overlay_counter(&self.status(i), name)
    }
}

/// A counter of a vxlan device's program in `overlay status --json`.
fn overlay_counter(status: &Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == name)
        .map(|c| c[1].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no overlay counter {name}"))
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // The topologies go down first (their own Drop), then the file.
        self.topologies.clear();
        let _ = std::fs::remove_file(&self.peers);
    }
}

/// The address of container `c` on host `i` (the IPAM's order: .1 is the
/// bridge, containers from .2).
fn ip(host: usize, c: usize) -> String {
    format!("10.88.{}.{}", host + 1, c + 2)
}

fn sh_ok(args: &[&str]) {
    let out = common::outside(args[0], &args[1..]);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS` on `host`, which must succeed.
fn ip_ok(host: &Host, args: &[&str]) {
    let out = host.sh("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?} on {}: {}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` in container `ns`, killed (and the test failed) after `secs`.
fn run_within(ns: &str, args: &[&str], secs: u64) -> Output {
    output_within(
        spawn_in(ns, args),
        Duration::from_secs(secs),
        &format!("{args:?} in {ns}"),
    )
}

/// Echo requests the IP stack of namespace `ns` received (`/proc/net/snmp`).
/// The receiver's own count on every kernel: Debian's 5.10 does not count
/// the frames `bpf_redirect_peer` hands a veth in its link statistics
/// (measured: 1 of 5000 decapsulated; 6.1 and 6.18 count them all).
fn icmp_in_echos(ns: &str) -> u64 {
    common::snmp(ns, "Icmp", "InEchos")
}

/// A port's counters (`netpath stats --json`) on the topology.
fn port_counter(t: &Topology, container: &str, name: &str) -> u64 {
    t.counter(&t.ns(container), name)
}

#[test]
fn three_hosts_carry_ping_tcp_and_udp_on_the_fast_path() {
    let cluster = Cluster::new(3);
    let ov = cluster.overlay(42, 2, &[0, 1, 2]);
    let bridges: Vec<BridgeForwardCounter> = ov
        .topologies
        .iter()
        .map(BridgeForwardCounter::from_ports_of)
        .collect();
    let containers: Vec<String> = (0..3)
        .flat_map(|i| (0..2).map(move |c| (i, c)))
        .map(|(i, c)| ov.ns(i, c))
        .collect();
    let tx = |ns: &String| link_packets(ns, "eth0").1;
    let before: Vec<u64> = containers.iter().map(tx).collect();

    // Every container reaches every container of the other hosts.
    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            for c in 0..2 {
                assert!(
                    ping(&ov.ns(i, 0), &ip(j, c)),
                    "host {i} c0 cannot ping host {j} c{c} ({})",
                    ip(j, c)
                );
            }
        }
    }
    // ARP for remote containers was answered on each host by its programs.
    for (i, t) in ov.topologies.iter().enumerate() {
        let answered = port_counter(t, "c0", "arp_answered");
        assert!(
            answered >= 2,
            "host {i}: only {answered} ARP requests answered"
        );
    }

    // `fdb dump` lists the other hosts' containers with their node.
    let remote: Vec<Value> = ov.topologies[0]
        .fdb()
        .into_iter()
        .filter(|r| r["state"] == "remote")
        .collect();
    assert_eq!(remote.len(), 4, "host 0's remote entries: {remote:?}");
    for j in 1..3 {
        let of_node: Vec<&Value> = remote
            .iter()
            .filter(|r| r["node"] == ov.topologies[j].name.as_str())
            .collect();
        assert_eq!(
            of_node.len(),
            2,
            "host {j}'s containers in host 0's FDB: {remote:?}"
        );
        assert!(
            of_node
                .iter()
                .all(|r| r["dst"] == underlay_ip(j).to_string()),
            "{remote:?}"
        );
    }

    // MTU: the underlay's 1500 less 50; exactly that passes with DF set,
    // one byte more is refused by the kernel (message too long).
    let mtu_line =
        String::from_utf8_lossy(&in_ns(&ov.ns(0, 0), &["ip", "link", "show", "eth0"]).stdout)
            .into_owned();
    assert!(mtu_line.contains("mtu 1450"), "container MTU: {mtu_line}");
    // One ping that may not be fragmented, with `payload` bytes of ICMP data.
    let ping_unfragmented = |payload: &str| {
        let args = ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", payload];
        in_ns(&ov.ns(0, 0), &[&args[..], &[ip(1, 0).as_str()]].concat())
    };
    let fits = ping_unfragmented("1422");
    assert!(
        fits.status.success(),
        "a 1450-byte packet did not cross: {fits:?}"
    );
    let too_big = ping_unfragmented("1423");
    assert!(
        !too_big.status.success(),
        "a 1451-byte packet crossed with DF set"
    );
    let said = String::from_utf8_lossy(&too_big.stderr).into_owned()
        + &String::from_utf8_lossy(&too_big.stdout);
    assert!(said.contains("message too long"), "ping said: {said}");

    // Bulk traffic between hosts.
    let tcp = common::iperf3::brief(&ov.ns(0, 0), &ov.ns(1, 0), &ip(1, 0), 5201, &[]);
    let tcp_back = common::iperf3::brief(&ov.ns(0, 0), &ov.ns(1, 0), &ip(1, 0), 5202, &["-R"]);
    let udp = common::iperf3::brief(
        &ov.ns(1, 1),
        &ov.ns(2, 1),
        &ip(2, 1),
        5203,
        &["-u", "-b", "200M", "-l", "1000"],
    );
    for (what, report) in [("TCP 0->1", &tcp), ("TCP 1->0", &tcp_back)] {
        common::iperf3::assert_bulk_tcp(&format!("overlay: {what}"), report);
    }
    let udp_received = udp["end"]["sum"]["packets"].as_u64().unwrap()
        - udp["end"]["sum"]["lost_packets"].as_u64().unwrap_or(0);
    println!("overlay: UDP 1->2 delivered {udp_received} datagrams");
    // Enough for the bridge's share to mean something; the rate is the
    // benchmark's (a kernel-matrix VM delivers under 10,000).
    assert!(
        udp_received > 1_000,
        "UDP delivered only {udp_received} datagrams"
    );

    // The encap and decap counters agree with the containers' own: a ping
    // flood from host 0 c0 to host 2 c1 and back.
    let flood_from = &ov.topologies[0];
    let flood_to = &ov.topologies[2];
    let sender = ov.ns(0, 0);
    let receiver = ov.ns(2, 1);
    let enc0 = port_counter(flood_from, "c0", "encapsulated");
    let dec2 = port_counter(flood_to, "c1", "decapsulated");
    let node_dec2 = ov.overlay_counter(2, "decapsulated");
    let verdicts0 = flood_from
        .program_counters()
        .into_iter()
        .find(|(p, _)| *p == sender)
        .map(|(_, c)| verdicts(&c))
        .unwrap();
    let echoes_before = icmp_in_echos(&receiver);
    let tx_before = link_packets(&receiver, "eth0").1;
    let sender_tx = link_packets(&sender, "eth0").1;
    let flood = run_within(&sender, &["ping", "-f", "-c", "5000", "-q", &ip(2, 1)], 60);
    assert!(flood.status.success(), "ping flood: {flood:?}");
    let sent = link_packets(&sender, "eth0").1 - sender_tx;
    let received = icmp_in_echos(&receiver) - echoes_before;
    let tx_after = link_packets(&receiver, "eth0").1;
    let encapsulated = port_counter(flood_from, "c0", "encapsulated") - enc0;
    let decapsulated = port_counter(flood_to, "c1", "decapsulated") - dec2;
    let node_decapsulated = ov.overlay_counter(2, "decapsulated") - node_dec2;
    let decided = flood_from
        .program_counters()
        .into_iter()
        .find(|(p, _)| *p == sender)
        .map(|(_, c)| verdicts(&c))
        .unwrap()
        - verdicts0;
    println!(
        "overlay: flood: sender sent {sent}, encapsulated {encapsulated}; receiver got {received}, decapsulated {decapsulated} (node {node_decapsulated}), sent back {}",
        tx_after - tx_before
    );
    // Each count agrees with the one it follows from, within 5 frames.
    let agree = |count: u64, of: u64, what: String| assert!(count.abs_diff(of) <= 5, "{what}");
    assert!(
        encapsulated >= 5000,
        "encapsulated {encapsulated} of {sent}"
    );
    agree(
        encapsulated,
        sent,
        format!("encapsulated {encapsulated} of {sent}"),
    );
    agree(
        decided,
        sent,
        format!("program decided {decided} of {sent} frames"),
    );
    assert!(
        decapsulated >= 5000,
        "decapsulated {decapsulated}, the receiver got {received}"
    );
    agree(
        decapsulated,
        received,
        format!("decapsulated {decapsulated}, the receiver got {received}"),
    );
    agree(
        node_decapsulated,
        decapsulated,
        format!(
            "the vxlan program decapsulated {node_decapsulated}, the port counted {decapsulated}"
        ),
    );

    // The fast path carried it: each host's bridge forwarded at most 1% of
    // the frames its containers sent.
    let sent_per_host: Vec<u64> = (0..3)
        .map(|i| {
            (0..2)
                .map(|c| tx(&containers[i * 2 + c]) - before[i * 2 + c])
                .sum()
        })
        .collect();
    for (i, bridge) in bridges.iter().enumerate() {
        let forwarded = bridge.packets();
        println!(
            "overlay: host {i}: containers sent {} frames, the bridge forwarded {forwarded}",
            sent_per_host[i]
        );
        assert!(
            forwarded * 100 <= sent_per_host[i],
            "host {i}: the bridge forwarded {forwarded} of {} frames (> 1%)",
            sent_per_host[i]
        );
    }
}

/// `netpath upgrade` replaces an overlay's decap program on the node's
/// vxlan device too, not only the ports' programs (it had left the old one
/// there), and the overlay carries traffic through the new one.
#[test]
fn upgrade_replaces_the_decap_program_on_the_vxlan_device() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay(49, 1, &[0, 1]);
    let host = &cluster.hosts[1];
    let decap_program = || {
        let out = host.sh("bpftool", &["-j", "net", "show", "dev", "netpath-vxlan"]);
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bpftool net show: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let ids: Vec<u64> = shown[0]["tc"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_u64())
            .collect();
        assert_eq!(ids.len(), 1, "one overlay, one decap program: {shown}");
        ids[0]
    };
    let before = decap_program();
    let t = &ov.topologies[1];
    t.netpath_ok(&["upgrade", "--name", &t.name, "--force"]);
    let after = decap_program();
    assert_ne!(before, after, "the decap program {before} was not replaced");
    let decapsulated = ov.overlay_counter(1, "decapsulated");
    assert!(
        ping(&ov.ns(0, 0), &ip(1, 0)),
        "no ping across after the upgrade"
    );
    assert!(
        ov.overlay_counter(1, "decapsulated") > decapsulated,
        "the new decap program did not carry the ping"
    );
}

/// Issue 26: where the kernel has tcx links (6.6), VXLAN to a node's
/// containers is decapsulated by netpath's program on the interface that
/// holds the underlay address, not by the vxlan device (whose receive
/// path cost one TCP stream 7-9%). Counted outside the programs: the vxlan
/// device's own rx counter stays still while a ping flood crosses, and
/// counts every packet once the hook is gone (so the count can tell).
/// `upgrade` replaces the hook's program; leaving takes it off. Before
/// 6.6 the vxlan device carries everything.
#[test]
fn vxlan_to_containers_is_decapsulated_on_the_underlay_not_by_the_vxlan_device() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay(53, 1, &[0, 1]);
    let (host, t) = (&cluster.hosts[1], &ov.topologies[1]);
    let pin = Hook::Underlay.dir(&pin_dir(&t.name));
    let tcx = TcMethod::kernel_has_tcx();
    assert_eq!(
        pin.exists(),
        tcx,
        "underlay hook pinned at {}: {}",
        pin.display(),
        pin.exists()
    );
    // The flood's echo requests, as each place counted them: the vxlan
    // device's rx, the underlay interface's rx, the receiver's stack.
    let flood = |count: u32| {
        let device = host.link_packets("netpath-vxlan").0;
        let underlay = host.link_packets(UNDERLAY_IF).0;
        let echoes = icmp_in_echos(&ov.ns(1, 0));
        let count_arg = count.to_string();
        let args = ["ping", "-f", "-c", &count_arg, "-q", &ip(1, 0)];
        let out = run_within(&ov.ns(0, 0), &args, 60);
        assert!(out.status.success(), "ping flood: {out:?}");
        (
            host.link_packets("netpath-vxlan").0 - device,
            host.link_packets(UNDERLAY_IF).0 - underlay,
            icmp_in_echos(&ov.ns(1, 0)) - echoes,
        )
    };
    let (device, underlay, echoes) = flood(2000);
    println!(
        "overlay: 2000 echoes: the vxlan device received {device}, the underlay {underlay}, the container {echoes}"
    );
    assert!(
        echoes >= 2000 && underlay >= 2000,
        "{echoes} echoes, {underlay} on the underlay"
    );
    let hook = ov.status(1)["underlay_hook"].clone();
    if !tcx {
        assert!(device >= 2000, "the vxlan device received {device} of 2000");
        assert_eq!(hook, Value::Null, "overlay status names an underlay hook");
        return;
    }
    assert_eq!(hook, UNDERLAY_IF, "overlay status: the hook's interface");
    // ARP and the like still go through the device. The programs' own
    // count agrees.
    let at_underlay = ov.overlay_counter(1, "decapsulated_at_underlay");
    assert!(
        at_underlay >= 2000,
        "decapsulated_at_underlay {at_underlay}"
    );
    assert!(
        device <= 20,
        "the vxlan device received {device} of 2000 echoes"
    );

    let program = || {
        let out = host.sh(
            "bpftool",
            &["-j", "link", "show", "pinned", pin.to_str().unwrap()],
        );
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bpftool link show: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        shown["prog_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no prog_id in {shown}"))
    };
    let before = program();
    t.netpath_ok(&["upgrade", "--name", &t.name, "--force"]);
    assert_ne!(
        program(),
        before,
        "upgrade left the underlay hook's program {before}"
    );
    let (device, _, echoes) = flood(500);
    assert!(
        echoes >= 500 && device <= 20,
        "after the upgrade: {echoes} echoes, {device} through the device"
    );

    // Without the hook (its link unpinned), the device carries them all.
    std::fs::remove_file(&pin).unwrap();
    let (device, _, echoes) = flood(500);
    assert!(
        echoes >= 500 && device >= 500,
        "without the hook: {echoes} echoes, {device} through the device"
    );

    // Leaving takes the hook off the underlay interface: node 0's link
    // is gone with its topology.
    let (host0, t0) = (&cluster.hosts[0], &ov.topologies[0]);
    let pin0 = Hook::Underlay.dir(&pin_dir(&t0.name));
    let link_id = |args: &[&str]| {
        let out = host0.sh("bpftool", &[&["-j", "link", "show"], args].concat());
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|shown| shown["id"].as_u64())
    };
    let id = link_id(&["pinned", pin0.to_str().unwrap()]).expect("node 0's underlay link");
    t0.netpath_ok(&["down", "--name", &t0.name]);
    assert_eq!(
        link_id(&["id", &id.to_string()]),
        None,
        "link {id} outlived `down`"
    );
}

#[test]
fn a_frame_from_an_unknown_underlay_address_is_dropped_and_counted() {
    let cluster = Cluster::new(3);
    let ov = cluster.overlay(42, 1, &[0, 1]);
    let target = ov.ns(0, 0);
    let mac =
        String::from_utf8_lossy(&in_ns(&target, &["cat", "/sys/class/net/eth0/address"]).stdout)
            .trim()
            .to_owned();
    // Host 2 is no node of the overlay: a kernel vxlan device of VNI 42
    // sends straight to host 0 from it.
    let rogue = &cluster.hosts[2];
    let remote = underlay_ip(0).to_string();
    for args in [
        vec![
            "link", "add", "rogue", "type", "vxlan", "id", "42", "dstport", "4789", "remote",
            &remote,
        ],
        vec!["link", "set", "rogue", "mtu", "1450", "up"],
        vec!["addr", "add", "10.88.9.9/16", "dev", "rogue"],
        vec![
            "neigh",
            "add",
            "10.88.1.2",
            "lladdr",
            &mac,
            "dev",
            "rogue",
            "nud",
            "permanent",
        ],
    ] {
        ip_ok(rogue, &args);
    }
    let dropped = ov.overlay_counter(0, "drop_unknown_node");
    let capture = Capture::start(&target, "host 10.88.9.9");
    let pinged = rogue.sh("ping", &["-c", "5", "-i", "0.2", "-W", "1", "10.88.1.2"]);
    assert!(
        !pinged.status.success(),
        "an unknown node reached a container"
    );
    let dropped = ov.overlay_counter(0, "drop_unknown_node") - dropped;
    assert!(
        dropped >= 5,
        "only {dropped} frames from the unknown node were counted"
    );
    let seen = capture.frames();
    assert!(
        seen.is_empty(),
        "the container received frames from an unknown node: {seen:?}"
    );

    // A record that claims host 0's own slice and its container's MAC is
    // skipped (and shown), never programmed: the frames stay dropped.
    ov.add_peers(&format!(
        "[[node]]\nnode = \"rogue\"\nvni = 42\nunderlay = \"{}\"\nsubnets = [\"10.88.1.0/24\"]\n[[node.endpoint]]\nmac = \"{mac}\"\nips = [\"10.88.1.2\"]\n",
        underlay_ip(2)
    ));
    let skipped = ov.status(0)["skipped"].clone();
    assert_eq!(skipped[0]["node"], "rogue", "{skipped}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("overlaps this node's"),
        "{skipped}"
    );
    let pinged = rogue.sh("ping", &["-c", "3", "-i", "0.2", "-W", "1", "10.88.1.2"]);
    assert!(
        !pinged.status.success(),
        "a node whose record claims this node's slice reached a container"
    );

    // The same frames from a node in the peers file get through (and the
    // reply goes back to it): the address was the only difference. Its
    // record (the last for the node) replaces the forged one.
    // (the host's /sys is the machine's: ask the host's netlink instead)
    let link: Value =
        serde_json::from_slice(&rogue.sh("ip", &["-j", "link", "show", "rogue"]).stdout).unwrap();
    let rogue_mac = link[0]["address"].as_str().unwrap().to_owned();
    ov.add_peers(&format!(
        "[[node]]\nnode = \"rogue\"\nvni = 42\nunderlay = \"{}\"\nsubnets = [\"10.88.9.0/24\"]\n[[node.endpoint]]\nmac = \"{rogue_mac}\"\nips = [\"10.88.9.9\"]\n",
        underlay_ip(2)
    ));
    assert_eq!(ov.status(0)["skipped"], json!([]), "a valid record skipped");
    let pinged = rogue.sh("ping", &["-c", "3", "-i", "0.2", "-W", "1", "10.88.1.2"]);
    assert!(
        pinged.status.success(),
        "a known node did not reach the container: {}",
        String::from_utf8_lossy(&pinged.stdout)
    );
}

/// A node whose `--underlay` is a second address on its interface: the
/// route to the other node prefers the first, which that node does not
/// know. From Linux 6.0 the tunnel key pins the outer source to
/// `--underlay`: the nodes reach each other and none of it is dropped as
/// from an unknown node. Before, `up` warns, naming the address to give,
/// and the other node drops what comes from the first address, counted.
#[test]
fn the_outer_source_is_the_nodes_underlay_address() {
    let mut cluster = Cluster::new(2);
    cluster.use_second_address(1, Ipv4Addr::new(192, 168, 77, 101));
    let ov = cluster.overlay(46, 1, &[0, 1]);
    let unknown = ov.overlay_counter(0, "drop_unknown_node");
    let reached = ping(&ov.ns(1, 0), &ip(0, 0));
    let dropped = ov.overlay_counter(0, "drop_unknown_node") - unknown;
    if netpath::datapath::overlay::kernel_pins_outer_source() {
        assert!(
            reached,
            "node 1 does not reach node 0 from its second address"
        );
        assert_eq!(
            dropped, 0,
            "node 0 dropped node 1's frames as an unknown node's"
        );
        assert!(!ov.logs[1].contains("cannot pin"), "{}", ov.logs[1]);
    } else {
        assert!(
            ov.logs[1].contains("cannot pin the outer source address")
                && ov.logs[1].contains("give --underlay 192.168.77.2"),
            "no warning from up on a kernel that cannot pin: {}",
            ov.logs[1]
        );
        assert!(
            !reached && dropped > 0,
            "reached {reached}, dropped {dropped}"
        );
    }
}

/// VXLAN of a VNI no overlay on the node uses ends at its vxlan device:
/// before, the host's stack took the inner frame (a limited broadcast
/// reached a host service bound to the wildcard address: 20 of 20). Now
/// an nftables rule on the device's ingress, after the overlays' programs,
/// drops and counts it (`drop_unclaimed`); the overlay's own frames pass.
#[test]
fn vxlan_no_overlay_claims_is_dropped_and_counted() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay(47, 1, &[0, 1]);
    let service = netns::enter_and(&cluster.hosts[1].name, || {
        let socket = UdpSocket::bind("0.0.0.0:5353")?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .unwrap();
    let before = ov.overlay_counter(1, "drop_unclaimed");
    let mut broadcast = packets::udp_to(
        packets::ipv4([0xff; 6], [2, 0, 0, 0, 0, 0x99], [192, 0, 2, 9], [255; 4]),
        5353,
    );
    packets::ipv4_checksum(&mut broadcast);
    send_vxlan(
        &cluster.hosts[0].name,
        SocketAddr::from((underlay_ip(1), 4789)),
        999,
        &[broadcast],
        20,
    );
    within(
        Duration::from_secs(5),
        "node 1 counting 20 frames of VNI 999 as unclaimed",
        || ov.overlay_counter(1, "drop_unclaimed") - before >= 20,
    );
    let mut received = 0;
    while service.recv(&mut [0; 64]).is_ok() {
        received += 1;
    }
    assert_eq!(received, 0, "a host service received unclaimed VXLAN");
    assert!(ping(&ov.ns(0, 0), &ip(1, 0)), "the overlay's own frames");
}

/// Whether this kernel has WireGuard: its own answer (`ip link add ...
/// type wireguard` in host `host`), not netpath's.
fn kernel_has_wireguard(host: &Host) -> bool {
    let made = host
        .sh("ip", &["link", "add", "npwgprobe", "type", "wireguard"])
        .status
        .success();
    if made {
        host.sh("ip", &["link", "del", "npwgprobe"]);
    }
    made
}

/// Packets the underlay's bridge forwarded that match `rule`, counted by an
/// nftables rule there (outside every node and program).
struct UnderlayCounter {
    underlay: String,
    table: String,
}

impl UnderlayCounter {
    fn new(cluster: &Cluster, tag: &str, rule: &str) -> UnderlayCounter {
        let table = format!("nptest_{tag}");
        let script = format!(
            "table bridge {table} {{\n chain forward {{\n  type filter hook forward priority 0;\n  {rule} counter\n }}\n}}\n"
        );
        sh_ok(&["ip", "netns", "exec", &cluster.underlay, "nft", &script]);
        UnderlayCounter {
            underlay: cluster.underlay.clone(),
            table,
        }
    }

    fn packets(&self) -> u64 {
        let out = common::outside(
            "ip",
            &[
                "netns",
                "exec",
                &self.underlay,
                "nft",
                "-j",
                "list",
                "table",
                "bridge",
                &self.table,
            ],
        );
        let listed: Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
        listed["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|item| {
                item["rule"]["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e["counter"]["packets"].as_u64())
            })
            .expect("the counter's rule")
    }
}

/// Issue 23: an overlay over WireGuard (`--wireguard-key`). On the
/// underlay no VXLAN is seen at all, only WireGuard; and a host on the
/// underlay that forges a node's tunnel address (so that the decap check
/// would take the frame: its inner MAC and address are that node's
/// container's) reaches no container, dropped and counted
/// (`drop_unauthenticated`). A record without a WireGuard end is skipped.
/// On a kernel without WireGuard, `up` refuses before making anything.
#[test]
fn the_overlay_over_wireguard_is_sealed_and_forged_tunnel_traffic_is_dropped() {
    let cluster = Cluster::new(3);
    let keys = common::TempDir::new("wgk");
    let key = |i: usize| keys.0.join(format!("node{i}.key")).display().to_string();
    if !kernel_has_wireguard(&cluster.hosts[0]) {
        let host = &cluster.hosts[0];
        let name = unique_name("wg");
        let key = key(0);
        let up = host.netpath(&[
            "up",
            "--name",
            &name,
            "--containers",
            "1",
            "--subnet",
            "10.88.1.0/24",
            "--vni",
            "48",
            "--underlay",
            "192.168.77.1",
            "--overlay-network",
            "10.88.0.0/16",
            "--peers",
            "/nonexistent",
            "--wireguard-key",
            &key,
        ]);
        let log = String::from_utf8_lossy(&up.stderr);
        assert!(
            !up.status.success() && log.contains("this kernel has no WireGuard"),
            "up on a kernel without WireGuard: {log}"
        );
        assert_eq!(
            host.link_names(),
            ["lo", UNDERLAY_IF],
            "up left links behind"
        );
        assert!(!std::path::Path::new(&key).exists(), "up made a key");
        assert!(!netns::exists(&format!("{name}-c0")), "up left a namespace");
        return;
    }

    let ov = cluster.overlay_with_each(48, 1, &[0, 1], |i| vec!["--wireguard-key".into(), key(i)]);
    for i in 0..2 {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key(i)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "node {i}'s key file");
        let status = ov.status(i);
        assert_eq!(status["peers"].as_array().unwrap().len(), 1, "{status}");
        assert_eq!(
            status["node"]["wireguard"]["tunnel"],
            format!("10.88.{}.1", i + 1)
        );
    }
    let vxlan = UnderlayCounter::new(&cluster, "vx", "udp dport 4789");
    let sealed = UnderlayCounter::new(&cluster, "wg", "udp dport 51820");
    assert!(
        ping(&ov.ns(0, 0), &ip(1, 0)),
        "node 0 does not reach node 1"
    );
    let report = common::iperf3::brief(&ov.ns(0, 0), &ov.ns(1, 0), &ip(1, 0), 5201, &[]);
    let sent = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(sent > 0, "no TCP across the overlay: {report}");
    assert_eq!(vxlan.packets(), 0, "VXLAN on the underlay, in the clear");
    assert!(
        sealed.packets() > 100,
        "the overlay's traffic did not go through WireGuard: {} packets",
        sealed.packets()
    );

    // Host 2, on the underlay, forges node 0's tunnel address: a kernel
    // vxlan device from 10.88.1.1 to node 1's 10.88.2.1 (reached by its
    // underlay MAC), carrying frames from node 0's container's MAC and
    // address to node 1's container.
    let rogue = &cluster.hosts[2];
    let target = ov.ns(1, 0);
    let (victim_mac, forged_mac) = (mac_of(&target), mac_of(&ov.ns(0, 0)));
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let node1_mac = cluster.hosts[1]
        .links()
        .iter()
        .find(|l| l["ifname"] == UNDERLAY_IF)
        .and_then(|l| l["address"].as_str().map(str::to_owned))
        .expect("node 1's underlay MAC");
    for args in [
        vec!["addr", "add", "10.88.1.1/32", "dev", UNDERLAY_IF],
        vec![
            "route",
            "add",
            "10.88.2.1/32",
            "dev",
            UNDERLAY_IF,
            "src",
            "10.88.1.1",
        ],
        vec![
            "neigh",
            "add",
            "10.88.2.1",
            "lladdr",
            &node1_mac,
            "dev",
            UNDERLAY_IF,
            "nud",
            "permanent",
        ],
        vec![
            "link",
            "add",
            "rogue",
            "type",
            "vxlan",
            "id",
            "48",
            "dstport",
            "4789",
            "local",
            "10.88.1.1",
            "remote",
            "10.88.2.1",
        ],
        vec![
            "link",
            "set",
            "rogue",
            "address",
            &hex(forged_mac),
            "mtu",
            "1300",
            "up",
        ],
        vec!["addr", "add", &format!("{}/16", ip(0, 0)), "dev", "rogue"],
        vec![
            "neigh",
            "add",
            &ip(1, 0),
            "lladdr",
            &hex(victim_mac),
            "dev",
            "rogue",
            "nud",
            "permanent",
        ],
    ] {
        ip_ok(rogue, &args);
    }
    let dropped = ov.overlay_counter(1, "drop_unauthenticated");
    let echos = icmp_in_echos(&target);
    let pinged = rogue.sh("ping", &["-c", "5", "-i", "0.2", "-W", "1", &ip(1, 0)]);
    assert!(
        !pinged.status.success(),
        "a forged tunnel address reached a container"
    );
    assert_eq!(
        icmp_in_echos(&target) - echos,
        0,
        "node 1's container received echo requests from a forged tunnel address"
    );
    let dropped = ov.overlay_counter(1, "drop_unauthenticated") - dropped;
    assert!(
        dropped >= 5,
        "only {dropped} forged tunnel packets were counted"
    );
    eprintln!(
        "underlay: {} WireGuard packets, no VXLAN; {dropped} forged tunnel packets dropped",
        sealed.packets()
    );

    // A record without a WireGuard end is skipped, and says why.
    ov.add_peers(
        "[[node]]\nnode = \"plain\"\nvni = 48\nunderlay = \"192.168.77.3\"\nsubnets = [\"10.88.3.0/24\"]\n",
    );
    let skipped = ov.status(0)["skipped"].clone();
    assert!(
        skipped[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("offers no WireGuard end")),
        "{skipped}"
    );
    assert!(
        ping(&ov.ns(1, 0), &ip(0, 0)),
        "the overlay after the forgery"
    );

    // Down removes the device and its guard.
    let host = ov.topologies[0].host.clone();
    drop(ov);
    let links =
        String::from_utf8_lossy(&host.sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    assert!(
        !links.contains("npwg"),
        "a WireGuard device stayed: {links}"
    );
    let tables = String::from_utf8_lossy(&host.sh("nft", &["list", "tables"]).stdout).into_owned();
    assert!(!tables.contains("npwg"), "the guard stayed: {tables}");
}

/// VXLAN packets as a node sends them (the 8-byte header with VNI `vni`,
/// then the frame), `copies` of each frame, from a plain UDP socket in
/// namespace `ns`: no capability needed.
fn send_vxlan(ns: &str, to: SocketAddr, vni: u32, frames: &[Vec<u8>], copies: usize) {
    netns::enter_and(ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        // No UDP checksum, as nodes send: where the kernel has tcx the
        // underlay hook judges these (the vxlan device's hook before).
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(set == 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
        for frame in frames {
            for _ in 0..copies {
                let mut packet = vec![0x08, 0, 0, 0];
                packet.extend_from_slice(&(vni << 8).to_be_bytes());
                packet.extend_from_slice(frame);
                socket.send_to(&packet, to)?;
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("sending VXLAN from {ns}: {e:#}"));
}

/// The MAC of a container's eth0.
fn mac_of(ns: &str) -> [u8; 6] {
    let out = in_ns(ns, &["cat", "/sys/class/net/eth0/address"]);
    parse_mac(String::from_utf8_lossy(&out.stdout).trim())
}

/// A container masqueraded UDP to another node's VXLAN port (`--nat`), a
/// VXLAN header and a forged frame inside: that node took it for this
/// node's tunnel traffic and its container received the frame (issue 23:
/// 100 of 100). The port it leaves by drops and counts it; the same
/// datagram to another port still reaches the other node, masqueraded.
#[test]
fn a_container_cannot_send_to_a_nodes_vxlan_port() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay_with(42, 1, &[0, 1], &["--nat"]);
    let (sender, victim) = (ov.ns(0, 0), ov.ns(1, 0));
    let forged = packets::ipv4(
        mac_of(&victim),
        [0x02, 0x66, 0, 0, 0, 9],
        [10, 88, 9, 9],
        [10, 88, 2, 2],
    );
    let t0 = &ov.topologies[0];
    let receiver = cluster.hosts[1].run(|| {
        let socket = UdpSocket::bind("0.0.0.0:4790").expect("binding UDP 4790 on host 1");
        socket
            .set_read_timeout(Some(common::patience(Duration::from_secs(2))))
            .unwrap();
        socket
    });
    let copies = 20;
    let dropped = t0.counter(&sender, "drop_tunnel");
    let capture = Capture::start(&victim, "host 10.88.9.9");
    send_vxlan(
        &sender,
        (underlay_ip(1), 4789).into(),
        42,
        std::slice::from_ref(&forged),
        copies,
    );
    send_vxlan(
        &sender,
        (underlay_ip(1), 4790).into(),
        42,
        &[forged],
        copies,
    );
    let mut received = 0;
    let mut buffer = [0; 2048];
    while let Ok((_, from)) = receiver.recv_from(&mut buffer) {
        assert_eq!(
            from.ip(),
            underlay_ip(0),
            "not masqueraded to host 0's underlay address"
        );
        received += 1;
        if received == copies {
            break;
        }
    }
    assert_eq!(
        received, copies,
        "the datagrams to another port did not reach host 1"
    );
    assert_eq!(
        t0.counter(&sender, "drop_tunnel") - dropped,
        copies as u64,
        "the datagrams to the VXLAN port were not dropped and counted where they entered"
    );
    let seen = capture.frames();
    assert!(
        seen.is_empty(),
        "host 1's container received the forged frames: {seen:?}"
    );
}

/// A node sends only its own containers' frames, each from that
/// container's addresses: a frame from any other MAC, address, an ARP
/// that claims another's address or a router advertisement, from a node's
/// own underlay address (a container that got past its port, or anyone
/// who can send from that address), is dropped and counted by reason; the
/// node's honest frame next to them is delivered. (Before, every one of
/// them reached the container.)
#[test]
fn decap_checks_the_inner_frame_as_the_senders_port_would() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay(42, 1, &[0, 1]);
    let (target, remote) = (ov.ns(0, 0), ov.ns(1, 0));
    let (target_mac, remote_mac) = (mac_of(&target), mac_of(&remote));
    let remote_ll = packets::link_local(remote_mac);
    let honest = packets::ipv4(target_mac, remote_mac, [10, 88, 2, 2], [10, 88, 1, 2]);
    let forged = [
        (
            "drop_spoofed_mac",
            packets::ipv4(
                target_mac,
                [0x02, 0x66, 0, 0, 0, 9],
                [10, 88, 9, 9],
                [10, 88, 1, 2],
            ),
        ),
        (
            "drop_spoofed_ip",
            packets::ipv4(target_mac, remote_mac, [10, 88, 9, 9], [10, 88, 1, 2]),
        ),
        // "The gateway 10.88.1.1 is at the remote container's MAC."
        (
            "drop_spoofed_ip",
            packets::arp(1, remote_mac, remote_mac, [10, 88, 1, 1], [10, 88, 1, 2]),
        ),
        (
            "drop_spoofed_ip",
            packets::nd(
                packets::ND_ROUTER_ADVERT,
                remote_mac,
                remote_ll,
                [0; 16],
                Some(remote_mac),
            ),
        ),
    ];
    let copies = 5;
    let before: Vec<u64> = forged
        .iter()
        .map(|(counter, _)| ov.overlay_counter(0, counter))
        .collect();
    let delivered = ov.overlay_counter(0, "decapsulated");
    let capture = Capture::start(&target, "udp port 12345 or arp or icmp6");
    let frames: Vec<Vec<u8>> = forged.iter().map(|(_, frame)| frame.clone()).collect();
    send_vxlan(
        &cluster.hosts[1].name,
        (underlay_ip(0), 4789).into(),
        42,
        &frames,
        copies,
    );
    send_vxlan(
        &cluster.hosts[1].name,
        (underlay_ip(0), 4789).into(),
        42,
        &[honest],
        copies,
    );
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for ((counter, _), before) in forged.iter().zip(&before) {
        *expected.entry(counter).or_insert(*before) += copies as u64;
    }
    for (counter, want) in expected {
        let got = ov.overlay_counter(0, counter);
        assert!(got >= want, "{counter}: {got}, want at least {want}");
    }
    assert!(
        ov.overlay_counter(0, "decapsulated") - delivered >= copies as u64,
        "the honest frames were not delivered"
    );
    let seen = capture.frames();
    assert!(
        seen.iter().any(|l| l.contains("10.88.2.2.12345 >")),
        "the container did not receive the honest frames: {seen:?}"
    );
    let leaked: Vec<&String> = seen
        .iter()
        .filter(|l| {
            l.contains("10.88.9.9")
                || l.contains("tell 10.88.1.1")
                || l.contains("router advertisement")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "the container received forged frames: {leaked:?}"
    );
}

/// A container that sent from a remote container's MAC before the control
/// plane named that container (one that routes, so its port learns) had
/// its port learn the MAC, and the local entry won over the remote one:
/// it received that container's traffic until ageing. Programming the
/// remote entry forgets the learned copy.
#[test]
fn a_remote_mac_wins_over_a_learned_copy() {
    let cluster = Cluster::new(2);
    let ov = cluster.overlay(42, 1, &[0, 1]);
    let (t0, t1) = (&ov.topologies[0], &ov.topologies[1]);
    // A new container on host 1, which host 0 does not know yet.
    let added = t1.netpath_ok(&["port", "add", "--name", &t1.name, "late"]);
    let mac = added.split_whitespace().last().unwrap().to_owned();
    // On host 0, a router (no source check) sends from that MAC.
    t0.netpath_ok(&[
        "port",
        "add",
        "--name",
        &t0.name,
        "router",
        "--no-source-check",
    ]);
    let router = t0.ns("router");
    sh_ok(&["ip", "-n", &router, "link", "set", "eth0", "address", &mac]);
    let _ = run_within(
        &router,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.88.1.1"],
        10,
    );
    let fdb = |t: &Topology| -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(
            &t.netpath_ok(&["fdb", "dump", "--name", &t.name, "--json"]),
        )
        .unwrap()
        .into_iter()
        .filter(|e| e["mac"] == mac.as_str())
        .collect()
    };
    let learned = fdb(t0);
    assert!(
        learned.iter().any(|e| e["state"] == "learned"),
        "host 0 did not learn {mac} from the router: {learned:?}"
    );
    // Host 1's record now names the container: host 0 programs it.
    ov.add_peers(&t1.netpath_ok(&["overlay", "export", "--name", &t1.name]));
    let entries = fdb(t0);
    let states: Vec<&str> = entries.iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states, ["remote"], "{mac} on host 0: {entries:?}");
}

#[test]
fn two_overlays_on_the_same_hosts_are_isolated() {
    let cluster = Cluster::new(2);
    // The same addresses on both: only the VNI tells them apart.
    let red = cluster.overlay(42, 2, &[0, 1]);
    let blue = cluster.overlay(43, 2, &[0, 1]);
    // Unicast to a remote container of red, then broadcast (ARP for an
    // address nobody has, flooded to red's nodes): blue sees none of it.
    let mut captures = Capture::start_all(&[
        (red.ns(1, 0), "arp or icmp"),
        (blue.ns(0, 0), "arp or icmp"),
        (blue.ns(0, 1), "arp or icmp"),
        (blue.ns(1, 0), "arp or icmp"),
        (blue.ns(1, 1), "arp or icmp"),
    ]);
    let red_peer = captures.remove(0);
    assert!(
        ping(&red.ns(0, 0), &ip(1, 0)),
        "red cannot reach its own remote container"
    );
    assert!(!ping(&red.ns(0, 0), "10.88.2.99"));
    let red_seen = red_peer.frames();
    assert!(
        red_seen.iter().any(|l| l.contains("ICMP echo request"))
            && red_seen.iter().any(|l| l.contains("who-has 10.88.2.99")),
        "red's remote container saw neither the ping nor the broadcast: {red_seen:?}"
    );
    for capture in captures {
        let seen = capture.frames();
        assert!(
            seen.is_empty(),
            "a container of blue received red's frames: {seen:?}"
        );
    }
    assert!(
        ping(&blue.ns(1, 1), &ip(0, 1)),
        "blue cannot reach its own remote container"
    );
}

/// Host 0's containers: `web` (app=web) as c0, c1 and c2 (no labels).
const POLICY_HOST0: &str = r#"
[[container]]
name = "c0"
labels = { app = "web" }
named_ports = [{ name = "http", port = 80 }]
"#;

/// Host 1's containers: c0 (role=client), c1 (no labels), c2
/// (role=client, in namespace prod).
const POLICY_HOST1: &str = r#"
[[container]]
name = "c0"
labels = { role = "client" }
[[container]]
name = "c1"
[[container]]
name = "c2"
namespace = "prod"
labels = { role = "client" }
"#;

/// Applies `yaml` (NetworkPolicy documents) to topology `t`, replacing
/// what it had.
fn apply_policies(t: &Topology, dir: &common::TempDir, yaml: &str) {
    t.netpath_ok(&["policy", "delete", "--name", &t.name, "--all"]);
    let file = dir.0.join(format!("{}.yaml", t.name));
    std::fs::write(&file, yaml).unwrap();
    t.netpath_ok(&[
        "policy",
        "apply",
        "--name",
        &t.name,
        "-f",
        file.to_str().unwrap(),
    ]);
}

/// Network policy across the overlay: a node's policies select the other
/// nodes' containers by the namespace and labels their records carry,
/// ingress is judged on the receiving node and egress on the sending one,
/// and a container that joins another node is selected once its record
/// comes.
#[test]
fn network_policy_holds_across_the_overlay() {
    use common::probe::{Probe, Servers, answered_all};
    let dir = common::TempDir::new("opol");
    let configs: Vec<PathBuf> = [POLICY_HOST0, POLICY_HOST1]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.0.join(format!("host{i}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let cluster = Cluster::new(2);
    let ov = cluster.overlay_with_each(46, 3, &[0, 1], |i| {
        vec!["--config".into(), configs[i].to_str().unwrap().into()]
    });
    let (web, h1c1) = (ip(0, 0), ip(1, 1));
    // Host 1's c0, c1 and c2.
    let (client, stranger, prod) = (ov.ns(1, 0), ov.ns(1, 1), ov.ns(1, 2));
    let _servers: Vec<Servers> = [ov.ns(0, 0), ov.ns(1, 1)]
        .iter()
        .map(|ns| Servers::start(ns, &[80, 81], &[53]))
        .collect();
    let probe = |cases: &[(&String, &String, Probe, bool)], what: &str| {
        let probes: Vec<_> = cases
            .iter()
            .map(|(from, to, probe, _)| ((*from).clone(), to.parse().unwrap(), *probe))
            .collect();
        let failures: Vec<String> = answered_all(&probes)
            .into_iter()
            .zip(cases)
            .filter(|(got, (.., want))| got != want)
            .map(|(got, (from, to, probe, _))| {
                format!("{what}: {probe:?} from {from} to {to}: answered {got}")
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    };
    let (h0, h1) = (&ov.topologies[0], &ov.topologies[1]);

    probe(
        &[
            (&stranger, &web, Probe::Tcp(80), true),
            (&prod, &web, Probe::Icmp, true),
        ],
        "no policy",
    );

    // Host 0 lets in only role=client pods of its namespace, on its named
    // port http: host 1's c0 by the labels its record carries.
    apply_policies(
        h0,
        &dir,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}]
"#,
    );
    probe(
        &[
            (&client, &web, Probe::Tcp(80), true),
            (&client, &web, Probe::Tcp(81), false),
            (&client, &web, Probe::Udp(53), false),
            (&stranger, &web, Probe::Tcp(80), false),
            (&prod, &web, Probe::Tcp(80), false),
            (&client, &h1c1, Probe::Tcp(81), true),
        ],
        "ingress on host 0 from labelled remote pods",
    );
    assert!(h0.counter(&h0.ns("c0"), "policy_ingress_denied") > 0);

    // By namespace: only prod's pods.
    apply_policies(
        h0,
        &dir,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}}]
"#,
    );
    probe(
        &[
            (&prod, &web, Probe::Tcp(81), true),
            (&prod, &web, Probe::Udp(53), true),
            (&client, &web, Probe::Tcp(80), false),
        ],
        "ingress on host 0 from a remote namespace",
    );

    // Egress, judged on host 1: its clients reach only app=web, on 80.
    h0.netpath_ok(&["policy", "delete", "--name", &h0.name, "--all"]);
    apply_policies(
        h1,
        &dir,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-to-web}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
"#,
    );
    probe(
        &[
            (&client, &web, Probe::Tcp(80), true),
            (&client, &web, Probe::Tcp(81), false),
            (&client, &h1c1, Probe::Tcp(80), false),
            (&stranger, &web, Probe::Tcp(81), true),
            // Another namespace: the policy does not select it.
            (&prod, &web, Probe::Tcp(81), true),
        ],
        "egress on host 1 to a labelled remote pod",
    );
    assert!(h1.counter(&h1.ns("c0"), "policy_egress_denied") > 0);

    // A client that joins host 1 is let in on host 0 once its record
    // comes (peers synced), not before.
    h1.netpath_ok(&["policy", "delete", "--name", &h1.name, "--all"]);
    apply_policies(
        h0,
        &dir,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
"#,
    );
    // (Before its record comes, host 0 drops its frames anyway: it knows
    // no such container. After, only the policy compiled anew lets it in.)
    h1.netpath_ok(&[
        "port",
        "add",
        "--name",
        &h1.name,
        "late",
        "--label",
        "role=client",
    ]);
    let late = h1.ns("late");
    ov.add_peers(&h1.netpath_ok(&["overlay", "export", "--name", &h1.name]));
    probe(
        &[
            (&late, &web, Probe::Tcp(80), true),
            (&stranger, &web, Probe::Tcp(80), false),
        ],
        "a pod that joined host 1, once its record came",
    );

    // Deleting every policy restores access.
    h0.netpath_ok(&["policy", "delete", "--name", &h0.name, "--all"]);
    probe(
        &[(&stranger, &web, Probe::Tcp(81), true)],
        "every policy deleted",
    );
}

/// etcd in a host of the cluster of its own, on the underlay; killed (and
/// its data removed) when dropped.
struct Etcd {
    host: Arc<Host>,
    ip: Ipv4Addr,
    data: PathBuf,
    /// Serving TLS with these certificates, and asking clients for theirs.
    tls: Option<Arc<Pki>>,
    process: Option<common::KillOnDrop>,
}

impl Etcd {
    fn start(host: &Arc<Host>, ip: Ipv4Addr) -> Etcd {
        Self::start_serving(host, ip, None)
    }

    /// etcd over TLS only, and only to clients with a certificate `pki`'s
    /// CA signed.
    fn start_tls(host: &Arc<Host>, ip: Ipv4Addr, pki: &Arc<Pki>) -> Etcd {
        Self::start_serving(host, ip, Some(pki.clone()))
    }

    fn start_serving(host: &Arc<Host>, ip: Ipv4Addr, tls: Option<Arc<Pki>>) -> Etcd {
        let data = std::env::temp_dir().join(format!("netpath-etcd-{}", unique_name("et")));
        let mut etcd = Etcd {
            host: host.clone(),
            ip,
            data,
            tls,
            process: None,
        };
        etcd.resume();
        etcd
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", self.ip)
    }

    /// Turns authentication on: user `root` (etcd's administrator) with
    /// `password`, which every client must then give.
    fn enable_auth(&self, password: &str) {
        let pki = self.tls.clone().expect("auth over TLS only");
        let (url, password) = (self.url(), password.to_owned());
        self.host.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut client = etcd_client::Client::connect([url], Some(pki.connect_options()))
                    .await
                    .expect("connecting to etcd over TLS");
                client.role_add("root").await.expect("adding role root");
                client
                    .user_add("root", password, None)
                    .await
                    .expect("adding user root");
                client
                    .user_grant_role("root", "root")
                    .await
                    .expect("granting root its role");
                client.auth_enable().await.expect("enabling authentication");
            })
        });
    }

    /// Starts etcd (again, on its data) and waits until it serves clients.
    fn resume(&mut self) {
        let peer = "http://127.0.0.1:2380";
        let child = self
            .host
            .command("etcd")
            .args(["--name", "e", "--data-dir", self.data.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("e={peer}")])
            .args(self.tls.iter().flat_map(|pki| {
                [
                    "--client-cert-auth".to_owned(),
                    "--trusted-ca-file".to_owned(),
                    pki.path("ca.pem"),
                    "--cert-file".to_owned(),
                    pki.path("etcd.pem"),
                    "--key-file".to_owned(),
                    pki.path("etcd-key.pem"),
                ]
            }))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting etcd (Debian's etcd-server; `cargo xtask setup` installs it)");
        self.process = Some(common::KillOnDrop(child));
        let address = std::net::SocketAddr::from((self.ip, 2379));
        let deadline = std::time::Instant::now() + common::patience(Duration::from_secs(10));
        while !self.host.run(|| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not start serving"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        self.process = None;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A CA and the certificates it signed, as PEM files in a directory of
/// their own: `ca.pem`, `etcd.pem` (etcd's, for its address) and
/// `node.pem` (the nodes' client certificate), each with `-key.pem`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(etcd: Ipv4Addr) -> Arc<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let dir = std::env::temp_dir().join(format!("netpath-pki-{}", unique_name("pk")));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(DnType::CommonName, "netpath test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            ("etcd", vec![SanType::IpAddress(etcd.into())]),
            ("node", vec![]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = sans;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        Arc::new(Pki { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The test's own etcd client: the CA and the node certificate.
    fn connect_options(&self) -> etcd_client::ConnectOptions {
        let read = |file: &str| std::fs::read(self.dir.join(file)).unwrap();
        etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
                .identity(etcd_client::Identity::from_pem(
                    read("node.pem"),
                    read("node-key.pem"),
                )),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `netpath run` of one node on an etcd overlay, killed when dropped; its
/// topology torn down after.
struct EtcdNode {
    process: Option<common::KillOnDrop>,
    topology: Topology,
    args: Vec<String>,
}

impl EtcdNode {
    fn start(cluster: &Cluster, i: usize, etcd: &Etcd) -> EtcdNode {
        Self::start_with(cluster, i, etcd, &[])
    }

    /// As [`EtcdNode::start`], `run` given `extra` too.
    fn start_with(cluster: &Cluster, i: usize, etcd: &Etcd, extra: &[String]) -> EtcdNode {
        let host = &cluster.hosts[i];
        let name = unique_name("oe");
        let args: Vec<String> = [
            "run",
            "--name",
            &name,
            "--keep",
            "--containers",
            "2",
            "--subnet",
            &format!("10.88.{}.0/24", i + 1),
            "--vni",
            "42",
            "--underlay",
            &underlay_ip(i).to_string(),
            "--overlay-network",
            "10.88.0.0/16",
            "--etcd",
            &etcd.url(),
            "--lease-ttl",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect();
        let mut node = EtcdNode {
            process: None,
            topology: Topology::adopt(host, &name),
            args,
        };
        node.restart();
        node
    }

    /// Starts `run` (again: it adopts the topology that is up).
    fn restart(&mut self) {
        let child = self
            .topology
            .netpath_command()
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting netpath run");
        self.process = Some(common::KillOnDrop(child));
    }

    /// SIGKILL: the datapath stays, the lease is no longer kept.
    fn kill(&mut self) {
        self.process = None;
    }

    fn ns(&self, c: usize) -> String {
        self.topology.ns(&format!("c{c}"))
    }

    /// The other nodes this node has programmed (underlay addresses), or
    /// none while its overlay is not up yet.
    fn accepted(&self) -> Vec<String> {
        let out =
            self.topology
                .netpath(&["overlay", "status", "--name", &self.topology.name, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        status["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.topology.netpath_ok(&[
            "overlay",
            "status",
            "--name",
            &self.topology.name,
            "--json",
        ]))
        .unwrap()
    }
}

/// etcd over TLS that asks clients for a certificate, with authentication
/// on: nodes given the CA, a client certificate and key, and a user with
/// its password file register, find each other and carry the overlay. A
/// node given the wrong password is never let in: the others never
/// program it, and it programs none of them.
#[test]
fn etcd_with_tls_and_a_user_carries_the_overlay() {
    let cluster = Cluster::new(4);
    let pki = Pki::new(underlay_ip(3));
    let etcd = Etcd::start_tls(&cluster.hosts[3], underlay_ip(3), &pki);
    etcd.enable_auth("s3cret pass");
    let password = |tag: &str, text: &str| {
        let file = TempFile(std::env::temp_dir().join(format!("netpath-{}", unique_name(tag))));
        std::fs::write(&file.0, format!("{text}\n")).unwrap();
        file
    };
    let (right, wrong) = (password("pw", "s3cret pass"), password("pw", "guessed"));
    let access = |password: &TempFile| -> Vec<String> {
        [
            "--etcd-ca",
            &pki.path("ca.pem"),
            "--etcd-cert",
            &pki.path("node.pem"),
            "--etcd-key",
            &pki.path("node-key.pem"),
            "--etcd-user",
            "root",
            "--etcd-password-file",
            password.0.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let nodes: Vec<EtcdNode> = (0..2)
        .map(|i| EtcdNode::start_with(&cluster, i, &etcd, &access(&right)))
        .collect();
    let intruder = EtcdNode::start_with(&cluster, 2, &etcd, &access(&wrong));
    let ul = |i: usize| underlay_ip(i).to_string();
    within(
        common::patience(Duration::from_secs(10)),
        "the two nodes finding each other through etcd over TLS",
        || nodes[0].accepted() == [ul(1)] && nodes[1].accepted() == [ul(0)],
    );
    assert!(
        ping(&nodes[0].ns(0), &ip(1, 0)),
        "node 0 does not reach node 1"
    );
    assert!(
        intruder.accepted().is_empty(),
        "a node with the wrong password programmed {:?}",
        intruder.accepted()
    );
    assert_eq!(
        nodes[0].accepted(),
        [ul(1)],
        "the wrong password let node 2 in"
    );
}

#[test]
fn etcd_programs_nodes_as_they_come_and_go_and_its_loss_stops_nothing() {
    let cluster = Cluster::new(4);
    let mut etcd = Etcd::start(&cluster.hosts[3], underlay_ip(3));
    let mut nodes: Vec<EtcdNode> = (0..3)
        .map(|i| EtcdNode::start(&cluster, i, &etcd))
        .collect();
    let ul = |i: usize| underlay_ip(i).to_string();
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(ul).collect();
        within(
            Duration::from_secs(15),
            &format!("node {i} learning the others"),
            || node.accepted() == others,
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            assert!(
                ping(&node.ns(0), &ip(j, 0)),
                "node {i} cannot reach node {j}"
            );
        }
    }

    // A container added on node 0 is programmed on node 1 within 1 s.
    let t0 = &nodes[0].topology;
    let added = t0.netpath_ok(&["port", "add", "--name", &t0.name, "web"]);
    let mac = t0.status()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["container"] == "web" || p["name"].as_str().is_some_and(|n| n.ends_with("-web"))
        })
        .and_then(|p| p["mac"].as_str())
        .unwrap_or_else(|| panic!("no port web in status after {added}"))
        .to_owned();
    let took = within(
        Duration::from_secs(1),
        "the new container on node 1",
        || {
            nodes[1].status()["remote"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["mac"] == mac.as_str())
        },
    );
    println!("overlay/etcd: a new container was programmed on another node after {took:?}");

    // etcd stops and comes back (after longer than the lease TTL) while
    // traffic runs: nothing is lost, and the nodes reconnect.
    let pinger = spawn_in(
        &nodes[0].ns(0),
        &["ping", "-i", "0.02", "-c", "400", "-W", "1", &ip(1, 0)],
    );
    std::thread::sleep(Duration::from_secs(1));
    etcd.stop();
    within(
        Duration::from_secs(10),
        "node 0 noticing etcd is gone",
        || nodes[0].status()["connected"] == false,
    );
    std::thread::sleep(Duration::from_secs(4));
    etcd.resume();
    let pinged = output_within(pinger, Duration::from_secs(30), "ping under etcd loss");
    let summary = String::from_utf8_lossy(&pinged.stdout).into_owned();
    println!(
        "overlay/etcd: ping during the etcd outage: {}",
        summary.lines().rev().nth(1).unwrap_or("")
    );
    assert!(
        pinged.status.success() && summary.contains(" 0% packet loss"),
        "frames were lost while etcd was away: {summary}"
    );
    for (i, node) in nodes.iter().enumerate() {
        within(
            Duration::from_secs(10),
            &format!("node {i} reconnecting to etcd"),
            || node.status()["connected"] == true,
        );
        assert_eq!(
            node.accepted().len(),
            2,
            "node {i} lost a node across the etcd outage"
        );
    }

    // Node 2 dies: the others forget it within the lease TTL (3 s, and
    // etcd's expiry check), and keep forwarding between themselves.
    nodes[2].kill();
    let forgotten = within(
        Duration::from_secs(5),
        "nodes 0 and 1 forgetting node 2",
        || !nodes[0].accepted().contains(&ul(2)) && !nodes[1].accepted().contains(&ul(2)),
    );
    println!("overlay/etcd: a killed node was forgotten after {forgotten:?} (TTL 3 s)");
    assert!(
        ping(&nodes[0].ns(0), &ip(1, 0)),
        "nodes 0 and 1 lost each other with node 2"
    );
    assert!(
        !ping(&nodes[0].ns(0), &ip(2, 0)),
        "node 2 is still reached after it was forgotten"
    );

    // Node 2 restarts and rejoins.
    nodes[2].restart();
    within(Duration::from_secs(10), "node 2 rejoining", || {
        nodes[0].accepted().contains(&ul(2)) && nodes[2].accepted().len() == 2
    });
    assert!(
        ping(&nodes[0].ns(0), &ip(2, 0)),
        "node 2 is not reached after it rejoined"
    );
    drop(nodes);
}

/// `netpath run --cni --name BRIDGE` on a host: the overlay's control plane
/// of a CNI network. Interrupted (Ctrl-C, so it removes its run lock) when
/// dropped, and killed if it has not exited 5 s later.
struct CniDaemon {
    process: common::KillOnDrop,
    log: PathBuf,
}

impl CniDaemon {
    fn start(host: &Host, bridge: &str) -> CniDaemon {
        let log = std::env::temp_dir().join(format!("netpath-run-{bridge}.log"));
        let child = host
            .netpath_command()
            .args(["run", "--cni", "--name", bridge])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("run's log file"))
            .spawn()
            .expect("starting netpath run --cni");
        CniDaemon {
            process: child.into(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CniDaemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A pod a CNI ADD attached: its namespace, its address (without the
/// prefix), its MAC and its host veth.
#[derive(Clone, Debug)]
struct Pod {
    ns: String,
    ip: String,
    mac: String,
    host_veth: String,
}

/// A CNI network on host `i` of a cluster, on overlay VNI 42 (network
/// 10.88.0.0/16; host i's IPAM subnet 10.88.(i+1).0/24, its slice), its
/// pods added and deleted by netpath-cni exactly as a runtime on that host
/// drives it. Dropping it stops its daemon, deletes every pod left (the
/// last DEL takes the node off the overlay), then the pods' namespaces.
struct CniNode {
    host: Arc<Host>,
    bridge: String,
    config: Value,
    /// Container ID and pod, of the pods not deleted yet.
    pods: Vec<(String, Pod)>,
    daemon: Option<CniDaemon>,
}

impl CniNode {
    /// `peers`: the overlay's `"peers"` or `"etcd"` (and e.g. `"leaseTtl"`).
    fn new(cluster: &Cluster, i: usize, peers: Value) -> CniNode {
        let bridge = unique_name("ocn");
        let mut overlay = json!({"node": bridge, "vni": 42, "underlay": underlay_ip(i).to_string(),
                                 "network": "10.88.0.0/16"});
        overlay
            .as_object_mut()
            .unwrap()
            .extend(peers.as_object().unwrap().clone());
        let config = json!({"cniVersion": "1.1.0", "name": "overlay", "type": "netpath-cni",
                            "bridge": bridge, "overlay": overlay,
                            "ipam": {"type": "netpath", "subnet": format!("10.88.{}.0/24", i + 1)}});
        CniNode {
            host: cluster.hosts[i].clone(),
            bridge,
            config,
            pods: Vec::new(),
            daemon: None,
        }
    }

    /// ADD of a new pod (its namespace made first, as a runtime does);
    /// returns the pod and the plugin's result.
    fn add(&mut self) -> (Pod, Value) {
        let container = format!("{}-p{}", self.bridge, self.pods.len());
        let ns = container.clone();
        sh_ok(&["ip", "netns", "add", &ns]);
        let placeholder = Pod {
            ns: ns.clone(),
            ip: String::new(),
            mac: String::new(),
            host_veth: String::new(),
        };
        self.pods.push((container.clone(), placeholder));
        let path = netns::path(&ns).display().to_string();
        let (ok, result) = cni::run(
            &self.host,
            "ADD",
            &container,
            Some(&path),
            "eth0",
            &self.config,
        );
        assert!(ok, "ADD of {container} on {}: {result}", self.bridge);
        let pod = Pod {
            ns,
            ip: result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .unwrap_or_else(|| panic!("no address in {result}"))
                .to_owned(),
            mac: result["interfaces"][1]["mac"].as_str().unwrap().to_owned(),
            host_veth: result["interfaces"][0]["name"].as_str().unwrap().to_owned(),
        };
        self.pods.last_mut().unwrap().1 = pod.clone();
        (pod, result)
    }

    /// DEL of every pod, as the runtime removes them.
    fn del_all(&mut self) {
        for (container, pod) in std::mem::take(&mut self.pods) {
            let (ok, result) = self.del(&container, &pod);
            assert!(ok, "DEL of {container} on {}: {result}", self.bridge);
        }
    }

    /// DEL of one pod, then its namespace deleted, as a runtime does.
    fn del(&self, container: &str, pod: &Pod) -> (bool, Value) {
        let path = netns::path(&pod.ns).display().to_string();
        let outcome = cni::run(
            &self.host,
            "DEL",
            container,
            Some(&path),
            "eth0",
            &self.config,
        );
        common::outside("ip", &["netns", "del", &pod.ns]);
        outcome
    }

    /// CNI STATUS of the network.
    fn status_call(&self) -> (bool, Value) {
        cni::run(&self.host, "STATUS", "", None, "", &self.config)
    }

    /// Takes the datapath's decap program (pinned in `pins`) off the
    /// node's vxlan device, as a lost pin or a stray `tc filter del` would.
    fn unhook_decap(&self, pins: &std::path::Path) {
        let link = pins.join("links/vxlan");
        if link.exists() {
            std::fs::remove_file(&link).unwrap();
        } else {
            let out = self
                .host
                .sh("tc", &["filter", "del", "dev", "netpath-vxlan", "ingress"]);
            assert!(out.status.success(), "tc filter del: {out:?}");
        }
    }

    /// This node's record, as `overlay export` prints it for a peers file.
    fn export(&self) -> String {
        self.host
            .netpath_ok(&["overlay", "export", "--name", &self.bridge])
    }

    /// `overlay status --json`.
    fn status(&self) -> Value {
        serde_json::from_str(&self.host.netpath_ok(&[
            "overlay",
            "status",
            "--name",
            &self.bridge,
            "--json",
        ]))
        .unwrap()
    }

    /// Whether the datapath has a remote entry for `mac`.
    fn knows(&self, mac: &str) -> bool {
        let out = self
            .host
            .netpath(&["overlay", "status", "--name", &self.bridge, "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).unwrap()["remote"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["mac"] == mac)
    }

    /// A counter of the program on the node's vxlan device.
    fn overlay_counter(&self, name: &str) -> u64 {
        overlay_counter(&self.status(), name)
    }

    /// A counter of the program on `pod`'s host veth (`netpath stats`).
    fn port_counter(&self, pod: &Pod, name: &str) -> u64 {
        let stats: Value = serde_json::from_str(&self.host.netpath_ok(&[
            "stats",
            "--name",
            &self.bridge,
            "--json",
        ]))
        .unwrap();
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == pod.host_veth.as_str())
            .map(|p| p["packets"][name].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no port {} in {stats}", pod.host_veth))
    }

    /// Whether the host has the overlay's vxlan device.
    fn has_vxlan_device(&self) -> bool {
        self.host
            .sh("ip", &["link", "show", "netpath-vxlan"])
            .status
            .success()
    }

    /// What the node's overlay leaves on the machine: its vxlan device,
    /// the datapath's pins, and the plugin's and the overlay's records.
    fn overlay_leftovers(&self) -> Vec<String> {
        let datapath = netpath::model::naming::cni_datapath(&self.bridge);
        let mut found = Vec::new();
        if self.has_vxlan_device() {
            found.push("vxlan device netpath-vxlan".to_owned());
        }
        found.extend(common::existing([
            netpath::datapath::object::pin_dir(&datapath),
            netpath::store::cni::path(&self.bridge),
            netpath::store::overlay::path(&datapath).unwrap(),
        ]));
        found
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        self.daemon = None;
        for (container, pod) in std::mem::take(&mut self.pods) {
            self.del(&container, &pod);
        }
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Pings `count` times from `from` to `to` (a flood: enough frames that
/// the few a bridge may flood, e.g. IPv6 neighbour discovery, stay under
/// 1%), which must all be answered.
fn ping_flood(from: &Pod, to: &Pod, count: u32) {
    let count = count.to_string();
    let out = run_within(&from.ns, &["ping", "-f", "-c", &count, "-q", &to.ip], 60);
    assert!(
        out.status.success(),
        "ping flood {} -> {}: {}",
        from.ip,
        to.ip,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn cni_pods_on_two_hosts_reach_each_other_over_a_peers_file() {
    let cluster = Cluster::new(2);
    let peers =
        TempFile(std::env::temp_dir().join(format!("netpath-peers-{}.toml", unique_name("ocp"))));
    std::fs::write(&peers.0, "").unwrap();
    let file = json!({"peers": peers.0});
    let mut nodes: Vec<CniNode> = (0..2)
        .map(|i| CniNode::new(&cluster, i, file.clone()))
        .collect();

    // The first pod's ADD joins the overlay: the node's vxlan device, the
    // pod's MTU the underlay's 1500 less 50 (in the result and on the
    // interface), its address on the overlay-wide prefix.
    let mut first = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let (pod, result) = node.add();
        assert_eq!(pod.ip, format!("10.88.{}.2", i + 1), "{result}");
        assert_eq!(
            result["ips"][0]["address"],
            format!("10.88.{}.2/16", i + 1),
            "{result}"
        );
        assert_eq!(result["interfaces"][1]["mtu"], 1450, "{result}");
        let link = String::from_utf8_lossy(&in_ns(&pod.ns, &["ip", "link", "show", "eth0"]).stdout)
            .into_owned();
        assert!(link.contains("mtu 1450"), "pod interface: {link}");
        assert!(
            node.has_vxlan_device(),
            "node {i} has no vxlan device after its first pod"
        );
        first.push(pod);
    }

    // A static overlay, no daemon: the peers file lists both nodes' records
    // as `overlay export` prints them, and the next ADD on each node
    // programs it.
    let records = nodes[0].export() + &nodes[1].export();
    std::fs::write(&peers.0, records).unwrap();
    let second: Vec<Pod> = nodes.iter_mut().map(|n| n.add().0).collect();
    assert!(
        nodes[0].knows(&first[1].mac),
        "node 0 did not program the peers file at ADD"
    );
    assert!(
        nodes[1].knows(&first[0].mac),
        "node 1 did not program the peers file at ADD"
    );

    // Carried by the fast path: the BPF encap on the sender's port, the
    // decap on the receiver's node and port, and the bridges forward at
    // most 1% of what the pods send.
    let bridges: Vec<BridgeForwardCounter> = nodes
        .iter()
        .map(|n| BridgeForwardCounter::new(&n.host, &n.bridge, "iifname \"np*\""))
        .collect();
    let sent_before: Vec<u64> = first
        .iter()
        .map(|p| link_packets(&p.ns, "eth0").1)
        .collect();
    let encapsulated = nodes[0].port_counter(&first[0], "encapsulated");
    let decapsulated = nodes[1].port_counter(&first[1], "decapsulated");
    let node_decapsulated = nodes[1].overlay_counter("decapsulated");
    ping_flood(&first[0], &first[1], 2000);
    ping_flood(&first[1], &first[0], 2000);
    let encapsulated = nodes[0].port_counter(&first[0], "encapsulated") - encapsulated;
    let decapsulated = nodes[1].port_counter(&first[1], "decapsulated") - decapsulated;
    let node_decapsulated = nodes[1].overlay_counter("decapsulated") - node_decapsulated;
    println!(
        "overlay/cni: pod 0 encapsulated {encapsulated}; node 1 decapsulated {node_decapsulated}, pod 1's port {decapsulated}"
    );
    assert!(
        encapsulated >= 4000,
        "node 0 encapsulated only {encapsulated}"
    );
    assert!(
        decapsulated >= 4000,
        "pod 1's port decapsulated only {decapsulated}"
    );
    assert!(
        node_decapsulated >= decapsulated,
        "node 1's vxlan program decapsulated {node_decapsulated}, its pod's port {decapsulated}"
    );
    for (i, bridge) in bridges.iter().enumerate() {
        let sent = link_packets(&first[i].ns, "eth0").1 - sent_before[i];
        let forwarded = bridge.packets();
        println!("overlay/cni: node {i}: pod sent {sent} frames, the bridge forwarded {forwarded}");
        assert!(
            forwarded * 100 <= sent,
            "node {i}: the bridge forwarded {forwarded} of {sent} frames (> 1%)"
        );
    }

    // Lost state on node 1. (a) Its decap program goes: STATUS names it,
    // and the next ADD joins the overlay again. (b) All its pins go, the
    // records in /run stay: STATUS fails, and the next ADD makes the
    // datapath again, restores its pods' ports and joins again. Each time
    // node 0's pod reaches node 1's first pod through node 1's decap.
    let pins =
        netpath::datapath::object::pin_dir(&netpath::model::naming::cni_datapath(&nodes[1].bridge));
    let break_and_repair = |nodes: &mut Vec<CniNode>, what: &str, broken_by: &str| {
        let (ok, out) = nodes[1].status_call();
        assert!(!ok, "STATUS with {what}: {out}");
        assert!(
            out["msg"].as_str().unwrap().contains(broken_by),
            "STATUS with {what}: {out}"
        );
        nodes[1].add();
        let (ok, out) = nodes[1].status_call();
        assert!(ok, "STATUS after the ADD that repaired {what}: {out}");
        let decapsulated = nodes[1].overlay_counter("decapsulated");
        ping_flood(&first[0], &first[1], 200);
        let decapsulated = nodes[1].overlay_counter("decapsulated") - decapsulated;
        assert!(
            decapsulated >= 200,
            "after repairing {what}, node 1 decapsulated {decapsulated} of 200 pings"
        );
    };
    nodes[1].unhook_decap(&pins);
    break_and_repair(&mut nodes, "the decap program detached", "decap program");
    std::fs::remove_dir_all(&pins).unwrap();
    break_and_repair(&mut nodes, "the pins removed", "unreachable");

    // `netpath run --cni` keeps the peers file's changes programmed: the
    // second pods, exported after they came, reach each other once the
    // file lists them.
    for node in &mut nodes {
        node.daemon = Some(CniDaemon::start(&node.host, &node.bridge));
    }
    std::thread::sleep(Duration::from_secs(1)); // the daemons have read the file's time
    let records = nodes[0].export() + &nodes[1].export();
    std::fs::write(&peers.0, records).unwrap();
    within(
        Duration::from_secs(5),
        "the daemons programming the new pods",
        || nodes[0].knows(&second[1].mac) && nodes[1].knows(&second[0].mac),
    );
    assert!(
        ping(&second[0].ns, &second[1].ip) && ping(&second[1].ns, &second[0].ip),
        "the second pods do not reach each other; daemon logs:\n{}\n{}",
        nodes[0].daemon.as_ref().unwrap().log(),
        nodes[1].daemon.as_ref().unwrap().log()
    );

    // DEL of node 0's last pod takes it off the overlay: its vxlan device,
    // pins and records are gone; node 1 keeps its own.
    nodes[0].del_all();
    assert_eq!(nodes[0].overlay_leftovers(), Vec::<String>::new());
    assert!(
        nodes[1].has_vxlan_device(),
        "node 1 lost its vxlan device with node 0's pods"
    );
    nodes[1].daemon = None;
    nodes[1].del_all();
    assert_eq!(nodes[1].overlay_leftovers(), Vec::<String>::new());
}

#[test]
fn cni_pods_on_two_hosts_reach_each_other_over_etcd() {
    let cluster = Cluster::new(3);
    let etcd = Etcd::start(&cluster.hosts[2], underlay_ip(2));
    let control = json!({"etcd": [etcd.url()], "leaseTtl": 3});
    let mut nodes: Vec<CniNode> = (0..2)
        .map(|i| CniNode::new(&cluster, i, control.clone()))
        .collect();

    // The daemons start before any pod, as Flannel's does: each waits for
    // its network's first pod to join the overlay, then registers it.
    for node in &mut nodes {
        node.daemon = Some(CniDaemon::start(&node.host, &node.bridge));
    }
    let pods: Vec<Pod> = nodes.iter_mut().map(|n| n.add().0).collect();
    let logs = |nodes: &[CniNode]| -> String {
        nodes
            .iter()
            .filter_map(|n| n.daemon.as_ref().map(CniDaemon::log))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let took = within(
        Duration::from_secs(5),
        "the nodes learning each other's pods from etcd",
        || nodes[0].knows(&pods[1].mac) && nodes[1].knows(&pods[0].mac),
    );
    println!("overlay/cni/etcd: both nodes programmed {took:?} after the second ADD");
    assert!(
        ping(&pods[0].ns, &pods[1].ip) && ping(&pods[1].ns, &pods[0].ip),
        "the pods do not reach each other over etcd; daemon logs:\n{}",
        logs(&nodes)
    );
    assert!(
        nodes[0].status()["connected"] == true,
        "node 0 is not connected to etcd"
    );

    // A pod added later is published by its node's daemon and programmed
    // on the other node within a second.
    let late = nodes[1].add().0;
    let took = within(Duration::from_secs(1), "the later pod on node 0", || {
        nodes[0].knows(&late.mac)
    });
    println!("overlay/cni/etcd: a pod added later was programmed on the other node after {took:?}");
    assert!(
        ping(&pods[0].ns, &late.ip),
        "node 0 does not reach the later pod"
    );

    // Node 0's last pod deleted: it leaves the overlay, its daemon stops
    // keeping the lease, and node 1 forgets it within the TTL (3 s).
    nodes[0].del_all();
    assert_eq!(nodes[0].overlay_leftovers(), Vec::<String>::new());
    let forgotten = within(Duration::from_secs(6), "node 1 forgetting node 0", || {
        !nodes[1].status()["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == underlay_ip(0).to_string().as_str())
    });
    println!("overlay/cni/etcd: node 0, without pods, was forgotten after {forgotten:?}");
    drop(nodes);
    drop(etcd);
}

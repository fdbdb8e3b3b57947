//! Issue 3: namespaces, veth pairs, the bridge fallback, addressing, and
//! transactional, idempotent up/down. Every test uses its own topology name
//! and host namespace so they run in parallel.

mod common;

use std::time::Instant;

use netpath::{host::netns, model::naming::nat_table};

use common::{Host, Topology, in_ns, outside, ping, spawn_in, unique_name, words};

#[test]
fn four_containers_reach_each_other_and_status_matches_the_machine() {
    let t = Topology::up(
        "mesh",
        &[
            "--containers",
            "4",
            "--subnet",
            "10.101.0.0/24",
            "--mode",
            "bridge",
        ],
    );
    let status = t.status();
    let ports = status["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 4);
    assert_eq!(status["bridge"]["ips"][0], "10.101.0.1/24");
    assert_eq!(status["bridge"]["name"], format!("{}-br", t.name));

    let mut ips = Vec::new();
    for port in ports {
        let ns = port["netns"].as_str().unwrap();
        // What the kernel says, independently of netpath.
        let out = outside("ip", &["-n", ns, "-j", "addr", "show", "dev", "eth0"]);
        let addr: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j addr");
        let kernel_mac = addr[0]["address"].as_str().unwrap();
        let info = addr[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["family"] == "inet")
            .unwrap();
        let kernel_ip = format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"]);
        assert_eq!(port["mac"], kernel_mac, "MAC of {ns}");
        assert_eq!(port["ips"][0], kernel_ip.as_str(), "IP of {ns}");
        assert_eq!(port["ifname"], "eth0");
        assert!(port["ifindex"].as_u64().unwrap() > 0);
        ips.push((ns.to_owned(), info["local"].as_str().unwrap().to_owned()));
    }
    let mut pairs = 0;
    for (from, _) in &ips {
        assert!(ping(from, "10.101.0.1"), "{from} cannot reach the bridge");
        for (to, ip) in &ips {
            if from != to {
                assert!(ping(from, ip), "{from} cannot reach {to} ({ip})");
                pairs += 1;
            }
        }
    }
    assert_eq!(pairs, 12);

    // `list` (and `status` without a name) shows it until `down`.
    let listed = t.listed(&t.name).expect("an up topology is listed");
    let port_names: Vec<serde_json::Value> = ports.iter().map(|p| p["name"].clone()).collect();
    assert_eq!(listed["kind"], "topology");
    assert_eq!(listed["bridge"], status["bridge"]["name"]);
    assert_eq!(listed["mode"], "bridge");
    assert_eq!(listed["complete"], true);
    assert_eq!(listed["ports"], serde_json::Value::Array(port_names));
    let status_all = t.netpath_ok(&["status"]);
    assert!(
        status_all.starts_with("NAME ")
            && status_all
                .lines()
                .any(|l| l.split_whitespace().next() == Some(t.name.as_str())),
        "`status` without a name does not list {}:\n{status_all}",
        t.name
    );
    t.netpath_ok(&["down", "--name", &t.name]);
    assert_eq!(
        t.listed(&t.name),
        None,
        "a removed topology is still listed"
    );
}

/// Each bad input: non-zero exit, a message naming the problem, nothing left.
#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let host = Host::new();
    let dir = std::env::temp_dir().join(format!("netpath-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_string_lossy().into_owned()
    };
    let dup_names = config(
        "dup-names.toml",
        "[[container]]\nname = \"a\"\n[[container]]\nname = \"a\"\n",
    );
    let dup_ips = config(
        "dup-ips.toml",
        "[[container]]\nname = \"a\"\nip = \"10.102.0.5/24\"\n[[container]]\nname = \"b\"\nip = \"10.102.0.5/24\"\n",
    );
    let dup_macs = config(
        "dup-macs.toml",
        "[[container]]\nname = \"a\"\nmac = \"02:00:00:00:00:01\"\n[[container]]\nname = \"b\"\nmac = \"02:00:00:00:00:01\"\n",
    );
    let unknown_key = config("unknown.toml", "containers = 2\ncolour = \"blue\"\n");
    let missing = dir.join("missing.toml").to_string_lossy().into_owned();

    let name = unique_name("bad");
    let in_subnet = ["--name", &name, "--subnet", "10.102.0.0/24"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--containers", "2", "--name", "averyveryverylongname"],
            "15 bytes",
        ),
        (
            vec!["--name", &name, "--subnet", "10.102.0.0/33"],
            "is not a CIDR",
        ),
        (vec!["--name", &name, "--subnet", "banana"], "is not a CIDR"),
        (
            vec![
                "--name",
                &name,
                "--subnet",
                "10.102.0.0/29",
                "--containers",
                "7",
            ],
            "too small",
        ),
        (vec!["--name", &name, "--containers", "0"], "at least 1"),
        (
            [&in_subnet[..], &["--config", &dup_names]].concat(),
            "used twice",
        ),
        (
            [&in_subnet[..], &["--config", &dup_ips]].concat(),
            "used by two containers",
        ),
        (
            [&in_subnet[..], &["--config", &dup_macs]].concat(),
            "used by two containers",
        ),
        (
            vec!["--name", &name, "--config", &unknown_key],
            "unknown field",
        ),
        (vec!["--name", &name, "--config", &missing], "missing.toml"),
    ];
    for (args, expected) in cases {
        let mut full = vec!["up"];
        full.extend(args.iter().copied());
        let out = host.netpath(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "netpath {full:?} succeeded");
        assert!(
            stderr.contains(expected),
            "netpath {full:?}: expected {expected:?} in {stderr:?}"
        );
        assert_eq!(
            host.leftovers(&name),
            Vec::<String>::new(),
            "after netpath {full:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_name_taken_by_someone_else_is_refused_and_left_alone() {
    let host = Host::new();
    let name = unique_name("own");
    let foreign = format!("{name}-c1");
    assert!(
        host.sh("ip", &["link", "add", &foreign, "type", "bridge"])
            .status
            .success()
    );
    let out = host.netpath(&[
        "up",
        "--name",
        &name,
        "--containers",
        "3",
        "--subnet",
        "10.103.0.0/24",
    ]);
    let foreign_still_there = host.sh("ip", &["link", "show", &foreign]).status.success();
    host.sh("ip", &["link", "del", &foreign]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("something other than netpath"));
    assert!(
        foreign_still_there,
        "netpath removed {foreign}, which it did not create"
    );
    assert_eq!(host.leftovers(&name), Vec::<String>::new());
}

#[test]
fn a_failure_halfway_rolls_back_everything() {
    let host = Host::new();
    let name = unique_name("half");
    let out = host
        .netpath_command()
        .args([
            "up",
            "--name",
            &name,
            "--containers",
            "8",
            "--subnet",
            "10.104.0.0/24",
            "--nat",
        ])
        .env(netpath::ops::fault::FAULT_ENV, "container-5:fail")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The fault fired where asked (six containers and the bridge exist),
    // and up said it rolled them back.
    assert!(
        stderr.contains("injected fault at container-5") && stderr.contains("rolled back"),
        "{stderr}"
    );
    assert_eq!(host.leftovers(&name), Vec::<String>::new());
}

#[test]
fn down_removes_everything_and_is_idempotent() {
    let t = Topology::up(
        "down",
        &["--containers", "3", "--subnet", "10.105.0.0/24", "--nat"],
    );
    let tables = String::from_utf8_lossy(&t.sh("nft", &["list", "tables"]).stdout).into_owned();
    assert!(
        tables.contains(&nat_table(&t.name)),
        "no NAT table in {tables}"
    );
    assert!(!t.leftovers(&t.name).is_empty());
    t.netpath_ok(&["down", "--name", &t.name]);
    assert_eq!(t.leftovers(&t.name), Vec::<String>::new());
    let again = t.netpath_ok(&["down", "--name", &t.name]);
    assert!(again.contains("not up"), "{again}");
}

#[test]
fn up_is_idempotent_and_refuses_a_different_topology() {
    let topology = words("--containers 2 --subnet 10.106.0.0/24");
    let t = Topology::up("idem", &topology);
    let same = t.netpath_ok(&t.up_args(&topology));
    assert!(same.contains("already up"), "{same}");
    let out = t.netpath(&t.up_args(&words("--containers 3 --subnet 10.106.0.0/24")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("differs") && stderr.contains("2 containers (asked 3)"),
        "{stderr}"
    );
    assert!(ping(&t.ns("c0"), "10.106.0.3"));
}

#[test]
fn ports_come_and_go_while_the_others_keep_talking() {
    let t = Topology::up("port", &["--containers", "3", "--subnet", "10.107.0.0/24"]);
    let background = spawn_in(&t.ns("c0"), &words("ping -c 40 -i 0.05 -q 10.107.0.3"));
    t.netpath_ok(&[
        "port",
        "add",
        "--name",
        &t.name,
        "web",
        "--ip",
        "10.107.0.50/24",
        "--mac",
        "02:00:00:00:07:50",
    ]);
    assert!(ping(&t.ns("c1"), "10.107.0.50"));
    assert_eq!(
        t.status()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["mac"] == "02:00:00:00:07:50")
            .count(),
        1
    );
    t.netpath_ok(&["port", "del", "--name", &t.name, "web"]);
    assert!(!netns::exists(&t.ns("web")));
    assert!(!t.sh("ip", &["link", "show", &t.ns("web")]).status.success());
    let out = background.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("40 received"),
        "c0 -> c1 lost packets meanwhile: {summary}"
    );
    assert_eq!(t.status()["ports"].as_array().unwrap().len(), 3);
}

#[test]
fn thirty_two_containers_come_up_in_seconds() {
    let host = Host::new();
    let started = Instant::now();
    let t = Topology::up_on(
        &host,
        "big",
        &["--containers", "32", "--subnet", "10.108.0.0/24"],
    );
    let elapsed = started.elapsed();
    println!("up of 32 containers took {:.2} s", elapsed.as_secs_f64());
    assert!(
        elapsed.as_secs() < 20,
        "up of 32 containers took {elapsed:?}"
    );
    assert!(ping(&t.ns("c0"), "10.108.0.33"));
    assert!(
        in_ns(&t.ns("c31"), &["ping", "-c", "1", "-W", "2", "10.108.0.1"])
            .status
            .success()
    );
}

/// `--nat` masquerades every subnet of a dual-stack topology, in netpath's
/// own table, which `down` removes.
#[test]
fn nat_covers_both_families() {
    let t = Topology::up(
        "nat",
        &[
            "--containers",
            "1",
            "--subnet",
            "10.108.0.0/24",
            "--subnet",
            "fd00:108::/64",
            "--nat",
        ],
    );
    let table = netpath::model::naming::nat_table(&t.name);
    let rules = String::from_utf8_lossy(&t.sh("nft", &["list", "table", "inet", &table]).stdout)
        .into_owned();
    assert!(
        rules.contains("ip saddr 10.108.0.0/24") && rules.contains("ip6 saddr fd00:108::/64"),
        "{rules}"
    );
    assert_eq!(rules.matches("masquerade").count(), 2, "{rules}");
    t.netpath_ok(&["down", "--name", &t.name]);
    assert!(
        !t.sh("nft", &["list", "table", "inet", &table])
            .status
            .success(),
        "down left table {table}"
    );
}

/// Two NAT topologies on one host, taken down in both orders: forwarding
/// stays on while one needs it and ends exactly as it was before the first,
/// for both families.
#[test]
fn nat_restores_forwarding_in_any_down_order() {
    let host = Host::new();
    let sysctl = |key: &str| {
        String::from_utf8_lossy(&host.sh("sysctl", &["-n", key]).stdout)
            .trim()
            .to_owned()
    };
    let forwarding = || {
        (
            sysctl("net.ipv4.ip_forward"),
            sysctl("net.ipv6.conf.all.forwarding"),
        )
    };
    assert_eq!(
        forwarding(),
        ("0".into(), "0".into()),
        "a new namespace forwards nothing"
    );
    let (a, b) = (unique_name("na"), unique_name("nb"));
    let up = |name: &str, n: u8| {
        let (v4, v6) = (format!("10.109.{n}.0/24"), format!("fd00:109:{n}::/64"));
        host.netpath_ok(&[
            "up",
            "--name",
            name,
            "--containers",
            "1",
            "--subnet",
            &v4,
            "--subnet",
            &v6,
            "--nat",
        ]);
    };
    for (first, second) in [(&a, &b), (&b, &a)] {
        up(&a, 1);
        up(&b, 2);
        // Taken down on drop if an assertion fails.
        let (_ta, _tb) = (Topology::adopt(&host, &a), Topology::adopt(&host, &b));
        assert_eq!(forwarding(), ("1".into(), "1".into()));
        host.netpath_ok(&["down", "--name", first]);
        assert_eq!(
            forwarding(),
            ("1".into(), "1".into()),
            "{second} still needs forwarding"
        );
        host.netpath_ok(&["down", "--name", second]);
        assert_eq!(
            forwarding(),
            ("0".into(), "0".into()),
            "down {first} then {second} did not restore forwarding"
        );
    }
}

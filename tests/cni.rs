//! Issue 8: netpath as a CNI plugin, driven exactly as a runtime drives it
//! (CNI_* environment, network configuration on stdin, JSON on stdout).

mod common;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    sync::Arc,
};

use common::{BridgeForwardCounter, Host, RawSocket, frame, in_ns, outside, ping, unique_name};
use netpath::{datapath::object::pin_dir, host::netns, model::naming::cni_datapath, store};
use serde_json::{Value, json};

/// Runs the plugin on `host`, as a runtime there would; returns its exit
/// status and parsed stdout.
fn cni(
    host: &Host,
    command: &str,
    container: &str,
    netns: Option<&str>,
    ifname: &str,
    conf: &Value,
) -> (bool, Value) {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_netpath-cni"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out: Output = child.wait_with_output().unwrap();
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
    };
    (out.status.success(), value)
}

fn conf(bridge: &str, ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "testnet", "type": "netpath-cni", "bridge": bridge, "ipam": ipam})
}

/// A namespace the "runtime" made, removed on drop.
struct Sandbox(String);

impl Sandbox {
    fn new(name: String) -> Self {
        assert!(outside("ip", &["netns", "add", &name]).status.success());
        Sandbox(name)
    }
    fn path(&self) -> String {
        netns::path(&self.0).display().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        outside("ip", &["netns", "del", &self.0]);
    }
}

/// DELs every container of a test's network when dropped, so a failing test
/// leaves no bridge, veth, pin or state behind.
struct Network {
    host: Arc<Host>,
    config: Value,
    containers: Vec<(String, String)>,
}

impl Network {
    fn new(
        host: &Arc<Host>,
        config: &Value,
        containers: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Network {
            host: host.clone(),
            config: config.clone(),
            containers: containers.into_iter().collect(),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (container, netns) in &self.containers {
            cni(
                &self.host,
                "DEL",
                container,
                Some(netns),
                "eth0",
                &self.config,
            );
        }
    }
}

fn assert_gone(host: &Host, bridge: &str) {
    assert!(
        !host.sh("ip", &["link", "show", bridge]).status.success(),
        "bridge {bridge} left behind"
    );
    assert!(!pin_dir(&cni_datapath(bridge)).exists(), "pins left behind");
    assert!(!store::cni::path(bridge).exists(), "state left behind");
    let links =
        String::from_utf8_lossy(&host.sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    assert!(
        !links.contains(&format!("master {bridge} ")),
        "ports left on {bridge}"
    );
}

/// A container as ADD left it on the host: its MAC (its static FDB entry)
/// and its host-side veth, by name and ifindex (its port in the datapath).
#[derive(Clone, Debug)]
struct Attached {
    container: String,
    /// Its first address, without the prefix length.
    ip: String,
    mac: String,
    host_veth: String,
    ifindex: u64,
}

impl Attached {
    fn from_result(host: &Host, container: &str, result: &Value) -> Self {
        let host_veth = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{container}: no host veth in {result}"));
        let link: Value = serde_json::from_slice(
            &host
                .sh("ip", &["-j", "link", "show", "dev", host_veth])
                .stdout,
        )
        .unwrap_or_else(|_| panic!("{container}: host veth {host_veth} missing"));
        Attached {
            container: container.to_owned(),
            ip: result["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned(),
            mac: result["interfaces"][1]["mac"].as_str().unwrap().to_owned(),
            host_veth: host_veth.to_owned(),
            ifindex: link[0]["ifindex"].as_u64().unwrap(),
        }
    }
}

/// The shared datapath of `bridge` after some DELs: the deleted
/// containers' MACs are in no FDB entry, their ports in no port state
/// (`stats`) and no redirect target (the devmap), while the kept ones are
/// all still there. The last DEL removes the whole datapath, so only a
/// check while others remain sees a DEL that leaves its port behind.
fn assert_only_kept_ports(host: &Host, bridge: &str, deleted: &[Attached], kept: &[Attached]) {
    let fdb: Value =
        serde_json::from_str(&host.netpath_ok(&["fdb", "dump", "--name", bridge, "--json"]))
            .unwrap();
    let fdb = fdb.as_array().unwrap();
    let stats: Value =
        serde_json::from_str(&host.netpath_ok(&["stats", "--name", bridge, "--json"])).unwrap();
    let port_states: Vec<u64> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ifindex"].as_u64().unwrap())
        .collect();
    let maps = netpath::datapath::maps(&cni_datapath(bridge))
        .expect("the datapath is up while containers remain");
    let redirect_targets: Vec<u64> = maps
        .ports()
        .unwrap()
        .keys()
        .map(|k| u64::from(k.unwrap()))
        .collect();
    for gone in deleted {
        let what = format!(
            "after DEL of {} ({}, {} = ifindex {})",
            gone.container, gone.mac, gone.host_veth, gone.ifindex
        );
        assert!(
            !host
                .sh("ip", &["link", "show", &gone.host_veth])
                .status
                .success(),
            "{what}: its host veth is still there"
        );
        let stale: Vec<&Value> = fdb
            .iter()
            .filter(|e| e["mac"] == gone.mac.as_str() || e["ifindex"] == gone.ifindex)
            .collect();
        assert!(
            stale.is_empty(),
            "{what}: FDB entries left behind: {stale:?}"
        );
        assert!(
            !port_states.contains(&gone.ifindex),
            "{what}: its port state is left in the datapath: {stats}"
        );
        assert!(
            !redirect_targets.contains(&gone.ifindex),
            "{what}: still a redirect target (devmap): {redirect_targets:?}"
        );
    }
    for live in kept {
        let entry = fdb.iter().find(|e| e["mac"] == live.mac.as_str());
        assert!(
            entry.is_some_and(|e| e["state"] == "static" && e["ifindex"] == live.ifindex),
            "{}: its static FDB entry is gone or moved: {entry:?}",
            live.container
        );
        assert!(
            port_states.contains(&live.ifindex),
            "{}: its port state is gone",
            live.container
        );
        assert!(
            redirect_targets.contains(&live.ifindex),
            "{}: no longer a redirect target",
            live.container
        );
    }
}

#[test]
fn version_add_check_del_as_a_runtime_drives_them() {
    let host = Host::new();
    let (ok, out) = cni(
        &host,
        "VERSION",
        "",
        None,
        "",
        &json!({"cniVersion": "1.0.0"}),
    );
    assert!(ok);
    assert!(
        out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0")),
        "{out}"
    );

    let bridge = unique_name("cb");
    let config = conf(
        &bridge,
        json!({"type": "netpath", "subnet": "10.180.0.0/24"}),
    );
    let (a, b) = (
        Sandbox::new(format!("{bridge}-a")),
        Sandbox::new(format!("{bridge}-b")),
    );
    let _cleanup = Network::new(
        &host,
        &config,
        [("ctr-a".into(), a.path()), ("ctr-b".into(), b.path())],
    );
    let (ok, ra) = cni(&host, "ADD", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(ok, "{ra}");
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["ips"][0]["address"], "10.180.0.2/24");
    assert_eq!(ra["ips"][0]["gateway"], "10.180.0.1");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["interfaces"][1]["sandbox"], a.path().as_str());
    assert_eq!(ra["routes"][0]["dst"], "0.0.0.0/0");
    let (ok, rb) = cni(&host, "ADD", "ctr-b", Some(&b.path()), "eth0", &config);
    assert!(ok, "{rb}");
    assert_eq!(rb["ips"][0]["address"], "10.180.0.3/24");
    // What the result says is what the container has.
    let addr = String::from_utf8_lossy(
        &outside("ip", &["-n", &a.0, "-j", "addr", "show", "dev", "eth0"]).stdout,
    )
    .into_owned();
    assert!(
        addr.contains(ra["interfaces"][1]["mac"].as_str().unwrap()) && addr.contains("10.180.0.2"),
        "{addr}"
    );
    assert!(ping(&a.0, "10.180.0.3"), "attached containers cannot talk");
    assert!(ping(&a.0, "10.180.0.1"), "the gateway is not on the bridge");
    let (ok, again) = cni(&host, "ADD", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(
        ok && again["ips"] == ra["ips"],
        "a repeated ADD must give the same result"
    );

    assert_found_by_its_bridge(&host, &bridge, &[&ra, &rb]);

    let (ok, out) = cni(&host, "CHECK", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(ok, "{out}");
    in_ns(&a.0, &["ip", "addr", "flush", "dev", "eth0"]);
    let (ok, out) = cni(&host, "CHECK", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(
        !ok && out["code"].as_u64().is_some() && out["msg"].as_str().unwrap().contains("expected"),
        "{out}"
    );

    for (ctr, sandbox) in [("ctr-a", &a), ("ctr-b", &b)] {
        let (ok, out) = cni(&host, "DEL", ctr, Some(&sandbox.path()), "eth0", &config);
        assert!(ok, "{out}");
        let (ok, out) = cni(&host, "DEL", ctr, Some(&sandbox.path()), "eth0", &config);
        assert!(ok, "a second DEL must succeed: {out}");
    }
    let (ok, out) = cni(&host, "CHECK", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(!ok && out["code"] == 3, "{out}");
    assert_gone(&host, &bridge);
    assert_eq!(
        host.listed(&bridge),
        None,
        "a network after its last DEL is still listed"
    );
}

/// The network of `bridge`, with the containers of ADD `results`, is found
/// by its bridge name alone: `list` shows it, `status` and `fdb add` take
/// it, and the verbs that change topologies refuse it with a reason.
fn assert_found_by_its_bridge(host: &Host, bridge: &str, results: &[&Value]) {
    let host_veths: Vec<&Value> = results
        .iter()
        .map(|r| &r["interfaces"][0]["name"])
        .collect();
    let listed = host.listed(bridge).expect("a CNI network is listed");
    assert_eq!(listed["kind"], "cni");
    assert_eq!(listed["bridge"], bridge);
    // The conflist's default mode, as the programs on the host veths show it.
    assert_eq!(listed["mode"], "tc");
    assert_eq!(listed["ports"], json!(host_veths));

    let status: Value =
        serde_json::from_str(&host.netpath_ok(&["status", "--name", bridge, "--json"])).unwrap();
    assert_eq!(
        (&status["kind"], &status["mode"]),
        (&json!("cni"), &json!("tc"))
    );
    assert_eq!(status["bridge"]["name"], bridge);
    for (port, result) in status["ports"].as_array().unwrap().iter().zip(results) {
        assert_eq!(port["name"], result["interfaces"][0]["name"], "{status}");
        assert_eq!(
            port["netns"], result["interfaces"][1]["sandbox"],
            "{status}"
        );
        assert_eq!(port["mac"], result["interfaces"][1]["mac"], "{status}");
        assert_eq!(port["ips"][0], result["ips"][0]["address"], "{status}");
    }

    // A static entry on the first container's port, by its container ID.
    let added = host.netpath_ok(&[
        "fdb",
        "add",
        "--name",
        bridge,
        "02:00:00:00:77:01",
        "--port",
        "ctr-a",
    ]);
    assert_eq!(
        added.trim(),
        format!(
            "02:00:00:00:77:01 dev {} static",
            host_veths[0].as_str().unwrap()
        )
    );
    assert!(
        host.netpath_ok(&["fdb", "dump", "--name", bridge])
            .contains("02:00:00:00:77:01"),
        "fdb add --name {bridge} added nothing"
    );
    host.netpath_ok(&["fdb", "del", "--name", bridge, "02:00:00:00:77:01"]);

    for verb in [
        &["down", "--name", bridge][..],
        &["mode", "--name", bridge, "xdp"],
        &["port", "del", "--name", bridge, "ctr-a"],
    ] {
        let out = host.netpath(verb);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("CNI network"),
            "netpath {verb:?} on a CNI bridge: {stderr}"
        );
    }
}

#[test]
fn bad_configs_and_environments_get_the_specs_errors() {
    let host = Host::new();
    let bridge = unique_name("cx");
    let good = conf(
        &bridge,
        json!({"type": "netpath", "subnet": "10.181.0.0/24"}),
    );
    let sandbox = Sandbox::new(format!("{bridge}-a"));
    let cases: Vec<(&str, Option<String>, Value, u64)> = vec![
        ("ADD", Some(sandbox.path()), json!("not a config"), 6),
        (
            "ADD",
            Some(sandbox.path()),
            json!({"cniVersion": "9.9.9", "name": "n", "type": "netpath-cni", "bridge": "b", "ipam": {"type": "netpath", "subnet": "10.0.0.0/24"}}),
            1,
        ),
        (
            "ADD",
            Some(sandbox.path()),
            json!({"cniVersion": "1.0.0", "name": "n", "type": "netpath-cni", "ipam": {"type": "netpath", "subnet": "10.0.0.0/24"}}),
            6,
        ),
        (
            "ADD",
            Some(sandbox.path()),
            conf(
                "a-bridge-name-too-long",
                json!({"type": "netpath", "subnet": "10.0.0.0/24"}),
            ),
            7,
        ),
        (
            "ADD",
            Some(sandbox.path()),
            conf(&bridge, json!({"type": "netpath", "subnet": "10.0.0.1/24"})),
            7,
        ),
        (
            "ADD",
            Some(sandbox.path()),
            conf(&bridge, json!({"type": "dhcp9000"})),
            6,
        ),
        ("ADD", None, good.clone(), 4),
        (
            "ADD",
            Some(
                netns::path(&format!("{bridge}-missing"))
                    .display()
                    .to_string(),
            ),
            good.clone(),
            4,
        ),
        ("FROB", Some(sandbox.path()), good.clone(), 4),
    ];
    for (command, netns, config, code) in cases {
        let (ok, out) = cni(&host, command, "ctr", netns.as_deref(), "eth0", &config);
        assert!(!ok, "{command} {config} succeeded");
        assert_eq!(out["code"], code, "{command} {config}: {out}");
        assert!(!out["msg"].as_str().unwrap().is_empty());
        assert!(out["cniVersion"].is_string());
    }
    assert_gone(&host, &bridge);
    assert_eq!(
        host.leftovers(&bridge)
            .iter()
            .filter(|l| !l.starts_with("netns"))
            .count(),
        0
    );
}

#[test]
fn host_local_ipam_is_delegated() {
    let host = Host::new();
    let bridge = unique_name("ch");
    let data_dir = std::env::temp_dir().join(format!("netpath-cni-{bridge}"));
    let ipam = json!({"type": "host-local", "ranges": [[{"subnet": "10.182.0.0/24"}]], "dataDir": data_dir});
    let config = conf(&bridge, ipam);
    let sandbox = Sandbox::new(format!("{bridge}-a"));
    let _cleanup = Network::new(&host, &config, [("ctr-h".into(), sandbox.path())]);
    let (ok, out) = cni(
        &host,
        "ADD",
        "ctr-h",
        Some(&sandbox.path()),
        "eth0",
        &config,
    );
    assert!(ok, "{out}");
    let address = out["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.182.0."), "{out}");
    let reserved = data_dir
        .join("testnet")
        .join(address.split('/').next().unwrap());
    assert!(reserved.exists(), "host-local did not record {address}");
    let (ok, out) = cni(
        &host,
        "DEL",
        "ctr-h",
        Some(&sandbox.path()),
        "eth0",
        &config,
    );
    assert!(ok, "{out}");
    assert!(!reserved.exists(), "host-local still holds {address}");
    let _ = std::fs::remove_dir_all(&data_dir);
    assert_gone(&host, &bridge);
}

/// 50 ADDs at once, then 50 DELs at once: no address, link or FDB entry
/// leaks, and the containers talk over the fast path meanwhile.
#[test]
fn fifty_concurrent_adds_and_dels() {
    let host = Host::new();
    let bridge = unique_name("cc");
    let config = conf(
        &bridge,
        json!({"type": "netpath", "subnet": "10.183.0.0/24"}),
    );
    let sandboxes: Vec<Sandbox> = (0..50)
        .map(|i| Sandbox::new(format!("{bridge}-{i}")))
        .collect();
    let _cleanup = Network::new(
        &host,
        &config,
        sandboxes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("ctr-{i}"), s.path())),
    );
    // Runs `command` at once for containers `some` (ctr-i in sandbox i).
    let run_all = |command: &'static str, some: std::ops::Range<usize>| -> Vec<(bool, Value)> {
        let host = &host;
        std::thread::scope(|scope| {
            let handles: Vec<_> = sandboxes[some.clone()]
                .iter()
                .zip(some)
                .map(|(s, i)| {
                    let config = config.clone();
                    scope.spawn(move || {
                        cni(
                            host,
                            command,
                            &format!("ctr-{i}"),
                            Some(&s.path()),
                            "eth0",
                            &config,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let added = run_all("ADD", 0..50);
    let mut addresses: Vec<String> = added
        .iter()
        .map(|(ok, out)| {
            assert!(ok, "{out}");
            out["ips"][0]["address"].as_str().unwrap().to_owned()
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 50, "addresses were handed out twice");

    let fdb: Value =
        serde_json::from_str(&host.netpath_ok(&["fdb", "dump", "--name", &bridge, "--json"]))
            .unwrap();
    assert_eq!(
        fdb.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "static")
            .count(),
        50
    );
    let attached: Vec<Attached> = added
        .iter()
        .enumerate()
        .map(|(i, (_, result))| Attached::from_result(&host, &format!("ctr-{i}"), result))
        .collect();
    assert_only_kept_ports(&host, &bridge, &[], &attached);

    // Two attached containers over the fast path: the bridge forwards ~none
    // of their ping flood (counted by this test's subnet: the new
    // containers' own multicast chatter is not ours).
    let target = added[1].1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(ping(&sandboxes[0].0, &target));
    let bridge_counter =
        BridgeForwardCounter::new(&host, &bridge, "ip saddr 10.183.0.0/24 ip protocol icmp");
    let flood = in_ns(
        &sandboxes[0].0,
        &["ping", "-f", "-c", "1000", "-q", &target],
    );
    assert!(flood.status.success());
    let packets = bridge_counter.packets();
    drop(bridge_counter);
    assert!(
        packets <= 20,
        "the bridge forwarded {packets} of 2000 frames: not on the fast path"
    );

    // Half of them go at once; each DEL must take its own port with it,
    // and only its own.
    for (ok, out) in run_all("DEL", 0..25) {
        assert!(ok, "{out}");
    }
    assert_only_kept_ports(&host, &bridge, &attached[..25], &attached[25..]);
    for (ok, out) in run_all("DEL", 25..50) {
        assert!(ok, "{out}");
    }
    assert_gone(&host, &bridge);
}

/// DELs one at a time: after each, the deleted container's FDB entry and
/// port are gone from the shared datapath and the others still talk over
/// the fast path.
#[test]
fn each_del_forgets_its_port_while_others_remain() {
    let host = Host::new();
    let bridge = unique_name("cd");
    let config = conf(
        &bridge,
        json!({"type": "netpath", "subnet": "10.186.0.0/24"}),
    );
    let sandboxes: Vec<Sandbox> = (0..4)
        .map(|i| Sandbox::new(format!("{bridge}-{i}")))
        .collect();
    let _cleanup = Network::new(
        &host,
        &config,
        sandboxes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("ctr-{i}"), s.path())),
    );
    let mut attached: Vec<Attached> = sandboxes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let container = format!("ctr-{i}");
            let (ok, result) = cni(&host, "ADD", &container, Some(&s.path()), "eth0", &config);
            assert!(ok, "{result}");
            Attached::from_result(&host, &container, &result)
        })
        .collect();
    let mut deleted = Vec::new();
    // ctr-3 stays to the end: the others go one by one, first to last.
    for (i, sandbox) in sandboxes.iter().enumerate().take(3) {
        let (ok, out) = cni(
            &host,
            "DEL",
            &format!("ctr-{i}"),
            Some(&sandbox.path()),
            "eth0",
            &config,
        );
        assert!(ok, "{out}");
        deleted.push(attached.remove(0));
        assert_only_kept_ports(&host, &bridge, &deleted, &attached);
        // The next one in line (in sandbox i + 1) still reaches the last
        // over the fast path.
        if let [from, .., to] = attached.as_slice() {
            let datapath = cni_datapath(&bridge);
            let before = redirected_from(&datapath, from.ifindex);
            assert!(
                ping(&sandboxes[i + 1].0, &to.ip),
                "{} cannot reach {} after DEL of ctr-{i}",
                from.container,
                to.container
            );
            assert!(
                redirected_from(&datapath, from.ifindex) > before,
                "{}: not on the fast path after DEL of ctr-{i}",
                from.container
            );
        }
    }
    let (ok, out) = cni(
        &host,
        "DEL",
        "ctr-3",
        Some(&sandboxes[3].path()),
        "eth0",
        &config,
    );
    assert!(ok, "{out}");
    assert_gone(&host, &bridge);
}

/// Frames the program on host veth `ifindex` redirected, from its port state.
fn redirected_from(datapath: &str, ifindex: u64) -> u64 {
    let maps = netpath::datapath::maps(datapath).unwrap();
    let stats = netpath::datapath::counters::read(&maps, |i| i.to_string()).unwrap();
    stats
        .iter()
        .find(|p| u64::from(p.ifindex) == ifindex)
        .map(|p| p.get(netpath_common::Counter::Redirected))
        .unwrap_or(0)
}

/// Builds tests/cni-client (a cnitool-like driver on libcni) with Go.
fn build_cni_client() -> std::path::PathBuf {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cni-client");
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cni-client/main.go");
    let build = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env(
            "GOCACHE",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
        )
        .output()
        .expect("running go (installed by `cargo xtask setup`)");
    assert!(
        build.status.success(),
        "building the CNI client: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    out
}

/// libcni, the library container runtimes use, runs a conflist with
/// netpath-cni followed by the standard portmap plugin (chained: it gets
/// netpath's result as prevResult).
#[test]
fn libcni_drives_the_plugin_in_a_chain() {
    let host = Host::new();
    let client = build_cni_client();
    let bridge = unique_name("cl");
    let conf_dir = std::env::temp_dir().join(format!("netpath-conf-{bridge}"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": bridge,
        "plugins": [
            {"type": "netpath-cni", "bridge": bridge, "ipam": {"type": "netpath", "subnet": "10.184.0.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    std::fs::write(conf_dir.join("10-netpath.conflist"), conflist.to_string()).unwrap();
    let plugin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_netpath-cni"))
        .parent()
        .unwrap()
        .to_owned();
    let cni_path = format!("{}:/usr/lib/cni", plugin_dir.display());
    let run = |verb: &str, sandbox: &Sandbox| -> Output {
        host.command(&client)
            .args([verb, conf_dir.to_str().unwrap(), &bridge, &sandbox.path()])
            .env("CNI_PATH", &cni_path)
            .output()
            .unwrap()
    };
    let sandboxes = [
        Sandbox::new(format!("{bridge}-a")),
        Sandbox::new(format!("{bridge}-b")),
    ];
    let mut addresses = Vec::new();
    for sandbox in &sandboxes {
        let out = run("add", sandbox);
        assert!(
            out.status.success(),
            "libcni ADD: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        addresses.push(
            result["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(addresses, ["10.184.0.2", "10.184.0.3"]);
    assert!(ping(&sandboxes[0].0, &addresses[1]));
    for sandbox in &sandboxes {
        let out = run("check", sandbox);
        assert!(
            out.status.success(),
            "libcni CHECK: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for sandbox in &sandboxes {
        let out = run("del", sandbox);
        assert!(
            out.status.success(),
            "libcni DEL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&conf_dir).unwrap();
    assert_gone(&host, &bridge);
}

/// netpath IPAM over an IPv4 and an IPv6 subnet: the result lists both
/// addresses and default routes, and the containers reach each other over
/// IPv6 on the fast path (the bridge forwards almost none of a flood; in
/// bridge mode it forwards all of it).
#[test]
fn dual_stack_addresses_and_routes() {
    let host = Host::new();
    let bridge = unique_name("c6");
    let config = conf(
        &bridge,
        json!({"type": "netpath", "subnet": ["10.185.0.0/24", "fd00:185::/64"]}),
    );
    let (a, b) = (
        Sandbox::new(format!("{bridge}-a")),
        Sandbox::new(format!("{bridge}-b")),
    );
    let _cleanup = Network::new(
        &host,
        &config,
        [("ctr-a".into(), a.path()), ("ctr-b".into(), b.path())],
    );
    let (ok, ra) = cni(&host, "ADD", "ctr-a", Some(&a.path()), "eth0", &config);
    assert!(ok, "{ra}");
    assert_eq!(ra["ips"][0]["address"], "10.185.0.2/24");
    assert_eq!(ra["ips"][1]["address"], "fd00:185::2/64");
    assert_eq!(ra["ips"][1]["gateway"], "fd00:185::1");
    assert_eq!(ra["routes"][1]["dst"], "::/0");
    let (ok, rb) = cni(&host, "ADD", "ctr-b", Some(&b.path()), "eth0", &config);
    assert!(ok, "{rb}");
    assert_eq!(rb["ips"][1]["address"], "fd00:185::3/64");
    let (ok, out) = cni(&host, "CHECK", "ctr-b", Some(&b.path()), "eth0", &config);
    assert!(ok, "{out}");
    assert!(
        ping(&a.0, "fd00:185::3"),
        "containers cannot talk over IPv6"
    );
    assert!(
        ping(&a.0, "fd00:185::1"),
        "the IPv6 gateway is not on the bridge"
    );
    let counter = BridgeForwardCounter::new(
        &host,
        &bridge,
        "ip6 daddr fd00:185::3 icmpv6 type echo-request",
    );
    assert!(
        in_ns(&a.0, &["ping", "-f", "-c", "1000", "-q", "fd00:185::3"])
            .status
            .success()
    );
    assert!(
        counter.packets() <= 10,
        "the bridge forwarded {} of 1000 IPv6 pings",
        counter.packets()
    );
    for (ctr, sandbox) in [("ctr-a", &a), ("ctr-b", &b)] {
        assert!(cni(&host, "DEL", ctr, Some(&sandbox.path()), "eth0", &config).0);
    }
    assert_gone(&host, &bridge);
}

/// A pod floods random source MACs (as fast as it can; every pod checks
/// its sources) while the runtime adds two more pods and after: every ADD
/// succeeds, the FDB holds the pods' entries and nothing of the flood, and
/// the flood is counted. (Before issue 13 the FDB filled and every later
/// ADD failed.)
#[test]
fn adds_succeed_during_and_after_a_mac_flood() {
    let host = Host::new();
    let bridge = unique_name("cf");
    let config = conf(
        &bridge,
        json!({"type": "netpath", "subnet": "10.184.0.0/24"}),
    );
    let sandboxes: Vec<Sandbox> = (0..3)
        .map(|i| Sandbox::new(format!("{bridge}-{i}")))
        .collect();
    let _cleanup = Network::new(
        &host,
        &config,
        sandboxes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("ctr-{i}"), s.path())),
    );
    let (ok, out) = cni(
        &host,
        "ADD",
        "ctr-0",
        Some(&sandboxes[0].path()),
        "eth0",
        &config,
    );
    assert!(ok, "{out}");
    let flooder = RawSocket::open(&sandboxes[0].0, "eth0");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let mut sent = 0u64;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 100_000 {
                n += 1;
                let b = n.to_be_bytes();
                if flooder.send(&frame(
                    [0xff; 6],
                    [0x02, b[3], b[4], b[5], b[6], b[7]],
                    0x0800,
                    &[0x45; 46],
                )) {
                    sent += 1;
                }
            }
            sent
        });
        let (ok, out) = cni(
            &host,
            "ADD",
            "ctr-1",
            Some(&sandboxes[1].path()),
            "eth0",
            &config,
        );
        assert!(ok, "ADD during the flood: {out}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.join().unwrap()
    });
    let (ok, out) = cni(
        &host,
        "ADD",
        "ctr-2",
        Some(&sandboxes[2].path()),
        "eth0",
        &config,
    );
    assert!(ok, "ADD after the flood: {out}");
    let target = out["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        ping(&sandboxes[1].0, &target),
        "the pods added during and after the flood cannot talk"
    );
    let fdb: Value =
        serde_json::from_str(&host.netpath_ok(&["fdb", "dump", "--name", &bridge, "--json"]))
            .unwrap();
    let states: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["static"; 3], "the flood got into the FDB");
    let stats: Value =
        serde_json::from_str(&host.netpath_ok(&["stats", "--name", &bridge, "--json"])).unwrap();
    let spoofed: u64 = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["packets"]["drop_spoofed_mac"].as_u64().unwrap())
        .sum();
    assert_eq!(spoofed, sent, "the flood is not counted");
}

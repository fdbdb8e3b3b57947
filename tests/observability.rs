//! Issue 7: the fast path made visible: pcap of redirected frames, FDB
//! events, Prometheus metrics.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use common::{
    Host, KillOnDrop, Lines, Running, Topology, in_ns, output_within, outside, patience, ping,
    quiet,
};
use serde_json::Value;

/// `netpath trace` of the topology in the background, killed if the test
/// fails while it runs.
fn trace(topology: &Topology, args: &[&str]) -> KillOnDrop {
    let child = topology
        .netpath_command()
        .args(["trace", "--name", &topology.name])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netpath trace");
    KillOnDrop(child)
}

/// A file the test wrote, removed however the test ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How long a test waits for frames it sent to show up in a trace or
/// monitor: far more than they take, but bounded, so a missed frame fails.
const FRAME_PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn trace_writes_a_pcap_that_tcpdump_reads() {
    for (i, mode) in ["xdp", "tc"].iter().enumerate() {
        let t = Topology::up(
            "trc",
            &[
                "--containers",
                "2",
                "--subnet",
                &format!("10.{}.0.0/24", 160 + i),
                "--mode",
                mode,
            ],
        );
        let status = t.status();
        let (mac0, mac1) = (
            status["ports"][0]["mac"].as_str().unwrap().to_owned(),
            status["ports"][1]["mac"].as_str().unwrap().to_owned(),
        );
        let peer = format!("10.{}.0.3", 160 + i);
        assert!(ping(&t.ns("c0"), &peer)); // ARP done before the capture
        let pcap = std::env::temp_dir().join(format!("{}.pcap", t.name));
        let _remove_pcap = RemoveOnDrop(pcap.clone());
        let filter = format!("ip {peer}");
        let tracer = trace(
            &t,
            &[
                "--count",
                "6",
                "--write",
                pcap.to_str().unwrap(),
                "--filter",
                &filter,
            ],
        );
        sleep(patience(Duration::from_millis(500)));
        let out = in_ns(&t.ns("c0"), &["ping", "-c", "3", "-i", "0.2", &peer]);
        assert!(out.status.success());
        let traced = output_within(
            tracer,
            FRAME_PATIENCE,
            &format!("{mode}: trace of 3 pings (6 frames)"),
        );
        assert!(
            traced.status.success(),
            "{mode}: trace failed: {}",
            String::from_utf8_lossy(&traced.stderr)
        );
        let read = outside("tcpdump", &["-r", pcap.to_str().unwrap(), "-n", "-e"]);
        let text = String::from_utf8_lossy(&read.stdout).into_owned();
        let requests = text
            .lines()
            .filter(|l| l.contains("ICMP echo request"))
            .count();
        let replies = text
            .lines()
            .filter(|l| l.contains("ICMP echo reply"))
            .count();
        assert_eq!((requests, replies), (3, 3), "{mode}: {text}");
        for line in text.lines() {
            assert!(
                line.contains(&format!("{mac0} > {mac1}"))
                    || line.contains(&format!("{mac1} > {mac0}")),
                "{mode}: {line}"
            );
            assert!(line.contains("length 98"), "{mode}: {line}");
        }
    }
}

/// While nobody traces, the programs copy nothing: frames sent before a
/// trace starts never reach it.
#[test]
fn tracing_is_off_unless_asked() {
    let t = Topology::up("toff", &["--containers", "2", "--subnet", "10.162.0.0/24"]);
    let flood = in_ns(
        &t.ns("c0"),
        &["ping", "-f", "-c", "500", "-q", "10.162.0.3"],
    );
    assert!(flood.status.success());
    let tracer = trace(&t, &["--count", "1"]);
    sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tracer.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = output_within(tracer, Duration::from_secs(5), "trace, interrupted");
    assert!(
        out.stdout.is_empty(),
        "frames traced while tracing was off: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And when asked, it does see them, as lines.
    let tracer = trace(&t, &["--count", "2", "--port", "c0"]);
    sleep(Duration::from_millis(500));
    assert!(ping(&t.ns("c0"), "10.162.0.3"));
    assert!(
        in_ns(&t.ns("c0"), &["ping", "-c", "1", "10.162.0.3"])
            .status
            .success()
    );
    let out = output_within(tracer, FRAME_PATIENCE, "trace --count 2 of two pings");
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        lines
            .lines()
            .all(|l| l.contains(&format!("{} > {}", t.ns("c0"), t.ns("c1"))) && l.contains("ICMP")),
        "{lines}"
    );
}

#[test]
fn monitor_reports_learned_and_aged_out_entries() {
    let run = Running::start(
        "mon",
        &[
            "--containers",
            "2",
            "--subnet",
            "10.163.0.0/24",
            "--ageing",
            "2",
        ],
    );
    let t = &run.topology;
    // A container without the source check (it routes for others) sends
    // from a MAC not its own, which is learned; it speaks only when spoken
    // to, so the entry can age.
    t.add_router("rt", "10.163.0.9/24");
    let router = t.ns("rt");
    let mac = "02:77:77:00:01:09".to_owned();
    in_ns(
        &router,
        &["ip", "link", "set", "dev", "eth0", "address", &mac],
    );
    quiet(&router);
    let c0_mac = t.status()["ports"][0]["mac"].as_str().unwrap().to_owned();
    in_ns(
        &router,
        &[
            "ip",
            "neigh",
            "replace",
            "10.163.0.2",
            "lladdr",
            &c0_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    // What the router sent while it was being set up (before `quiet`)
    // may have been learned already, and the monitor would then see that
    // entry age out but never the ping below learn it: wait for it to go.
    common::within(
        patience(Duration::from_secs(10)),
        &format!("{mac} gone from the FDB before monitoring"),
        || !t.fdb().iter().any(|row| row["mac"] == mac.as_str()),
    );
    let mut monitor = KillOnDrop(
        t.netpath_command()
            .args(["monitor", "--name", &t.name, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netpath monitor"),
    );
    let events = Lines::of(monitor.stdout.take().unwrap(), "netpath monitor's stdout");
    let log = Lines::of(monitor.stderr.take().unwrap(), "netpath monitor's stderr");
    // Wait until it has its first snapshot, or it would miss the first events.
    let ready = log.next_before(
        Instant::now() + patience(Duration::from_secs(5)),
        &"its first snapshot",
    );
    assert!(ready.starts_with("monitoring the FDB"), "{ready}");
    assert!(ping(&t.ns("c0"), "10.163.0.9")); // the router answers: learned
    // Learned now, aged out after 2 s of silence and seen by a scan of the
    // FDB every 100 ms: 15 s is plenty.
    let deadline = Instant::now() + patience(Duration::from_secs(15));
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(k, m): &(String, String)| k == "aged_out" && *m == mac)
    {
        let line = events.next_before(
            deadline,
            &format_args!("learned, aged_out of {mac}; saw {seen:?}"),
        );
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("monitor printed {line:?}: {e}"));
        seen.push((
            event["event"].as_str().unwrap().to_owned(),
            event["mac"].as_str().unwrap().to_owned(),
        ));
    }
    drop(monitor);
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|(_, m)| *m == mac)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(kinds, ["learned", "aged_out"]);
}

/// `netpath run` of 2 containers on `subnet`, serving metrics on the
/// loopback of its own host namespace (where every port is free); returns
/// once that port answers, with its address.
fn run_with_metrics(tag: &str, subnet: &str) -> (Running, String) {
    let addr = "127.0.0.1:9465".to_owned();
    let run = Running::start(
        tag,
        &["--containers", "2", "--subnet", subnet, "--metrics", &addr],
    );
    // `run` serves metrics a moment after the topology is up.
    common::within(
        Duration::from_secs(5),
        &format!("something listening on {addr}"),
        || run.topology.run(|| TcpStream::connect(&addr).is_ok()),
    );
    (run, addr)
}

/// GET `path` on `host` (where `run` listens); the whole response must come
/// within `SCRAPE_TIMEOUT`.
fn get(host: &Host, addr: &str, path: &str) -> String {
    host.run(|| get_here(addr, path))
}

fn get_here(addr: &str, path: &str) -> String {
    let started = Instant::now();
    let response = try_get(addr, path)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e} after {:?}", started.elapsed()));
    assert!(
        started.elapsed() < SCRAPE_TIMEOUT,
        "GET {path} from {addr} took {:?}",
        started.elapsed()
    );
    response
}

/// The whole response to GET `path`, each step within `SCRAPE_TIMEOUT`.
fn try_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), SCRAPE_TIMEOUT)?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The body of a successful GET /metrics.
fn scrape(host: &Host, addr: &str) -> String {
    let response = get(host, addr, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Checks the OpenMetrics text format (which Prometheus reads): HELP and
/// TYPE before each family, then `name{labels} value` lines, where a
/// counter's samples carry the `_total` suffix, and `# EOF` last; returns
/// name{labels} -> value.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut kinds = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            kinds.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") || line == "# EOF" {
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && name.starts_with("netpath_"),
                "{line}"
            );
            let family = match name.strip_suffix("_total") {
                Some(family) => {
                    assert_eq!(
                        kinds.get(family).map(String::as_str),
                        Some("counter"),
                        "{name} is not a counter's sample"
                    );
                    family
                }
                None => name,
            };
            assert!(kinds.contains_key(family), "{name} has no TYPE before it");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line}"
                );
            }
            samples.insert(
                series.to_owned(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            );
        }
    }
    samples
}

#[test]
fn metrics_answer_on_loopback_and_move_with_traffic() {
    let (run, addr) = run_with_metrics("met", "10.164.0.0/24");
    let t = &run.topology;
    let series = format!(
        "netpath_redirected_packets_total{{topology=\"{}\",port=\"{}\"}}",
        t.name,
        t.ns("c0")
    );
    let before = parse_prometheus(&scrape(t, &addr));
    assert_eq!(
        before[&format!("netpath_info{{topology=\"{}\",mode=\"tc\"}}", t.name)],
        1.0
    );
    assert_eq!(
        before[&format!(
            "netpath_fdb_entries{{topology=\"{}\",state=\"static\"}}",
            t.name
        )],
        2.0
    );
    let flood = in_ns(
        &t.ns("c0"),
        &["ping", "-f", "-c", "200", "-q", "10.164.0.3"],
    );
    assert!(flood.status.success());
    let after = parse_prometheus(&scrape(t, &addr));
    assert!(
        after[&series] >= before[&series] + 200.0,
        "{series}: {} -> {}",
        before[&series],
        after[&series]
    );
}

/// Issue 11: a client that connects and sends nothing must not hold up a
/// scrape (the hand-rolled server read each connection in its accept loop).
#[test]
fn metrics_scrape_succeeds_while_a_client_idles() {
    let (run, addr) = run_with_metrics("mid", "10.165.0.0/24");
    let t = &run.topology;
    let idle = t.run(|| TcpStream::connect(&addr).unwrap());
    sleep(Duration::from_millis(200)); // accepted by now
    let started = Instant::now();
    let samples = parse_prometheus(&scrape(t, &addr));
    eprintln!("scrape with an idle client open: {:?}", started.elapsed());
    assert_eq!(
        samples[&format!("netpath_info{{topology=\"{}\",mode=\"tc\"}}", t.name)],
        1.0
    );
    assert!(get(t, &addr, "/").starts_with("HTTP/1.1 404"));
    drop(idle);
}

/// Hundreds of connections at once: `run` serves `MAX_CONNECTIONS` of
/// them and closes the rest as they come, so it keeps its file
/// descriptors (it needs them for the maps and the kernel); once they go,
/// a scrape answers again. (Before, every one was kept open: 200 of 200.)
#[test]
fn metrics_serve_at_most_their_connection_limit() {
    use netpath::observe::metrics::MAX_CONNECTIONS;
    const CLIENTS: usize = 200;
    let (run, addr) = run_with_metrics("mcl", "10.167.0.0/24");
    let t = &run.topology;
    let sockets = || {
        std::fs::read_dir(format!("/proc/{}/fd", run.child.id()))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let before = sockets();
    let clients: Vec<TcpStream> = t.run(|| {
        (0..CLIENTS)
            .map(|_| {
                // A burst overflows the listen backlog (128): the kernel
                // drops a few SYNs, which the client sends again after 1 s.
                TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
                    .expect("connecting to the metrics port")
            })
            .collect()
    });
    for client in &clients {
        client.set_nonblocking(true).unwrap();
    }
    // Closed by run: the read sees the end of the stream. Well before the
    // header timeout (5 s) closes the served ones too.
    let closed = || {
        clients
            .iter()
            .filter(|client| {
                let mut stream: &TcpStream = client;
                matches!(stream.read(&mut [0; 1]), Ok(0))
            })
            .count()
    };
    common::within(
        Duration::from_secs(3),
        &format!("run closing all but {MAX_CONNECTIONS} of {CLIENTS} connections"),
        || closed() >= CLIENTS - MAX_CONNECTIONS,
    );
    let held = sockets() - before;
    assert!(
        held <= MAX_CONNECTIONS,
        "run holds {held} sockets for {CLIENTS} clients"
    );
    drop(clients);
    common::within(
        Duration::from_secs(3),
        "a scrape answering once the clients left",
        || {
            t.run(|| try_get(&addr, "/metrics"))
                .is_ok_and(|response| response.starts_with("HTTP/1.1 200"))
        },
    );
}

/// A SIGKILLed tracer cannot leave tracing on: its lease runs out and the
/// programs copy nothing more into the ring. While one tracer lives, a
/// second is refused with the holder's pid.
#[test]
fn a_killed_tracer_stops_tracing_and_a_second_is_refused() {
    let t = Topology::up("tkil", &["--containers", "2", "--subnet", "10.166.0.0/24"]);
    let mut tracer = trace(&t, &[]);
    sleep(patience(Duration::from_millis(500)));
    // Refused at once; one that was let in would wait for a frame.
    let second = output_within(
        trace(&t, &["--count", "1"]),
        Duration::from_secs(5),
        "a second tracer, to be refused",
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && stderr.contains("already traced"),
        "second tracer: {stderr}"
    );
    tracer.kill().unwrap(); // SIGKILL: no chance to turn tracing off
    tracer.wait().unwrap();
    sleep(netpath::observe::trace::LEASE + Duration::from_millis(200));
    let maps = netpath::datapath::maps(&t.name).unwrap();
    let mut ring = maps.trace().unwrap();
    while ring.next().is_some() {} // what the dead tracer left unread
    assert!(
        in_ns(
            &t.ns("c0"),
            &["ping", "-f", "-c", "200", "-q", "10.166.0.3"]
        )
        .status
        .success()
    );
    let mut copied = 0;
    while ring.next().is_some() {
        copied += 1;
    }
    assert_eq!(
        copied,
        0,
        "frames copied for a tracer killed {:?} ago",
        netpath::observe::trace::LEASE
    );
    // The lock died with the tracer: a new one may start and sees frames.
    let again = trace(&t, &["--count", "1"]);
    sleep(patience(Duration::from_millis(300)));
    assert!(ping(&t.ns("c0"), "10.166.0.3"));
    let out = output_within(
        again,
        FRAME_PATIENCE,
        "a new tracer after the killed one, to see a ping",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every pinned map of `topology`, as bpftool dumps it (keys and values in
/// bytes, per CPU where the map is per CPU), by map name.
fn pinned_maps(topology: &Topology) -> Vec<(String, String)> {
    let dir = netpath::datapath::object::pin_dir(&topology.name);
    let mut maps: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        // Directories hold the pinned programs and links, files the maps.
        .filter(|path| path.is_file())
        // A ring buffer has no keys to dump: what it holds is a queue for
        // `trace`, which takes what it reads out of it.
        .filter(|path| {
            let out = outside(
                "bpftool",
                &["-j", "map", "show", "pinned", path.to_str().unwrap()],
            );
            let show: Value = serde_json::from_slice(&out.stdout).expect("bpftool map show");
            show["type"] != "ringbuf"
        })
        .map(|path| {
            let out = outside(
                "bpftool",
                &["-j", "map", "dump", "pinned", path.to_str().unwrap()],
            );
            assert!(out.status.success(), "bpftool map dump {}", path.display());
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .collect();
    maps.sort();
    assert!(
        maps.len() >= 10,
        "too few pinned maps in {}: {maps:?}",
        dir.display()
    );
    maps
}

/// Reads never write: with a port vanished behind netpath's back (what the
/// reconciler sweeps), every pinned map and the topology's record are the
/// same, byte for byte, before and after each read verb. The next change
/// (`port del` of another port) reconciles, and the vanished port's
/// entries are gone.
#[test]
fn reads_change_no_map_and_no_record() {
    let t = Topology::up(
        "pure",
        &[
            "--containers",
            "3",
            "--subnet",
            "10.172.0.0/24",
            "--mode",
            "tc",
        ],
    );
    for c in ["c0", "c1", "c2"] {
        quiet(&t.ns(c));
    }
    // Learned and neighbour state, so that the maps are not just as `up` left them.
    assert!(ping(&t.ns("c0"), "10.172.0.3"));
    let status = t.status();
    let gone = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["netns"] == t.ns("c2"))
        .expect("port c2")
        .clone();
    t.delete_namespace(&t.ns("c2"), gone["name"].as_str().unwrap());
    let has_gone_entries = |maps: &[(String, String)]| {
        let ifindex = gone["ifindex"].as_u64().unwrap() as u8;
        let key = format!("\"key\":[\"{ifindex:#04x}\",\"0x00\",\"0x00\",\"0x00\"]");
        maps.iter()
            .any(|(name, dump)| name == "PORT_STATE" && dump.contains(&key))
    };
    let record = common::state_path(&t.name);
    let maps_before = pinned_maps(&t);
    let record_before = std::fs::read(&record).expect("the topology's record");
    assert!(
        has_gone_entries(&maps_before),
        "the vanished port's state is not there to be swept: the test proves nothing"
    );

    let name = t.name.as_str();
    let reads: Vec<Vec<&str>> = vec![
        vec!["status", "--name", name],
        vec!["status", "--name", name, "--json"],
        vec!["status"],
        vec!["list"],
        vec!["list", "--json"],
        vec!["fdb", "dump", "--name", name],
        vec!["fdb", "dump", "--name", name, "--json"],
        vec!["stats", "--name", name],
        vec!["stats", "--name", name, "--all"],
        vec!["stats", "--name", name, "--json"],
    ];
    let unchanged = |what: &str| {
        let after = pinned_maps(&t);
        for ((map, before), (_, now)) in maps_before.iter().zip(&after) {
            assert_eq!(before, now, "{what} changed map {map}");
        }
        assert_eq!(maps_before.len(), after.len(), "{what} changed the maps");
        assert!(
            std::fs::read(&record).unwrap() == record_before,
            "{what} changed the record {}",
            record.display()
        );
    };
    for args in &reads {
        t.netpath_ok(args);
        unchanged(&format!("netpath {}", args.join(" ")));
    }
    // The readers that run until Ctrl-C: monitor, and trace (which turns
    // the programs' copies on with a lease in CONFIG and off again).
    for args in [
        vec!["monitor", "--name", name],
        vec!["trace", "--name", name],
    ] {
        let child = t
            .netpath_command()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a reader");
        sleep(Duration::from_millis(500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let what = format!("netpath {}", args.join(" "));
        let out = output_within(child, Duration::from_secs(5), &what);
        assert!(out.status.success(), "{what}: {out:?}");
        unchanged(&what);
    }

    // A change reconciles: the vanished port's entries go with it.
    t.netpath_ok(&["port", "del", "--name", name, "c1"]);
    assert!(
        !has_gone_entries(&pinned_maps(&t)),
        "port del did not sweep the vanished port"
    );
    assert!(
        !t.fdb().iter().any(|e| e["ifindex"] == gone["ifindex"]),
        "an FDB entry of the vanished port stayed after port del"
    );
}

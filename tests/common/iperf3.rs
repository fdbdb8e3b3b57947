//! iperf3 between containers, for every test that drives traffic: the
//! server is ready when it is listening (polled, never a fixed sleep), and
//! every wait has a deadline, after which the test fails saying what it
//! waited for.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{KillOnDrop, output_within, patience, spawn_in};

/// An iperf3 server in container namespace `ns` that serves one test on
/// `port`: listening when [`Server::start`] returns, killed when dropped.
pub struct Server {
    child: KillOnDrop,
}

impl Server {
    #[track_caller]
    pub fn start(ns: &str, port: u16) -> Server {
        let port_arg = port.to_string();
        let mut child = KillOnDrop(spawn_in(ns, &["iperf3", "-s", "-1", "-p", &port_arg]));
        let limit = patience(Duration::from_secs(5));
        let started = Instant::now();
        let _waiting =
            super::waiting_for(&format!("iperf3 server in {ns} to listen on port {port}"));
        while !listening(ns, port) {
            if let Some(status) = child.try_wait().expect("polling the iperf3 server") {
                let out = output_within(child, Duration::from_secs(1), "the iperf3 server");
                panic!(
                    "iperf3 server in {ns} on port {port} exited ({status}) before listening: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                started.elapsed() < limit,
                "iperf3 server in {ns} not listening on port {port} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child }
    }

    /// Waits for the server to end its one test, at most 10 s (scaled).
    #[track_caller]
    pub fn finish(self) {
        output_within(
            self.child,
            Duration::from_secs(10),
            "the iperf3 server's end",
        );
    }
}

/// Whether something in `ns` listens on TCP `port` (iproute2's ss).
fn listening(ns: &str, port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-N", ns, "-Hltn", &format!("sport = :{port}")])
        .stderr(Stdio::null())
        .output()
        .expect("running ss");
    out.status.success() && !out.stdout.trim_ascii().is_empty()
}

/// An iperf3 client in `ns` against `server_ip:port` for `seconds`, with
/// JSON output and `extra` arguments; killed when dropped.
pub struct Client {
    child: KillOnDrop,
    what: String,
    limit: Duration,
}

impl Client {
    pub fn start(ns: &str, server_ip: &str, port: u16, seconds: u32, extra: &[&str]) -> Client {
        let (port, secs) = (port.to_string(), seconds.to_string());
        let mut args = vec!["iperf3", "-c", server_ip, "-p", &port, "-t", &secs, "-J"];
        args.extend_from_slice(extra);
        Client {
            child: KillOnDrop(spawn_in(ns, &args)),
            what: format!("iperf3 {extra:?} from {ns} to {server_ip}:{port}"),
            // The test itself, connecting and the report, on a busy machine.
            limit: Duration::from_secs(u64::from(seconds) + 20),
        }
    }

    /// The client's JSON report, asserted to be one without an error.
    #[track_caller]
    pub fn report(self) -> Value {
        let out = output_within(self.child, self.limit, &self.what);
        let what = self.what;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{what}: no report ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            out.status.success() && report.get("error").is_none(),
            "{what} failed: {}",
            report["error"]
        );
        report
    }
}

/// [`run`] for 2 s: the tests that check where bulk traffic goes, not how
/// fast it is.
#[track_caller]
pub fn brief(
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    port: u16,
    extra: &[&str],
) -> Value {
    run(client_ns, server_ns, server_ip, port, 2, extra)
}

/// One iperf3 test from `client_ns` to a server in `server_ns` reached at
/// `server_ip`: the client's report.
#[track_caller]
pub fn run(
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> Value {
    let server = Server::start(server_ns, port);
    let report = Client::start(client_ns, server_ip, port, seconds, extra).report();
    server.finish();
    report
}

/// Asserts that a TCP test carried bulk traffic (at least 1 MB: hundreds of
/// full-sized segments, enough for the tests' share-of-the-bridge checks
/// to mean something) and prints its rate. The rate is only printed, never
/// asserted: a kernel-matrix VM on a busy runner carries a fraction of what
/// it does on a quiet one; speed is the benchmark's business.
#[track_caller]
pub fn assert_bulk_tcp(what: &str, report: &Value) {
    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    let bps = received["bits_per_second"].as_f64().unwrap_or(0.0);
    println!("{what} {:.2} Gbit/s, {bytes} bytes", bps / 1e9);
    assert!(bytes >= 1_000_000, "{what}: only {bytes} bytes crossed");
}

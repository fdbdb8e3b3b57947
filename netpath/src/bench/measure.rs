//! One measurement on a bed: iperf3 TCP and UDP, sockperf round trips, and
//! the CPU the whole machine spent meanwhile.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    bed::Bed,
    report::{Metric, Sample},
};
use crate::host::netns;

/// How many tests a round runs on each bed.
pub(super) const TESTS: usize = 7;

pub(super) fn test_name(test: usize) -> &'static str {
    [
        "TCP 1 stream",
        "TCP 1 stream reverse",
        "TCP 4 streams",
        "TCP 4 streams reverse",
        "UDP 64 B",
        "RTT",
        "TCP connect + close",
    ][test]
}

pub(super) async fn run_test(
    bed: &Bed,
    test: usize,
    seconds: u64,
) -> Result<Vec<(Metric, Sample)>> {
    Ok(match test {
        0 => vec![(Metric::Tcp1Gbps, tcp(bed, seconds, 1, false).await?)],
        1 => vec![(Metric::Tcp1ReverseGbps, tcp(bed, seconds, 1, true).await?)],
        2 => vec![(Metric::Tcp4Gbps, tcp(bed, seconds, 4, false).await?)],
        3 => vec![(Metric::Tcp4ReverseGbps, tcp(bed, seconds, 4, true).await?)],
        4 => vec![(Metric::Udp64Pps, udp64(bed, seconds).await?)],
        6 => vec![(Metric::ConnectionsKps, connections(bed, seconds).await?)],
        _ => {
            let (p50, p99) = rtt(bed, seconds).await?;
            vec![
                (
                    Metric::RttP50Us,
                    Sample {
                        value: p50,
                        cpu: None,
                    },
                ),
                (
                    Metric::RttP99Us,
                    Sample {
                        value: p99,
                        cpu: None,
                    },
                ),
            ]
        }
    })
}

/// Busy CPU time of the whole machine so far, in seconds (from /proc/stat).
pub(super) fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(6)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy / ticks)
}

pub(super) async fn iperf(bed: &Bed, seconds: u64, args: &[&str]) -> Result<(Value, f64)> {
    let mut server = netns::command(&bed.server, "iperf3")?
        .args(["-s", "-1", "-B", &bed.server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 server (is iperf3 installed? `cargo xtask setup`)")?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cpu_before = busy_cpu_seconds()?;
    let out = netns::command(&bed.client, "iperf3")?
        .args(["-c", &bed.server_ip, "-t", &seconds.to_string(), "-J"])
        .args(args)
        .output()
        .await
        .context("running iperf3")?;
    let cpu = busy_cpu_seconds()? - cpu_before;
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
    let report: Value = serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(error) = report.get("error") {
        bail!("iperf3 {args:?} on {}: {error}", bed.target);
    }
    Ok((report, cpu))
}

pub(super) async fn tcp(bed: &Bed, seconds: u64, streams: u32, reverse: bool) -> Result<Sample> {
    let streams = streams.to_string();
    let mut args = vec!["-P", streams.as_str()];
    if reverse {
        args.push("-R");
    }
    let (report, cpu) = iperf(bed, seconds, &args).await?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    let gbits = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0)
        * 8.0
        / 1e9;
    Ok(Sample {
        value: bps / 1e9,
        cpu: (gbits > 0.0).then(|| cpu * 1000.0 / gbits),
    })
}

pub(super) async fn udp64(bed: &Bed, seconds: u64) -> Result<Sample> {
    let (report, cpu) = iperf(bed, seconds, &["-u", "-b", "0", "-l", "64"]).await?;
    let sum = &report["end"]["sum"];
    let sent = sum["packets"]
        .as_f64()
        .context("iperf3: no UDP packet count")?;
    let delivered = sent - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(seconds as f64);
    Ok(Sample {
        value: delivered / secs / 1000.0,
        cpu: (delivered > 0.0).then(|| cpu * 1e9 / delivered),
    })
}

/// Round-trip percentiles from sockperf ping-pong, in microseconds.
pub(super) async fn rtt(bed: &Bed, seconds: u64) -> Result<(f64, f64)> {
    let port = "11111";
    let mut server = netns::command(&bed.server, "sockperf")?
        .args(["sr", "-i", &bed.server_ip, "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sockperf server (is sockperf installed? `cargo xtask setup`)")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = netns::command(&bed.client, "sockperf")?
        .args([
            "pp",
            "-i",
            &bed.server_ip,
            "-p",
            port,
            "-t",
            &seconds.to_string(),
            "--full-rtt",
        ])
        .output()
        .await
        .context("running sockperf")?;
    let _ = server.kill().await;
    let text = String::from_utf8_lossy(&out.stdout);
    let percentile = |p: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| {
                format!(
                    "sockperf printed no {p} percentile on {}: {text}",
                    bed.target
                )
            })
    };
    Ok((percentile("50.000")?, percentile("99.000")?))
}

/// The port the connection test listens on.
const CONNECT_PORT: u16 = 5301;

/// New TCP connections a second from the client to the server, one after
/// another: connect, read the server's close, close (the server closes
/// first, so the client's ports never wait in TIME_WAIT). No tool measures
/// this (iperf3 and sockperf keep their connections), so it is a loop of
/// our own, on threads that entered the two namespaces.
pub(super) async fn connections(bed: &Bed, seconds: u64) -> Result<Sample> {
    use std::{
        io::Read,
        net::{SocketAddr, TcpListener, TcpStream},
    };
    let server: SocketAddr = (bed.server_ip.parse::<std::net::IpAddr>()?, CONNECT_PORT).into();
    let listener = netns::enter_and(&bed.server, || {
        TcpListener::bind(server)
            .with_context(|| format!("binding {server} for the connection test"))
    })?;
    // Shutting the listener down wakes its blocked accept when the test ends.
    let waker = listener.try_clone()?;
    let client = bed.client.clone();
    let accepting = std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => drop(stream),
                Err(_) => break,
            }
        }
    });
    let connected = tokio::task::spawn_blocking(move || {
        netns::enter_and(&client, || {
            let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
            let mut count = 0u64;
            let mut buffer = [0; 1];
            while std::time::Instant::now() < deadline {
                let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(1))
                    .with_context(|| format!("connecting to {server}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                let _ = stream.read(&mut buffer);
                count += 1;
            }
            Ok(count)
        })
    })
    .await?;
    // SAFETY: shutdown on a socket this function owns.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&waker), libc::SHUT_RDWR) };
    let _ = accepting.join();
    Ok(Sample {
        value: connected? as f64 / seconds as f64 / 1000.0,
        cpu: None,
    })
}

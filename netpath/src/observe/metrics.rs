//! `netpath run --metrics ADDR`: the counters in the Prometheus text format
//! on `http://ADDR/metrics`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use netpath_common::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    datapath::{self, counters, fdb::Fdb},
    host::netlink::LinkNames,
    model::Mode,
};

/// Totals kept by `run` itself.
#[derive(Default)]
pub struct RunTotals {
    /// Learned entries removed by `run`'s ageing sweeps.
    pub aged: AtomicU64,
}

/// Renders every metric of the topology.
pub fn render(topology: &str, mode: Mode, totals: &RunTotals, name_of: &dyn Fn(u32) -> String) -> Result<String> {
    let mut out = String::new();
    let t = topology;
    writeln!(out, "# HELP netpath_info The datapath mode of the topology.\n# TYPE netpath_info gauge")?;
    writeln!(out, "netpath_info{{topology=\"{t}\",mode=\"{mode}\"}} 1")?;
    if mode == Mode::Bridge {
        return Ok(out);
    }
    let maps = datapath::maps(topology)?;
    let ports = counters::read(&maps, name_of)?;
    // (metric name, help, the counters in it with their `reason` label)
    type Family<'a> = (&'a str, &'a str, &'a [(Counter, &'a str)]);
    // The reason label is the counter's name without its `pass_` prefix.
    let passed: Vec<(Counter, &str)> =
        Counter::PASSED.iter().map(|c| (*c, c.name().trim_start_matches("pass_"))).collect();
    let families: [Family; 5] = [
        ("redirected_packets", "Frames sent straight to their destination port.", &[(Counter::Redirected, "")]),
        (
            "passed_packets",
            "Frames handed to the Linux bridge, by reason.",
            &passed,
        ),
        ("dropped_packets", "Frames dropped, by reason.", &[(Counter::DropRunt, "runt")]),
        (
            "unlearned_sources",
            "Frames whose source MAC was not learned, by reason.",
            &[(Counter::BadSource, "bad_source"), (Counter::SpoofedSource, "spoofed_source")],
        ),
        ("learned", "FDB entries learned or moved by the programs.", &[(Counter::Learned, "")]),
    ];
    for (name, help, counters) in families {
        writeln!(out, "# HELP netpath_{name}_total {help}\n# TYPE netpath_{name}_total counter")?;
        for port in &ports {
            for (counter, reason) in counters {
                let reason = if reason.is_empty() { String::new() } else { format!(",reason=\"{reason}\"") };
                writeln!(out, "netpath_{name}_total{{topology=\"{t}\",port=\"{}\"{reason}}} {}", port.port, port.get(*counter))?;
            }
        }
    }
    let rows = Fdb::open(&maps)?.rows()?;
    writeln!(out, "# HELP netpath_fdb_entries FDB entries, by state.\n# TYPE netpath_fdb_entries gauge")?;
    for state in ["static", "learned"] {
        writeln!(out, "netpath_fdb_entries{{topology=\"{t}\",state=\"{state}\"}} {}", rows.iter().filter(|r| r.state == state).count())?;
    }
    writeln!(out, "# HELP netpath_fdb_aged_total Learned FDB entries aged out by netpath run.\n# TYPE netpath_fdb_aged_total counter")?;
    writeln!(out, "netpath_fdb_aged_total{{topology=\"{t}\"}} {}", totals.aged.load(Ordering::Relaxed))?;
    Ok(out)
}

/// Serves GET /metrics on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    topology: String,
    mode: Mode,
    totals: Arc<RunTotals>,
    handle: rtnetlink::Handle,
) -> Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?;
    log::info!("metrics on http://{}/metrics", listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut request = vec![0u8; 2048];
        let n = stream.read(&mut request).await.unwrap_or(0);
        let first = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or("").to_owned();
        let names = LinkNames::load(&handle).await.unwrap_or_default();
        let name_of = |i: u32| names.name(i);
        let (status, body) = if first.starts_with("GET /metrics ") {
            match render(&topology, mode, &totals, &name_of) {
                Ok(body) => ("200 OK", body),
                Err(e) => ("500 Internal Server Error", format!("{e:#}\n")),
            }
        } else {
            ("404 Not Found", "try /metrics\n".into())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

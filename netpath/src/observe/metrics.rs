//! `netpath run --metrics ADDR`: the counters in the OpenMetrics text format
//! (which Prometheus reads) on `http://ADDR/metrics`.
//!
//! The values live in BPF maps, so each scrape reads them into a [`Snapshot`]
//! and encodes that through a prometheus-client collector; nothing is kept
//! between scrapes.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use netpath_common::Counter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower_http::timeout::TimeoutLayer;

use crate::{
    datapath::{
        self,
        counters::{self, PortStats},
        fdb::Fdb,
    },
    host::netlink::LinkNames,
    model::Mode,
};

/// A client must have sent its request headers by then, or its connection
/// is closed (each connection is served on its own task, so a slow one
/// only holds itself up; this bounds how long it holds a socket).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A scrape that takes longer (netlink or the maps stuck) answers 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. One more is closed as soon as it is
/// accepted: a scraper keeps one or two open, hundreds are a client gone
/// wrong, and each would hold a file descriptor of `run`, which needs its
/// own to reach the maps and the kernel.
pub const MAX_CONNECTIONS: usize = 32;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Totals kept by `run` itself.
#[derive(Default)]
pub struct RunTotals {
    /// Learned entries removed by `run`'s ageing sweeps.
    pub aged: AtomicU64,
}

/// Everything one scrape shows.
#[derive(Debug)]
pub struct Snapshot {
    pub topology: String,
    pub mode: Mode,
    /// None in bridge mode, which has no programs and no maps.
    pub datapath: Option<DatapathSnapshot>,
}

#[derive(Debug)]
pub struct DatapathSnapshot {
    pub ports: Vec<PortStats>,
    pub fdb_static: usize,
    pub fdb_learned: usize,
    /// Learned entries aged out by `run`.
    pub aged: u64,
}

impl Snapshot {
    /// Reads the topology's maps now; `name_of` names a port's ifindex.
    pub fn read(
        topology: &str,
        mode: Mode,
        totals: &RunTotals,
        name_of: impl Fn(u32) -> String,
    ) -> Result<Self> {
        let datapath = if mode == Mode::Bridge {
            None
        } else {
            let maps = datapath::maps(topology)?;
            let rows = Fdb::open(&maps)?.rows()?;
            let learned = rows.iter().filter(|r| r.state == "learned").count();
            Some(DatapathSnapshot {
                ports: counters::read(&maps, name_of)?,
                fdb_static: rows.len() - learned,
                fdb_learned: learned,
                aged: totals.aged.load(Ordering::Relaxed),
            })
        };
        Ok(Snapshot {
            topology: topology.to_owned(),
            mode,
            datapath,
        })
    }
}

/// A family of per-port counters: (name, help, its counters with their
/// `reason` label, None for a family without reasons).
type PortFamily<'a> = (&'a str, &'a str, Vec<(Counter, Option<&'a str>)>);

fn port_families() -> [PortFamily<'static>; 5] {
    [
        (
            "netpath_redirected_packets",
            "Frames sent straight to their destination port.",
            vec![(Counter::Redirected, None)],
        ),
        (
            "netpath_passed_packets",
            "Frames handed to the Linux bridge, by reason.",
            // The reason label is the counter's name without its `pass_` prefix.
            Counter::PASSED
                .iter()
                .map(|c| (*c, Some(c.name().trim_start_matches("pass_"))))
                .collect(),
        ),
        (
            "netpath_dropped_packets",
            "Frames dropped, by reason.",
            // The reason label is the counter's name without its `drop_` prefix.
            Counter::DROPPED
                .iter()
                .map(|c| (*c, Some(c.name().trim_start_matches("drop_"))))
                .collect(),
        ),
        (
            "netpath_learned",
            "FDB entries learned or moved by the programs.",
            vec![(Counter::Learned, None)],
        ),
        (
            "netpath_trace_lost_frames",
            "Redirected frames netpath trace did not get because its ring buffer was full.",
            vec![(Counter::TraceLost, None)],
        ),
    ]
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = self.topology.as_str();
        let mode = self.mode.to_string();
        ConstGauge::new(1i64).encode(
            encoder
                .encode_descriptor(
                    "netpath_info",
                    "The datapath mode of the topology.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&[("topology", t), ("mode", &mode)])?,
        )?;
        let Some(datapath) = &self.datapath else {
            return Ok(());
        };
        // Counters: the encoder adds the `_total` suffix to the samples.
        for (name, help, counters) in port_families() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for port in &datapath.ports {
                for (counter, reason) in &counters {
                    let mut labels = vec![("topology", t), ("port", port.port.as_str())];
                    labels.extend(reason.map(|r| ("reason", r)));
                    ConstCounter::new(port.get(*counter)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "netpath_fdb_entries",
            "FDB entries, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [
            ("static", datapath.fdb_static),
            ("learned", datapath.fdb_learned),
        ] {
            ConstGauge::new(count)
                .encode(family.encode_family(&[("topology", t), ("state", state)])?)?;
        }
        ConstCounter::new(datapath.aged).encode(
            encoder
                .encode_descriptor(
                    "netpath_fdb_aged",
                    "Learned FDB entries aged out by netpath run.",
                    None,
                    MetricType::Counter,
                )?
                .encode_family(&[("topology", t)])?,
        )
    }
}

/// The OpenMetrics text of a snapshot.
pub fn render(snapshot: Snapshot) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .context("encoding the metrics")?;
    Ok(out)
}

/// What a scrape needs to read the maps and name the ports.
#[derive(Clone)]
struct Scrape {
    topology: Arc<str>,
    mode: Mode,
    totals: Arc<RunTotals>,
    handle: rtnetlink::Handle,
    /// One scrape reads the maps at a time; the others wait their turn
    /// (within `SCRAPE_TIMEOUT`).
    reading: Arc<Semaphore>,
}

async fn metrics(State(scrape): State<Scrape>) -> Response {
    let names = LinkNames::load(&scrape.handle).await.unwrap_or_default();
    let Ok(_turn) = scrape.reading.clone().acquire_owned().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // Walking the maps is one syscall per entry: on a blocking thread, so
    // the runtime's few workers stay free for what cannot wait (the etcd
    // lease's keep-alives, the link watcher).
    let read = tokio::task::spawn_blocking(move || {
        Snapshot::read(&scrape.topology, scrape.mode, &scrape.totals, |i| {
            names.name(i)
        })
        .and_then(render)
    })
    .await;
    match read.context("reading the maps").and_then(|read| read) {
        Ok(body) => ([(CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

/// Serves GET /metrics on `addr` (404 elsewhere) until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    topology: String,
    mode: Mode,
    totals: Arc<RunTotals>,
    handle: rtnetlink::Handle,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    log::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            SCRAPE_TIMEOUT,
        ))
        .with_state(Scrape {
            topology: topology.into(),
            mode,
            totals,
            handle,
            reading: Arc::new(Semaphore::new(1)),
        });
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Not axum::serve: it sets no timer, so hyper's header-read timeout
    // would never fire and an idle client would keep its socket forever.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: pass, do not end the server.
            Err(e) => {
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            log::debug!("metrics connection from {peer} closed: {MAX_CONNECTIONS} open already");
            continue;
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn port(name: &str, redirected: u64, pass_unknown: u64) -> PortStats {
        let mut packets: BTreeMap<&'static str, u64> =
            Counter::ALL.iter().map(|c| (c.name(), 0)).collect();
        packets.insert(Counter::Redirected.name(), redirected);
        packets.insert(Counter::PassUnknown.name(), pass_unknown);
        PortStats {
            port: name.into(),
            ifindex: 0,
            packets,
        }
    }

    #[test]
    fn renders_every_family_with_topology_and_port_labels() {
        let snapshot = Snapshot {
            topology: "np".into(),
            mode: Mode::Tc,
            datapath: Some(DatapathSnapshot {
                ports: vec![port("np-c0", 7, 2), port("np-c1", 5, 0)],
                fdb_static: 2,
                fdb_learned: 1,
                aged: 3,
            }),
        };
        let text = render(snapshot).unwrap();
        for line in [
            "# TYPE netpath_info gauge",
            "netpath_info{topology=\"np\",mode=\"tc\"} 1",
            "# TYPE netpath_redirected_packets counter",
            "netpath_redirected_packets_total{topology=\"np\",port=\"np-c0\"} 7",
            "netpath_redirected_packets_total{topology=\"np\",port=\"np-c1\"} 5",
            "netpath_passed_packets_total{topology=\"np\",port=\"np-c0\",reason=\"unknown\"} 2",
            "netpath_passed_packets_total{topology=\"np\",port=\"np-c0\",reason=\"redirect_failed\"} 0",
            "netpath_dropped_packets_total{topology=\"np\",port=\"np-c1\",reason=\"malformed\"} 0",
            "netpath_dropped_packets_total{topology=\"np\",port=\"np-c0\",reason=\"spoofed_mac\"} 0",
            "netpath_dropped_packets_total{topology=\"np\",port=\"np-c0\",reason=\"learn_limit\"} 0",
            "netpath_learned_total{topology=\"np\",port=\"np-c1\"} 0",
            "netpath_fdb_entries{topology=\"np\",state=\"static\"} 2",
            "netpath_fdb_entries{topology=\"np\",state=\"learned\"} 1",
            "netpath_fdb_aged_total{topology=\"np\"} 3",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn bridge_mode_shows_only_the_mode() {
        let text = render(Snapshot {
            topology: "np".into(),
            mode: Mode::Bridge,
            datapath: None,
        })
        .unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            ["netpath_info{topology=\"np\",mode=\"bridge\"} 1"],
            "{text}"
        );
    }
}

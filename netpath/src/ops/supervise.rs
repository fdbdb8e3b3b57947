//! Supervising a running topology (`netpath run`): learned FDB entries
//! aged out, ports that vanished behind
//! netpath's back forgotten, counters reported and served, until Ctrl-C.
//! For a CNI network on an overlay, whose pods the plugin adds and
//! removes, `run` keeps the overlay's control plane only.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use log::{debug, info, warn};
use netpath_common::Counter;
use rtnetlink::Handle;
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage};

use super::{
    overlay::{self, Member},
    topology::{self, UpOutcome},
};
use crate::{
    datapath::{self, counters, fdb::Fdb},
    host::{interrupt::Interrupt, netlink},
    model::{
        Mode, TopologySpec,
        naming::{bridge_name, port_name},
    },
    network::Network,
    observe::metrics::{self, RunTotals},
    store::lock::{Lock, Purpose},
};

const STATS_EVERY: Duration = Duration::from_secs(10);
/// How often `run` looks whether a CNI network joined or left its overlay
/// (its first pod added, its last deleted).
const MEMBERSHIP_CHECK_EVERY: Duration = Duration::from_millis(250);

pub async fn run(
    handle: &Handle,
    spec: TopologySpec,
    keep: bool,
    metrics_addr: Option<SocketAddr>,
) -> Result<()> {
    let name = spec.name.clone();
    let mode = spec.mode;
    let totals = Arc::new(RunTotals::default());
    // Before anything else: a Ctrl-C while the topology comes up is kept
    // for the loop (it then ends at once). Made later, a SIGINT in between
    // was lost where the disposition is inherited as ignored (a background
    // job of a shell), and `run` went on (reliability::two_loaders_on_one_topology
    // under load: still running 30 s after Ctrl-C).
    let mut interrupt = Interrupt::listen()?;
    let _running = Lock::acquire(&name, Purpose::Run)?;
    let ageing = Duration::from_secs(spec.ageing_s);
    let fast_path = spec.mode != Mode::Bridge;
    let overlay = spec
        .overlay
        .is_some()
        .then(|| Member::of_topology(&spec))
        .transpose()?;
    match topology::up(handle, spec).await? {
        UpOutcome::Created => info!("topology {name} up, mode {mode}"),
        UpOutcome::AlreadyUp => info!("topology {name} was up as asked; adopted it"),
    }
    // The overlay's control plane: programs the other nodes as they come
    // and go (`ops::overlay`).
    let control = overlay.map(|member| tokio::spawn(overlay::control_plane(member)));
    let watcher = tokio::spawn(watch_vanishing_ports(handle.clone(), name.clone()));
    let server = match metrics_addr {
        Some(addr) => {
            let server = tokio::spawn(metrics::serve(
                addr,
                name.clone(),
                mode,
                totals.clone(),
                handle.clone(),
            ));
            // Fail now, not silently, if the address cannot be served.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if server.is_finished() {
                server.await.context("metrics server")??;
                unreachable!("the metrics server only returns on errors");
            }
            Some(server)
        }
        None => None,
    };
    info!(
        "topology {name} running; Ctrl-C to {}",
        if keep {
            "exit and keep it"
        } else {
            "tear it down"
        }
    );

    let mut stats_ticker = tokio::time::interval(STATS_EVERY);
    // Sweep often enough that an entry lives at most 1.5 ageing times.
    let mut ageing_ticker =
        tokio::time::interval((ageing / 2).clamp(Duration::from_secs(1), STATS_EVERY));
    let mut last_redirected = 0;
    let mut last_passed = 0;
    loop {
        let report = tokio::select! {
            _ = stats_ticker.tick() => true,
            _ = ageing_ticker.tick() => false,
            _ = interrupt.received() => break,
        };
        if !fast_path {
            continue;
        }
        if !report {
            // The sweep changes the maps: under the lock, as every change.
            // A busy lock skips one tick (its holder reconciles itself).
            let Ok(_lock) = Lock::acquire(&name, Purpose::Change) else {
                debug!("topology {name}: being changed; sweeping at the next tick");
                continue;
            };
            match datapath::reconcile(&name).and_then(|maps| Fdb::open(&maps)?.age_out(ageing)) {
                Ok(0) => {}
                Ok(n) => {
                    totals
                        .aged
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    debug!("topology {name}: {n} learned FDB entries aged out");
                }
                Err(e) => warn!("ageing the FDB of {name}: {e:#}"),
            }
            continue;
        }
        if let Ok(ports) =
            datapath::maps(&name).and_then(|maps| counters::read(&maps, |i| i.to_string()))
        {
            let sum = |counters: &[Counter]| -> u64 {
                ports
                    .iter()
                    .flat_map(|p| counters.iter().map(|c| p.get(*c)))
                    .sum()
            };
            let redirected = sum(&[Counter::Redirected]);
            let passed = sum(&Counter::PASSED);
            if redirected != last_redirected || passed != last_passed {
                info!(
                    "topology {name}: last {}s: {} frames redirected, {} passed to the bridge",
                    STATS_EVERY.as_secs(),
                    redirected - last_redirected,
                    passed - last_passed
                );
                (last_redirected, last_passed) = (redirected, passed);
            }
        }
    }
    watcher.abort();
    if let Some(control) = control {
        control.abort();
    }
    if let Some(server) = server {
        server.abort();
    }
    if keep {
        info!("topology {name} kept; `netpath down --name {name}` removes it");
    } else {
        topology::down(handle, &name).await?;
        info!("topology {name} removed");
    }
    Ok(())
}

/// Runs the overlay control plane of the CNI network on `bridge` until
/// Ctrl-C, the Flannel way: the plugin joins the overlay with the network's
/// first pod and leaves it with the last; this long-lived side keeps the
/// node registered in etcd (lease, watch, its pods republished as they
/// come and go) or follows the peers file, for as long as the network is
/// on the overlay, and waits for it when it is not (yet).
pub async fn run_cni_network(bridge: String) -> Result<()> {
    let network = Network::cni(&bridge)?;
    // Before the lock, as in `run` of a topology.
    let mut interrupt = Interrupt::listen()?;
    let _running = Lock::acquire(&network.datapath(), Purpose::Run)
        .with_context(|| format!("running the CNI network on bridge {bridge}"))?;
    info!("CNI network on bridge {bridge}: keeping its overlay's control plane; Ctrl-C to stop");
    let mut running: Option<(Member, tokio::task::JoinHandle<()>)> = None;
    let mut tick = tokio::time::interval(MEMBERSHIP_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interrupt.received() => break,
        }
        let joined = Member::load(&network)
            .ok()
            .filter(|member| overlay::is_joined(&member.datapath()));
        if running.as_ref().map(|(member, _)| member) == joined.as_ref() {
            continue;
        }
        if let Some((member, control)) = running.take() {
            control.abort();
            info!(
                "{}: off the overlay (no pods); control plane stopped",
                member.name()
            );
        }
        if let Some(member) = joined {
            info!(
                "{}: on overlay VNI {} as node {}; control plane started",
                member.name(),
                member.overlay.vni,
                member.overlay.node
            );
            let control = tokio::spawn(overlay::control_plane(member.clone()));
            running = Some((member, control));
        }
    }
    if let Some((_, control)) = running {
        control.abort();
    }
    Ok(())
}

/// Cleans up after ports whose veth vanished behind netpath's back (a
/// namespace deleted by a crashed runtime), as soon as the kernel says so.
async fn watch_vanishing_ports(handle: Handle, topology: String) {
    let (connection, _, mut events) =
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
            Ok(c) => c,
            Err(e) => {
                warn!("not watching link events of {topology}: {e}");
                return;
            }
        };
    // The connection lives and dies with this task: spawned apart, it would
    // outlive the abort at teardown and report every later link event as
    // undeliverable (netlink-proto's WARN lines).
    let mut connection = std::pin::pin!(connection);
    let prefix = port_name(&topology, "");
    loop {
        let next = tokio::select! {
            _ = &mut connection => return,
            next = events.next() => next,
        };
        let Some((message, _)) = next else { return };
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = message.payload
        else {
            continue;
        };
        let link = netlink::Link::from(link);
        if !link.name.starts_with(&prefix) || link.name == bridge_name(&topology) {
            continue;
        }
        match topology::forget_vanished_port(&handle, &topology, &link.name, link.index).await {
            Ok(true) => info!(
                "topology {topology}: port {} vanished; forgot it",
                link.name
            ),
            Ok(false) => {}
            Err(e) => warn!("forgetting vanished port {}: {e:#}", link.name),
        }
    }
}

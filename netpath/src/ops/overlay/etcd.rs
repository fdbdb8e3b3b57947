//! The etcd control plane of one node: registration under a lease, a watch
//! on the overlay's nodes, and every change programmed as it arrives.
//!
//! Keys: `/netpath/overlay/VNI/nodes/NODE` = the node's [`NodeRecord`] as
//! JSON, attached to the node's lease. A node whose lease expires (it
//! stopped keeping it alive: killed, cut off) loses its key, and the watch
//! removes it from every other node. etcd unreachable: the maps stay as
//! last programmed (forwarding goes on), and the session starts over until
//! etcd answers again: a new lease, the key put again, a full read, a
//! new watch.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, WatchOptions,
};
use log::{info, warn};

use super::{Member, local_record, program, set_connected};
use crate::model::overlay::{EtcdAccess, NodeRecord, Skipped};

/// How long one etcd request may take before the session is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Wait between attempts while etcd is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often this node's own record is compared with what it published
/// (containers added or removed): well within the 1 s a change may take
/// to reach the other nodes.
const LOCAL_CHECK_EVERY: Duration = Duration::from_millis(200);

/// The prefix of the nodes of overlay `vni`.
pub fn prefix(vni: u32) -> String {
    format!("/netpath/overlay/{vni}/nodes/")
}

/// How the overlay record names etcd as the source of the peers.
pub fn source(endpoints: &[String]) -> String {
    format!("etcd {}", endpoints.join(","))
}

/// Runs the control plane of `member` until the task is dropped.
pub async fn run(member: Member, endpoints: Vec<String>) {
    let source = source(&endpoints);
    loop {
        match session(&member, &endpoints, &source).await {
            Ok(()) => return,
            Err(e) => {
                warn!(
                    "{}: etcd control plane: {e:#}; forwarding on the last known state, retrying",
                    member.name()
                );
                if let Err(e) = set_connected(&member.datapath(), false, None) {
                    warn!(
                        "{}: recording the control plane's state: {e:#}",
                        member.name()
                    );
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}

/// One connection to etcd, until it fails.
async fn session(member: &Member, endpoints: &[String], source: &str) -> Result<()> {
    let overlay = &member.overlay;
    let options = connect_options(&overlay.etcd_access)?;
    let mut client = Client::connect(endpoints, Some(options))
        .await
        .context("connecting")?;
    let ttl = overlay.lease_ttl_s as i64;
    let lease = client
        .lease_grant(ttl, None)
        .await
        .context("granting a lease")?
        .id();
    let key = format!("{}{}", prefix(overlay.vni), overlay.node);
    let mut published = local_record(member)?;
    client
        .put(
            key.as_str(),
            serde_json::to_vec(&published)?,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .context("registering this node")?;
    let (mut keeper, mut keep_alive) = client
        .lease_keep_alive(lease)
        .await
        .context("keeping the lease alive")?;

    // Everything now, then every change after it.
    let listed = client
        .get(prefix(overlay.vni), Some(GetOptions::new().with_prefix()))
        .await
        .context("reading the overlay's nodes")?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut nodes: BTreeMap<String, Offered> = BTreeMap::new();
    for kv in listed.kvs() {
        nodes.insert(kv.key_str()?.to_owned(), parse(overlay.vni, kv));
    }
    let (offer, offered) = tokio::sync::watch::channel(nodes.clone());
    let _programmer = Programmer::start(member.clone(), offered, source.to_owned(), lease);
    info!(
        "{}: registered as {} in {source} (lease {lease:x}, TTL {ttl} s), {} nodes",
        member.name(),
        overlay.node,
        nodes.len()
    );
    let mut watch = client
        .watch(
            prefix(overlay.vni),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .context("watching the overlay's nodes")?;

    // Keep-alives at a third of the TTL: two may be lost before it expires.
    let mut keep = tokio::time::interval(Duration::from_millis(ttl as u64 * 1000 / 3));
    let mut local = tokio::time::interval(LOCAL_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = keep.tick() => {
                keeper.keep_alive().await.context("sending a keep-alive")?;
            }
            _ = local.tick() => {
                // Containers added or removed here: tell the others.
                let now = local_record(member)?;
                if now != published {
                    client
                        .put(key.as_str(), serde_json::to_vec(&now)?, Some(PutOptions::new().with_lease(lease)))
                        .await
                        .context("updating this node's record")?;
                    published = now;
                }
            }
            answer = keep_alive.message() => {
                match answer.context("reading keep-alive answers")? {
                    Some(answer) if answer.ttl() > 0 => {}
                    Some(_) => bail!("lease {lease:x} expired"),
                    None => bail!("the keep-alive stream ended"),
                }
            }
            message = watch.message() => {
                let Some(message) = message.context("watching")? else {
                    bail!("the watch ended");
                };
                if message.canceled() {
                    bail!("the watch was cancelled: {}", message.cancel_reason());
                }
                let mut changed = false;
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str()?.to_owned();
                    match event.event_type() {
                        EventType::Put => {
                            let offered = parse(overlay.vni, kv);
                            changed |= nodes.insert(key, offered.clone()).as_ref() != Some(&offered);
                        }
                        EventType::Delete => changed |= nodes.remove(&key).is_some(),
                    }
                }
                if changed {
                    offer.send_replace(nodes.clone());
                }
            }
        }
    }
}

/// How to connect: the timeouts, and TLS and the user as `access` says
/// (its files read afresh, so renewed certificates are taken at the next
/// session).
fn connect_options(access: &EtcdAccess) -> Result<ConnectOptions> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the etcd {what} {}", path.display()))
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    if access.ca.is_some() || access.cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &access.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
        }
        if let (Some(cert), Some(key)) = (&access.cert, &access.key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&access.user, &access.password_file) {
        let password = String::from_utf8(read(file, "password file")?)
            .with_context(|| format!("the etcd password file {} is not text", file.display()))?;
        let password = password.lines().next().unwrap_or_default().to_owned();
        options = options.with_user(user.clone(), password);
    }
    Ok(options)
}

/// What one key offers: a node's record, or why it is none.
type Offered = Result<NodeRecord, Skipped>;

/// A node's record as etcd holds it under its key: refused if the value is
/// no record, if the key does not name the record's node (a node's key is
/// its own), or if it has no lease (a node's record lives with its lease,
/// so one put without one could outlive, or stand in for, a node's).
fn parse(vni: u32, kv: &KeyValue) -> Offered {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let refused = |reason: String| Skipped {
        node: key.clone(),
        reason,
    };
    let record: NodeRecord = serde_json::from_slice(kv.value())
        .map_err(|e| refused(format!("not a node record ({e})")))?;
    let named = key.strip_prefix(&prefix(vni)).unwrap_or_default();
    if named != record.node {
        return Err(refused(format!(
            "the key names node {named:?}, the record node {:?}",
            record.node
        )));
    }
    if kv.lease() == 0 {
        return Err(refused("the key has no lease".into()));
    }
    Ok(record)
}

/// Programs what the keys offer, off the session's task: vetting and
/// writing the maps take time that grows with the overlay, and the session
/// must go on sending keep-alives meanwhile, or the lease expires and the
/// node vanishes from every other. Offers that come while one is being
/// programmed collapse into the latest. Stops with the session.
struct Programmer(tokio::task::JoinHandle<()>);

impl Programmer {
    fn start(
        member: Member,
        mut offered: tokio::sync::watch::Receiver<BTreeMap<String, Offered>>,
        source: String,
        lease: i64,
    ) -> Programmer {
        offered.mark_changed();
        Programmer(tokio::spawn(async move {
            while offered.changed().await.is_ok() {
                let nodes = offered.borrow_and_update().clone();
                let (member, source) = (member.clone(), source.clone());
                let programmed = tokio::task::spawn_blocking(move || {
                    program_offered(&member, &nodes, &source, lease)
                        .with_context(|| format!("{}: programming the overlay", member.name()))
                })
                .await;
                match programmed {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("{e:#}; the maps stay as last programmed"),
                    Err(e) => warn!("programming the overlay: {e}"),
                }
            }
        }))
    }
}

impl Drop for Programmer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Programs what the keys offer: the records, and the keys refused.
fn program_offered(
    member: &Member,
    nodes: &BTreeMap<String, Offered>,
    source: &str,
    lease: i64,
) -> Result<()> {
    let records = nodes.values().filter_map(|o| o.clone().ok()).collect();
    let refused = nodes.values().filter_map(|o| o.clone().err()).collect();
    program(member, records, refused, source.into(), true, Some(lease))?;
    crate::ops::policy::refresh(&member.network)
}

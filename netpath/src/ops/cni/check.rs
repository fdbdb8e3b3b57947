//! CHECK (the runtime's prevResult and the machine against the record)
//! and STATUS (ready for ADD, the pods on the fast path).

use anyhow::{Context, anyhow, ensure};
use rtnetlink::Handle;

use super::{describe, is_live, result::compare_prev_result};
use crate::{
    datapath,
    host::{netlink, netns},
    model::{
        Mac, Mode,
        cni::{CniError, CniResult, Env, NetConf},
    },
    ops::overlay,
    store::cni::{Attachment, NetworkRecord},
};

/// STATUS (CNI 1.1): ready for ADD, and the containers attached already
/// are on the fast path: the datapath's maps reachable and the forwarding
/// program on every live container's port.
pub async fn status(handle: &Handle, conf: &NetConf) -> CniResult<()> {
    let rec = NetworkRecord::load(&conf.bridge).map_err(|e| {
        CniError::new(
            CniError::PLUGIN_NOT_AVAILABLE,
            format!("reading the plugin's record: {e:#}"),
        )
    })?;
    let limited = |msg: String| CniError::new(CniError::LIMITED_CONNECTIVITY, msg);
    let live: Vec<&Attachment> = rec.attachments.iter().filter(|a| is_live(a)).collect();
    if conf.mode() == Mode::Bridge || live.is_empty() {
        return Ok(()); // the first ADD makes the datapath
    }
    datapath::maps(&conf.datapath_name())
        .map_err(|e| limited(format!("the datapath's maps are unreachable: {e:#}")))?;
    if let Some(on) = &rec.overlay {
        let member = overlay::Member::new(
            crate::network::Network::cni(&conf.bridge).map_err(CniError::io)?,
            on.spec.clone(),
        );
        overlay::check_joined(handle, &member).await.map_err(|e| {
            limited(format!(
                "the pods are not on {}: {e:#} (the next ADD joins it again)",
                describe(Some(&on.spec))
            ))
        })?;
    }
    for a in live {
        let host = netlink::link_by_name(handle, &a.host_veth)
            .await
            .map_err(CniError::io)?
            .ok_or_else(|| limited(format!("{} vanished", a.host_veth)))?;
        datapath::check_port(handle, &conf.datapath_name(), conf.mode(), &host, a.mac)
            .await
            .map_err(|e| limited(format!("container {}: {e:#}", a.container_id)))?;
    }
    Ok(())
}

/// CHECK: the runtime's prevResult against the record, and the record
/// against the machine and the datapath.
pub async fn check(handle: &Handle, conf: &NetConf, env: &Env) -> CniResult<()> {
    let rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    let a = rec
        .find(&env.container_id, &env.ifname)
        .map(|i| rec.attachments[i].clone())
        .ok_or_else(|| {
            CniError::new(
                CniError::UNKNOWN_CONTAINER,
                format!("container {} is not attached", env.container_id),
            )
        })?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_CONFIG,
            "CHECK needs prevResult, the result of the ADD",
        )
    })?;
    let bad = |msg: String| CniError::new(CniError::IO_FAILURE, msg);
    compare_prev_result(prev, &a).map_err(|e| bad(format!("prevResult: {e:#}")))?;
    verify(handle, conf, &a)
        .await
        .map_err(|e| bad(format!("{e:#}")))?;
    Ok(())
}

/// What ADD made is all there: the host veth on the bridge, the container's
/// interface with its MAC and addresses, and (tc or xdp mode) the
/// forwarding program on the port and the container's static FDB entry.
/// Returns the host end's MAC.
pub(super) async fn verify(
    handle: &Handle,
    conf: &NetConf,
    a: &Attachment,
) -> anyhow::Result<Option<Mac>> {
    let host = netlink::link_by_name(handle, &a.host_veth)
        .await?
        .with_context(|| format!("{} is missing", a.host_veth))?;
    let bridge = netlink::link_by_name(handle, &conf.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing", conf.bridge))?;
    ensure!(
        host.controller == Some(bridge.index),
        "{} is not on bridge {}",
        a.host_veth,
        conf.bridge
    );
    let ifname = a.ifname.clone();
    let (mac, ips) = netns::run_in_path(&a.netns, move |h| async move {
        let link = netlink::link_by_name(&h, &ifname)
            .await?
            .ok_or_else(|| anyhow!("interface missing"))?;
        Ok((link.mac, netlink::addresses(&h, link.index).await?))
    })
    .with_context(|| format!("{} in {}", a.ifname, a.netns.display()))?;
    ensure!(
        mac == Some(a.mac) && a.ips.iter().all(|ip| ips.contains(ip)),
        "{} has {mac:?} {ips:?}, expected {} {:?}",
        a.ifname,
        a.mac,
        a.ips
    );
    datapath::check_port(handle, &conf.datapath_name(), conf.mode(), &host, a.mac).await?;
    Ok(host.mac)
}

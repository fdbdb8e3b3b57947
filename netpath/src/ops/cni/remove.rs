//! Taking pods off: DEL, GC, and the attachments gone stale (a runtime
//! that crashed, a pod killed without DEL); the last pod winds the network up.

use log::{info, warn};
use rtnetlink::Handle;

use super::{Call, add::enforce_policy, addresses::release, describe, is_live, take_lock};
use crate::{
    datapath,
    host::plumbing,
    model::{
        cni::{CniError, CniResult, NetConf, ValidAttachment},
        naming::cni_host_veth,
    },
    network::cni::{datapath as datapath_of, port as port_of},
    ops::overlay,
    store::cni::{Attachment, NetworkRecord, Reservation},
};

/// Why an attachment is taken off, which says what goes with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// DEL, GC, or a pod gone stale: everything, its addresses too.
    Whole,
    /// An ADD again that plugs it in anew: its addresses stay.
    KeepAddresses,
    /// An ADD that failed: its veth may not carry the plugin's mark yet.
    FailedAdd,
}

/// Takes one attachment off the machine: its map entries, its veth (the
/// plugin's own), its links, and its addresses unless `removal` keeps
/// them. The caller drops it from the record.
pub(super) async fn remove_attachment(
    call: &Call<'_>,
    a: &Attachment,
    removal: Removal,
) -> CniResult<()> {
    let ifindex = nix::net::if_::if_nametoindex(a.host_veth.as_str()).ok();
    datapath::forget_port_entries(&call.conf.datapath_name(), ifindex).map_err(CniError::io)?;
    take_off(call, a, removal).await
}

/// The part of [`remove_attachment`] that touches no map, and so needs no
/// lock: the veth deleted while host-local releases the addresses (the
/// kernel takes 10-40 ms to delete a veth), then the links unpinned, which
/// no longer waits for an RCU grace period once the device is gone.
pub(super) async fn take_off(call: &Call<'_>, a: &Attachment, removal: Removal) -> CniResult<()> {
    let owner = call.conf.datapath_name();
    let released = async {
        if removal == Removal::KeepAddresses {
            Ok(())
        } else {
            release(call, (&a.container_id, &a.ifname)).await
        }
    };
    let interrupted = removal == Removal::FailedAdd;
    let (unplugged, released) = tokio::join!(
        plumbing::unplug_pod(
            call.handle,
            &a.host_veth,
            &owner,
            (&a.container_id, &a.ifname),
            true,
            interrupted
        ),
        released
    );
    unplugged.map_err(CniError::io)?;
    datapath::unpin_port(&owner, &port_of(a)).map_err(CniError::io)?;
    released
}

/// Forgets every attachment but `keep` whose veth or namespace is gone (a
/// runtime that crashed, a pod killed without DEL), and every reservation
/// whose ADD died halfway. A failure to clean one up is logged and left for
/// the next call, never passed on: it is another container's business, not
/// this one's.
pub(super) async fn forget_stale(
    call: &Call<'_>,
    rec: &mut NetworkRecord,
    keep: Option<(&str, &str)>,
) -> CniResult<()> {
    let bridge = &call.conf.bridge;
    let stale: Vec<Attachment> = rec
        .attachments
        .iter()
        .filter(|a| keep != Some((a.container_id.as_str(), a.ifname.as_str())) && !is_live(a))
        .cloned()
        .collect();
    let dead: Vec<Reservation> = rec
        .reservations
        .iter()
        .filter(|r| !r.is_live())
        .cloned()
        .collect();
    if stale.is_empty() && dead.is_empty() {
        return Ok(());
    }
    for a in stale {
        match remove_attachment(call, &a, Removal::Whole).await {
            Ok(()) => {
                info!(
                    "{bridge}: forgot container {} ({}): its veth or namespace was gone",
                    a.container_id, a.host_veth
                );
                rec.attachments.retain(|x| x != &a);
            }
            Err(e) => warn!(
                "{bridge}: could not forget stale container {} ({}): {}; the next ADD, DEL or GC tries again",
                a.container_id, a.host_veth, e.msg
            ),
        }
    }
    for r in dead {
        let container = (r.container_id.as_str(), r.ifname.as_str());
        match remove_unrecorded(call, container, true).await {
            Ok(()) => {
                info!(
                    "{bridge}: forgot the ADD of container {}: its plugin process {} died halfway",
                    r.container_id, r.pid
                );
                rec.unreserve(&r.container_id, &r.ifname);
            }
            Err(e) => warn!(
                "{bridge}: could not undo the interrupted ADD of container {}: {}; the next ADD, DEL or GC tries again",
                r.container_id, e.msg
            ),
        }
    }
    rec.save(bridge).map_err(CniError::io)
}

/// Forgets the attachments of the earlier sandboxes of the pod that an ADD
/// is for: on this network and interface, with the pod's UID
/// (K8S_POD_UID), under another container ID. A runtime killed in the
/// middle of a sandbox's set-up (containerd SIGKILLed while the chain's ADD
/// runs) may not know that sandbox when it starts again, so it never DELs
/// it, and the kubelet asks for the pod's sandbox anew. The dead attempt's
/// veth lives on in its namespace (still mounted), so it is not stale, and
/// its port, veth and addresses would stay for good. The kubelet stops a
/// pod's sandbox before it starts another (one sandbox per pod at a time),
/// so an attachment of the same pod under another ID is one that nobody
/// will DEL. A failure is logged and left for the next call, as for stale
/// attachments.
pub(super) async fn forget_replaced(
    call: &Call<'_>,
    rec: &mut NetworkRecord,
    me: (&str, &str),
    pod_uid: &str,
) -> CniResult<()> {
    let bridge = &call.conf.bridge;
    let replaced: Vec<Attachment> = rec
        .attachments
        .iter()
        .filter(|a| {
            a.pod_uid.as_deref() == Some(pod_uid)
                && a.network == call.conf.name
                && a.ifname == me.1
                && a.container_id != me.0
        })
        .cloned()
        .collect();
    if replaced.is_empty() {
        return Ok(());
    }
    for a in replaced {
        match remove_attachment(call, &a, Removal::Whole).await {
            Ok(()) => {
                info!(
                    "{bridge}: forgot container {} ({}): an earlier sandbox of pod {} (UID {pod_uid}), \
                     which container {} replaces",
                    a.container_id,
                    a.host_veth,
                    a.pod.as_deref().unwrap_or("-"),
                    me.0
                );
                rec.attachments.retain(|x| x != &a);
            }
            Err(e) => warn!(
                "{bridge}: could not forget container {} ({}), an earlier sandbox of pod UID {pod_uid}: {}; \
                 the next ADD of the pod tries again",
                a.container_id, a.host_veth, e.msg
            ),
        }
    }
    rec.save(bridge).map_err(CniError::io)
}

/// Removes what a container has without an attachment in the record: its
/// veth (if there, and the plugin's; `interrupted`: an ADD that died may
/// not have marked it yet), while host-local releases its addresses. No
/// map holds an entry of it.
pub(super) async fn remove_unrecorded(
    call: &Call<'_>,
    container: (&str, &str),
    interrupted: bool,
) -> CniResult<()> {
    let owner = call.conf.datapath_name();
    let veth = cni_host_veth(container.0, container.1);
    let (unplugged, released) = tokio::join!(
        plumbing::unplug_pod(call.handle, &veth, &owner, container, false, interrupted),
        release(call, container)
    );
    unplugged.map_err(CniError::io)?;
    released
}

/// Saves the record; with the last container gone, first removes what the
/// first one's ADD made (the node's place on the overlay, the datapath, and
/// the bridge if the plugin made it).
pub(super) async fn save_or_wind_up(
    handle: &Handle,
    conf: &NetConf,
    rec: &mut NetworkRecord,
) -> CniResult<()> {
    if rec.containers() == 0 {
        if let Some(on) = rec.overlay.take() {
            overlay::leave(handle, &conf.datapath_name(), on.spec.vni)
                .await
                .map_err(CniError::io)?;
            info!(
                "{}: left {} with the last pod",
                conf.bridge,
                describe(Some(&on.spec))
            );
        }
        datapath::remove(&conf.datapath_name()).map_err(CniError::io)?;
        if rec.bridge_created {
            plumbing::unplug(handle, &conf.bridge, &conf.datapath_name(), false)
                .await
                .map_err(CniError::io)?;
            rec.bridge_created = false;
        }
    }
    rec.save(&conf.bridge).map_err(CniError::io)
}

/// DEL: removes everything of the container, whether or not its namespace
/// (and so its veth) still exists; nothing to remove is no error.
///
/// Only the record and the maps change under the network's lock; the veth,
/// the addresses and the links go after it, so that the DELs of many pods
/// overlap. The last container's DEL keeps the lock throughout, as it winds
/// the network up.
pub(super) async fn del(call: &Call<'_>) -> CniResult<()> {
    let Call {
        handle, conf, env, ..
    } = *call;
    let lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    let me = (env.container_id.as_str(), env.ifname.as_str());
    forget_stale(call, &mut rec, Some(me)).await?;
    match rec.find(&env.container_id, &env.ifname) {
        Some(i) if rec.containers() > 1 => {
            let a = rec.attachments.remove(i);
            let ifindex = nix::net::if_::if_nametoindex(a.host_veth.as_str()).ok();
            datapath::forget_port_entries(&conf.datapath_name(), ifindex).map_err(CniError::io)?;
            // Its addresses leave the policies' rules, as allowed peers too.
            let others = datapath_of(conf, rec.attachments.iter().filter(|a| is_live(a)))
                .map_err(CniError::io)?;
            enforce_policy(handle, &others)
                .await
                .map_err(CniError::io)?;
            rec.save(&conf.bridge).map_err(CniError::io)?;
            drop(lock);
            take_off(call, &a, Removal::Whole).await
        }
        Some(i) => {
            let a = rec.attachments[i].clone();
            remove_attachment(call, &a, Removal::Whole).await?;
            rec.attachments.remove(i);
            save_or_wind_up(handle, conf, &mut rec).await
        }
        None => {
            // An earlier DEL may have stopped after it dropped the record:
            // its veth (if still there, and the plugin's) and addresses go now.
            remove_unrecorded(call, me, false).await?;
            save_or_wind_up(handle, conf, &mut rec).await
        }
    }
}

/// GC (CNI 1.1): removes every attachment of this network the runtime no
/// longer lists in `cni.dev/valid-attachments`, and every stale one.
pub(super) async fn gc(call: &Call<'_>) -> CniResult<()> {
    let Call { handle, conf, .. } = *call;
    let valid: &[ValidAttachment] = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            CniError::INVALID_CONFIG,
            "GC without cni.dev/valid-attachments: refusing to guess which containers are gone",
        )
    })?;
    let _lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    forget_stale(call, &mut rec, None).await?;
    let listed = |a: &Attachment| {
        valid
            .iter()
            .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
    };
    // Another network on the same bridge has its own GC. (An attachment
    // recorded without its network predates the field: this GC takes it.)
    let mine = |a: &Attachment| a.network == conf.name || a.network.is_empty();
    let unlisted: Vec<Attachment> = rec
        .attachments
        .iter()
        .filter(|a| mine(a) && !listed(a))
        .cloned()
        .collect();
    for a in unlisted {
        if let Err(e) = remove_attachment(call, &a, Removal::Whole).await {
            rec.save(&conf.bridge).map_err(CniError::io)?;
            return Err(e);
        }
        info!(
            "{}: GC removed container {} ({})",
            conf.bridge, a.container_id, a.host_veth
        );
        rec.attachments.retain(|x| x != &a);
    }
    save_or_wind_up(handle, conf, &mut rec).await
}

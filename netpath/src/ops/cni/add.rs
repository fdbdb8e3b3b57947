//! ADD: where a pod goes (its overlay and MTU), the reservation, the
//! wiring outside the lock and the attachment recorded; a failed ADD undone.

use anyhow::Context;
use ipnet::IpNet;
use log::warn;
use rtnetlink::Handle;
use serde_json::Value;

use super::{
    Call, LOCK_PATIENCE,
    addresses::{Addresses, allocate, host_local_add},
    check::verify,
    describe, is_live,
    remove::{Removal, forget_replaced, forget_stale, remove_attachment, take_off},
    result::result_json,
    take_lock,
};
use crate::{
    datapath::{self, Datapath},
    host::{netlink, plumbing},
    model::{
        Mac, Mode,
        cni::{CniError, CniResult, NetConf},
        naming::cni_host_veth,
        overlay::Peers,
    },
    network::{
        Network,
        cni::{datapath as datapath_of, port as port_of},
    },
    ops::overlay::{self, Member},
    store::{
        cni::{Attachment, NetworkOverlay, NetworkRecord, Reservation, process_start},
        lock::{Lock, Purpose},
    },
};

/// Where an ADD puts its pod: on the overlay the configuration names, if
/// any, with the interface MTU the underlay leaves room for.
pub(super) struct Placement {
    overlay: Option<NetworkOverlay>,
    /// The pod's and the bridge's MTU: the underlay's less the VXLAN
    /// encapsulation on an overlay.
    mtu: u32,
}

impl Placement {
    /// Checked before anything changes: the underlay address must be one
    /// of this host's (its interface's MTU sets the pods').
    async fn of(handle: &Handle, conf: &NetConf) -> CniResult<Placement> {
        let invalid =
            |e: anyhow::Error| CniError::new(CniError::INVALID_CONFIG, format!("overlay: {e:#}"));
        let spec = conf.overlay_spec().map_err(invalid)?;
        let mtu = overlay::network_mtu(handle, spec.as_ref(), None)
            .await
            .map_err(invalid)?;
        let overlay = match spec {
            Some(spec) => Some(NetworkOverlay {
                spec,
                subnets: conf.ipam_subnets().map_err(invalid)?,
            }),
            None => None,
        };
        Ok(Placement { overlay, mtu })
    }

    /// The member of the overlay the network's datapath becomes.
    fn member(&self, conf: &NetConf) -> anyhow::Result<Option<Member>> {
        let Some(on) = &self.overlay else {
            return Ok(None);
        };
        Ok(Some(Member::new(
            Network::cni(&conf.bridge)?,
            on.spec.clone(),
        )))
    }

    /// A pod's address as it carries it: on an overlay, with the overlay
    /// network's prefix, so that the pods of every node are on-link.
    fn pod_address(&self, address: IpNet) -> IpNet {
        match &self.overlay {
            Some(o) => o.spec.on_overlay(address),
            None => address,
        }
    }

    /// The bridge's address for a pod's gateway: on an overlay, with the
    /// prefix of this node's slice (the gateway is this node's alone, the
    /// rest of the overlay network is other nodes' pods).
    fn bridge_address(&self, gateway: IpNet) -> IpNet {
        self.overlay
            .as_ref()
            .and_then(|o| o.subnets.iter().find(|s| s.contains(&gateway.addr())))
            .and_then(|slice| IpNet::new(gateway.addr(), slice.prefix_len()).ok())
            .unwrap_or(gateway)
    }
}

/// The datapath of the live attachments (and `joining`): what a full
/// `datapath::ensure` may be asked to attach, with the network's policies
/// compiled for their pods.
pub(super) fn live_datapath(
    conf: &NetConf,
    rec: &NetworkRecord,
    joining: &Attachment,
) -> anyhow::Result<Datapath> {
    datapath_of(
        conf,
        rec.attachments
            .iter()
            .filter(|a| is_live(a))
            .chain([joining]),
    )
}

/// ADD. The network's lock is held twice, briefly: to reserve the MAC and
/// addresses (and make the bridge, for the first container), and to fill
/// the port's map entries and record the attachment. In between, without
/// it, the veth pair is made, the programs attached, host-local run and the
/// container's end addressed, so the ADDs of many pods overlap.
pub(super) async fn add(call: &Call<'_>) -> CniResult<Value> {
    let Call {
        handle, conf, env, ..
    } = *call;
    let netns_path = env.netns.clone().expect("checked by Env");
    if !netns_path.exists() {
        return Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} does not exist", netns_path.display()),
        ));
    }
    let requested = conf.requested(env)?;
    let bandwidth = conf.bandwidth()?;
    let (identity, pod) = conf.pod_identity(env)?;
    let pod_uid = env.arg("K8S_POD_UID").map(str::to_owned);
    let placement = Placement::of(handle, conf).await?;
    let lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    let me = (env.container_id.as_str(), env.ifname.as_str());
    forget_stale(call, &mut rec, Some(me)).await?;
    if let Some(uid) = &pod_uid {
        forget_replaced(call, &mut rec, me, uid).await?;
    }
    if rec.containers() > 0 && rec.overlay != placement.overlay {
        return Err(CniError::new(
            CniError::INVALID_CONFIG,
            format!(
                "the pods on bridge {} are on {}, this configuration puts them on {}: the pods of one \
                 bridge share one overlay; delete them first, or give this network another bridge",
                conf.bridge,
                describe(rec.overlay.as_ref().map(|o| &o.spec)),
                describe(placement.overlay.as_ref().map(|o| &o.spec))
            ),
        ));
    }
    if let Some(r) = rec.reservation(me.0, me.1) {
        return Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "an ADD of container {} is under way (plugin pid {})",
                r.container_id, r.pid
            ),
        ));
    }
    if let Some(i) = rec.find(me.0, me.1) {
        // ADD again: what exists is the answer, if it is whole.
        let a = rec.attachments[i].clone();
        match verify(handle, conf, &a).await {
            Ok(host_mac) => return Ok(result_json(conf, &a, host_mac, placement.mtu)),
            Err(problem) => {
                warn!(
                    "{}: ADD again for container {}: {problem:#}; plugging it in anew with its addresses",
                    conf.bridge, env.container_id
                );
                remove_attachment(call, &a, Removal::KeepAddresses).await?;
                rec.attachments.remove(i);
                let addresses = (a.ips.clone(), a.gateways.clone());
                let a = Attachment {
                    netns: netns_path,
                    pod,
                    pod_uid,
                    identity,
                    bandwidth,
                    ..a
                };
                return plug_or_undo(call, (lock, rec), a, Some(addresses), &placement).await;
            }
        }
    }
    let host_veth = cni_host_veth(&env.container_id, &env.ifname);
    if let Some(other) = rec.attachments.iter().find(|a| a.host_veth == host_veth) {
        return Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!(
                "container {}/{} would have host veth {host_veth}, which is container {}/{}'s \
                 (the name is a 32-bit hash of container ID and interface): \
                 give the container another ID or interface name",
                env.container_id, env.ifname, other.container_id, other.ifname
            ),
        ));
    }
    let held = datapath::held_addresses(&conf.datapath_name()).map_err(CniError::io)?;
    let addresses = allocate(conf, &rec, &held, &requested.ips)?;
    let mac = match requested.mac {
        Some(mac) if rec.mac_taken(mac) => {
            return Err(CniError::new(
                CniError::INVALID_CONFIG,
                format!("requested MAC {mac} is in use by another container of the network"),
            ));
        }
        Some(mac) => mac,
        None => Mac::derive(&format!("{}/{}", env.container_id, env.ifname), |m| {
            rec.mac_taken(m)
        }),
    };
    let attachment = Attachment {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns_path,
        host_veth,
        mac,
        ips: Vec::new(),
        gateways: Vec::new(),
        pod,
        pod_uid,
        identity,
        bandwidth,
    };
    plug_or_undo(call, (lock, rec), attachment, addresses, &placement).await
}

/// Reserves `a`'s MAC and `addresses` (with the bridge made if missing) in
/// the record under the `lock` it is given, lets it go, and plugs the
/// container in; on failure, undoes everything this ADD made: links, map
/// entries, the veth (and so its peer), the addresses, the reservation.
/// `addresses`: known already (netpath IPAM, or an ADD again), or None for
/// host-local.
pub(super) async fn plug_or_undo(
    call: &Call<'_>,
    (lock, mut rec): (Lock, NetworkRecord),
    mut a: Attachment,
    addresses: Option<Addresses>,
    placement: &Placement,
) -> CniResult<Value> {
    let Call { handle, conf, .. } = *call;
    let owner = conf.datapath_name();
    let adopt = if conf.adopt_bridge {
        plumbing::Adopt::Yes
    } else {
        plumbing::Adopt::No
    };
    let (bridge, created) =
        plumbing::ensure_bridge(handle, &conf.bridge, &owner, placement.mtu, &[], adopt)
            .await
            .map_err(CniError::io)?;
    rec.bridge_created |= created;
    rec.overlay = placement.overlay.clone();
    rec.reservations.push(Reservation {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        pid: std::process::id(),
        started: process_start(std::process::id()),
        mac: a.mac,
        ips: addresses
            .as_ref()
            .map(|(ips, _)| ips.clone())
            .unwrap_or_default(),
    });
    rec.save(&conf.bridge).map_err(CniError::io)?;
    drop(lock);
    match plug(call, &mut a, &bridge, addresses, placement).await {
        Ok(host_mac) => Ok(result_json(conf, &a, host_mac, placement.mtu)),
        Err(e) => {
            if let Err(undo) = unplug_failed(call, &a).await {
                warn!(
                    "{}: undoing the failed ADD of {}: {}",
                    conf.bridge, a.container_id, undo.msg
                );
            }
            Err(e)
        }
    }
}

/// Plugs a reserved container in: the veth pair made and the pinned
/// programs attached to its host end while host-local allocates the
/// addresses (neither needs the other), the container's end addressed and
/// routed; then, under the lock, the bridge's gateway addresses, the port's
/// map entries, and only then the attachment recorded in place of the
/// reservation. On an overlay, the first pod's ADD joins it (with the
/// datapath's loading), and every ADD programs the peers file's nodes, so a
/// static overlay needs no daemon. Returns the host end's MAC.
pub(super) async fn plug(
    call: &Call<'_>,
    a: &mut Attachment,
    bridge: &netlink::Link,
    addresses: Option<Addresses>,
    placement: &Placement,
) -> CniResult<Option<Mac>> {
    let Call {
        handle,
        conf,
        conf_bytes,
        env,
    } = *call;
    let owner = conf.datapath_name();
    let allocated = async {
        match addresses {
            Some(known) => Ok(known),
            None => host_local_add(conf_bytes, env).await,
        }
    };
    let dp = datapath_of(conf, std::iter::empty()).map_err(CniError::io)?;
    let pair = plumbing::Plug {
        host_veth: &a.host_veth,
        netns: &a.netns,
        ifname: &a.ifname,
        mac: Some(a.mac),
        mtu: placement.mtu,
        bridge: Some(bridge.index),
        owner: &owner,
        container: Some((&a.container_id, &a.ifname)),
        addresses: &[],
        gateways: &[],
        source_check: true,
        kind: netlink::PairKind::of(dp.mode),
    };
    let member = placement.member(conf).map_err(CniError::io)?;
    let wiring = async {
        let (host, running) = tokio::join!(
            plumbing::create_pair(handle, &pair),
            run_datapath(handle, &dp, member.as_ref().map(|m| (m, placement.mtu)))
        );
        let host = host?;
        let loaded = running?;
        let attached = datapath::attach_early(handle, &dp, &port_of(a), host.index).await?;
        anyhow::Ok((host, attached, loaded))
    };
    let (allocated, wired) = tokio::join!(allocated, wiring);
    (a.ips, a.gateways) = allocated?;
    a.ips = a.ips.iter().map(|ip| placement.pod_address(*ip)).collect();
    let bridge_addresses: Vec<IpNet> = gateway_addresses(a)
        .map_err(CniError::io)?
        .into_iter()
        .map(|gateway| placement.bridge_address(gateway))
        .collect();
    let (host, attached, loaded) = wired.map_err(CniError::io)?;
    plumbing::configure_inside(&a.netns, &a.ifname, &a.ips, &a.gateways)
        .with_context(|| {
            format!(
                "configuring {} in namespace {}",
                a.ifname,
                a.netns.display()
            )
        })
        .map_err(CniError::io)?;

    let _lock = take_lock(&owner)?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    rec.unreserve(&a.container_id, &a.ifname);
    plumbing::address_bridge(handle, bridge, &bridge_addresses)
        .await
        .map_err(CniError::io)?;
    if let Some(member) = &member
        && let Peers::File(_) = member.overlay.peers
    {
        overlay::sync_peers_file(member).map_err(CniError::io)?;
    }
    let dp = live_datapath(conf, &rec, a).map_err(CniError::io)?;
    if loaded {
        restore_ports(handle, &dp, &rec)
            .await
            .map_err(CniError::io)?;
    }
    datapath::add_port(handle, &dp, &port_of(a), host.index, attached)
        .await
        .map_err(CniError::io)?;
    enforce_policy(handle, &dp).await.map_err(CniError::io)?;
    rec.attachments.push(a.clone());
    rec.mode = Some(dp.mode);
    rec.save(&conf.bridge).map_err(CniError::io)?;
    Ok(host.mac)
}

/// Puts the network's policies, compiled with the pods of `dp`, in force
/// (a pod that comes or goes changes what selectors select). Nothing to do
/// where no policy was ever applied; refused in bridge mode, where the
/// pods have no programs to enforce them.
pub(super) async fn enforce_policy(handle: &Handle, dp: &Datapath) -> anyhow::Result<()> {
    if !crate::store::policy::is_recorded(&dp.name) {
        return Ok(());
    }
    anyhow::ensure!(
        dp.mode != Mode::Bridge || !datapath::isolates(&dp.policy),
        "{}: network policies isolate its pods, and bridge mode has no programs to enforce them: \
         use \"mode\": \"tc\" or \"xdp\" in the conflist, or delete the policies",
        dp.name
    );
    if dp.mode == Mode::Bridge {
        return Ok(());
    }
    datapath::enforce_policy(handle, dp).await
}

/// The ports of the live pods in `rec`, filled and attached again in the
/// datapath `dp` just made: none if it was made for the network's first
/// pod; all of them if it was made again because its pins vanished while
/// the pods lived (their entries went with the pins; their filters still
/// hold the old programs, with maps no one keeps).
async fn restore_ports(handle: &Handle, dp: &Datapath, rec: &NetworkRecord) -> anyhow::Result<()> {
    for pod in rec.attachments.iter().filter(|a| is_live(a)) {
        let Some(link) = netlink::link_by_name(handle, &pod.host_veth).await? else {
            continue;
        };
        warn!(
            "{}: datapath made again while pod {} lived (its pins vanished): restoring its port {}",
            dp.name, pod.container_id, pod.host_veth
        );
        datapath::add_port(handle, dp, &port_of(pod), link.index, false).await?;
    }
    Ok(())
}

/// Makes the network's datapath run if it does not yet (the first
/// container's ADD, the first after the last DEL, or the first after its
/// pins vanished), and join `overlay` (the member and its pods' MTU) if
/// it names one; returns whether it made the datapath. Loading takes tens
/// of milliseconds, which would hold up every other ADD if it were done
/// under the network's lock. Under a lock of its own instead, the others
/// wire their containers meanwhile, and wait only to attach.
pub(super) async fn run_datapath(
    handle: &Handle,
    dp: &Datapath,
    overlay: Option<(&Member, u32)>,
) -> anyhow::Result<bool> {
    // On its overlay as joining left it (its settings pinned, its decap
    // program on the vxlan device): a datapath that lost either joins again.
    let joined = || async {
        match overlay {
            Some((member, _)) => overlay::check_joined(handle, member).await.is_ok(),
            None => true,
        }
    };
    if dp.mode == Mode::Bridge || (datapath::is_running(&dp.name) && joined().await) {
        return Ok(false);
    }
    let name = dp.name.clone();
    let _loading = tokio::task::spawn_blocking(move || {
        Lock::acquire_waiting(&name, Purpose::Load, LOCK_PATIENCE)
    })
    .await??;
    let loaded = datapath::load_if_absent(handle, dp).await?;
    if let Some((member, mtu)) = overlay
        && !joined().await
    {
        overlay::join(handle, member, mtu)
            .await
            .with_context(|| format!("joining {}", describe(Some(&member.overlay))))?;
    }
    Ok(loaded)
}

/// The bridge's addresses for `a`'s gateways: each with the prefix of the
/// container's address of its family.
pub(super) fn gateway_addresses(a: &Attachment) -> anyhow::Result<Vec<IpNet>> {
    a.gateways
        .iter()
        .filter_map(|gw| {
            a.ips
                .iter()
                .find(|ip| ip.addr().is_ipv4() == gw.is_ipv4())
                .map(|ip| (gw, ip.prefix_len()))
        })
        .map(|(gw, prefix)| Ok(IpNet::new(*gw, prefix)?))
        .collect()
}

/// Undoes a failed ADD: under the lock its reservation and any map entries
/// go, then its veth, links and addresses.
pub(super) async fn unplug_failed(call: &Call<'_>, a: &Attachment) -> CniResult<()> {
    let conf = call.conf;
    let lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    rec.unreserve(&a.container_id, &a.ifname);
    let ifindex = nix::net::if_::if_nametoindex(a.host_veth.as_str()).ok();
    if ifindex.is_some() {
        datapath::forget_port_entries(&conf.datapath_name(), ifindex).map_err(CniError::io)?;
    }
    rec.save(&conf.bridge).map_err(CniError::io)?;
    drop(lock);
    take_off(call, a, Removal::FailedAdd).await
}

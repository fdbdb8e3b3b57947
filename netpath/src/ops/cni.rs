//! netpath as a CNI plugin (spec 1.1.0, and configurations of 0.3.0 on):
//! containers that a runtime creates are plugged into a bridge with
//! netpath's datapath, one datapath shared by every container the plugin
//! attaches to that bridge on this host.
//!
//! One container's state never blocks another's: every ADD, DEL and GC
//! first forgets the attachments whose veth or namespace is gone (a runtime
//! that crashed, a pod killed without DEL), with their FDB entries, port
//! state and addresses.

use std::{net::IpAddr, process::Stdio, time::Duration};

use anyhow::{Context, anyhow, ensure};
use ipnet::IpNet;
use log::{info, warn};
use rtnetlink::Handle;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, process::Command};

use super::overlay::{self, Member};
use crate::{
    datapath::{self, Datapath, Port, hooks::TcMethod},
    host::{netlink, netns, plumbing},
    model::{
        Mac, Mode,
        cni::{self, CniError, CniResult, Env, Ipam, NetConf, SUPPORTED_VERSIONS, ValidAttachment},
        ipam,
        naming::cni_host_veth,
        overlay::{OverlaySpec, Peers},
        spec::{DEFAULT_AGEING_S, DEFAULT_MTU},
    },
    store::{
        cni::{Attachment, NetworkOverlay, NetworkRecord, Reservation},
        lock::{Lock, Purpose},
    },
};

/// Runtimes call the plugin for many containers at once: each waits its turn.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

fn take_lock(datapath: &str) -> CniResult<Lock> {
    Lock::acquire_waiting(datapath, Purpose::Change, LOCK_PATIENCE)
        .map_err(|e| CniError::new(CniError::TRY_AGAIN_LATER, format!("{e:#}")))
}

/// One run of the plugin: the network it is for and the runtime's request,
/// which every step of ADD, DEL and GC needs.
#[derive(Clone, Copy)]
struct Call<'a> {
    handle: &'a Handle,
    conf: &'a NetConf,
    /// The configuration as the runtime gave it, for host-local.
    conf_bytes: &'a [u8],
    env: &'a Env,
}

/// Where an ADD puts its pod: on the overlay the configuration names, if
/// any, with the interface MTU the underlay leaves room for.
struct Placement {
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
        let Some(spec) = conf.overlay_spec().map_err(invalid)? else {
            return Ok(Placement {
                overlay: None,
                mtu: DEFAULT_MTU,
            });
        };
        let mtu = overlay::mtu_limit(handle, &spec).await.map_err(invalid)?;
        let subnets = conf.ipam_subnets().map_err(invalid)?;
        Ok(Placement {
            overlay: Some(NetworkOverlay { spec, subnets }),
            mtu,
        })
    }

    /// The member of the overlay the network's datapath becomes.
    fn member(&self, conf: &NetConf) -> Option<Member> {
        self.overlay
            .as_ref()
            .map(|o| Member::of_cni_network(&conf.bridge, o.spec.clone()))
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

/// "overlay VNI 42 as node n1 (192.168.77.1)", or "no overlay", for
/// messages.
fn describe(overlay: Option<&OverlaySpec>) -> String {
    match overlay {
        Some(o) => format!("overlay VNI {} as node {} ({})", o.vni, o.node, o.underlay),
        None => "no overlay".into(),
    }
}

/// Why an attachment is taken off, which says what goes with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// DEL, GC, or a pod gone stale: everything, its addresses too.
    Whole,
    /// An ADD again that plugs it in anew: its addresses stay.
    KeepAddresses,
    /// An ADD that failed: its veth may not carry the plugin's mark yet.
    FailedAdd,
}

fn datapath_of<'a>(conf: &NetConf, attachments: impl Iterator<Item = &'a Attachment>) -> Datapath {
    Datapath {
        name: conf.datapath_name(),
        bridge: conf.bridge.clone(),
        mode: conf.mode(),
        ageing_s: DEFAULT_AGEING_S,
        fdb_size: netpath_common::FDB_CAPACITY,
        learn_limit: netpath_common::DEFAULT_LEARN_LIMIT,
        tc: TcMethod::for_pods(),
        ports: attachments.map(port_of).collect(),
    }
}

fn port_of(a: &Attachment) -> Port {
    Port {
        name: a.host_veth.clone(),
        netns: a.netns.clone(),
        ifname: a.ifname.clone(),
        mac: a.mac,
        addresses: a.ips.iter().map(|ip| ip.addr()).collect(),
        source_check: true,
    }
}

/// The newest CNI version host-local speaks (containernetworking-plugins 1.1).
const HOST_LOCAL_VERSION: &str = "1.0.0";

/// Runs the delegated IPAM plugin (host-local) for one attachment, with the
/// configuration's version capped at what host-local speaks. Asynchronous,
/// so ADD wires the pod while host-local runs.
async fn delegate_ipam(
    conf_bytes: &[u8],
    env: &Env,
    attachment: (&str, &str),
    kind: &str,
    command: &str,
) -> CniResult<Value> {
    let mut conf: Value = serde_json::from_slice(conf_bytes).map_err(|e| CniError::io(e.into()))?;
    if conf["cniVersion"]
        .as_str()
        .is_none_or(|v| v == cni::VERSION_1_1)
    {
        conf["cniVersion"] = json!(HOST_LOCAL_VERSION);
    }
    let (container_id, ifname) = attachment;
    let plugin = env
        .path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                CniError::INVALID_CONFIG,
                format!("IPAM plugin {kind} not found in CNI_PATH"),
            )
        })?;
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_IFNAME", ifname)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(anyhow!("running {}: {e}", plugin.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(conf.to_string().as_bytes())
        .await
        .map_err(|e| CniError::io(e.into()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| CniError::io(e.into()))?;
    let result: Value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .map_err(|e| CniError::io(anyhow!("{kind} printed no JSON: {e}")))?
    };
    if !out.status.success() {
        let msg = result
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("failed")
            .to_owned();
        let code = result
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or(CniError::IO_FAILURE as u64) as u32;
        return Err(CniError::new(code, format!("{kind}: {msg}")));
    }
    Ok(result)
}

/// A new attachment's addresses and gateways, one per family.
type Addresses = (Vec<IpNet>, Vec<IpAddr>);

/// A new attachment's addresses from netpath's own IPAM (free in the
/// record); None with host-local, which ADD runs while it wires the pod.
fn allocate(conf: &NetConf, rec: &NetworkRecord) -> CniResult<Option<Addresses>> {
    let Ipam::Netpath { .. } = &conf.ipam else {
        return Ok(None);
    };
    let subnets = conf
        .subnets()
        .map_err(|e| CniError::new(CniError::INVALID_CONFIG, format!("{e:#}")))?;
    let mut ips = Vec::new();
    for subnet in &subnets {
        ips.push(
            ipam::allocate(*subnet, |a| rec.address_taken(a)).ok_or_else(|| {
                CniError::new(
                    CniError::TRY_AGAIN_LATER,
                    format!("subnet {subnet} has no free address"),
                )
            })?,
        );
    }
    let gateways = subnets.iter().map(|s| ipam::gateway(*s).addr()).collect();
    Ok(Some((ips, gateways)))
}

async fn host_local_add(conf_bytes: &[u8], env: &Env) -> CniResult<Addresses> {
    let result = delegate_ipam(
        conf_bytes,
        env,
        (&env.container_id, &env.ifname),
        "host-local",
        "ADD",
    )
    .await?;
    let mut ips = Vec::new();
    let mut gateways = Vec::new();
    for ip in result["ips"].as_array().into_iter().flatten() {
        let address: IpNet = ip["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                CniError::io(anyhow!(
                    "host-local returned an address that is no CIDR: {ip}"
                ))
            })?;
        ips.push(address);
        gateways.extend(
            ip["gateway"]
                .as_str()
                .and_then(|g| g.parse::<IpAddr>().ok()),
        );
    }
    if ips.is_empty() {
        return Err(CniError::io(anyhow!(
            "host-local returned no address: {result}"
        )));
    }
    Ok((ips, gateways))
}

/// Gives an attachment's addresses back (netpath's own IPAM needs nothing:
/// the record is the allocation).
async fn release(call: &Call<'_>, (container_id, ifname): (&str, &str)) -> CniResult<()> {
    if let Ipam::HostLocal(_) = call.conf.ipam {
        let attachment = (container_id, ifname);
        delegate_ipam(call.conf_bytes, call.env, attachment, "host-local", "DEL").await?;
    }
    Ok(())
}

/// The spec's success result for an attachment whose interfaces have MTU
/// `mtu`.
fn result_json(conf: &NetConf, a: &Attachment, host_mac: Option<Mac>, mtu: u32) -> Value {
    let ips: Vec<Value> = a
        .ips
        .iter()
        .map(|net| {
            let mut ip = json!({"address": net.to_string(), "interface": 1});
            if let Some(gw) = a
                .gateways
                .iter()
                .find(|g| g.is_ipv4() == net.addr().is_ipv4())
            {
                ip["gateway"] = json!(gw.to_string());
            }
            if conf.cni_version != "1.0.0" {
                ip["version"] = json!(if net.addr().is_ipv4() { "4" } else { "6" });
            }
            ip
        })
        .collect();
    let routes: Vec<Value> = a
        .gateways
        .iter()
        .map(|gw| json!({"dst": if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }, "gw": gw.to_string()}))
        .collect();
    let mut interfaces = json!([
        {"name": a.host_veth, "mac": host_mac.map(|m| m.to_string()).unwrap_or_default()},
        {"name": a.ifname, "mac": a.mac.to_string(), "sandbox": a.netns},
    ]);
    if conf.is_1_1() {
        for interface in interfaces.as_array_mut().into_iter().flatten() {
            interface["mtu"] = json!(mtu);
        }
    }
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// Whether an attachment's veth and namespace are still there.
fn is_live(a: &Attachment) -> bool {
    a.netns.exists() && nix::net::if_::if_nametoindex(a.host_veth.as_str()).is_ok()
}

/// The datapath of the live attachments (and `joining`): what a full
/// `datapath::ensure` may be asked to attach.
fn live_datapath(conf: &NetConf, rec: &NetworkRecord, joining: &Attachment) -> Datapath {
    datapath_of(
        conf,
        rec.attachments
            .iter()
            .filter(|a| is_live(a))
            .chain([joining]),
    )
}

/// Takes one attachment off the machine: its map entries, its veth (the
/// plugin's own), its links, and its addresses unless `removal` keeps
/// them. The caller drops it from the record.
async fn remove_attachment(call: &Call<'_>, a: &Attachment, removal: Removal) -> CniResult<()> {
    let ifindex = nix::net::if_::if_nametoindex(a.host_veth.as_str()).ok();
    datapath::forget_port_entries(&call.conf.datapath_name(), ifindex).map_err(CniError::io)?;
    take_off(call, a, removal).await
}

/// The part of [`remove_attachment`] that touches no map, and so needs no
/// lock: the veth deleted while host-local releases the addresses (the
/// kernel takes 10-40 ms to delete a veth), then the links unpinned, which
/// no longer waits for an RCU grace period once the device is gone.
async fn take_off(call: &Call<'_>, a: &Attachment, removal: Removal) -> CniResult<()> {
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
async fn forget_stale(
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

/// Removes what a container has without an attachment in the record: its
/// veth (if there, and the plugin's; `interrupted`: an ADD that died may
/// not have marked it yet), while host-local releases its addresses. No
/// map holds an entry of it.
async fn remove_unrecorded(
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
async fn save_or_wind_up(
    handle: &Handle,
    conf: &NetConf,
    rec: &mut NetworkRecord,
) -> CniResult<()> {
    if rec.containers() == 0 {
        if let Some(on) = rec.overlay.take() {
            overlay::leave(handle, &conf.datapath_name(), &on.spec)
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

/// ADD. The network's lock is held twice, briefly: to reserve the MAC and
/// addresses (and make the bridge, for the first container), and to fill
/// the port's map entries and record the attachment. In between, without
/// it, the veth pair is made, the programs attached, host-local run and the
/// container's end addressed, so the ADDs of many pods overlap.
async fn add(call: &Call<'_>) -> CniResult<Value> {
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
    let placement = Placement::of(handle, conf).await?;
    let lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    let me = (env.container_id.as_str(), env.ifname.as_str());
    forget_stale(call, &mut rec, Some(me)).await?;
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
    let addresses = allocate(conf, &rec)?;
    let mac = Mac::derive(&format!("{}/{}", env.container_id, env.ifname), |m| {
        rec.mac_taken(m)
    });
    let attachment = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns_path,
        host_veth,
        mac,
        ips: Vec::new(),
        gateways: Vec::new(),
    };
    plug_or_undo(call, (lock, rec), attachment, addresses, &placement).await
}

/// Reserves `a`'s MAC and `addresses` (with the bridge made if missing) in
/// the record under the `lock` it is given, lets it go, and plugs the
/// container in; on failure, undoes everything this ADD made: links, map
/// entries, the veth (and so its peer), the addresses, the reservation.
/// `addresses`: known already (netpath IPAM, or an ADD again), or None for
/// host-local.
async fn plug_or_undo(
    call: &Call<'_>,
    (lock, mut rec): (Lock, NetworkRecord),
    mut a: Attachment,
    addresses: Option<Addresses>,
    placement: &Placement,
) -> CniResult<Value> {
    let Call { handle, conf, .. } = *call;
    let owner = conf.datapath_name();
    let (bridge, created) =
        plumbing::ensure_bridge(handle, &conf.bridge, &owner, placement.mtu, &[])
            .await
            .map_err(CniError::io)?;
    rec.bridge_created |= created;
    rec.overlay = placement.overlay.clone();
    rec.reservations.push(Reservation {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        pid: std::process::id(),
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
async fn plug(
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
    let dp = datapath_of(conf, std::iter::empty());
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
    };
    let member = placement.member(conf);
    let wiring = async {
        let (host, running) = tokio::join!(
            plumbing::create_pair(handle, &pair),
            run_datapath(handle, &dp, member.as_ref().map(|m| (m, placement.mtu)))
        );
        let host = host?;
        running?;
        let attached = datapath::attach_early(handle, &dp, &port_of(a), host.index).await?;
        anyhow::Ok((host, attached))
    };
    let (allocated, wired) = tokio::join!(allocated, wiring);
    (a.ips, a.gateways) = allocated?;
    a.ips = a.ips.iter().map(|ip| placement.pod_address(*ip)).collect();
    let bridge_addresses: Vec<IpNet> = gateway_addresses(a)
        .map_err(CniError::io)?
        .into_iter()
        .map(|gateway| placement.bridge_address(gateway))
        .collect();
    let (host, attached) = wired.map_err(CniError::io)?;
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
    let dp = live_datapath(conf, &rec, a);
    datapath::add_port(handle, &dp, &port_of(a), host.index, attached)
        .await
        .map_err(CniError::io)?;
    rec.attachments.push(a.clone());
    rec.save(&conf.bridge).map_err(CniError::io)?;
    Ok(host.mac)
}

/// Makes the network's datapath run if it does not yet (the first
/// container's ADD, or the first after the last DEL), and join `overlay`
/// (the member and its pods' MTU) if it names one: loading it takes tens
/// of milliseconds, which would hold up every other ADD if it were done
/// under the network's lock. Under a lock of its own instead, the others
/// wire their containers meanwhile, and wait only to attach.
async fn run_datapath(
    handle: &Handle,
    dp: &Datapath,
    overlay: Option<(&Member, u32)>,
) -> anyhow::Result<()> {
    let joined = || overlay.is_none_or(|(member, _)| overlay::is_joined(&member.datapath));
    if dp.mode == Mode::Bridge || (datapath::is_running(&dp.name) && joined()) {
        return Ok(());
    }
    let name = dp.name.clone();
    let _loading = tokio::task::spawn_blocking(move || {
        Lock::acquire_waiting(&name, Purpose::Load, LOCK_PATIENCE)
    })
    .await??;
    datapath::load_if_absent(handle, dp).await?;
    match overlay {
        Some((member, mtu)) if !joined() => overlay::join(handle, member, mtu)
            .await
            .with_context(|| format!("joining {}", describe(Some(&member.overlay)))),
        _ => Ok(()),
    }
}

/// The bridge's addresses for `a`'s gateways: each with the prefix of the
/// container's address of its family.
fn gateway_addresses(a: &Attachment) -> anyhow::Result<Vec<IpNet>> {
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
async fn unplug_failed(call: &Call<'_>, a: &Attachment) -> CniResult<()> {
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

/// DEL: removes everything of the container, whether or not its namespace
/// (and so its veth) still exists; nothing to remove is no error.
///
/// Only the record and the maps change under the network's lock; the veth,
/// the addresses and the links go after it, so that the DELs of many pods
/// overlap. The last container's DEL keeps the lock throughout, as it winds
/// the network up.
async fn del(call: &Call<'_>) -> CniResult<()> {
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

/// GC (CNI 1.1): removes every attachment the runtime no longer lists in
/// `cni.dev/valid-attachments`, and every stale one.
async fn gc(call: &Call<'_>) -> CniResult<()> {
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
    let unlisted: Vec<Attachment> = rec
        .attachments
        .iter()
        .filter(|a| !listed(a))
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
    if let Some(on) = &rec.overlay
        && !overlay::is_joined(&conf.datapath_name())
    {
        return Err(limited(format!(
            "the pods are not on {}: the datapath did not join it (the next ADD joins it again)",
            describe(Some(&on.spec))
        )));
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

/// The interface and addresses the runtime was given are the attachment's.
fn compare_prev_result(prev: &Value, a: &Attachment) -> anyhow::Result<()> {
    let interface = prev["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == a.ifname && i.get("sandbox").is_some())
        .with_context(|| format!("lists no interface {} in a sandbox", a.ifname))?;
    let mac: Mac = interface["mac"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .context("interface mac")?;
    ensure!(
        mac == a.mac,
        "{} has MAC {mac}, netpath gave it {}",
        a.ifname,
        a.mac
    );
    let mut ips: Vec<IpNet> = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .context("an ips address")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut given = a.ips.clone();
    ips.sort();
    given.sort();
    ensure!(ips == given, "addresses {ips:?}, netpath gave {given:?}");
    Ok(())
}

/// What ADD made is all there: the host veth on the bridge, the container's
/// interface with its MAC and addresses, and (tc or xdp mode) the
/// forwarding program on the port and the container's static FDB entry.
/// Returns the host end's MAC.
async fn verify(handle: &Handle, conf: &NetConf, a: &Attachment) -> anyhow::Result<Option<Mac>> {
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

pub fn version() -> Value {
    json!({"cniVersion": SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1], "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command; returns what to print on stdout and the exit code.
pub async fn run(env_vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (Value, i32) {
    let newest = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1];
    let env = match Env::from_vars(&env_vars) {
        Ok(env) => env,
        Err(e) => return (e.to_json(newest), 1),
    };
    if env.command == "VERSION" {
        return (version(), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return (e.to_json(newest), 1),
    };
    let version = conf.cni_version.clone();
    if matches!(env.command.as_str(), "STATUS" | "GC") && !conf.is_1_1() {
        let msg = format!(
            "{} needs cniVersion {}, the configuration has {version}",
            env.command,
            cni::VERSION_1_1
        );
        return (
            CniError::new(CniError::INCOMPATIBLE_VERSION, msg).to_json(&version),
            1,
        );
    }
    let handle = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            tokio::spawn(connection);
            handle
        }
        Err(e) => return (CniError::io(e.into()).to_json(&version), 1),
    };
    let call = Call {
        handle: &handle,
        conf: &conf,
        conf_bytes: stdin,
        env: &env,
    };
    let outcome = match env.command.as_str() {
        "ADD" => add(&call).await,
        "DEL" => del(&call).await.map(|()| Value::Null),
        "CHECK" => check(&handle, &conf, &env).await.map(|()| Value::Null),
        "GC" => gc(&call).await.map(|()| Value::Null),
        "STATUS" => status(&handle, &conf).await.map(|()| Value::Null),
        other => Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other} is not supported"),
        )),
    };
    match outcome {
        Ok(value) => (value, 0),
        Err(e) => (e.to_json(&version), 1),
    }
}

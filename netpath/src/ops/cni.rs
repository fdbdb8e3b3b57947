//! netpath as a CNI plugin (spec 1.0.0): containers that a runtime creates
//! are plugged into a bridge with netpath's datapath, one datapath shared by
//! every container the plugin attaches to that bridge on this host.

use std::{
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::anyhow;
use ipnet::IpNet;
use rtnetlink::Handle;
use serde_json::{Value, json};

use crate::{
    datapath::{self, Datapath, Port},
    host::{netlink, netns, plumbing},
    model::{
        Mac,
        cni::{CniError, CniResult, Env, Ipam, NetConf, SUPPORTED_VERSIONS},
        ipam,
        naming::cni_host_veth,
        spec::{DEFAULT_AGEING_S, DEFAULT_MTU},
    },
    store::{
        cni::{Attachment, NetworkRecord},
        lock::{Lock, Purpose},
    },
};

/// Runtimes call the plugin for many containers at once: each waits its turn.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

fn take_lock(datapath: &str) -> CniResult<Lock> {
    Lock::acquire_waiting(datapath, Purpose::Change, LOCK_PATIENCE)
        .map_err(|e| CniError::new(CniError::TRY_AGAIN_LATER, format!("{e:#}")))
}

fn datapath_of<'a>(conf: &NetConf, attachments: impl Iterator<Item = &'a Attachment>) -> Datapath {
    Datapath {
        name: conf.datapath_name(),
        bridge: conf.bridge.clone(),
        mode: conf.mode(),
        ageing_s: DEFAULT_AGEING_S,
        fdb_size: netpath_common::FDB_CAPACITY,
        learn_limit: netpath_common::DEFAULT_LEARN_LIMIT,
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

/// Runs the delegated IPAM plugin (host-local) with the same environment.
fn delegate_ipam(conf_bytes: &[u8], env: &Env, kind: &str, command: &str) -> CniResult<Value> {
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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(anyhow!("running {}: {e}", plugin.display())))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf_bytes)
        .map_err(|e| CniError::io(e.into()))?;
    let out = child
        .wait_with_output()
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

/// (addresses, gateways) for a new attachment, one per family.
fn allocate(
    conf: &NetConf,
    conf_bytes: &[u8],
    env: &Env,
    rec: &NetworkRecord,
) -> CniResult<(Vec<IpNet>, Vec<IpAddr>)> {
    match &conf.ipam {
        Ipam::Netpath { .. } => {
            let subnets = conf
                .subnets()
                .map_err(|e| CniError::new(CniError::INVALID_CONFIG, format!("{e:#}")))?;
            let used = |a: IpAddr| {
                rec.attachments
                    .iter()
                    .any(|x| x.ips.iter().any(|i| i.addr() == a))
            };
            let mut ips = Vec::new();
            for subnet in &subnets {
                ips.push(ipam::allocate(*subnet, used).ok_or_else(|| {
                    CniError::new(
                        CniError::TRY_AGAIN_LATER,
                        format!("subnet {subnet} has no free address"),
                    )
                })?);
            }
            Ok((
                ips,
                subnets.iter().map(|s| ipam::gateway(*s).addr()).collect(),
            ))
        }
        Ipam::HostLocal(_) => {
            let result = delegate_ipam(conf_bytes, env, "host-local", "ADD")?;
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
    }
}

fn release(conf: &NetConf, conf_bytes: &[u8], env: &Env) -> CniResult<()> {
    if let Ipam::HostLocal(_) = conf.ipam {
        delegate_ipam(conf_bytes, env, "host-local", "DEL")?;
    }
    Ok(())
}

/// The spec's success result for an attachment.
fn result_json(conf: &NetConf, a: &Attachment, host_mac: Option<Mac>) -> Value {
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
    json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": a.host_veth, "mac": host_mac.map(|m| m.to_string()).unwrap_or_default()},
            {"name": a.ifname, "mac": a.mac.to_string(), "sandbox": a.netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

pub async fn add(
    handle: &Handle,
    conf: &NetConf,
    conf_bytes: &[u8],
    env: &Env,
) -> CniResult<Value> {
    let netns_path = env.netns.clone().expect("checked by Env");
    if !netns_path.exists() {
        return Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {} does not exist", netns_path.display()),
        ));
    }
    let _lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    if let Some(i) = rec.find(&env.container_id, &env.ifname) {
        let a = rec.attachments[i].clone();
        let host = netlink::link_by_name(handle, &a.host_veth)
            .await
            .map_err(CniError::io)?;
        return Ok(result_json(conf, &a, host.and_then(|h| h.mac)));
    }
    let (ips, gateways) = allocate(conf, conf_bytes, env, &rec)?;
    let mac = Mac::derive(&format!("{}/{}", env.container_id, env.ifname), |m| {
        rec.attachments.iter().any(|a| a.mac == m)
    });
    let attachment = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns_path,
        host_veth: cni_host_veth(&env.container_id, &env.ifname),
        mac,
        ips,
        gateways,
    };
    match plug(handle, conf, &mut rec, &attachment).await {
        Ok(host_mac) => Ok(result_json(conf, &attachment, host_mac)),
        Err(e) => {
            // Undo what this ADD made: the veth (and so its peer) and the address.
            let _ =
                plumbing::unplug(handle, &attachment.host_veth, &conf.datapath_name(), true).await;
            let _ = release(conf, conf_bytes, env);
            Err(CniError::io(e))
        }
    }
}

/// Creates the bridge if needed and the veth pair with the container's
/// addressing, adds the port to the shared datapath, and only then records
/// the attachment.
async fn plug(
    handle: &Handle,
    conf: &NetConf,
    rec: &mut NetworkRecord,
    a: &Attachment,
) -> anyhow::Result<Option<Mac>> {
    let gateways: Vec<IpNet> = a
        .gateways
        .iter()
        .filter_map(|gw| {
            a.ips
                .iter()
                .find(|ip| ip.addr().is_ipv4() == gw.is_ipv4())
                .map(|ip| (gw, ip.prefix_len()))
        })
        .map(|(gw, prefix)| IpNet::new(*gw, prefix))
        .collect::<Result<_, _>>()?;
    let (bridge, created) = plumbing::ensure_bridge(
        handle,
        &conf.bridge,
        &conf.datapath_name(),
        DEFAULT_MTU,
        &gateways,
    )
    .await?;
    if created {
        rec.bridge_created = true;
        rec.save(&conf.bridge)?;
    }
    let host = plumbing::plug(
        handle,
        &plumbing::Plug {
            host_veth: &a.host_veth,
            netns: &a.netns,
            ifname: &a.ifname,
            mac: Some(a.mac),
            mtu: DEFAULT_MTU,
            bridge: Some(bridge.index),
            owner: &conf.datapath_name(),
            addresses: &a.ips,
            gateways: &a.gateways,
            source_check: true,
        },
    )
    .await?;
    datapath::ensure(
        handle,
        &datapath_of(conf, rec.attachments.iter().chain([a])),
    )
    .await?;
    rec.attachments.push(a.clone());
    rec.save(&conf.bridge)?;
    Ok(host.mac)
}

pub async fn del(handle: &Handle, conf: &NetConf, conf_bytes: &[u8], env: &Env) -> CniResult<()> {
    let _lock = take_lock(&conf.datapath_name())?;
    let mut rec = NetworkRecord::load(&conf.bridge).map_err(CniError::io)?;
    let Some(i) = rec.find(&env.container_id, &env.ifname) else {
        // DEL is idempotent: nothing (left) to remove. Release the address
        // anyway, in case an earlier DEL stopped after the veth.
        return release(conf, conf_bytes, env);
    };
    let a = rec.attachments[i].clone();
    let host = netlink::link_by_name(handle, &a.host_veth)
        .await
        .map_err(CniError::io)?;
    datapath::forget_port(
        &conf.datapath_name(),
        &port_of(&a),
        host.as_ref().map(|h| h.index),
    )
    .map_err(CniError::io)?;
    plumbing::unplug(handle, &a.host_veth, &conf.datapath_name(), false)
        .await
        .map_err(CniError::io)?;
    release(conf, conf_bytes, env)?;
    rec.attachments.remove(i);
    if rec.attachments.is_empty() {
        // The last container left: remove what the first one's ADD made.
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
    let bad = |msg: String| CniError::new(CniError::IO_FAILURE, msg);
    let host = netlink::link_by_name(handle, &a.host_veth)
        .await
        .map_err(CniError::io)?;
    let bridge = netlink::link_by_name(handle, &conf.bridge)
        .await
        .map_err(CniError::io)?;
    match (host, bridge) {
        (Some(h), Some(b)) if h.controller == Some(b.index) => {}
        _ => {
            return Err(bad(format!(
                "{} is missing or not on bridge {}",
                a.host_veth, conf.bridge
            )));
        }
    }
    let ifname = a.ifname.clone();
    let (mac, ips) = netns::run_in_path(&a.netns, move |h| async move {
        let link = netlink::link_by_name(&h, &ifname)
            .await?
            .ok_or_else(|| anyhow!("interface missing"))?;
        Ok((link.mac, netlink::addresses(&h, link.index).await?))
    })
    .map_err(|e| bad(format!("{} in {}: {e:#}", a.ifname, a.netns.display())))?;
    if mac != Some(a.mac) || !a.ips.iter().all(|ip| ips.contains(ip)) {
        return Err(bad(format!(
            "{} has {mac:?} {ips:?}, expected {} {:?}",
            a.ifname, a.mac, a.ips
        )));
    }
    Ok(())
}

pub fn version() -> Value {
    json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command; returns what to print on stdout and the exit code.
pub async fn run(env_vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (Value, i32) {
    let env = match Env::from_vars(&env_vars) {
        Ok(env) => env,
        Err(e) => return (e.to_json("1.0.0"), 1),
    };
    if env.command == "VERSION" {
        return (version(), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return (e.to_json("1.0.0"), 1),
    };
    let version = conf.cni_version.clone();
    let handle = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            tokio::spawn(connection);
            handle
        }
        Err(e) => return (CniError::io(e.into()).to_json(&version), 1),
    };
    let outcome = match env.command.as_str() {
        "ADD" => add(&handle, &conf, stdin, &env).await,
        "DEL" => del(&handle, &conf, stdin, &env).await.map(|()| Value::Null),
        "CHECK" => check(&handle, &conf, &env).await.map(|()| Value::Null),
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

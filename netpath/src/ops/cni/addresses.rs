//! Addresses for pods: netpath's own IPAM (the record is the allocation)
//! or a delegated plugin (host-local) run as a subprocess.

use std::{collections::HashSet, net::IpAddr, process::Stdio};

use anyhow::anyhow;
use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, process::Command};

use super::Call;
use crate::{
    model::{
        cni::{self, CniError, CniResult, Env, Ipam, NetConf},
        ipam,
    },
    store::cni::NetworkRecord,
};

/// The newest CNI version host-local speaks (containernetworking-plugins 1.1).
pub(super) const HOST_LOCAL_VERSION: &str = "1.0.0";

/// Runs the delegated IPAM plugin (host-local) for one attachment, with the
/// configuration's version capped at what host-local speaks. Asynchronous,
/// so ADD wires the pod while host-local runs.
pub(super) async fn delegate_ipam(
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
pub(super) type Addresses = (Vec<IpNet>, Vec<IpAddr>);

/// A new attachment's addresses from netpath's own IPAM (free in the
/// record and held by no live port of the datapath, `held`: a record lost
/// with /run must not make it hand out addresses in use); None with
/// host-local, which ADD runs while it wires the pod.
/// Addresses the runtime asked for (`requested`) are taken as they are,
/// if each lies in a subnet and is free; the subnets without one get the
/// next free address. (host-local honours the same requests itself.)
pub(super) fn allocate(
    conf: &NetConf,
    rec: &NetworkRecord,
    held: &HashSet<IpAddr>,
    requested: &[IpAddr],
) -> CniResult<Option<Addresses>> {
    let taken = |ip: IpAddr| rec.address_taken(ip) || held.contains(&ip);
    let Ipam::Netpath { .. } = &conf.ipam else {
        return Ok(None);
    };
    let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
    let subnets = conf.subnets().map_err(|e| invalid(format!("{e:#}")))?;
    if let Some(outside) = requested
        .iter()
        .find(|ip| !subnets.iter().any(|s| s.contains(*ip)))
    {
        return Err(invalid(format!(
            "requested address {outside} is in none of the subnets ({})",
            subnets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut ips = Vec::new();
    for subnet in &subnets {
        let address = match requested.iter().find(|ip| subnet.contains(*ip)) {
            Some(&ip) => {
                let address = IpNet::new(ip, subnet.prefix_len()).expect("prefix from a valid net");
                ipam::check_container_address(*subnet, address)
                    .map_err(|e| invalid(format!("requested address: {e:#}")))?;
                if taken(ip) {
                    return Err(invalid(format!(
                        "requested address {ip} is in use by another container of the network"
                    )));
                }
                address
            }
            None => ipam::allocate(*subnet, taken).ok_or_else(|| {
                CniError::new(
                    CniError::TRY_AGAIN_LATER,
                    format!("subnet {subnet} has no free address"),
                )
            })?,
        };
        ips.push(address);
    }
    let gateways = subnets.iter().map(|s| ipam::gateway(*s).addr()).collect();
    Ok(Some((ips, gateways)))
}

pub(super) async fn host_local_add(conf_bytes: &[u8], env: &Env) -> CniResult<Addresses> {
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
pub(super) async fn release(
    call: &Call<'_>,
    (container_id, ifname): (&str, &str),
) -> CniResult<()> {
    if let Ipam::HostLocal(_) = call.conf.ipam {
        let attachment = (container_id, ifname);
        delegate_ipam(call.conf_bytes, call.env, attachment, "host-local", "DEL").await?;
    }
    Ok(())
}

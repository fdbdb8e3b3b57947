//! The wire format of what ADD returns (CNI 0.3.0 to 1.1.0), and CHECK's
//! reading of it back (prevResult).

use anyhow::{Context, ensure};
use ipnet::IpNet;
use serde_json::{Value, json};

use crate::{
    model::{Mac, cni::NetConf},
    store::cni::Attachment,
};

/// The spec's success result for an attachment whose interfaces have MTU
/// `mtu`.
pub(super) fn result_json(
    conf: &NetConf,
    a: &Attachment,
    host_mac: Option<Mac>,
    mtu: u32,
) -> Value {
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

/// The interface and addresses the runtime was given are the attachment's.
pub(super) fn compare_prev_result(prev: &Value, a: &Attachment) -> anyhow::Result<()> {
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

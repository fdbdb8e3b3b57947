//! The baselines of `bench --policy`: the Linux bridge (netpath's bridge
//! mode, no programs) with the same policy in force in the kernel's
//! firewalls, compiled from the same model as netpath's maps:
//! - `bridge+nft`: nftables, interval sets per container (see
//!   `host::nft_policy`), in the bridge family's forward hook; where the
//!   kernel has no bridge connection tracking (nf_conntrack_bridge), the
//!   same table in the inet family's forward hook, through br_netfilter;
//! - `bridge+iptables`: iptables rules in FORWARD through br_netfilter
//!   (see `host::iptables_policy`), in the policies' order.
//!
//! Each bed's bridge lives in a host namespace of its own, `BED-host`: its
//! rules, connection tracking and br_netfilter sysctl reach no other bed
//! and never the namespace the bench runs in (the machine's, from the
//! command line). Removing the bed removes its topology, its table or
//! chains, restores the sysctl it changed, and deletes the namespace.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use log::warn;

use super::{bed::Bed, policy, report::Target};
use crate::{
    host::{
        iptables_policy, netns, nft,
        nft_policy::{self, Family},
    },
    model::{
        Mode, Settings, TopologySpec,
        naming::port_name,
        policy::{self as model, EndpointRules, NetworkPolicy},
    },
    network,
    ops::topology,
};

/// br_netfilter's switch: bridged IPv4 through the IPv4 hooks (iptables,
/// the inet family). Per network namespace since Linux 5.3.
const CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// The namespace that is the bed's host: its bridge and host veths.
pub(super) fn host_ns(bed: &str) -> String {
    format!("{bed}-host")
}

/// Builds the bed; on failure removes what it built.
pub(super) fn make_bed(name: String, target: Target, index: usize, fdb_size: u32) -> Result<Bed> {
    let mut restore = Vec::new();
    build(&name, target, index, fdb_size, &mut restore).map_err(|e| {
        if let Err(cleanup) = remove(&name, target, &restore) {
            warn!("removing the half-built {target} bed {name}: {cleanup:#}");
        }
        e.context(format!(
            "setting up the {target} bed {name} (removed again)"
        ))
    })
}

pub(super) fn remove_bed(bed: &Bed) -> Result<()> {
    remove(&bed.name, bed.target, &bed.restore)
}

fn build(
    name: &str,
    target: Target,
    index: usize,
    fdb_size: u32,
    restore: &mut Vec<(String, String)>,
) -> Result<Bed> {
    let host = host_ns(name);
    netns::create(&host)?;
    let spec = TopologySpec::resolve(Settings {
        name: Some(name.to_owned()),
        containers: Some(2),
        subnet: vec![format!("10.250.{index}.0/24")],
        mode: Some(Mode::Bridge),
        fdb_size: Some(fdb_size),
        ..Default::default()
    })?;
    let up = spec.clone();
    netns::run_in(
        &host,
        |h| async move { topology::up(&h, up).await.map(drop) },
    )
    .with_context(|| format!("bringing the bridge up in host namespace {host}"))?;
    let client = spec.containers[0].ips[0].addr();
    let (policies, rules) = compiled(&spec, &client)?;
    let started = Instant::now();
    let how = match target {
        Target::BridgeNft => install_nft(name, &host, &rules, restore)?,
        Target::BridgeIptables => {
            install_iptables(name, &host, &in_policy_order(&rules, &policies), restore)?
        }
        _ => bail!("{target} is no firewall baseline"),
    };
    let took = started.elapsed();
    let server = &spec.containers[1];
    let client_ns = port_name(name, &spec.containers[0].name);
    refuses_the_unlisted(&client_ns, server.ips[0].addr())
        .with_context(|| format!("{target}: the policy is not in force"))?;
    eprintln!(
        "bench: {target}: {} in force in {:.0} ms: {how}",
        policy::DESCRIBED,
        took.as_secs_f64() * 1000.0
    );
    Ok(Bed {
        target,
        name: name.to_owned(),
        client: client_ns,
        server: port_name(name, &server.name),
        server_ip: server.ips[0].addr().to_string(),
        restore: restore.clone(),
        note: Some(format!("{target}: {how}")),
    })
}

/// A port no policy opens to the client, and nothing listens on.
const UNLISTED_PORT: u16 = 9;

/// Whether the rules judge: a connection from `client` to the server on a
/// port no policy opens must time out (dropped), not be refused by the
/// server's stack (let through).
fn refuses_the_unlisted(client: &str, server: IpAddr) -> Result<()> {
    let to = std::net::SocketAddr::from((server, UNLISTED_PORT));
    netns::enter_and(client, || {
        match std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300)) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
            Err(e) => bail!("a connection to {to} was let through to the server: {e}"),
            Ok(_) => bail!("a connection to {to} was let through and accepted"),
        }
    })
}

/// The bench's policy set compiled for the bed's containers as netpath
/// compiles it for its maps (`network::compiled_policy`): the node's
/// address on the bridge always allowed.
fn compiled(
    spec: &TopologySpec,
    client: &IpAddr,
) -> Result<(Vec<NetworkPolicy>, Vec<EndpointRules>)> {
    let policies = model::parse(&policy::realistic_set(client))?;
    let endpoints: Vec<model::Endpoint> = spec
        .containers
        .iter()
        .map(|c| network::endpoint(&c.name, &c.identity, c.ips.iter().map(|ip| ip.addr())))
        .collect();
    let node: Vec<IpNet> = spec
        .gateways()
        .iter()
        .map(|g| IpNet::from(g.addr()))
        .collect();
    let rules = model::compile(&policies, &endpoints, &[], &node);
    Ok((policies, rules))
}

/// `rules` with each container's rules in the order of the policies that
/// make them (the node's first), as an operator appends them: a linear
/// chain's order is its cost, and the compiler's (by prefix) would put the
/// bench's client first.
fn in_policy_order(rules: &[EndpointRules], policies: &[NetworkPolicy]) -> Vec<EndpointRules> {
    let position: BTreeMap<String, usize> = policies
        .iter()
        .enumerate()
        .map(|(n, p)| (model::policy_key(p), n + 1))
        .collect();
    let mut ordered = rules.to_vec();
    for endpoint in &mut ordered {
        for rules in [&mut endpoint.ingress, &mut endpoint.egress]
            .into_iter()
            .flatten()
        {
            rules.sort_by_key(|r| position.get(&r.policy).copied().unwrap_or(0));
        }
    }
    ordered
}

/// The table in the bridge family; on a kernel without bridge connection
/// tracking, in the inet family through br_netfilter. Says which.
fn install_nft(
    name: &str,
    host: &str,
    rules: &[EndpointRules],
    restore: &mut Vec<(String, String)>,
) -> Result<String> {
    let table = nft_policy::table_name(name);
    let elements = nft_policy::element_count(rules);
    let bridge = nft_policy::script(name, Family::Bridge, rules);
    let tried = netns::enter_and(host, || Ok(nft::run(&bridge)))?;
    match tried {
        Ok(()) => {
            // Stateful in the bridge family itself: bridged packets need
            // not pass the IPv4 hooks as well.
            set_call_iptables(host, false, restore)?;
            Ok(format!(
                "table bridge {table}, forward hook, {elements} set elements, connection \
                 tracking by nf_conntrack_bridge"
            ))
        }
        // nft_ct refuses the bridge family without nf_conntrack_bridge (EPROTO).
        Err(e) if format!("{e:#}").contains("Protocol error") => {
            set_call_iptables(host, true, restore)?;
            let inet = nft_policy::script(name, Family::Inet, rules);
            netns::enter_and(host, || nft::run(&inet))?;
            Ok(format!(
                "table inet {table}, forward hook through br_netfilter, {elements} set elements \
                 (this kernel's bridge family has no connection tracking: no nf_conntrack_bridge)"
            ))
        }
        Err(e) => Err(e.context(format!("adding table bridge {table}"))),
    }
}

fn install_iptables(
    name: &str,
    host: &str,
    rules: &[EndpointRules],
    restore: &mut Vec<(String, String)>,
) -> Result<String> {
    set_call_iptables(host, true, restore)?;
    let script = iptables_policy::script(name, rules)?;
    let count = script.lines().filter(|l| l.starts_with("-A ")).count();
    netns::enter_and(host, || iptables_policy::apply(name, rules))?;
    let version = Command::new("iptables")
        .arg("-V")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(format!(
        "{version}, FORWARD through br_netfilter (physdev), {count} rules, one per prefix and \
         protocol in the policies' order (no ipset)"
    ))
}

/// Sets br_netfilter's `bridge-nf-call-iptables` in `host` to `on`,
/// remembering the value before in `restore`. Where it is missing, loads
/// br_netfilter when it is needed (machine-wide; it stays loaded); fails
/// if it is still missing there: before Linux 5.3 it is the machine's
/// setting, which the bench does not change.
fn set_call_iptables(host: &str, on: bool, restore: &mut Vec<(String, String)>) -> Result<()> {
    let want = if on { "1" } else { "0" };
    let before = netns::enter_and(host, || {
        if !Path::new(CALL_IPTABLES).exists() {
            if !on {
                return Ok(None); // no br_netfilter: bridged packets skip the IPv4 hooks
            }
            let loaded = Command::new("modprobe").arg("br_netfilter").status();
            if !loaded.is_ok_and(|s| s.success()) || !Path::new(CALL_IPTABLES).exists() {
                bail!(
                    "{CALL_IPTABLES} is missing in network namespace {host}: br_netfilter is not \
                     available, or (before Linux 5.3) the setting is the machine's, which the \
                     bench does not change"
                );
            }
            warn!("loaded br_netfilter (machine-wide; it stays loaded)");
        }
        let before = std::fs::read_to_string(CALL_IPTABLES)
            .with_context(|| format!("reading {CALL_IPTABLES}"))?;
        let before = before.trim().to_owned();
        if before == want {
            return Ok(None);
        }
        std::fs::write(CALL_IPTABLES, want)
            .with_context(|| format!("writing {CALL_IPTABLES} in {host}"))?;
        Ok(Some(before))
    })?;
    if let Some(before) = before {
        restore.push((CALL_IPTABLES.to_owned(), before));
    }
    Ok(())
}

/// Removes the topology, the table or chains and the sysctl changes of
/// bed `name`, then its host namespace; whatever got built.
fn remove(name: &str, target: Target, restore: &[(String, String)]) -> Result<()> {
    let host = host_ns(name);
    if !netns::exists(&host) {
        return Ok(());
    }
    let topology_name = name.to_owned();
    let down = netns::run_in(&host, |h| async move {
        topology::down(&h, &topology_name).await.map(drop)
    });
    let firewall = netns::enter_and(&host, || {
        let table = nft_policy::table_name(name);
        for family in [Family::Bridge, Family::Inet] {
            if nft::table_exists(family.keyword(), &table) {
                nft::run(&format!("delete table {} {table}\n", family.keyword()))?;
            }
        }
        if target == Target::BridgeIptables {
            iptables_policy::remove(name)?;
            // iptables' nf_tables backend made this namespace's filter table for them.
            if nft::table_exists("ip", "filter") {
                nft::run("delete table ip filter\n")?;
            }
        }
        for (sysctl, before) in restore.iter().rev() {
            std::fs::write(sysctl, before).with_context(|| format!("restoring {sysctl}"))?;
        }
        Ok(())
    });
    let deleted = netns::delete(&host);
    down.context("removing the bridge topology")?;
    firewall.context("removing the policy rules")?;
    deleted.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baselines_judge_the_bench_policy_in_the_policies_order() {
        let spec = TopologySpec::resolve(Settings {
            name: Some("nb1i".into()),
            containers: Some(2),
            subnet: vec!["10.250.2.0/24".into()],
            mode: Some(Mode::Bridge),
            ..Default::default()
        })
        .unwrap();
        let client = spec.containers[0].ips[0].addr();
        let (policies, rules) = compiled(&spec, &client).unwrap();
        // Both containers isolated in ingress, each address once.
        assert_eq!(rules.len(), 2);
        assert!(
            rules
                .iter()
                .all(|r| r.ingress.is_some() && r.egress.is_none())
        );
        let ordered = in_policy_order(&rules, &policies);
        let server = ordered[1].ingress.as_ref().unwrap();
        // The node, then tenant-0's blocks ..., the client last.
        assert_eq!(server[0].policy, "(node)");
        assert_eq!(server[1].policy, "default/tenant-0");
        assert_eq!(server.last().unwrap().peer, IpNet::from(client));
        let script = iptables_policy::script("nb1i", &ordered).unwrap();
        assert!(
            script.contains(&format!(
                "-A nb1i-in1 -s {client}/32 -p tcp -m multiport --dports 5201,5301 -j ACCEPT"
            )),
            "{script}"
        );
        let nft = nft_policy::script("nb1n", Family::Bridge, &rules);
        assert!(nft.contains(&format!("{client} . 6 . 5201")), "{nft}");
        // 50 policies of ten adjacent /24s with equal ports: one interval
        // each, four port items, plus the client's four; per container.
        assert_eq!(nft_policy::element_count(&rules), 2 * (50 * 4 + 4 + 1));
    }
}

//! How the CLI shows things: aligned tables like `bridge fdb show` and
//! `ip`, and JSON like `ip -j`.

use anyhow::Result;
use netpath_common::Counter;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    datapath::{counters::PortStats, fdb::Row},
    host::netlink::LinkNames,
    observe::monitor::{Event, Kind},
    ops::{list::Listed, overlay, status::Status},
};

/// One JSON document on one line (for scripts and `jq`).
pub fn json_line(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

pub fn json_pretty(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn status(s: &Status) -> String {
    let mut out = format!(
        "{} {}  mode {}  subnet {}  nat {}  bridge {} {}\n",
        s.kind,
        s.name,
        or_dash(s.mode),
        join(&s.subnets),
        if s.nat { "on" } else { "off" },
        s.bridge.name,
        join(&s.bridge.ips)
    );
    out.push_str(&format!("datapath: {}\n", s.datapath));
    out.push_str(&format!(
        "{:<16} {:<24} {:>8}  {:<16} {:<7} {:<18} {:<32} {:<16} PROGRAMS\n",
        "PORT", "CONTAINER", "IFINDEX", "NETNS", "IFNAME", "MAC", "IPS", "RATE"
    ));
    for p in &s.ports {
        out.push_str(&format!(
            "{:<16} {:<24} {:>8}  {:<16} {:<7} {:<18} {:<32} {:<16} {}\n",
            p.name,
            p.container,
            or_dash(p.ifindex),
            p.netns,
            p.ifname,
            or_dash(p.mac),
            join(&p.ips),
            p.bandwidth.describe(),
            join(&p.programs)
        ));
    }
    out
}

/// A table of left-aligned columns as wide as their widest cell, headers
/// first; the last column is not padded.
pub fn aligned<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(*headers);
    for row in rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// `list`: one row per topology and CNI network, like `cilium-dbg
/// endpoint list`; the ports with their containers last, as they make
/// the row long.
pub fn list_table(listed: &[Listed]) -> String {
    if listed.is_empty() {
        return "No datapaths.\n".into();
    }
    let row = |[name, kind, bridge, mode, state, ports, names]: [&str; 7]| {
        format!("{name:<16} {kind:<9} {bridge:<16} {mode:<7} {state:<11} {ports:>5}  {names}\n")
    };
    let mut out = row([
        "NAME",
        "KIND",
        "BRIDGE",
        "MODE",
        "STATE",
        "PORTS",
        "PORT(CONTAINER)",
    ]);
    for l in listed {
        out.push_str(&row([
            &l.name,
            &l.kind.to_string(),
            &l.bridge,
            &or_dash(l.mode),
            if l.complete { "up" } else { "half-built" },
            &l.ports.len().to_string(),
            &join(&ports_and_containers(l)),
        ]));
    }
    out
}

/// "np-c0(default/c0)" for each port: no blank inside a cell, so the
/// table splits on whitespace as `ip`'s and `bridge`'s do.
fn ports_and_containers(l: &Listed) -> Vec<String> {
    l.ports
        .iter()
        .zip(&l.containers)
        .map(|(port, container)| format!("{port}({container})"))
        .collect()
}

/// `fdb dump --json`: the fields of `bridge -j fdb show` that apply;
/// containers on other nodes (overlay) with `dst` (the node's underlay
/// address) and `node` (its name, where known).
pub fn fdb_json(rows: &[Row], remote: &[overlay::NamedRemote], names: &LinkNames) -> Value {
    let local = rows.iter().map(|r| {
        json!({
            "mac": r.mac, "ifname": names.name(r.ifindex), "ifindex": r.ifindex,
            "vlan": r.vlan, "state": r.state, "age_s": r.age_s,
        })
    });
    let remote = remote.iter().map(|r| {
        json!({
            "mac": r.row.mac, "ifname": r.device, "vlan": 0, "state": "remote",
            "dst": r.row.node, "node": r.node,
        })
    });
    local.chain(remote).collect()
}

/// `fdb dump`, like `bridge fdb show`: `MAC dev IF STATE`, and for
/// containers on other nodes `MAC dev VXLAN dst ADDRESS node NAME remote`.
pub fn fdb_table(rows: &[Row], remote: &[overlay::NamedRemote], names: &LinkNames) -> String {
    if rows.is_empty() && remote.is_empty() {
        return "No entries found.\n".into();
    }
    let local = rows.iter().map(|r| {
        let age = r.age_s.map(|a| format!(" age {a}s")).unwrap_or_default();
        format!("{} dev {} {}{age}\n", r.mac, names.name(r.ifindex), r.state)
    });
    let remote = remote.iter().map(|r| {
        format!(
            "{} dev {} dst {} node {} remote\n",
            r.row.mac,
            r.device,
            r.row.node,
            r.node.as_deref().unwrap_or("-")
        )
    });
    local.chain(remote).collect()
}

/// A `monitor` event, like `bridge monitor fdb`.
pub fn fdb_event(event: &Event) -> String {
    let (prefix, what) = match event.event {
        Kind::Learned => ("", "learned"),
        Kind::Moved => ("", "learned (moved)"),
        Kind::StaticAdded => ("", "static"),
        Kind::AgedOut => ("Deleted ", "learned (aged out)"),
        Kind::Deleted => ("Deleted ", "learned"),
        Kind::StaticRemoved => ("Deleted ", "static"),
    };
    format!("{prefix}{} dev {} {what}", event.mac, event.ifname)
}

/// A column of `netpath stats`: one counter, or the sum of a group.
struct StatsColumn {
    header: String,
    counters: Vec<Counter>,
}

/// The columns of `netpath stats`: by default the groups a reader needs
/// (what the fast path sent, what it passed to the bridge, what it dropped,
/// learned, and received from other nodes), which fit 100 columns; with
/// `all`, every counter (`--json` always has every counter).
fn stats_columns(all: bool) -> Vec<StatsColumn> {
    if all {
        return Counter::ALL
            .iter()
            .map(|c| StatsColumn {
                header: c.name().to_uppercase(),
                counters: vec![*c],
            })
            .collect();
    }
    [
        ("FAST-PATH", &Counter::SENT[..]),
        ("TO-BRIDGE", &Counter::PASSED[..]),
        ("DROPPED", &Counter::DROPPED[..]),
        ("LEARNED", &[Counter::Learned][..]),
        ("FROM-NODES", &[Counter::Decapsulated][..]),
    ]
    .into_iter()
    .map(|(header, counters)| StatsColumn {
        header: header.into(),
        counters: counters.to_vec(),
    })
    .collect()
}

/// An aligned table, one row per port; with `previous` and `seconds`,
/// rates per second instead of totals; `all` shows every counter instead
/// of the groups.
pub fn stats_table(
    stats: &[PortStats],
    previous: Option<(&[PortStats], f64)>,
    all: bool,
) -> String {
    let columns = stats_columns(all);
    let sum = |port: &PortStats, column: &StatsColumn| -> u64 {
        column.counters.iter().map(|c| port.get(*c)).sum()
    };
    let mut out = format!("{:<16}", "PORT");
    for column in &columns {
        let width = column.header.len().max(12);
        out.push_str(&format!(" {:>width$}", column.header));
    }
    out.push('\n');
    for port in stats {
        out.push_str(&format!("{:<16}", port.port));
        for column in &columns {
            let value = match previous {
                Some((before, seconds)) => {
                    let old = before
                        .iter()
                        .find(|p| p.ifindex == port.ifindex)
                        .map(|p| sum(p, column))
                        .unwrap_or(0);
                    format!(
                        "{:.0}/s",
                        sum(port, column).saturating_sub(old) as f64 / seconds
                    )
                }
                None => sum(port, column).to_string(),
            };
            let width = column.header.len().max(12);
            out.push_str(&format!(" {value:>width$}"));
        }
        out.push('\n');
    }
    out
}

pub fn overlay_status(s: &overlay::Status) -> String {
    let mut out = format!(
        "node {}  VNI {}  underlay {}  device {}  subnets {}\n",
        s.node.node,
        s.node.vni,
        s.node.underlay,
        s.device,
        join(&s.node.subnets)
    );
    out.push_str(&match &s.underlay_hook {
        Some(interface) => format!(
            "decap: {interface}'s tc ingress (unicast to containers), {} (the rest)\n",
            s.device
        ),
        None => format!("decap: {}\n", s.device),
    });
    if let Some(wg) = &s.node.wireguard {
        out.push_str(&format!(
            "wireguard: tunnel {}  port {}  public key {}\n",
            wg.tunnel, wg.port, wg.public_key
        ));
    }
    out.push_str(&format!(
        "control plane: {} ({}), lease {} (TTL {} s), last change at {}\n",
        or_dash((!s.source.is_empty()).then_some(&s.source)),
        if s.connected {
            "connected"
        } else {
            "unreachable: forwarding on the last state"
        },
        or_dash(s.lease),
        s.lease_ttl_s,
        s.programmed_at
    ));
    out.push_str(&format!(
        "{:<20} {:<40} {:<40} {:>10}  ACCEPTED\n",
        "NODE", "UNDERLAY", "TUNNEL END", "CONTAINERS"
    ));
    for peer in &s.peers {
        out.push_str(&format!(
            "{:<20} {:<40} {:<40} {:>10}  {}\n",
            peer.node,
            peer.underlay,
            peer.tunnel_end(),
            peer.endpoints.len(),
            if s.accepted.contains(&peer.tunnel_end()) {
                "yes"
            } else {
                "no"
            }
        ));
    }
    if !s.skipped.is_empty() {
        out.push_str(&format!(
            "{} records skipped:\n{:<20} REASON\n",
            s.skipped.len(),
            "NODE"
        ));
        for skipped in &s.skipped {
            out.push_str(&format!("{:<20} {}\n", skipped.node, skipped.reason));
        }
    }
    out.push_str(&format!("{:<18} NODE\n", "REMOTE MAC"));
    for row in &s.remote {
        out.push_str(&format!("{:<18} {}\n", row.mac, row.node));
    }
    out.push_str(
        &s.counters
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Mode, network::Kind};

    fn listed() -> Vec<Listed> {
        vec![
            Listed {
                name: "np".into(),
                kind: Kind::Topology,
                bridge: "np-br".into(),
                mode: Some(Mode::Tc),
                complete: true,
                ports: vec!["np-c0".into(), "np-c1".into()],
                containers: vec!["default/c0".into(), "web/c1".into()],
            },
            Listed {
                name: "half".into(),
                kind: Kind::Topology,
                bridge: "half-br".into(),
                mode: Some(Mode::Xdp),
                complete: false,
                ports: vec!["half-c0".into()],
                containers: vec!["default/c0".into()],
            },
            Listed {
                name: "np-cni0".into(),
                kind: Kind::Cni,
                bridge: "np-cni0".into(),
                mode: None,
                complete: true,
                ports: Vec::new(),
                containers: Vec::new(),
            },
        ]
    }

    #[test]
    fn the_list_is_an_aligned_table_with_a_row_per_datapath() {
        let table = list_table(&listed());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("NAME ") && lines[0].ends_with("PORTS  PORT(CONTAINER)"),
            "{table}"
        );
        // Every column starts where its heading does.
        for (heading, cells) in [
            ("KIND", ["topology", "topology", "cni"]),
            ("BRIDGE", ["np-br", "half-br", "np-cni0"]),
            ("MODE", ["tc", "xdp", "-"]),
            ("STATE", ["up", "half-built", "up"]),
        ] {
            let column = lines[0].find(heading).unwrap();
            for (line, cell) in lines[1..].iter().zip(cells) {
                assert_eq!(line[column..].split(' ').next(), Some(cell), "{table}");
            }
        }
        assert!(
            lines[1].ends_with("    2  np-c0(default/c0),np-c1(web/c1)"),
            "{table}"
        );
        assert!(lines[3].ends_with("    0  -"), "{table}");
        assert_eq!(list_table(&[]), "No datapaths.\n");
    }

    #[test]
    fn the_list_in_json_names_every_field_like_ip_j() {
        let json = serde_json::to_value(listed()).unwrap();
        assert_eq!(
            json[0],
            json!({"name": "np", "kind": "topology", "bridge": "np-br", "mode": "tc",
                   "complete": true, "ports": ["np-c0", "np-c1"],
                   "containers": ["default/c0", "web/c1"]})
        );
        assert_eq!(json[2]["kind"], "cni");
        assert_eq!(json[2]["mode"], Value::Null);
    }
}

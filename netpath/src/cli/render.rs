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
    ops::status::Status,
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

pub fn status(s: &Status) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "topology {}  mode {}  subnet {}  nat {}  bridge {} {}\n",
        s.name,
        s.mode,
        join(&s.subnets),
        if s.nat { "on" } else { "off" },
        s.bridge.name,
        join(&s.bridge.ips)
    );
    out.push_str(&format!("datapath: {}\n", s.datapath));
    out.push_str(&format!(
        "{:<16} {:>8}  {:<16} {:<7} {:<18} {:<32} PROGRAMS\n",
        "PORT", "IFINDEX", "NETNS", "IFNAME", "MAC", "IPS"
    ));
    for p in &s.ports {
        out.push_str(&format!(
            "{:<16} {:>8}  {:<16} {:<7} {:<18} {:<32} {}\n",
            p.name,
            or_dash(p.ifindex.map(|i| i.to_string())),
            p.netns,
            p.ifname,
            or_dash(p.mac.map(|m| m.to_string())),
            join(&p.ips),
            join(&p.programs)
        ));
    }
    out
}

/// `fdb dump --json`: the fields of `bridge -j fdb show` that apply.
pub fn fdb_json(rows: &[Row], names: &LinkNames) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "mac": r.mac, "ifname": names.name(r.ifindex), "ifindex": r.ifindex,
                "vlan": r.vlan, "state": r.state, "age_s": r.age_s,
            })
        })
        .collect()
}

/// `fdb dump`, like `bridge fdb show`: `MAC dev IF STATE`.
pub fn fdb_table(rows: &[Row], names: &LinkNames) -> String {
    if rows.is_empty() {
        return "No entries found.\n".into();
    }
    rows.iter()
        .map(|r| {
            let age = r.age_s.map(|a| format!(" age {a}s")).unwrap_or_default();
            format!("{} dev {} {}{age}\n", r.mac, names.name(r.ifindex), r.state)
        })
        .collect()
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

/// An aligned table, one row per port; with `previous` and `seconds`,
/// rates per second instead of totals.
pub fn stats_table(stats: &[PortStats], previous: Option<(&[PortStats], f64)>) -> String {
    let mut out = format!("{:<16}", "PORT");
    for counter in Counter::ALL {
        out.push_str(&format!(" {:>12}", counter.name().to_uppercase()));
    }
    out.push('\n');
    for port in stats {
        out.push_str(&format!("{:<16}", port.port));
        for counter in Counter::ALL {
            let value = match previous {
                Some((before, seconds)) => {
                    let old = before
                        .iter()
                        .find(|p| p.ifindex == port.ifindex)
                        .map(|p| p.get(counter))
                        .unwrap_or(0);
                    format!(
                        "{:.0}/s",
                        port.get(counter).saturating_sub(old) as f64 / seconds
                    )
                }
                None => port.get(counter).to_string(),
            };
            out.push_str(&format!(" {value:>12}"));
        }
        out.push('\n');
    }
    out
}

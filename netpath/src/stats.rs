//! Per-port counters from the BPF programs, summed over CPUs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{Map, PerCpuHashMap};
use netpath_common::{Counter, PortState, maps};
use serde::Serialize;

use crate::datapath;

#[derive(Clone, Debug, Serialize)]
pub struct PortStats {
    pub port: String,
    pub ifindex: u32,
    /// Counter name -> packets.
    pub packets: BTreeMap<&'static str, u64>,
}

impl PortStats {
    pub fn get(&self, counter: Counter) -> u64 {
        self.packets.get(counter.name()).copied().unwrap_or(0)
    }
}

/// Reads the counters of every port; `name_of` maps ifindex to a name.
pub fn read(topology: &str, name_of: impl Fn(u32) -> String) -> Result<Vec<PortStats>> {
    let map = datapath::open_map(topology, maps::PORT_STATE)?;
    let counters: PerCpuHashMap<_, u32, PortState> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(map)).context("map PORT_STATE has an unexpected type")?;
    let mut out = Vec::new();
    for item in counters.iter() {
        let (ifindex, per_cpu) = item.context("reading map PORT_STATE")?;
        let mut packets = BTreeMap::new();
        for counter in Counter::ALL {
            let total = per_cpu.iter().map(|c| c.packets[counter as usize]).sum();
            packets.insert(counter.name(), total);
        }
        out.push(PortStats { port: name_of(ifindex), ifindex, packets });
    }
    out.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(out)
}

/// An aligned table, one row per port; with `previous` and `seconds`,
/// rates per second instead of totals.
pub fn table(stats: &[PortStats], previous: Option<(&[PortStats], f64)>) -> String {
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
                    let old = before.iter().find(|p| p.ifindex == port.ifindex).map(|p| p.get(counter)).unwrap_or(0);
                    format!("{:.0}/s", port.get(counter).saturating_sub(old) as f64 / seconds)
                }
                None => port.get(counter).to_string(),
            };
            out.push_str(&format!(" {value:>12}"));
        }
        out.push('\n');
    }
    out
}

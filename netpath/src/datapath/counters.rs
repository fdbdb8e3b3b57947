//! Per-port counters from the BPF programs, summed over CPUs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use netpath_common::Counter;
use serde::Serialize;

use super::maps::Maps;

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
pub fn read(maps: &Maps, name_of: impl Fn(u32) -> String) -> Result<Vec<PortStats>> {
    let counters = maps.port_state()?;
    let mut out = Vec::new();
    for item in counters.iter() {
        let (ifindex, per_cpu) = item.context("reading map PORT_STATE")?;
        let mut packets = BTreeMap::new();
        for counter in Counter::ALL {
            let total = per_cpu.iter().map(|c| c.packets[counter as usize]).sum();
            packets.insert(counter.name(), total);
        }
        out.push(PortStats {
            port: name_of(ifindex),
            ifindex,
            packets,
        });
    }
    out.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(out)
}

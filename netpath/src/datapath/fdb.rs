//! The forwarding database in the pinned BPF hash map: static entries for
//! the topology's containers, entries the programs learned, and ageing.

use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use netpath_common::{FDB_FLAG_STATIC, FdbEntry, FdbKey};
use serde::Serialize;

use super::maps::Maps;
use crate::model::Mac;

pub struct Fdb {
    map: HashMap<MapData, FdbKey, FdbEntry>,
}

/// One row of `fdb dump`.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mac: Mac,
    pub vlan: u16,
    pub ifindex: u32,
    pub state: &'static str,
    /// Seconds since a frame from this MAC was seen (learned entries).
    pub age_s: Option<u64>,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl Fdb {
    pub fn open(maps: &Maps) -> Result<Self> {
        Ok(Self { map: maps.fdb()? })
    }

    pub fn add_static(&mut self, mac: Mac, ifindex: u32) -> Result<()> {
        let entry = FdbEntry { ifindex, flags: FDB_FLAG_STATIC, last_seen_ns: monotonic_ns() };
        self.map
            .insert(FdbKey::new(mac.0, 0), entry, 0)
            .with_context(|| format!("adding static FDB entry {mac} -> ifindex {ifindex} (is the FDB full?)"))
    }

    /// Removes one entry; returns false if there was none.
    pub fn remove(&mut self, mac: Mac) -> Result<bool> {
        let key = FdbKey::new(mac.0, 0);
        if self.map.get(&key, 0).is_err() {
            return Ok(false);
        }
        self.map.remove(&key).with_context(|| format!("deleting FDB entry {mac}"))?;
        Ok(true)
    }

    pub fn entries(&self) -> Result<Vec<(FdbKey, FdbEntry)>> {
        self.map.iter().map(|r| r.context("reading map FDB")).collect()
    }

    pub fn rows(&self) -> Result<Vec<Row>> {
        let now = monotonic_ns();
        let mut rows: Vec<Row> = self
            .entries()?
            .into_iter()
            .map(|(key, entry)| Row {
                mac: Mac(key.mac),
                vlan: key.vlan,
                ifindex: entry.ifindex,
                state: if entry.is_static() { "static" } else { "learned" },
                age_s: (!entry.is_static()).then(|| now.saturating_sub(entry.last_seen_ns) / 1_000_000_000),
            })
            .collect();
        rows.sort_by_key(|r| (r.ifindex, r.mac.0));
        Ok(rows)
    }

    /// Removes entries that match `doomed`; returns how many.
    fn remove_where(&mut self, doomed: impl Fn(&FdbEntry) -> bool) -> Result<usize> {
        let keys: Vec<FdbKey> =
            self.entries()?.into_iter().filter(|(_, e)| doomed(e)).map(|(k, _)| k).collect();
        for key in &keys {
            // Already gone (aged or removed concurrently) is fine.
            let _ = self.map.remove(key);
        }
        Ok(keys.len())
    }

    /// Drops every entry (static and learned) that points at `ifindex`.
    pub fn remove_port(&mut self, ifindex: u32) -> Result<usize> {
        self.remove_where(|e| e.ifindex == ifindex)
    }

    /// Drops learned entries, as `bridge fdb flush dynamic` does.
    pub fn flush_learned(&mut self) -> Result<usize> {
        self.remove_where(|e| !e.is_static())
    }

    /// Drops learned entries not refreshed within `ageing`.
    pub fn age_out(&mut self, ageing: Duration) -> Result<usize> {
        let now = monotonic_ns();
        let limit = ageing.as_nanos() as u64;
        self.remove_where(|e| !e.is_static() && now.saturating_sub(e.last_seen_ns) > limit)
    }
}

//! The forwarding database in two pinned BPF maps: static entries (the
//! containers' own MACs, `fdb add`), written only here, and the entries the
//! programs learned (an LRU map), with each port's count of them.

use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use netpath_common::{FdbEntry, FdbKey};
use serde::Serialize;

use super::maps::Maps;
use crate::model::Mac;

pub struct Fdb {
    statics: HashMap<MapData, FdbKey, u32>,
    learned: HashMap<MapData, FdbKey, FdbEntry>,
    counts: HashMap<MapData, u32, u32>,
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
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl Fdb {
    pub fn open(maps: &Maps) -> Result<Self> {
        Ok(Self {
            statics: maps.fdb_static()?,
            learned: maps.fdb_learned()?,
            counts: maps.port_learned()?,
        })
    }

    /// Adds (or moves) a static entry. A learned entry of the same MAC goes:
    /// the static one wins every lookup anyway, and the learned one would
    /// hold a slot of its port's learn limit.
    pub fn add_static(&mut self, mac: Mac, ifindex: u32) -> Result<()> {
        let key = FdbKey::new(mac.0, 0);
        self.statics.insert(key, ifindex, 0).with_context(|| {
            format!(
                "adding static FDB entry {mac} -> ifindex {ifindex} to map FDB_STATIC (is it full?)"
            )
        })?;
        self.remove_learned(&key);
        Ok(())
    }

    /// The port (ifindex) of `mac`'s static entry, if it has one.
    pub fn static_port(&self, mac: Mac) -> Option<u32> {
        self.statics.get(&FdbKey::new(mac.0, 0), 0).ok()
    }

    /// Removes one entry, static or learned; returns false if there was none.
    pub fn remove(&mut self, mac: Mac) -> Result<bool> {
        let key = FdbKey::new(mac.0, 0);
        if self.statics.get(&key, 0).is_ok() {
            self.statics
                .remove(&key)
                .with_context(|| format!("deleting FDB entry {mac} from map FDB_STATIC"))?;
            return Ok(true);
        }
        Ok(self.remove_learned(&key))
    }

    /// Removes `mac`'s learned entry, if it has one (a static one stays).
    pub fn forget_learned(&mut self, mac: Mac) -> bool {
        self.remove_learned(&FdbKey::new(mac.0, 0))
    }

    pub fn rows(&self) -> Result<Vec<Row>> {
        let now = monotonic_ns();
        let mut rows = Vec::new();
        for entry in self.statics.iter() {
            let (key, ifindex) = entry.context("reading map FDB_STATIC")?;
            rows.push(Row {
                mac: Mac(key.mac),
                vlan: key.vlan,
                ifindex,
                state: "static",
                age_s: None,
            });
        }
        for (key, entry) in self.learned_entries()? {
            rows.push(Row {
                mac: Mac(key.mac),
                vlan: key.vlan,
                ifindex: entry.ifindex,
                state: "learned",
                age_s: Some(now.saturating_sub(entry.last_seen_ns) / 1_000_000_000),
            });
        }
        rows.sort_by_key(|r| (r.ifindex, r.mac.0));
        Ok(rows)
    }

    fn learned_entries(&self) -> Result<Vec<(FdbKey, FdbEntry)>> {
        self.learned
            .iter()
            .map(|r| r.context("reading map FDB_LEARNED"))
            .collect()
    }

    /// Sets each port's learned count to the entries the learned FDB holds
    /// for it; returns how many counts were wrong. The programs count as
    /// they learn and forget, but the LRU map evicts without telling them
    /// (a port whose entries were evicted would stay at its limit and drop
    /// every new MAC for good), and the read-then-write here and in
    /// `Fdb::remove_learned` can lose a program's change made meanwhile.
    /// The reconciler calls this, so a count is exact again at every sweep.
    pub fn recount(&mut self) -> Result<usize> {
        let mut held: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for (_, entry) in self.learned_entries()? {
            *held.entry(entry.ifindex).or_default() += 1;
        }
        let counts: Vec<(u32, u32)> = self
            .counts
            .iter()
            .collect::<Result<_, _>>()
            .context("reading map PORT_LEARNED")?;
        let mut wrong = 0;
        for (ifindex, count) in counts {
            let want = held.get(&ifindex).copied().unwrap_or(0);
            if count != want {
                self.counts.insert(ifindex, want, 0).with_context(|| {
                    format!("writing port {ifindex}'s count to map PORT_LEARNED")
                })?;
                wrong += 1;
            }
        }
        Ok(wrong)
    }

    /// Deletes a learned entry and gives its port the slot back; returns
    /// whether this call deleted it (the programs may have, meanwhile).
    ///
    /// The count is read, then written: a program's change to the same
    /// port's count in those microseconds is lost, so a port may hold one
    /// entry more, or one less, than its limit until it learns again.
    fn remove_learned(&mut self, key: &FdbKey) -> bool {
        let Ok(entry) = self.learned.get(key, 0) else {
            return false;
        };
        if self.learned.remove(key).is_err() {
            return false;
        }
        if let Ok(count) = self.counts.get(&entry.ifindex, 0) {
            let _ = self
                .counts
                .insert(entry.ifindex, count.saturating_sub(1), 0);
        }
        true
    }

    /// Removes learned entries that match `doomed` (checked again right
    /// before each delete, so an entry refreshed meanwhile stays); returns
    /// how many went.
    fn remove_learned_where(&mut self, doomed: impl Fn(&FdbEntry) -> bool) -> Result<usize> {
        let keys: Vec<FdbKey> = self
            .learned_entries()?
            .into_iter()
            .filter(|(_, e)| doomed(e))
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in &keys {
            if self.learned.get(key, 0).is_ok_and(|e| doomed(&e)) && self.remove_learned(key) {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops every entry, static and learned, that points at `ifindex`.
    pub fn remove_port(&mut self, ifindex: u32) -> Result<usize> {
        let statics: Vec<FdbKey> = self
            .statics
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, port)| *port == ifindex)
            .map(|(key, _)| key)
            .collect();
        for key in &statics {
            let _ = self.statics.remove(key);
        }
        Ok(statics.len() + self.remove_learned_where(|e| e.ifindex == ifindex)?)
    }

    /// Drops learned entries, as `bridge fdb flush dynamic` does.
    pub fn flush_learned(&mut self) -> Result<usize> {
        self.remove_learned_where(|_| true)
    }

    /// Drops learned entries not refreshed within `ageing`.
    pub fn age_out(&mut self, ageing: Duration) -> Result<usize> {
        let (now, limit) = (monotonic_ns(), ageing.as_nanos() as u64);
        self.remove_learned_where(|e| now.saturating_sub(e.last_seen_ns) > limit)
    }
}

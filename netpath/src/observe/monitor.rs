//! `netpath monitor`: FDB events (learned, moved, aged out, static added or
//! removed), like `bridge monitor fdb`, found by diffing the FDB map every
//! 100 ms, so they are seen whoever made the change (the programs, `run`'s
//! ageing, or `fdb add|del`).

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use serde::Serialize;

use crate::{
    datapath::{
        self,
        fdb::{Fdb, Row},
    },
    host::interrupt::Interrupt,
    model::Mac,
};

const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Learned,
    Moved,
    AgedOut,
    Deleted,
    StaticAdded,
    StaticRemoved,
}

#[derive(Debug, Serialize)]
pub struct Event {
    pub event: Kind,
    pub mac: Mac,
    pub ifname: String,
    pub ifindex: u32,
}

/// What changed between two FDB snapshots. A learned entry that vanished
/// after being idle for the ageing time aged out; any other was deleted.
pub fn diff(
    before: &HashMap<Mac, Row>,
    after: &HashMap<Mac, Row>,
    ageing_s: u64,
) -> Vec<(Kind, Row)> {
    let mut events = Vec::new();
    for (mac, row) in after {
        let learned = row.state == "learned";
        match before.get(mac) {
            None => events.push((
                if learned {
                    Kind::Learned
                } else {
                    Kind::StaticAdded
                },
                row.clone(),
            )),
            // Within one poll: a static entry deleted, then the MAC learned.
            Some(old) if old.state == "static" && learned => {
                events.push((Kind::StaticRemoved, old.clone()));
                events.push((Kind::Learned, row.clone()));
            }
            Some(old) if old.state != row.state => events.push((Kind::StaticAdded, row.clone())),
            Some(old) if old.ifindex != row.ifindex => events.push((
                if learned {
                    Kind::Moved
                } else {
                    Kind::StaticAdded
                },
                row.clone(),
            )),
            Some(_) => {}
        }
    }
    for (mac, row) in before {
        if !after.contains_key(mac) {
            let kind = match row.age_s {
                None => Kind::StaticRemoved,
                Some(age) if age + 1 >= ageing_s => Kind::AgedOut,
                Some(_) => Kind::Deleted,
            };
            events.push((kind, row.clone()));
        }
    }
    events
}

fn snapshot(fdb: &Fdb) -> Result<HashMap<Mac, Row>> {
    Ok(fdb.rows()?.into_iter().map(|r| (r.mac, r)).collect())
}

/// Hands every FDB event to `on_event` until Ctrl-C.
pub async fn run(
    topology: &str,
    name_of: &dyn Fn(u32) -> String,
    mut on_event: impl FnMut(&Event) -> Result<()>,
) -> Result<()> {
    let maps = datapath::maps(topology)?;
    let ageing_s = maps.current_config()?.ageing_ns / 1_000_000_000;
    let fdb = Fdb::open(&maps)?;
    let mut before = snapshot(&fdb)?;
    eprintln!(
        "monitoring the FDB of {topology} ({} entries; Ctrl-C to stop)",
        before.len()
    );
    let mut ticker = tokio::time::interval(POLL);
    let mut interrupt = Interrupt::listen()?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = interrupt.received() => return Ok(()),
        }
        let after = snapshot(&fdb)?;
        for (kind, row) in diff(&before, &after, ageing_s) {
            on_event(&Event {
                event: kind,
                mac: row.mac,
                ifname: name_of(row.ifindex),
                ifindex: row.ifindex,
            })?;
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mac: u8, ifindex: u32, state: &'static str, age_s: Option<u64>) -> (Mac, Row) {
        let mac = Mac([2, 0, 0, 0, 0, mac]);
        (
            mac,
            Row {
                mac,
                vlan: 0,
                ifindex,
                state,
                age_s,
            },
        )
    }

    #[test]
    fn diff_names_every_change() {
        let before: HashMap<_, _> = [
            row(1, 10, "learned", Some(1)),
            row(2, 10, "learned", Some(299)),
            row(3, 11, "static", None),
            row(4, 10, "learned", Some(0)),
        ]
        .into();
        let after: HashMap<_, _> = [
            row(1, 12, "learned", Some(0)),
            row(5, 10, "learned", Some(0)),
            row(6, 10, "static", None),
            row(7, 10, "learned", Some(0)),
        ]
        .into();
        let mut before = before;
        before.extend([row(7, 10, "static", None)]);
        let mut kinds: Vec<(Kind, u8)> = diff(&before, &after, 300)
            .into_iter()
            .map(|(k, r)| (k, r.mac.0[5]))
            .collect();
        kinds.sort_by_key(|(k, m)| (*m, *k as u8));
        assert_eq!(
            kinds,
            [
                (Kind::Moved, 1),
                (Kind::AgedOut, 2),
                (Kind::StaticRemoved, 3),
                (Kind::Deleted, 4),
                (Kind::Learned, 5),
                (Kind::StaticAdded, 6),
                (Kind::Learned, 7),
                (Kind::StaticRemoved, 7),
            ]
        );
    }
}

//! `--scale`: up/down time and TCP between a random pair over 2..128
//! containers, with 10k and 100k extra FDB entries.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, Result};
use rtnetlink::Handle;

use super::{
    bed::bench_name,
    beds::{make_bed, remove_bed},
    measure::tcp,
    report::{ScaleRow, Target},
};
use crate::{
    datapath::{self, fdb::Fdb},
    host::netlink,
    model::{Mac, naming::port_name},
};

/// A small deterministic generator, so runs pick the same "random" pairs.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

const SCALE_CONTAINERS: [usize; 4] = [2, 8, 32, 128];
const SCALE_FDB_EXTRA: [u32; 3] = [0, 10_000, 100_000];

pub(super) async fn scale_sweep(handle: &Handle, seconds: u64) -> Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    let mut rng = Lcg(0x6e70);
    for containers in SCALE_CONTAINERS {
        for (index, target) in [Target::Bridge, Target::Xdp, Target::Tc]
            .into_iter()
            .enumerate()
        {
            eprintln!("bench: scale: {containers} containers, {target}");
            let started = Instant::now();
            let mut bed = make_bed(
                handle,
                bench_name("ns", target),
                target,
                10 + index,
                containers,
                131_072,
            )
            .await?;
            let up_s = started.elapsed().as_secs_f64();
            let result = async {
                let (i, mut j) = (rng.next(containers), rng.next(containers));
                if i == j {
                    j = (j + 1) % containers;
                }
                bed.client = port_name(&bed.name, &format!("c{i}"));
                bed.server = port_name(&bed.name, &format!("c{j}"));
                bed.server_ip = format!("10.250.{}.{}", 10 + index, j + 2);
                let mut by_extra = BTreeMap::new();
                for extra in SCALE_FDB_EXTRA {
                    if extra > 0 && target == Target::Bridge {
                        continue;
                    }
                    if extra > 0 {
                        fill_fdb(
                            handle,
                            &bed.name,
                            extra - by_extra.keys().copied().max().unwrap_or(0),
                        )
                        .await?;
                    }
                    by_extra.insert(extra, tcp(&bed, seconds, 1, false).await?.value);
                }
                anyhow::Ok(by_extra)
            }
            .await;
            let started = Instant::now();
            remove_bed(handle, &bed).await?;
            rows.push(ScaleRow {
                containers,
                target,
                up_s,
                down_s: started.elapsed().as_secs_f64(),
                tcp1_gbps_by_fdb_extra: result?,
            });
        }
    }
    Ok(rows)
}

/// Adds `count` static entries for MACs no container has, on port c0.
async fn fill_fdb(handle: &Handle, topology: &str, count: u32) -> Result<()> {
    let port = netlink::link_by_name(handle, &port_name(topology, "c0"))
        .await?
        .context("port c0 missing")?;
    let mut table = Fdb::open(&datapath::maps(topology)?)?;
    let base = table.rows()?.len() as u32;
    for n in base..base + count {
        let b = n.to_be_bytes();
        table.add_static(Mac([0x06, 0xfd, b[0], b[1], b[2], b[3]]), port.index)?;
    }
    Ok(())
}

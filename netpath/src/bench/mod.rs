//! `netpath bench`: netpath's modes against the Linux bridge and a direct
//! veth pair (the wire), measured in one run, interleaved, as medians; with
//! `--policy`, tc mode with a policy against the bridge with the same policy
//! in nftables and in iptables as well; with
//! `--overlay`, netpath's overlay between containers on two hosts against
//! the kernel's vxlan design and the underlay alike; and with `--cni`, pod
//! set-up latency of netpath-cni against the reference CNI bridge plugin.

mod bed;
mod beds;
mod chart;
pub mod cni;
mod firewalled;
mod measure;
mod overlay;
mod policy;
mod report;
mod scale;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result, bail};
use log::warn;
use rtnetlink::Handle;

pub use self::report::{Reference, Report, Target, table};
use self::{
    bed::{Bed, bench_name},
    beds::{make_bed, remove_bed},
    measure::{run_test, test_name},
    report::{Metric, Sample, rows},
    scale::scale_sweep,
};

pub struct Options {
    pub seconds: u64,
    pub repeat: usize,
    pub targets: Vec<Target>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub scale: bool,
}

pub async fn run(handle: &Handle, options: Options) -> Result<Report> {
    if options.targets.is_empty() || options.repeat == 0 || options.seconds == 0 {
        bail!("nothing to measure: give at least one target, --repeat >= 1 and --seconds >= 1");
    }
    let mut beds = Vec::new();
    let result = tokio::select! {
        // ctrl_c() takes over SIGINT only once polled: first, as the beds
        // across hosts are built without yielding.
        biased;
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        result = measure(handle, &options, &mut beds) => result,
    };
    for bed in &beds {
        if let Err(e) = remove_bed(handle, bed).await {
            warn!("removing benchmark topology {}: {e:#}", bed.name);
        }
    }
    let report = result?;
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &options.plot {
        std::fs::write(path, chart::svg(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

async fn measure(handle: &Handle, options: &Options, beds: &mut Vec<Bed>) -> Result<Report> {
    for (i, target) in options.targets.iter().enumerate() {
        eprintln!("bench: setting up {target}");
        let bed = make_bed(
            handle,
            bench_name("nb", *target),
            *target,
            i,
            2,
            netpath_common::FDB_CAPACITY,
        )
        .await?;
        beds.push(bed);
    }
    let tests = measure::TESTS;
    let total = options.repeat * tests * beds.len();
    let per_run = options.seconds as f64 + 0.7;
    let mut samples: BTreeMap<(Metric, Target), Vec<Sample>> = BTreeMap::new();
    let mut done = 0;
    for rep in 0..options.repeat {
        for test in 0..tests {
            // Interleave: rotate the order each round so drift hits all alike.
            for k in 0..beds.len() {
                let bed = &beds[(k + rep + test) % beds.len()];
                let left = (total - done) as f64 * per_run;
                eprintln!(
                    "bench: [{}/{total}] round {}/{}: {} on {} (about {:.0} s left)",
                    done + 1,
                    rep + 1,
                    options.repeat,
                    test_name(test),
                    bed.target,
                    left
                );
                for (metric, sample) in run_test(bed, test, options.seconds).await? {
                    samples
                        .entry((metric, bed.target))
                        .or_default()
                        .push(sample);
                }
                done += 1;
            }
        }
    }
    let reference = Reference::for_targets(&options.targets);
    let scale = if options.scale {
        scale_sweep(handle, options.seconds).await?
    } else {
        Vec::new()
    };
    Ok(Report {
        kernel: report::kernel(),
        cpus: report::cpus(),
        seconds: options.seconds,
        repeat: options.repeat,
        udp_generator: "iperf3 -u -b 0 -l 64 (one sender thread: the sender may bound the rate)",
        reference,
        rows: rows(&samples, reference),
        scale,
        notes: beds.iter().filter_map(|bed| bed.note.clone()).collect(),
    })
}

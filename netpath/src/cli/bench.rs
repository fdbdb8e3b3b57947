//! `bench`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{netlink_handle, require_root};
use crate::bench::{self, Target};

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Runs of every measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// What to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bridge,xdp,tc,wire"
    )]
    targets: Vec<Target>,
    /// Write every raw figure as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the comparison as an SVG bar chart.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also sweep 2..128 containers and 10k/100k extra FDB entries.
    #[arg(long)]
    scale: bool,
    /// Measure across hosts instead: between containers on two hosts
    /// (network namespaces on an underlay bridge), netpath's overlay
    /// against the kernel's vxlan design (Flannel's: a vxlan device on each
    /// host's bridge, static FDB and ARP entries) and the underlay itself.
    #[arg(long, conflicts_with_all = ["targets", "scale"])]
    overlay: bool,
    /// Measure network policy's cost instead: tc mode without and with a
    /// realistic policy (51 policies, 500 ipBlocks, ports) in force, against
    /// the bridge and the wire, and against the bridge with the same policy
    /// in nftables and in iptables (br_netfilter), with new TCP connections
    /// a second.
    #[arg(long, conflicts_with_all = ["targets", "scale", "overlay"])]
    policy: bool,
    /// Measure pod set-up instead: ADD and DEL latency (p50, p99) of
    /// netpath-cni against the reference CNI bridge plugin
    /// (/usr/lib/cni/bridge), both with host-local IPAM, interleaved.
    #[arg(long, conflicts_with_all = ["seconds", "repeat", "targets", "plot", "scale", "overlay"])]
    cni: bool,
    /// With --cni: pods ADDed one after another, then DELed, per plugin.
    #[arg(long, default_value_t = 50, requires = "cni")]
    pods: usize,
    /// With --cni: pods ADDed all at once, then DELed all at once, per plugin.
    #[arg(long, default_value_t = 20, requires = "cni")]
    concurrent: usize,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    require_root()?;
    let BenchArgs {
        seconds,
        repeat,
        targets,
        json,
        plot,
        scale,
        overlay,
        policy,
        cni,
        pods,
        concurrent,
    } = args;
    let handle = netlink_handle().await?;
    if cni {
        let options = bench::cni::CniOptions {
            sequential: pods,
            concurrent,
            json,
        };
        let report = bench::cni::run(&handle, options).await?;
        print!("{}", bench::cni::table(&report));
        return Ok(());
    }
    let options = bench::Options {
        seconds,
        repeat,
        targets: if overlay {
            Target::CROSS_HOST.to_vec()
        } else if policy {
            Target::POLICY.to_vec()
        } else {
            targets
        },
        json,
        plot,
        scale,
    };
    let report = bench::run(&handle, options).await?;
    print!("{}", bench::table(&report));
    Ok(())
}

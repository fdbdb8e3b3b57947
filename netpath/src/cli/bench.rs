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
    } = args;
    let options = bench::Options {
        seconds,
        repeat,
        targets,
        json,
        plot,
        scale,
    };
    let report = bench::run(&netlink_handle().await?, options).await?;
    print!("{}", bench::table(&report));
    Ok(())
}

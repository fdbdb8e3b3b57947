//! `run`.

use anyhow::Result;
use clap::Args;

use super::{netlink_handle, require_root};
use crate::{
    model::{Settings, TopologySpec},
    ops::supervise,
};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    settings: Settings,
    /// Leave the topology up on exit.
    #[arg(long)]
    keep: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let spec = TopologySpec::resolve(args.settings)?;
    require_root()?;
    supervise::run(&netlink_handle().await?, spec, args.keep, args.metrics).await
}

//! `run`.

use anyhow::Result;
use clap::Args;

use super::netlink_handle;
use crate::{model::Settings, ops::supervise};

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
    let spec = super::topology::resolve(args.settings).await?;
    supervise::run(&netlink_handle().await?, spec, args.keep, args.metrics).await
}

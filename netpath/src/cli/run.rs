//! `run`.

use anyhow::{Result, bail, ensure};
use clap::Args;

use super::netlink_handle;
use crate::{
    model::{Settings, naming::validate_ifname},
    network::Network,
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
    /// --name is the bridge of a CNI network on an overlay: keep its
    /// overlay's control plane (etcd, or the peers file's changes) while
    /// it has pods, waiting for the first if there is none yet. A CNI
    /// network with pods is found by its bridge without --cni.
    #[arg(long)]
    cni: bool,
}

pub async fn run(args: RunArgs) -> Result<()> {
    if let Some(bridge) = cni_bridge(&args)? {
        let others = Settings {
            name: None,
            ..args.settings.clone()
        };
        ensure!(
            others == Settings::default() && !args.keep && args.metrics.is_none(),
            "{bridge} is the bridge of a CNI network: its conflist sets it up, and `run` keeps only its \
             overlay's control plane; give --name (and --cni) alone"
        );
        super::require_root()?;
        return supervise::run_cni_network(bridge).await;
    }
    let spec = super::topology::resolve(args.settings).await?;
    supervise::run(&netlink_handle().await?, spec, args.keep, args.metrics).await
}

/// The CNI bridge `run` is for: --cni's, or a CNI network's found by name.
fn cni_bridge(args: &RunArgs) -> Result<Option<String>> {
    match (&args.settings.name, args.cni) {
        (Some(name), true) => {
            validate_ifname("CNI bridge", name)?;
            Ok(Some(name.clone()))
        }
        (None, true) => {
            bail!("--cni needs --name BRIDGE: the bridge of the CNI network's conflist")
        }
        (Some(name), false) => {
            let network = Network::named(name)?;
            Ok(network.runtime_managed().then(|| network.name().to_owned()))
        }
        (None, false) => Ok(None),
    }
}

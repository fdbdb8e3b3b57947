//! `trace`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{NameArg, netlink_handle, require_root};
use crate::{host::netlink::LinkNames, observe::trace};

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Only frames that entered through this port: container name or host
    /// veth (a CNI network's: container ID or host veth).
    #[arg(long)]
    port: Option<String>,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<usize>,
    /// Write a pcap file (for tcpdump -r, tshark, Wireshark) instead of lines.
    #[arg(long)]
    write: Option<PathBuf>,
    /// 'mac XX:XX:XX:XX:XX:XX' or 'ip ADDRESS'.
    #[arg(long)]
    filter: Option<trace::Filter>,
    /// Only frames a network policy denied (shown as going to "denied").
    #[arg(long)]
    denied: bool,
}

pub async fn run(args: TraceArgs) -> Result<()> {
    require_root()?;
    let handle = netlink_handle().await?;
    let network = args.name.network()?;
    let name = network.datapath();
    let port = match args.port {
        Some(p) => Some(network.port_ifindex(&handle, &p).await?.1),
        None => None,
    };
    let names = LinkNames::load(&handle).await?;
    let to_file = args.write.is_some();
    let options = trace::Options {
        port,
        count: args.count,
        write: args.write,
        filter: args.filter,
        denied_only: args.denied,
    };
    let summary = trace::run(&name, options, &|i| names.name(i), |line| {
        println!("{line}")
    })
    .await?;
    let lost = match summary.lost {
        0 => String::new(),
        n => format!(
            ", {n} lost (the ring buffer was full: trace fewer frames, e.g. with --filter or --port)"
        ),
    };
    eprintln!(
        "{} frames {}{lost}",
        summary.shown,
        if to_file { "written" } else { "shown" }
    );
    Ok(())
}

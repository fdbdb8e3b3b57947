//! The `netpath` command line: the verbs, one file each, on top of `ops`,
//! `datapath`, `observe` and `bench`; tables and JSON in `render`.

mod bench;
mod fdb;
mod list;
mod monitor;
mod overlay;
mod policy;
mod port;
mod render;
mod run;
mod stats;
mod status;
mod topology;
mod trace;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rtnetlink::Handle;

use crate::{
    model::{Settings, spec::DEFAULT_NAME},
    network::Network,
};

#[derive(Parser)]
#[command(
    name = "netpath",
    version,
    about = "eBPF fast path between containers, with the Linux bridge as fallback"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct NameArg {
    /// Topology name: prefix of every object netpath creates for it.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
}

impl NameArg {
    /// The topology name, checked before any file or object is touched,
    /// for the verbs that change topologies.
    fn topology(&self) -> Result<String> {
        Ok(self.network()?.topology_name()?.to_owned())
    }

    /// The topology or CNI network of this name.
    fn network(&self) -> Result<Network> {
        Network::named(&self.name)
    }

    /// The datapath key of a topology or a CNI bridge of this name.
    fn datapath(&self) -> Result<String> {
        Ok(self.network()?.datapath())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a topology: namespaces, veth pairs, bridge, addresses, datapath.
    Up(Settings),
    /// Remove everything a topology created, and nothing else.
    Down(NameArg),
    /// Add or remove one container while the topology runs.
    #[command(subcommand)]
    Port(port::PortCommand),
    /// Show a topology or CNI network as it is on the machine; without
    /// --name, list them all (as `list` does).
    Status {
        /// Topology name or CNI bridge.
        #[arg(long)]
        name: Option<String>,
        /// JSON output, like `ip -j`.
        #[arg(long)]
        json: bool,
    },
    /// List every topology and CNI network: bridge, mode, ports.
    List {
        /// JSON output, like `ip -j`.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or change the forwarding database.
    #[command(subcommand)]
    Fdb(fdb::FdbCommand),
    /// Per-port packet counters of the BPF programs.
    Stats {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
        /// Refresh every second, showing rates.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// Every counter, not the groups (fast path, to the bridge,
        /// dropped, learned, from other nodes); --json always has every one.
        #[arg(long, conflicts_with = "json")]
        all: bool,
    },
    /// Show the frames the fast path redirected (tcpdump on a host veth
    /// cannot see them), as lines or a pcap file.
    Trace(trace::TraceArgs),
    /// Print FDB events (learned, moved, aged out, static added/removed),
    /// like `bridge monitor fdb`.
    Monitor {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Switch the datapath mode of a running topology.
    Mode {
        #[command(flatten)]
        name: NameArg,
        #[arg(value_enum)]
        mode: crate::model::Mode,
    },
    /// Replace the BPF programs on every port of a running topology or CNI
    /// network (and on an overlay its decap program on the node's vxlan
    /// device) with this netpath's, atomically, without stopping traffic.
    Upgrade {
        #[command(flatten)]
        name: NameArg,
        /// Replace programs whose instructions are the same as well.
        #[arg(long)]
        force: bool,
    },
    /// A topology or CNI network on an overlay across nodes: status, this
    /// node's record, the static peers file.
    #[command(subcommand)]
    Overlay(overlay::OverlayCommand),
    /// Kubernetes NetworkPolicy for a topology's containers or a CNI
    /// network's pods, enforced by the programs: apply, list, show, delete,
    /// check.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Measure the modes against the Linux bridge and a direct veth pair.
    Bench(bench::BenchArgs),
    /// Bring a topology up (or adopt it) and run it: FDB ageing,
    /// periodic stats; Ctrl-C tears it down unless --keep. For a CNI
    /// network on an overlay (--cni --name BRIDGE): its control plane.
    Run(run::RunArgs),
}

async fn netlink_handle() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF): run it with sudo");
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    // Input is checked before anything else, root or not.
    let command = cli.command;
    match &command {
        Command::Up(_) | Command::Bench(_) | Command::Run(_) | Command::List { .. } => {}
        Command::Down(name) | Command::Mode { name, .. } => {
            name.topology()?;
        }
        Command::Status { name, .. } => {
            name.as_deref().map(Network::named).transpose()?;
        }
        Command::Stats { name, .. }
        | Command::Monitor { name, .. }
        | Command::Upgrade { name, .. } => {
            name.datapath()?;
        }
        Command::Port(command) => command.name().topology().map(drop)?,
        Command::Overlay(command) => command.name().network().map(drop)?,
        Command::Policy(command) => command.name().network().map(drop)?,
        Command::Fdb(command) => command.name().datapath().map(drop)?,
        Command::Trace(args) => args.name.datapath().map(drop)?,
    }
    match command {
        Command::Up(settings) => topology::up(settings).await,
        Command::Down(name) => topology::down(&name.topology()?).await,
        Command::Mode { name, mode } => topology::mode(&name.topology()?, mode).await,
        Command::Upgrade { name, force } => {
            topology::upgrade(&name.name, &name.datapath()?, force).await
        }
        Command::Port(command) => port::run(command).await,
        Command::Status {
            name: Some(name),
            json,
        } => status::run(&Network::named(&name)?, json).await,
        Command::Status { name: None, json } | Command::List { json } => list::run(json).await,
        Command::Fdb(command) => fdb::run(command).await,
        Command::Stats {
            name,
            json,
            watch,
            all,
        } => stats::run(&name.datapath()?, json, watch, all).await,
        Command::Trace(args) => trace::run(args).await,
        Command::Monitor { name, json } => monitor::run(&name.datapath()?, json).await,
        Command::Overlay(command) => overlay::run(command).await,
        Command::Policy(command) => policy::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Run(args) => run::run(args).await,
    }
}

//! The `netpath` command line: one function per verb.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use rtnetlink::Handle;

use crate::{
    fdb,
    netlink::LinkNames,
    spec::{self, Mac, Mode, Overrides, TopologySpec},
    topology::{self, UpOutcome},
};

#[derive(Parser)]
#[command(name = "netpath", version, about = "eBPF fast path between containers, with the Linux bridge as fallback")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct NameArg {
    /// Topology name: prefix of every object netpath creates for it.
    #[arg(long, default_value = spec::DEFAULT_NAME)]
    pub name: String,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    /// Topology name [default: np]: prefix of every object netpath creates.
    #[arg(long)]
    pub name: Option<String>,
    /// Number of containers (network namespaces) [default: 2].
    #[arg(long)]
    pub containers: Option<usize>,
    /// IPv4 subnet; the bridge gets its first address [default: 10.77.0.0/24].
    #[arg(long)]
    pub subnet: Option<String>,
    /// Datapath mode [default: tc].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// TOML file with the same settings and per-container names, IPs, MACs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Enable IPv4 forwarding and masquerade the subnet (removed on down).
    #[arg(long)]
    pub nat: bool,
    /// Seconds before a learned FDB entry ages out [default: 300].
    #[arg(long)]
    pub ageing: Option<u64>,
    /// Capacity of the FDB map in entries [default: 65536].
    #[arg(long)]
    pub fdb_size: Option<u32>,
    /// MTU of the bridge and every veth [default: 1500; xdp mode: at most 3506].
    #[arg(long)]
    pub mtu: Option<u32>,
}

impl UpArgs {
    fn resolve(&self) -> Result<TopologySpec> {
        let overrides = Overrides {
            name: self.name.clone(),
            containers: self.containers,
            subnet: self.subnet.clone(),
            mode: self.mode,
            nat: self.nat,
            ageing: self.ageing,
            fdb_size: self.fdb_size,
            mtu: self.mtu,
        };
        TopologySpec::resolve(self.config.as_deref(), &overrides)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a topology: namespaces, veth pairs, bridge, addresses, datapath.
    Up(UpArgs),
    /// Remove everything a topology created, and nothing else.
    Down(NameArg),
    /// Add or remove one container while the topology runs.
    #[command(subcommand)]
    Port(PortCommand),
    /// Show the topology as it is on the machine.
    Status {
        #[command(flatten)]
        name: NameArg,
        /// JSON output, like `ip -j`.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or change the forwarding database.
    #[command(subcommand)]
    Fdb(FdbCommand),
    /// Per-port packet counters of the BPF programs.
    Stats {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
        /// Refresh every second, showing rates.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Show the frames the fast path redirected (tcpdump on a host veth
    /// cannot see them), as lines or a pcap file.
    Trace {
        #[command(flatten)]
        name: NameArg,
        /// Only frames that entered through this port (container or veth name).
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
        filter: Option<crate::trace::Filter>,
    },
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
        mode: Mode,
    },
    /// Measure the modes against the Linux bridge and a direct veth pair.
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Runs of every measurement; medians are reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// What to measure.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bridge,xdp,tc,wire")]
        targets: Vec<crate::bench::Target>,
        /// Write every raw figure as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw the comparison as an SVG bar chart.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Also sweep 2..128 containers and 10k/100k extra FDB entries.
        #[arg(long)]
        scale: bool,
    },
    /// Bring a topology up (or adopt it) and run it: BPF logs, FDB ageing,
    /// periodic stats; Ctrl-C tears it down unless --keep.
    Run {
        #[command(flatten)]
        up: UpArgs,
        /// Leave the topology up on exit.
        #[arg(long)]
        keep: bool,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
pub enum PortCommand {
    /// Plug one more container in.
    Add {
        #[command(flatten)]
        name: NameArg,
        /// Container name (its namespace and host veth are NAME-PORT).
        port: String,
        /// Address, e.g. 10.77.0.50/24 [default: the next free one].
        #[arg(long)]
        ip: Option<String>,
        /// MAC of the container's eth0 [default: derived from the address].
        #[arg(long)]
        mac: Option<Mac>,
    },
    /// Unplug a container and remove its namespace.
    Del {
        #[command(flatten)]
        name: NameArg,
        port: String,
    },
}

#[derive(Subcommand)]
pub enum FdbCommand {
    /// List the entries, like `bridge fdb show`.
    Dump {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Add a static entry: frames to MAC go to PORT.
    Add {
        #[command(flatten)]
        name: NameArg,
        mac: Mac,
        /// Container name or host-side veth of the topology.
        #[arg(long)]
        port: String,
    },
    /// Delete the entry for MAC.
    Del {
        #[command(flatten)]
        name: NameArg,
        mac: Mac,
    },
    /// Delete every learned entry (static ones stay).
    Flush {
        #[command(flatten)]
        name: NameArg,
    },
}

async fn netlink_handle() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
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
    match cli.command {
        Command::Up(args) => {
            let spec = args.resolve()?;
            require_root()?;
            up(&netlink_handle().await?, spec).await
        }
        Command::Down(NameArg { name }) => {
            spec::validate_topology_name(&name)?;
            require_root()?;
            if topology::down(&netlink_handle().await?, &name).await? {
                println!("topology {name} removed");
            } else {
                println!("topology {name} is not up; nothing to remove");
            }
            Ok(())
        }
        Command::Port(PortCommand::Add { name: NameArg { name }, port, ip, mac }) => {
            require_root()?;
            let added = topology::port_add(&netlink_handle().await?, &name, &port, ip.as_deref(), mac).await?;
            println!("port {} added: {} {}", spec::port_name(&name, &added.name), added.ip, added.mac);
            Ok(())
        }
        Command::Port(PortCommand::Del { name: NameArg { name }, port }) => {
            require_root()?;
            topology::port_del(&netlink_handle().await?, &name, &port).await?;
            println!("port {port} removed from topology {name}");
            Ok(())
        }
        Command::Status { name: NameArg { name }, json } => {
            require_root()?;
            let status = topology::status(&netlink_handle().await?, &name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Fdb(command) => {
            require_root()?;
            fdb_command(&netlink_handle().await?, command).await
        }
        Command::Stats { name: NameArg { name }, json, watch } => {
            require_root()?;
            stats(&netlink_handle().await?, &name, json, watch).await
        }
        Command::Mode { name: NameArg { name }, mode } => {
            require_root()?;
            topology::set_mode(&netlink_handle().await?, &name, mode).await?;
            println!("topology {name}: mode {mode}");
            Ok(())
        }
        Command::Bench { seconds, repeat, targets, json, plot, scale } => {
            require_root()?;
            let options = crate::bench::Options { seconds, repeat, targets, json, plot, scale };
            let report = crate::bench::run(&netlink_handle().await?, options).await?;
            print!("{}", crate::bench::table(&report));
            Ok(())
        }
        Command::Run { up: args, keep, metrics } => {
            let spec = args.resolve()?;
            require_root()?;
            crate::run::run(&netlink_handle().await?, spec, keep, metrics).await
        }
        Command::Trace { name: NameArg { name }, port, count, write, filter } => {
            require_root()?;
            let handle = netlink_handle().await?;
            let port = match port {
                Some(p) => Some(topology::port_ifindex(&handle, &name, &p).await?),
                None => None,
            };
            let names = LinkNames::load(&handle).await?;
            let name_of = |i: u32| names.name(i);
            let to_file = write.is_some();
            let options = crate::trace::Options { port, count, write, filter };
            let shown = crate::trace::run(&name, options, &name_of).await?;
            if to_file {
                eprintln!("{shown} frames written");
            }
            Ok(())
        }
        Command::Monitor { name: NameArg { name }, json } => {
            require_root()?;
            let ageing_s = crate::state::load(&name)?
                .with_context(|| format!("topology {name} is not up"))?
                .spec
                .ageing_s;
            let handle = netlink_handle().await?;
            let names = LinkNames::load(&handle).await?;
            let name_of = |i: u32| names.name(i);
            crate::monitor::run(&name, ageing_s, json, &name_of).await
        }
    }
}

pub async fn up(handle: &Handle, spec: TopologySpec) -> Result<()> {
    let (name, count, mode) = (spec.name.clone(), spec.containers.len(), spec.mode);
    let started = std::time::Instant::now();
    match topology::up(handle, spec).await? {
        UpOutcome::Created => println!(
            "topology {name} up: {count} containers, mode {mode} ({:.2} s)",
            started.elapsed().as_secs_f64()
        ),
        UpOutcome::AlreadyUp => println!("topology {name} is already up as asked; nothing to do"),
    }
    Ok(())
}

fn print_status(s: &topology::Status) {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "topology {}  mode {}  subnet {}  nat {}  bridge {} {}",
        s.name,
        s.mode,
        s.subnet,
        if s.nat { "on" } else { "off" },
        s.bridge.name,
        or_dash(s.bridge.ip.map(|i| i.to_string()))
    );
    println!("datapath: {}", s.datapath);
    println!("{:<16} {:>8}  {:<16} {:<7} {:<18} {:<18} PROGRAMS", "PORT", "IFINDEX", "NETNS", "IFNAME", "MAC", "IP");
    for p in &s.ports {
        println!(
            "{:<16} {:>8}  {:<16} {:<7} {:<18} {:<18} {}",
            p.name,
            or_dash(p.ifindex.map(|i| i.to_string())),
            p.netns,
            p.ifname,
            or_dash(p.mac.map(|m| m.to_string())),
            or_dash(p.ip.map(|i| i.to_string())),
            if p.programs.is_empty() { "-".into() } else { p.programs.join(",") }
        );
    }
}

async fn fdb_command(handle: &Handle, command: FdbCommand) -> Result<()> {
    match command {
        FdbCommand::Dump { name: NameArg { name }, json } => fdb_dump(handle, &name, json).await,
        FdbCommand::Add { name: NameArg { name }, mac, port } => {
            ensure!(mac.is_unicast(), "{mac} is not a unicast MAC address");
            let ifindex = topology::port_ifindex(handle, &name, &port).await?;
            fdb::Fdb::open(&name)?.add_static(mac, ifindex)?;
            println!("{mac} dev {} static", spec::port_name(&name, topology::container_of(&name, &port)));
            Ok(())
        }
        FdbCommand::Del { name: NameArg { name }, mac } => {
            if !crate::datapath::forget_mac(&name, mac)? {
                bail!("topology {name} has no FDB entry for {mac}");
            }
            Ok(())
        }
        FdbCommand::Flush { name: NameArg { name } } => {
            let removed = fdb::Fdb::open(&name)?.flush_learned()?;
            println!("{removed} learned entries removed");
            Ok(())
        }
    }
}

async fn stats(handle: &Handle, topology: &str, json: bool, watch: bool) -> Result<()> {
    let names = LinkNames::load(handle).await?;
    let name_of = |i: u32| names.name(i);
    let mut current = crate::stats::read(topology, name_of)?;
    if json {
        println!("{}", serde_json::to_string(&current)?);
        return Ok(());
    }
    if !watch {
        print!("{}", crate::stats::table(&current, None));
        return Ok(());
    }
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let next = crate::stats::read(topology, name_of)?;
        // Clear the screen and redraw in place, like `watch`.
        print!("\x1b[H\x1b[2Jnetpath stats --name {topology} (rates per second; Ctrl-C to quit)\n\n{}",
            crate::stats::table(&next, Some((&current, 1.0))));
        current = next;
    }
}

async fn fdb_dump(handle: &Handle, topology: &str, json: bool) -> Result<()> {
    let rows = fdb::Fdb::open(topology)?.rows()?;
    let names = LinkNames::load(handle).await?;
    let ifname = |i: u32| names.name(i);
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mac": r.mac, "ifname": ifname(r.ifindex), "ifindex": r.ifindex,
                    "vlan": r.vlan, "state": r.state, "age_s": r.age_s,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("No entries found.");
    }
    for r in rows {
        let age = r.age_s.map(|a| format!(" age {a}s")).unwrap_or_default();
        println!("{} dev {} {}{age}", r.mac, ifname(r.ifindex), r.state);
    }
    Ok(())
}

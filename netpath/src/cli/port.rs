//! `port add` and `port del`.

use anyhow::Result;
use clap::Subcommand;

use super::{NameArg, netlink_handle, require_root};
use crate::{
    model::{Mac, naming::port_name, policy::Identity},
    ops::topology,
};

#[derive(Subcommand)]
pub enum PortCommand {
    /// Plug one more container in.
    Add {
        #[command(flatten)]
        name: NameArg,
        /// Container name (its namespace and host veth are NAME-PORT).
        port: String,
        /// Address, e.g. 10.77.0.50/24; once per subnet family
        /// [default: the next free one of each subnet].
        #[arg(long)]
        ip: Vec<String>,
        /// MAC of the container's eth0 [default: derived from the address].
        #[arg(long)]
        mac: Option<Mac>,
        /// Let the container send from any MAC and address: for one that
        /// routes or bridges for others. It learns MACs then, up to the
        /// topology's learn limit.
        #[arg(long)]
        no_source_check: bool,
        /// Its namespace, which network policies' namespaceSelector
        /// selects it by [default: default].
        #[arg(long)]
        namespace: Option<String>,
        /// A label (KEY=VALUE), which network policies' podSelector selects
        /// it by; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A port it declares by name, which policies' named ports mean
        /// (PROTOCOL defaults to tcp); repeat for more.
        #[arg(long = "named-port", value_name = "NAME=PROTOCOL/PORT")]
        named_ports: Vec<String>,
    },
    /// Unplug a container and remove its namespace.
    Del {
        #[command(flatten)]
        name: NameArg,
        port: String,
    },
}

impl PortCommand {
    pub fn name(&self) -> &NameArg {
        match self {
            PortCommand::Add { name, .. } | PortCommand::Del { name, .. } => name,
        }
    }
}

pub async fn run(command: PortCommand) -> Result<()> {
    require_root()?;
    let handle = netlink_handle().await?;
    match command {
        PortCommand::Add {
            name: NameArg { name },
            port,
            ip,
            mac,
            no_source_check,
            namespace,
            labels,
            named_ports,
        } => {
            let identity = Identity::new(namespace.as_deref(), &labels, &named_ports)
                .map_err(|e| anyhow::anyhow!("port {port}: {e}"))?;
            let added =
                topology::port_add(&handle, &name, &port, &ip, mac, !no_source_check, identity)
                    .await?;
            let ips: Vec<String> = added.ips.iter().map(ToString::to_string).collect();
            println!(
                "port {} added: {} {}",
                port_name(&name, &added.name),
                ips.join(" "),
                added.mac
            );
        }
        PortCommand::Del {
            name: NameArg { name },
            port,
        } => {
            topology::port_del(&handle, &name, &port).await?;
            println!("port {port} removed from topology {name}");
        }
    }
    Ok(())
}

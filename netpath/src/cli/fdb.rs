//! `fdb dump|add|del|flush`.

use anyhow::Result;
use clap::Subcommand;

use super::{NameArg, netlink_handle, render, require_root};
use crate::{
    datapath::{self, fdb::Fdb},
    host::netlink::LinkNames,
    model::Mac,
    ops::{fdb, overlay},
};

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
        /// Container name or host-side veth of the topology; container ID
        /// or host-side veth of a CNI network.
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

impl FdbCommand {
    pub fn name(&self) -> &NameArg {
        match self {
            FdbCommand::Dump { name, .. }
            | FdbCommand::Add { name, .. }
            | FdbCommand::Del { name, .. }
            | FdbCommand::Flush { name } => name,
        }
    }
}

pub async fn run(command: FdbCommand) -> Result<()> {
    require_root()?;
    let handle = netlink_handle().await?;
    match command {
        FdbCommand::Dump { name, json } => {
            let datapath = name.datapath()?;
            let maps = datapath::maps(&datapath)?;
            let rows = Fdb::open(&maps)?.rows()?;
            let remote = overlay::remote_entries(&datapath, &maps)?;
            let names = LinkNames::load(&handle).await?;
            if json {
                render::json_line(&render::fdb_json(&rows, &remote, &names))
            } else {
                print!("{}", render::fdb_table(&rows, &remote, &names));
                Ok(())
            }
        }
        FdbCommand::Add { name, mac, port } => {
            let host_veth = fdb::add(&handle, &name.network()?, mac, &port).await?;
            println!("{mac} dev {host_veth} static");
            Ok(())
        }
        FdbCommand::Del { name, mac } => fdb::del(&name.datapath()?, &name.name, mac),
        FdbCommand::Flush { name } => {
            println!("{} learned entries removed", fdb::flush(&name.datapath()?)?);
            Ok(())
        }
    }
}

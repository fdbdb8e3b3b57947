//! `overlay status|export|sync`.

use anyhow::Result;
use clap::Subcommand;

use super::{NameArg, render, require_root};
use crate::ops::overlay::{self, Member};

#[derive(Subcommand)]
pub enum OverlayCommand {
    /// This node on its overlay: the other nodes, the control plane's
    /// state, the remote FDB entries and the vxlan device's counters.
    Status {
        #[command(flatten)]
        name: NameArg,
        #[arg(long)]
        json: bool,
    },
    /// Print this node's record (address, subnets, containers) as a
    /// `[[node]]` table of a static peers file.
    Export {
        #[command(flatten)]
        name: NameArg,
    },
    /// Read the static peers file again and program what changed.
    Sync {
        #[command(flatten)]
        name: NameArg,
    },
}

impl OverlayCommand {
    pub fn name(&self) -> &NameArg {
        match self {
            OverlayCommand::Status { name, .. }
            | OverlayCommand::Export { name }
            | OverlayCommand::Sync { name } => name,
        }
    }
}

pub async fn run(command: OverlayCommand) -> Result<()> {
    let member = Member::load(&command.name().network()?)?;
    match command {
        OverlayCommand::Status { json, .. } => {
            require_root()?;
            let status = overlay::status(&member)?;
            if json {
                render::json_line(&status)
            } else {
                print!("{}", render::overlay_status(&status));
                Ok(())
            }
        }
        OverlayCommand::Export { .. } => {
            let file = crate::model::overlay::PeersFile {
                nodes: vec![overlay::local_record(&member)?],
            };
            print!("{}", toml::to_string(&file)?);
            Ok(())
        }
        OverlayCommand::Sync { .. } => {
            require_root()?;
            let changes = overlay::sync_peers_file(&member)?;
            crate::ops::policy::refresh(&member.network)?;
            println!(
                "{}: {} nodes added, {} removed; {} remote entries added, {} removed",
                member.name(),
                changes.nodes_added,
                changes.nodes_removed,
                changes.entries_added,
                changes.entries_removed
            );
            Ok(())
        }
    }
}

//! `status --name`.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::{network::Network, ops::status};

pub async fn run(network: &Network, json: bool) -> Result<()> {
    require_root()?;
    let status = status::status(&netlink_handle().await?, network).await?;
    if json {
        render::json_pretty(&status)
    } else {
        print!("{}", render::status(&status));
        Ok(())
    }
}

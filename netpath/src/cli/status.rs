//! `status --name`.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::ops::{Named, status};

pub async fn run(named: &Named, json: bool) -> Result<()> {
    require_root()?;
    let status = status::status(&netlink_handle().await?, named).await?;
    if json {
        render::json_pretty(&status)
    } else {
        print!("{}", render::status(&status));
        Ok(())
    }
}

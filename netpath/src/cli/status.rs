//! `status`.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::ops::status;

pub async fn run(name: &str, json: bool) -> Result<()> {
    require_root()?;
    let status = status::status(&netlink_handle().await?, name).await?;
    if json {
        render::json_pretty(&status)
    } else {
        print!("{}", render::status(&status));
        Ok(())
    }
}

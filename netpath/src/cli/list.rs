//! `list`, and `status` without a name.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::ops::list;

pub async fn run(json: bool) -> Result<()> {
    require_root()?;
    let listed = list::list(&netlink_handle().await?).await?;
    if json {
        render::json_line(&listed)
    } else {
        print!("{}", render::list_table(&listed));
        Ok(())
    }
}

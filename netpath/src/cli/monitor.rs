//! `monitor`.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::{host::netlink::LinkNames, observe::monitor};

pub async fn run(datapath: &str, json: bool) -> Result<()> {
    require_root()?;
    let names = LinkNames::load(&netlink_handle().await?).await?;
    monitor::run(datapath, &|i| names.name(i), |event| {
        if json {
            render::json_line(event)
        } else {
            println!("{}", render::fdb_event(event));
            Ok(())
        }
    })
    .await
}

//! `monitor`.

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::{host::netlink::LinkNames, observe::monitor, ops::topology::load_complete};

pub async fn run(name: &str, json: bool) -> Result<()> {
    require_root()?;
    let ageing_s = load_complete(name)?.spec.ageing_s;
    let names = LinkNames::load(&netlink_handle().await?).await?;
    monitor::run(name, ageing_s, &|i| names.name(i), |event| {
        if json {
            render::json_line(event)
        } else {
            println!("{}", render::fdb_event(event));
            Ok(())
        }
    })
    .await
}

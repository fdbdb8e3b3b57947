//! `stats`, once or `--watch`ed.

use std::time::Duration;

use anyhow::Result;

use super::{netlink_handle, render, require_root};
use crate::{
    datapath::{self, counters},
    host::interrupt::Interrupt,
    host::netlink::LinkNames,
};

pub async fn run(topology: &str, json: bool, watch: bool, all: bool) -> Result<()> {
    require_root()?;
    let names = LinkNames::load(&netlink_handle().await?).await?;
    let maps = datapath::maps(topology)?;
    let read = || counters::read(&maps, |i| names.name(i));
    let mut current = read()?;
    if json {
        return render::json_line(&current);
    }
    if !watch {
        print!("{}", render::stats_table(&current, None, all));
        return Ok(());
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut interrupt = Interrupt::listen()?;
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = interrupt.received() => return Ok(()),
        }
        let next = read()?;
        // Clear the screen and redraw in place, like `watch`.
        print!(
            "\x1b[H\x1b[2Jnetpath stats --name {topology} (rates per second; Ctrl-C to quit)\n\n{}",
            render::stats_table(&next, Some((&current, 1.0)), all)
        );
        current = next;
    }
}

//! Ctrl-C for the long-running commands (`run`, `trace`, `monitor`,
//! `stats --watch`).
//!
//! `tokio::signal::ctrl_c()` made afresh in each turn of a loop misses a
//! SIGINT that arrives while the loop's body runs (a new listener only
//! sees signals after it is made): `run` then went on sweeping and never
//! tore down. One listener made before the loop remembers the signal until
//! it is awaited.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Interrupt(Signal);

impl Interrupt {
    /// From now on SIGINT no longer ends the process: it is kept for
    /// [`Interrupt::received`].
    pub fn listen() -> Result<Self> {
        signal(SignalKind::interrupt())
            .map(Self)
            .context("installing the handler for Ctrl-C (SIGINT)")
    }

    /// Resolves once a SIGINT arrived since [`Interrupt::listen`] or the
    /// last call.
    pub async fn received(&mut self) {
        self.0.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{Signal, raise};

    use super::*;

    /// The loops of `run` and the tracers are busy (sweeping, reading
    /// maps) most of the time they are not waiting: a Ctrl-C in between
    /// must still end them. (Broken once with `tokio::signal::ctrl_c()`
    /// made at the wait, as `run` did: the signal was lost and the wait
    /// timed out.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ctrl_c_while_busy_is_kept_for_the_next_wait() {
        let mut interrupt = Interrupt::listen().unwrap();
        raise(Signal::SIGINT).unwrap();
        // Busy, not waiting: the runtime's other worker takes the signal in.
        std::thread::sleep(Duration::from_millis(200));
        tokio::time::timeout(Duration::from_secs(5), interrupt.received())
            .await
            .expect("the Ctrl-C sent while busy was lost");
    }
}

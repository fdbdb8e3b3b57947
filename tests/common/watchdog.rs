//! A deadline for a whole test, so that a wait nobody bounded fails the
//! test instead of hanging `cargo test`: [`watchdog`] (started by
//! `Host::new` for every test on a host) aborts the test process when its
//! test outlives the deadline, after printing what the test was and what
//! the process was waiting for ([`waiting_for`], which the bounded waits of
//! this harness call: `within`, `output_within`, `Lines::next_before`,
//! `Running`, the iperf3 server, `while_running`).
//!
//! Aborting is the honest end: a hung thread cannot be unwound from
//! outside, and the other tests of the binary die with it. Nothing of the
//! test is torn down (its host namespace and containers stay): the report
//! names the host so it can be looked at or removed.

use std::{
    io::Write,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use super::patience;

/// How long a test may run on its host, scaled by [`patience`]: longer
/// than any wait of a test but bench's (whose hosts take a deadline of
/// their own), three times what the slowest test binary takes natively as
/// a whole (reliability, 50 s), and under the kernel matrix's qemu
/// (NETPATH_TEST_SLOW=10) 25 min, within its 30 min per kernel, so that a
/// hung test there is named before qemu is killed.
pub const TEST_DEADLINE: Duration = Duration::from_secs(150);

/// A bounded wait under way, for the report of a watchdog.
struct Wait {
    id: u64,
    thread: String,
    what: String,
    since: Instant,
}

static WAITS: Mutex<Vec<Wait>> = Mutex::new(Vec::new());

/// Marks a wait for `what` as under way until dropped.
pub struct Waiting(u64);

/// Records that this thread now waits for `what` (until the guard drops),
/// so that a watchdog that expires meanwhile can say so.
pub fn waiting_for(what: &str) -> Waiting {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current()
        .name()
        .unwrap_or("a helper thread")
        .to_owned();
    WAITS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Wait {
            id,
            thread,
            what: what.to_owned(),
            since: Instant::now(),
        });
    Waiting(id)
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|w| w.id != self.0);
    }
}

/// Disarms its watchdog when dropped.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

/// Aborts the process, saying so on stderr, if this guard is still alive
/// `limit` (scaled by [`patience`]) from now. `what` says what is guarded
/// (e.g. the host namespace); the test is the calling thread's name, which
/// libtest sets to the test's.
#[must_use = "the watchdog is disarmed when its guard drops"]
pub fn watchdog(what: &str, limit: Duration) -> Watchdog {
    let limit = patience(limit);
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let what = what.to_owned();
    let (disarm, disarmed) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!("watchdog of {test}"))
        .spawn(move || {
            // The guard never sends: dropping it disconnects the channel.
            if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                expire(&test, &what, limit);
            }
        })
        .expect("starting a watchdog thread");
    Watchdog { _disarm: disarm }
}

fn expire(test: &str, what: &str, limit: Duration) -> ! {
    let mut report = format!(
        "\nwatchdog: test `{test}` ({what}) still running after {limit:?}; \
         aborting the test process (its teardown does not run)\n"
    );
    let waits = WAITS.lock().unwrap_or_else(PoisonError::into_inner);
    if waits.is_empty() {
        report += "  no wait of tests/common is under way: it hangs elsewhere\n";
    }
    for wait in waits.iter() {
        report += &format!(
            "  waiting for {} (thread `{}`, for {:.1?})\n",
            wait.what,
            wait.thread,
            wait.since.elapsed()
        );
    }
    // Straight to the process's stderr: libtest captures only the print
    // macros, and an abort discards what it captured.
    let _ = std::io::stderr().write_all(report.as_bytes());
    std::process::abort();
}

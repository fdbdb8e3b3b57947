//! What a container receives, as tcpdump in its namespace sees it: capturing
//! when [`Capture::start`] returns (tcpdump said it listens, polled, never a
//! fixed sleep), stopped when the test asks for the frames (SIGINT, so
//! tcpdump reports what it captured), killed when dropped. A capture that
//! never started fails the test: no capture is not "nothing seen".

use std::{
    io::{BufRead, BufReader},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{KillOnDrop, output_within, patience, spawn_in};

pub struct Capture {
    child: KillOnDrop,
    what: String,
    /// tcpdump's stderr so far: "listening on ..." when it captures, the
    /// "packets captured" report when it stopped.
    said: Arc<Mutex<String>>,
    said_reader: JoinHandle<()>,
}

impl Capture {
    /// Captures frames matching `filter` on `ns`'s eth0 from when it returns.
    #[track_caller]
    pub fn start(ns: &str, filter: &str) -> Capture {
        let capture = Self::spawn(ns, filter);
        capture.wait_listening();
        capture
    }

    /// Several captures, started side by side (each tcpdump takes seconds to
    /// start in a slow guest): all capturing when it returns.
    #[track_caller]
    pub fn start_all(targets: &[(String, &str)]) -> Vec<Capture> {
        let captures: Vec<Capture> = targets
            .iter()
            .map(|(ns, filter)| Self::spawn(ns, filter))
            .collect();
        for capture in &captures {
            capture.wait_listening();
        }
        captures
    }

    fn spawn(ns: &str, filter: &str) -> Capture {
        // The last resort only: `frames` stops it long before.
        let limit = patience(Duration::from_secs(60)).as_secs().to_string();
        let mut child = KillOnDrop(spawn_in(
            ns,
            &[
                "timeout",
                "-s",
                "INT",
                &limit,
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-l",
                // Each frame to tcpdump as it comes, not a ring block later:
                // stopping it must not lose the last ones.
                "--immediate-mode",
                filter,
            ],
        ));
        let said = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("tcpdump's stderr is piped");
        let said_reader = {
            let said = said.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut said = said.lock().unwrap_or_else(PoisonError::into_inner);
                    said.push_str(&line);
                    said.push('\n');
                }
            })
        };
        Capture {
            child,
            what: format!("tcpdump '{filter}' in {ns}"),
            said,
            said_reader,
        }
    }

    fn said(&self) -> String {
        self.said
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[track_caller]
    fn wait_listening(&self) {
        let limit = patience(Duration::from_secs(10));
        let started = Instant::now();
        let _waiting = super::waiting_for(&format!("{} to listen", self.what));
        while !self.said().contains("listening on") {
            assert!(
                started.elapsed() < limit,
                "{}: not capturing after {limit:?}: {}",
                self.what,
                self.said()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the capture and returns the frames it saw, one line each.
    /// Frames still on their way when the traffic's sender returned get a
    /// moment to arrive first.
    #[track_caller]
    pub fn frames(self) -> Vec<String> {
        std::thread::sleep(patience(Duration::from_millis(200)));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // `timeout` passes the signal on to tcpdump, which then reports.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
            .unwrap_or_else(|e| panic!("{}: stopping it: {e}", self.what));
        let out = output_within(self.child, Duration::from_secs(15), &self.what);
        self.said_reader.join().expect("reading tcpdump's stderr");
        let said = self.said.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            said.contains("listening on") && said.contains("packets captured"),
            "{} did not capture ({}): {said}",
            self.what,
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

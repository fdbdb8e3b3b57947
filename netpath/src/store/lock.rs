//! Per-datapath locks, so two netpath processes never change one topology
//! or CNI network at the same time (and a second `run` of a topology is
//! refused).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::STATE_DIR;

/// Held while the lock is; released on drop (and by the kernel if the
/// process dies, so a SIGKILLed netpath never leaves a stale lock). The
/// lock file goes when its datapath is gone (or `run` ends).
pub struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
    owner: String,
    purpose: Purpose,
}

#[derive(Clone, Copy)]
pub enum Purpose {
    /// Creating, changing or removing the topology.
    Change,
    /// `netpath run` supervising it.
    Run,
    /// `netpath trace` reading its frames (one ring buffer, one reader).
    Trace,
    /// Loading a CNI network's datapath for its first container, while the
    /// other containers' ADDs go on wiring theirs.
    Load,
}

/// `owner` is a validated topology name or CNI datapath name: it contains
/// no path separator.
pub fn path(owner: &str, purpose: Purpose) -> PathBuf {
    let suffix = match purpose {
        Purpose::Change => "lock",
        Purpose::Run => "run.lock",
        Purpose::Trace => "trace.lock",
        Purpose::Load => "load.lock",
    };
    PathBuf::from(STATE_DIR).join(format!("{owner}.{suffix}"))
}

impl Lock {
    /// Takes the lock, or fails at once naming the process that holds it.
    pub fn acquire(owner: &str, purpose: Purpose) -> Result<Self> {
        let path = path(owner, purpose);
        match lock_file(&path, FlockArg::LockExclusiveNonblock)? {
            Ok(flock) => Self::hold(flock, path, owner, purpose),
            Err(mut file) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Err(busy(owner, purpose, holder.trim()))
            }
        }
    }

    /// Takes the lock, waiting up to `patience` for its holder to finish
    /// (runtimes call the CNI plugin for many containers at once; `run`
    /// forgets a vanished port while someone may be deleting it).
    ///
    /// The wait is a blocking `flock` on a thread of its own, so the lock
    /// passes to a waiter the moment its holder lets go: polling left it
    /// idle for up to a poll interval per hand-over, which 20 pods set up
    /// at once paid 20 times over.
    pub fn acquire_waiting(owner: &str, purpose: Purpose, patience: Duration) -> Result<Self> {
        let path = path(owner, purpose);
        // Free (the common case): no thread to start and hand over from.
        if let Ok(flock) = lock_file(&path, FlockArg::LockExclusiveNonblock)? {
            return Self::hold(flock, path, owner, purpose);
        }
        let (locked_tx, locked_rx) = mpsc::channel();
        let waiting_on = path.clone();
        std::thread::spawn(move || {
            // If the waiter gave up, the send fails and the lock is dropped.
            let _ = locked_tx.send(lock_file(&waiting_on, FlockArg::LockExclusive));
        });
        match locked_rx.recv_timeout(patience) {
            Ok(Ok(Ok(flock))) => Self::hold(flock, path, owner, purpose),
            Ok(Ok(Err(_))) => unreachable!("a blocking flock is never busy"),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                Err(busy(owner, purpose, holder.trim())
                    .context(format!("waited {patience:?} for the lock")))
            }
        }
    }

    /// Marks a lock just taken with this process's pid, for the messages of
    /// those who find it busy.
    fn hold(mut flock: Flock<File>, path: PathBuf, owner: &str, purpose: Purpose) -> Result<Self> {
        flock.set_len(0)?;
        flock.rewind()?;
        write!(flock, "{}", std::process::id())?;
        Ok(Lock {
            _flock: flock,
            path,
            owner: owner.to_owned(),
            purpose,
        })
    }
}

/// Locks the lock file at `path` (made if missing): the lock, or with a
/// non-blocking `how` the file when another process holds it.
fn lock_file(path: &Path, how: FlockArg) -> Result<std::result::Result<Flock<File>, File>> {
    std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match Flock::lock(file, how) {
            Ok(flock) => {
                // The previous holder may have removed the file after we
                // opened it: then this lock guards nothing; take a new one.
                let same = std::fs::metadata(path)
                    .is_ok_and(|m| m.ino() == flock.metadata().map(|f| f.ino()).unwrap_or(0));
                if same {
                    return Ok(Ok(flock));
                }
            }
            Err((file, Errno::EWOULDBLOCK)) => return Ok(Err(file)),
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// The error for a lock that `holder` (a pid) holds.
fn busy(owner: &str, purpose: Purpose, holder: &str) -> anyhow::Error {
    match purpose {
        Purpose::Change => anyhow!(
            "{owner} is being changed by another netpath process (pid {holder}); try again when it is done"
        ),
        Purpose::Run => {
            anyhow!("topology {owner} is already run by another `netpath run` (pid {holder})")
        }
        Purpose::Trace => anyhow!(
            "{owner} is already traced by another `netpath trace` (pid {holder}): the programs have one \
             ring buffer, so one tracer at a time; stop that one first"
        ),
        Purpose::Load => {
            anyhow!("the datapath {owner} is being loaded by netpath process {holder}")
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so nobody can be holding the old file.
        let gone = match self.purpose {
            Purpose::Run | Purpose::Trace | Purpose::Load => true,
            // A topology's lock file lives as long as its record.
            Purpose::Change => !PathBuf::from(STATE_DIR)
                .join(format!("{}.json", self.owner))
                .exists(),
        };
        if gone {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

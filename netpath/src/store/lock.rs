//! Per-datapath locks, so two netpath processes never change one topology
//! or CNI network at the same time (and a second `run` of a topology is
//! refused).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
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
}

/// How often a waiting acquirer looks again.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// `owner` is a validated topology name or CNI datapath name: it contains
/// no path separator.
pub fn path(owner: &str, purpose: Purpose) -> PathBuf {
    let suffix = match purpose {
        Purpose::Change => "lock",
        Purpose::Run => "run.lock",
        Purpose::Trace => "trace.lock",
    };
    PathBuf::from(STATE_DIR).join(format!("{owner}.{suffix}"))
}

impl Lock {
    /// Takes the lock, or fails at once naming the process that holds it.
    pub fn acquire(owner: &str, purpose: Purpose) -> Result<Self> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = path(owner, purpose);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                // The previous holder may have removed the file after we
                // opened it: then this lock guards nothing; take a new one.
                let same = std::fs::metadata(&path)
                    .is_ok_and(|m| m.ino() == flock.metadata().map(|f| f.ino()).unwrap_or(0));
                if !same {
                    drop(flock);
                    return Self::acquire(owner, purpose);
                }
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
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                match purpose {
                    Purpose::Change => bail!(
                        "{owner} is being changed by another netpath process (pid {}); try again when it is done",
                        holder.trim()
                    ),
                    Purpose::Run => {
                        bail!(
                            "topology {owner} is already run by another `netpath run` (pid {})",
                            holder.trim()
                        )
                    }
                    Purpose::Trace => bail!(
                        "{owner} is already traced by another `netpath trace` (pid {}): the programs have one \
                         ring buffer, so one tracer at a time; stop that one first",
                        holder.trim()
                    ),
                }
            }
            Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Takes the lock, waiting up to `patience` for its holder to finish
    /// (runtimes call the CNI plugin for many containers at once; `run`
    /// forgets a vanished port while someone may be deleting it).
    pub fn acquire_waiting(owner: &str, purpose: Purpose, patience: Duration) -> Result<Self> {
        let started = Instant::now();
        loop {
            match Self::acquire(owner, purpose) {
                Err(_) if started.elapsed() < patience => std::thread::sleep(RETRY_EVERY),
                outcome => return outcome,
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so nobody can be holding the old file.
        let gone = match self.purpose {
            Purpose::Run | Purpose::Trace => true,
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

//! Per-topology locks, so two netpath processes never change one topology
//! at the same time (and a second `run` of a topology is refused).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use crate::state::STATE_DIR;

/// Held while the lock is; released on drop (and by the kernel if the
/// process dies, so a SIGKILLed netpath never leaves a stale lock).
pub struct Lock {
    _flock: Flock<File>,
}

#[derive(Clone, Copy)]
pub enum Purpose {
    /// Creating, changing or removing the topology.
    Change,
    /// `netpath run` supervising it.
    Run,
}

fn path(topology: &str, purpose: Purpose) -> PathBuf {
    let suffix = match purpose {
        Purpose::Change => "lock",
        Purpose::Run => "run.lock",
    };
    PathBuf::from(STATE_DIR).join(format!("{topology}.{suffix}"))
}

impl Lock {
    /// Takes the lock, or fails at once naming the process that holds it.
    pub fn acquire(topology: &str, purpose: Purpose) -> Result<Self> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = path(topology, purpose);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                flock.set_len(0)?;
                flock.rewind()?;
                write!(flock, "{}", std::process::id())?;
                Ok(Lock { _flock: flock })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                match purpose {
                    Purpose::Change => bail!(
                        "topology {topology} is being changed by another netpath process (pid {}); try again when it is done",
                        holder.trim()
                    ),
                    Purpose::Run => bail!(
                        "topology {topology} is already run by another `netpath run` (pid {})",
                        holder.trim()
                    ),
                }
            }
            Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// Removes the lock files of a topology that is gone.
pub fn remove_files(topology: &str) {
    for purpose in [Purpose::Change, Purpose::Run] {
        let _ = std::fs::remove_file(path(topology, purpose));
    }
}

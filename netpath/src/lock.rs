//! Per-topology locks, so two netpath processes never change one topology
//! at the same time (and a second `run` of a topology is refused).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use crate::state::STATE_DIR;

/// Held while the lock is; released on drop (and by the kernel if the
/// process dies, so a SIGKILLed netpath never leaves a stale lock). The
/// lock file goes when its topology is gone (or `run` ends).
pub struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
    topology: String,
    purpose: Purpose,
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
                // The previous holder may have removed the file after we
                // opened it: then this lock guards nothing; take a new one.
                let same = std::fs::metadata(&path).is_ok_and(|m| m.ino() == flock.metadata().map(|f| f.ino()).unwrap_or(0));
                if !same {
                    drop(flock);
                    return Self::acquire(topology, purpose);
                }
                flock.set_len(0)?;
                flock.rewind()?;
                write!(flock, "{}", std::process::id())?;
                Ok(Lock { _flock: flock, path, topology: topology.to_owned(), purpose })
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

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so nobody can be holding the old file.
        let gone = match self.purpose {
            Purpose::Run => true,
            Purpose::Change => !crate::state::path(&self.topology).exists(),
        };
        if gone {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

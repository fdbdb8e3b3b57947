//! Kernels before 5.11 charge the memory of BPF maps and programs to the
//! loading process's RLIMIT_MEMLOCK (later ones use the memory cgroup), and
//! the usual default of 64 KiB or 8 MiB is far too small for netpath's FDB
//! and ring buffer: raise it before loading on those kernels.

use anyhow::{Context, Result, bail};

/// The first kernel that accounts BPF memory to memcg instead of RLIMIT_MEMLOCK.
const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);

/// Raises RLIMIT_MEMLOCK to unlimited if the running kernel needs it.
pub fn raise_for_bpf() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    let release = release.trim();
    if !charges_memlock(release) {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let error = std::io::Error::last_os_error();
        bail!(
            "kernel {release} charges BPF maps to the locked-memory limit (kernels before 5.11 do) and raising \
             that limit failed ({error}): raise the memlock limit for netpath: `ulimit -l unlimited` in the \
             shell that starts it, or LimitMEMLOCK=infinity in its systemd unit"
        );
    }
    Ok(())
}

/// Whether a kernel of this `uname -r` release is older than 5.11.
fn charges_memlock(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < MEMCG_ACCOUNTING,
        // An unparsable release: raising the limit is harmless where it is not needed.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::charges_memlock;

    #[test]
    fn releases() {
        assert!(charges_memlock("5.10.0-32-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.1.0-50-amd64"));
        assert!(!charges_memlock("6.18.0"));
    }
}

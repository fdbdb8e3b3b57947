//! Firewall scripts fed to their loader on stdin (`nft -f -`,
//! `iptables-restore`): each loader applies a whole script or none of it,
//! which is why netpath writes rules as scripts rather than one command a
//! rule.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs `program args` with `script` on its stdin; `package` is the
/// Debian package that provides `program`, named in the error if it is
/// missing.
pub fn feed(program: &str, args: &[&str], script: &str, package: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("running {program} (install {package}, or run `cargo xtask setup`)")
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .with_context(|| format!("writing the script to {program}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

//! `cargo xtask test --clean-root`: the README's first command on a machine
//! nobody prepared. This machine has whatever earlier work installed by
//! hand, so a green suite here cannot show that the project installs what
//! it needs; a fresh root can.
//!
//! A minimal Debian 12 root (mmdebstrap from the mirror this machine's apt
//! already uses, cached as a tarball) gets a clean clone of HEAD and what
//! the README asks of a user: rustup's toolchains (this machine's,
//! bind-mounted read-only) and the C compiler rustup needs. Nothing else.
//! There:
//! 1. `cargo xtask build`, which runs the same set-up as `cargo xtask run`
//!    (apt, bpf-linker) and builds, with this machine's network for the
//!    downloads;
//! 2. `cargo xtask run` in a network namespace of its own, offline (the
//!    set-up must find everything and download nothing), then the README's
//!    "try it": c0 pings c1, `netpath status` and `stats` answer, and
//!    Ctrl-C takes the topology down, leaving no link, namespace or pin.
//!
//! Whatever the project uses and does not install makes step 1 or 2 fail
//! with the missing file or command in the output.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{build, kernel};

/// The suite of Debian 12.
const SUITE: &str = "bookworm";

/// What a user has before the README's first command: rustup needs a C
/// compiler and linker (gcc, libc6-dev) and CA certificates to reach
/// crates.io. mmdebstrap's minbase variant adds apt, dpkg and coreutils.
const BASE_PACKAGES: &[&str] = &["ca-certificates", "gcc", "libc6-dev"];

/// Where Debian keeps a machine's own CA certificates.
const LOCAL_CAS: &str = "/usr/local/share/ca-certificates";

/// The most each step may take before it is killed and the stage fails.
const BUILD_DEADLINE_S: u32 = 40 * 60;
const SMOKE_DEADLINE_S: u32 = 10 * 60;

/// Runs in the root as root, in a network namespace of its own: the
/// README's `cargo xtask run`, its "try it", and Ctrl-C. Every wait has a
/// deadline.
const SMOKE_SCRIPT: &str = r#"set -u
cd /root/netpath
fail() { echo "clean root: $*" >&2; echo "--- cargo xtask run's output:" >&2; cat /tmp/run.log >&2; exit 1; }
setsid cargo xtask run >/tmp/run.log 2>&1 &
run=$!
up=
for _ in $(seq 600); do
    if ! kill -0 "$run" 2>/dev/null; then fail "cargo xtask run exited before the topology was up"; fi
    if target/release/netpath status --name np >/dev/null 2>&1 \
        && ip netns exec np-c0 ping -c 1 -W 1 10.77.0.3 >/dev/null 2>&1; then up=1; break; fi
    sleep 0.5
done
[ -n "$up" ] || fail "no ping from c0 to c1 within 5 minutes of cargo xtask run"
echo "clean root: the topology is up; try it:"
ip netns exec np-c0 ping -c 5 -i 0.2 -W 2 10.77.0.3 | tee /tmp/ping.log
grep -q ' 0% packet loss' /tmp/ping.log || fail "c0 lost pings to c1"
target/release/netpath status --name np || fail "netpath status failed"
target/release/netpath stats --name np || fail "netpath stats failed"
target/release/netpath fdb dump --name np || fail "netpath fdb dump failed"
kill -INT -- "-$run"
for _ in $(seq 120); do kill -0 "$run" 2>/dev/null || break; sleep 0.5; done
kill -0 "$run" 2>/dev/null && { kill -KILL -- "-$run"; fail "cargo xtask run did not stop within 60 s of Ctrl-C"; }
wait "$run" || fail "cargo xtask run exited with status $? after Ctrl-C"
# Links, namespaces, pins and records; bpffs's own maps.debug and
# progs.debug stay, as does the (empty) folder netpath keeps its pins in.
left="$(ip -o link show | grep -v ': lo:'; ip netns list; find /sys/fs/bpf/netpath -mindepth 1; find /run/netpath -name '*.json')"
[ -z "$left" ] || fail "Ctrl-C left: $left"
cat /tmp/run.log
echo "clean root: cargo xtask run, ping c0 -> c1, status, stats, fdb dump, Ctrl-C: passed"
"#;

/// The stage: bootstrap (or reuse) the root, then build and smoke-test in it.
pub fn test() -> Result<()> {
    let started = Instant::now();
    let tarball = base_root()?;
    // One place, emptied first: a stage stopped by Ctrl-C leaves its root.
    let root = crate::cache_dir()?.join("clean-root/work");
    let result = prepare(&tarball, &root).and_then(|()| {
        eprintln!("clean root: `cargo xtask build` in {} (set-up, then build)", root.display());
        in_root(
            &root,
            false,
            BUILD_DEADLINE_S,
            "update-ca-certificates >/dev/null && cd /root/netpath && cargo xtask build",
        )
            .context("`cargo xtask build` failed in a fresh Debian 12 root: the output above names what the project uses and does not install")?;
        eprintln!("clean root: `cargo xtask run` in a network namespace of its own");
        in_root(&root, true, SMOKE_DEADLINE_S, SMOKE_SCRIPT)
            .context("the smoke test of `cargo xtask run` failed in a fresh Debian 12 root")
    });
    let removed = remove_root(&root);
    result?;
    removed?;
    eprintln!(
        "clean root: passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The tarball of a minimal Debian 12 root with `BASE_PACKAGES`; made once
/// and cached (its name carries the package list, so a change makes a new one).
fn base_root() -> Result<PathBuf> {
    let dir = crate::cache_dir()?.join("clean-root");
    let tarball = dir.join(format!("{SUITE}-minbase-{}.tar", BASE_PACKAGES.join("+")));
    if tarball.exists() {
        eprintln!("clean root: base {} (cached)", tarball.display());
        return Ok(tarball);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mirror, signed_by) = kernel::debian_mirror()?;
    let options = signed_by
        .map(|k| format!("[signed-by={k}] "))
        .unwrap_or_default();
    eprintln!("clean root: bootstrapping Debian {SUITE} (minbase) from {mirror}");
    let partial = tarball.with_extension("tar.partial");
    build::status(
        Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
            ])
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .arg(format!("deb {options}{mirror} {SUITE} main")),
    )
    .context("bootstrapping a Debian 12 root with mmdebstrap")?;
    fs::rename(&partial, &tarball)?;
    Ok(tarball)
}

/// Unpacks the base, clones HEAD into /root/netpath and gives root the
/// rustup proxies, with this machine's toolchains to be mounted read-only.
fn prepare(tarball: &Path, root: &Path) -> Result<()> {
    remove_root(root)?;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    build::status(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(root),
    )
    .context("unpacking the clean root")?;
    let workspace = build::workspace_root();
    build::status(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(&workspace)
            .arg(root.join("root/netpath")),
    )
    .with_context(|| format!("cloning {} into the clean root", workspace.display()))?;
    // The network this machine is on, not a dependency of the project: its
    // name servers, and the CAs it trusts beyond Debian's (a site's TLS
    // proxy), which any machine on this network has.
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the clean root")?;
    let local_cas = Path::new(LOCAL_CAS);
    if local_cas.is_dir() {
        build::status(
            Command::new("cp")
                .arg("-a")
                .arg(local_cas.join("."))
                .arg(root.join(LOCAL_CAS.trim_start_matches('/'))),
        )
        .context("copying this machine's local CA certificates into the clean root")?;
    }
    // rustup's proxies are one binary under many names, as rustup-init
    // leaves them.
    let rustup = which("rustup").context("rustup is not on PATH")?;
    let bin = root.join("root/.cargo/bin");
    fs::create_dir_all(&bin)?;
    fs::copy(&rustup, bin.join("rustup"))
        .with_context(|| format!("copying {} into the clean root", rustup.display()))?;
    fs::set_permissions(bin.join("rustup"), fs::Permissions::from_mode(0o755))?;
    for proxy in ["cargo", "rustc", "rustdoc"] {
        symlink("rustup", bin.join(proxy))?;
    }
    fs::create_dir_all(root.join("root/.rustup"))?;
    Ok(())
}

/// Runs `script` with bash as root in `root`, in mount and PID namespaces
/// of its own (and a network namespace of its own with `own_net`), with fresh
/// proc, sys, bpffs, /run and /tmp, this machine's /dev, and its rustup
/// toolchains read-only; killed after `deadline_s`.
fn in_root(root: &Path, own_net: bool, deadline_s: u32, script: &str) -> Result<()> {
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".rustup"));
    let r = root.display();
    // The root is bound onto itself first: `ip netns exec` remounts below
    // `/`, which must then be a mount point. Every mount lives in the
    // private mount namespace and goes with it.
    let mounts = format!(
        "set -e
mount --bind {r} {r}
mount -t proc proc {r}/proc
mount -t sysfs sysfs {r}/sys
mount -t bpf bpf {r}/sys/fs/bpf
mount --rbind /dev {r}/dev
mount -t tmpfs tmpfs {r}/run
mount -t tmpfs tmpfs {r}/tmp
mount --bind {rustup} {r}/root/.rustup
mount -o remount,bind,ro {r}/root/.rustup
exec chroot {r} /usr/bin/env -i HOME=/root TERM=dumb CI=true \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c \"$0\"",
        rustup = rustup_home.display(),
    );
    // A PID namespace as well: when the script ends, or unshare is killed
    // (the deadline, Ctrl-C), every process the script started dies with
    // it, `cargo xtask run` in a session of its own included.
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--foreground",
        &deadline_s.to_string(),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
    ]);
    if own_net {
        cmd.arg("--net");
    }
    cmd.args(["/bin/sh", "-c", &mounts, script]);
    build::status(&mut cmd)
}

/// Removes the root, after checking that no mount of the stage reached it
/// (the mounts lived in a private mount namespace).
fn remove_root(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = root.display().to_string();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
    {
        bail!("{prefix} still has mounts: unmount them, then remove it by hand");
    }
    fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn which(command: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

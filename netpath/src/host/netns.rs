//! Named network namespaces, compatible with `ip netns` (bind mounts under
//! /run/netns), and running netlink work inside one of them.

use std::{
    fs::File,
    future::Future,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use rtnetlink::Handle;

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that
/// namespaces created here are seen by other mount namespaces too.
fn prepare_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {NETNS_DIR} on itself"))?;
    mount(None::<&str>, NETNS_DIR, None::<&str>, shared, None::<&str>)
        .with_context(|| format!("making {NETNS_DIR} a shared mount"))?;
    Ok(())
}

/// Creates the named namespace; fails if it already exists.
pub fn create(name: &str) -> Result<()> {
    prepare_dir()?;
    let target = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .with_context(|| format!("creating network namespace file {}", target.display()))?;
    let mount_target = target.clone();
    // unshare() changes the calling thread only; do it on a throw-away thread.
    let result = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &mount_target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind-mounting the new namespace")
    })
    .join()
    .map_err(|_| anyhow!("namespace creation thread panicked"))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&target);
        return Err(e.context(format!("creating network namespace {name}")));
    }
    Ok(())
}

/// Deletes the named namespace; its interfaces go with it once nothing else
/// holds it. Returns false if there was none.
pub fn delete(name: &str) -> Result<bool> {
    let target = path(name);
    if !target.exists() {
        return Ok(false);
    }
    let _ = umount2(&target, MntFlags::MNT_DETACH);
    std::fs::remove_file(&target)
        .with_context(|| format!("removing network namespace {name} ({})", target.display()))?;
    Ok(true)
}

/// Runs `work` on a thread that has entered namespace `name` (setns only
/// changes the calling thread, so the caller's thread stays where it is).
pub fn enter_and<T, F>(name: &str, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    enter_path_and(&path(name), work)
}

/// As [`enter_and`], for a namespace given by path (e.g. a CNI_NETNS).
pub fn enter_path_and<T, F>(ns_path: &Path, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let shown = ns_path.display();
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<T> {
                let ns = File::open(ns_path)
                    .with_context(|| format!("opening network namespace {shown}"))?;
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {shown}"))?;
                work()
            })
            .join()
            .map_err(|_| anyhow!("thread working in namespace {shown} panicked"))?
    })
}

/// Runs `work` with a netlink handle bound inside namespace `name` (a
/// netlink socket stays in the namespace it was opened in).
pub fn run_in<T, F, Fut>(name: &str, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    run_in_path(&path(name), work)
}

/// As [`run_in`], for a namespace given by path.
pub fn run_in_path<T, F, Fut>(ns_path: &Path, work: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    enter_path_and(ns_path, || with_handle(work))
}

/// Runs `work` with a netlink handle in the caller's namespace, on a
/// thread and runtime of its own: for synchronous code (which may itself
/// run on an async worker, where no runtime may be entered again).
pub fn run_here<T, F, Fut>(work: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    // A new thread starts in its creator's network namespace.
    std::thread::scope(|scope| {
        scope
            .spawn(|| with_handle(work))
            .join()
            .map_err(|_| anyhow!("netlink worker thread panicked"))?
    })
}

fn with_handle<T, F, Fut>(work: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime for the netlink thread")?;
    runtime.block_on(async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening netlink socket")?;
        tokio::spawn(connection);
        work(handle).await
    })
}

/// A command that runs inside namespace `name`: the child enters it between
/// fork and exec. It is killed if dropped, so a cancelled caller leaves no
/// process behind.
pub fn command(name: &str, program: &str) -> Result<tokio::process::Command> {
    let ns = File::open(path(name)).with_context(|| format!("opening network namespace {name}"))?;
    let mut cmd = tokio::process::Command::new(program);
    // SAFETY: the hook only makes the setns syscall, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    cmd.kill_on_drop(true);
    Ok(cmd)
}

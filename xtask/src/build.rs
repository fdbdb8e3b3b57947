//! Building the BPF object (nightly, build-std) and the userspace workspace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub const BPF_TARGET: &str = "bpfel-unknown-none";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub fn netpath_binary() -> PathBuf {
    workspace_root().join("target/release/netpath")
}

/// A `cargo` for the given toolchain, with the variables that the outer
/// `cargo xtask` set for its own toolchain removed.
pub fn cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo"])
        .current_dir(workspace_root())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

pub fn ebpf() -> Result<()> {
    eprintln!("build: BPF object (netpath-ebpf, {BPF_TARGET})");
    let mut cmd = cargo("nightly");
    cmd.args([
        "build",
        "--release",
        "--package",
        "netpath-ebpf",
        "--target",
        BPF_TARGET,
    ])
    .args(["-Z", "build-std=core"]);
    status(&mut cmd)
}

pub fn userspace() -> Result<()> {
    eprintln!("build: netpath (release)");
    let mut cmd = cargo("stable");
    cmd.args(["build", "--release", "--package", "netpath", "--bins"]);
    status(&mut cmd)
}

pub fn all() -> Result<()> {
    ebpf()?;
    userspace()
}

pub fn cargo_test(args: &[String]) -> Command {
    let mut cmd = cargo("stable");
    // Default members: every crate but netpath-ebpf, which only builds for BPF.
    cmd.args(["test", "--release"]).args(args);
    cmd
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

//! `cargo xtask`: set up the toolchain, build the BPF object and the loader,
//! run netpath and its tests. These are the only commands a newcomer needs.

mod build;
mod clean_root;
mod initramfs;
mod kernel;
mod setup;
mod vm;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use setup::Need;

#[derive(Parser)]
#[command(about = "Build, run and test netpath")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what is missing: nightly rust-src, bpf-linker, and the Debian
    /// tools of every verb.
    Setup,
    /// Build the BPF object and the netpath binary (release).
    Build,
    /// Build, then run `netpath run` as root (arguments go to `netpath run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every test on this machine's kernel, then the clean
    /// root (the README's `cargo xtask run` in a fresh Debian 12 root), then
    /// the kernel matrix (the integration tests that matter per kernel,
    /// inside every Debian kernel of the matrix, booted in qemu). Arguments
    /// go to `cargo test` and skip the other stages; with --kernel, only the
    /// matrix runs, and arguments, if any, replace its selection (BINARY or
    /// BINARY::TEST).
    Test {
        /// 5.10, 6.1, 6.12 or all; repeat or give a comma list.
        #[arg(long = "kernel", value_delimiter = ',', conflicts_with_all = ["native", "clean_root"])]
        kernels: Vec<String>,
        /// Only this machine's kernel: no clean root, no kernel matrix.
        #[arg(long, conflicts_with = "clean_root")]
        native: bool,
        /// Only the clean-root stage: set-up, build and `cargo xtask run` in
        /// a fresh Debian 12 root.
        #[arg(long)]
        clean_root: bool,
        /// Seconds a kernel may take to boot and run its tests before it is killed.
        #[arg(long, default_value_t = 1800)]
        kernel_timeout: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run `netpath bench` (arguments go to `netpath bench`).
    Bench {
        /// Run it inside this Debian kernel of the matrix, booted in qemu
        /// (TCG: compare ratios only), e.g. 6.12 for netkit.
        #[arg(long = "kernel")]
        kernel: Option<String>,
        #[arg(long, default_value_t = 3600)]
        kernel_timeout: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Verb::Setup => setup::run(Need::Test),
        Verb::Build => {
            setup::run(Need::Run)?;
            build::all()
        }
        Verb::Run { args } => build_and_run_netpath("run", Need::Run, &args),
        Verb::Bench {
            kernel: Some(kernel),
            kernel_timeout,
            args,
        } => {
            let series = vm::parse(&[kernel])?;
            setup::run(Need::KernelMatrix)?;
            build::all()?;
            vm::bench(series[0], &args, Duration::from_secs(kernel_timeout))
        }
        Verb::Bench { args, .. } => build_and_run_netpath("bench", Need::Bench, &args),
        Verb::Test {
            kernels,
            kernel_timeout,
            args,
            ..
        } if !kernels.is_empty() => {
            let kernels = vm::parse(&kernels)?;
            setup::run(Need::KernelMatrix)?;
            build::ebpf()?;
            vm::test(&kernels, &args, Duration::from_secs(kernel_timeout))
        }
        Verb::Test {
            clean_root: true, ..
        } => {
            setup::run(Need::Test)?;
            clean_root::test()
        }
        Verb::Test {
            native,
            kernel_timeout,
            args,
            ..
        } => {
            let every_stage = !native && args.is_empty();
            setup::run(if every_stage {
                Need::KernelMatrix
            } else {
                Need::Test
            })?;
            build::ebpf()?;
            // Tests that need root fail (not skip) without it, with a message.
            build::status(&mut build::cargo_test(&args))?;
            if !every_stage {
                return Ok(());
            }
            clean_root::test()?;
            vm::test(
                &kernel::SERIES.iter().collect::<Vec<_>>(),
                &[],
                Duration::from_secs(kernel_timeout),
            )
        }
    }
}

/// `cargo xtask VERB ARGS`: set up, build, then `netpath VERB ARGS` as root.
fn build_and_run_netpath(verb: &str, need: Need, args: &[String]) -> Result<()> {
    setup::run(need)?;
    build::all()?;
    if !is_root() {
        bail!(
            "cargo xtask {verb} needs root (CAP_NET_ADMIN and CAP_BPF): run it as root, e.g. `sudo -E cargo xtask {verb}`"
        );
    }
    build::status(Command::new(build::netpath_binary()).arg(verb).args(args))
}

/// ~/.cache/netpath (or under XDG_CACHE_HOME): downloads kept between runs.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("netpath"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/netpath"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

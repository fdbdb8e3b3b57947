//! `cargo xtask`: set up the toolchain, build the BPF object and the loader,
//! run netpath and its tests. These are the only commands a newcomer needs.

mod build;
mod initramfs;
mod kernel;
mod setup;
mod vm;

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};
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
    /// Build, then run every test (arguments go to `cargo test`). With
    /// --kernel: boot that Debian kernel in qemu and run the integration
    /// tests of the kernel matrix inside (arguments, if any, replace the
    /// matrix's selection: BINARY or BINARY::TEST).
    Test {
        /// 5.10, 6.1 or all; repeat or give a comma list.
        #[arg(long = "kernel", value_delimiter = ',')]
        kernels: Vec<String>,
        /// Seconds a kernel may take to boot and run its tests before it is killed.
        #[arg(long, default_value_t = 1800)]
        kernel_timeout: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run `netpath bench` (arguments go to `netpath bench`).
    Bench {
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
        Verb::Bench { args } => build_and_run_netpath("bench", Need::Bench, &args),
        Verb::Test { kernels, kernel_timeout, args } if !kernels.is_empty() => {
            let kernels = vm::parse(&kernels)?;
            setup::run(Need::KernelMatrix)?;
            build::ebpf()?;
            vm::test(&kernels, &args, Duration::from_secs(kernel_timeout))
        }
        Verb::Test { args, .. } => {
            setup::run(Need::Test)?;
            build::ebpf()?;
            // Tests that need root fail (not skip) without it, with a message.
            build::status(&mut build::cargo_test(&args))
        }
    }
}

/// `cargo xtask VERB ARGS`: set up, build, then `netpath VERB ARGS` as root.
fn build_and_run_netpath(verb: &str, need: Need, args: &[String]) -> Result<()> {
    setup::run(need)?;
    build::all()?;
    if !is_root() {
        bail!("cargo xtask {verb} needs root (CAP_NET_ADMIN and CAP_BPF): run it as root, e.g. `sudo -E cargo xtask {verb}`");
    }
    build::status(Command::new(build::netpath_binary()).arg(verb).args(args))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

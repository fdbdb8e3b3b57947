//! The bootstrap every other verb runs first. Each step checks before it
//! acts, so a second run does nothing and takes seconds.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::build::status;

/// bpf-linker release line known to build against the nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages, each with the command (or file) that shows it is
/// installed, and which verbs of `cargo xtask` need it.
const DEBIAN_TOOLS: &[(&str, &str, &[Need])] = &[
    // `--nat` runs nft.
    ("nft", "nftables", &[Need::Run, Need::Bench, Need::Test]),
    // Building netpath: etcd-client compiles etcd's protobuf definitions
    // with protoc, and they import protobuf's well-known types
    // (google/protobuf/*.proto), which come in libprotobuf-dev, a package
    // protobuf-compiler only recommends.
    (
        "protoc",
        "protobuf-compiler",
        &[Need::Run, Need::Bench, Need::Test],
    ),
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
        &[Need::Run, Need::Bench, Need::Test],
    ),
    // The README's "try it" next to `cargo xtask run`: ip netns exec, ping.
    ("ip", "iproute2", &[Need::Run, Need::Bench, Need::Test]),
    ("ping", "iputils-ping", &[Need::Run, Need::Test]),
    // The overlay tests' control plane.
    ("etcd", "etcd-server", &[Need::Test]),
    ("iperf3", "iperf3", &[Need::Run, Need::Bench, Need::Test]),
    ("sockperf", "sockperf", &[Need::Bench, Need::Test]),
    ("ethtool", "ethtool", &[Need::Test]),
    ("bpftool", "bpftool", &[Need::Test]),
    ("tcpdump", "tcpdump", &[Need::Test]),
    // The standard CNI plugins: the CNI tests chain with them, `bench
    // --cni` measures against the reference bridge plugin. iptables for
    // portmap, and `bench --policy`'s bridge+iptables baseline.
    (
        "/usr/lib/cni/host-local",
        "containernetworking-plugins",
        &[Need::Bench, Need::Test],
    ),
    ("iptables", "iptables", &[Need::Bench, Need::Test]),
    // A CNI client for the tests: libcni, built with Debian's Go.
    ("go", "golang-go", &[Need::Test]),
    (
        "/usr/share/gocode/src/github.com/containernetworking/cni/libcni/api.go",
        "golang-github-appc-cni-dev",
        &[Need::Test],
    ),
    // A real runtime driving the plugin (tests/podman.rs): podman with its
    // CNI backend. runc by name: with --no-install-recommends apt would
    // satisfy podman's "crun | runc" with crun, which refuses hybrid cgroups.
    ("podman", "podman", &[Need::Test]),
    ("runc", "runc", &[Need::Test]),
    // The other runtime driving the plugin (tests/containerd.rs): Debian's
    // containerd, which ships the daemon (its CRI plugin) and ctr.
    ("containerd", "containerd", &[Need::Test]),
    ("ctr", "containerd", &[Need::Test]),
    // The kernel matrix: qemu boots the kernels, busybox is the initramfs,
    // kmod builds modules.dep (and is the guest's modprobe), xz unpacks the
    // kernel image.
    (
        "qemu-system-x86_64",
        "qemu-system-x86",
        &[Need::KernelMatrix],
    ),
    // Also the container image of the podman and containerd tests.
    (
        "/bin/busybox",
        "busybox-static",
        &[Need::Test, Need::KernelMatrix],
    ),
    ("depmod", "kmod", &[Need::KernelMatrix]),
    ("xz", "xz-utils", &[Need::KernelMatrix]),
    // The clean-root stage: a minimal Debian 12 root from the mirror.
    ("mmdebstrap", "mmdebstrap", &[Need::Test]),
];

/// What the set-up is for: each verb installs only what it uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Building and running netpath.
    Run,
    /// `netpath bench`: iperf3 and sockperf as well.
    Bench,
    /// The test suite: every tool the tests drive.
    Test,
    /// `cargo xtask test --kernel`: what boots the kernels, on top of Test.
    KernelMatrix,
}

pub fn run(need: Need) -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_tools(need)?;
    if need == Need::KernelMatrix {
        debian_tools(Need::Test)?;
    }
    Ok(())
}

fn step(what: &str, outcome: &str) {
    eprintln!("setup: {what}: {outcome}");
}

fn nightly_sysroot() -> Result<Option<PathBuf>> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .context("running rustc (is rustup installed? see https://rustup.rs)")?;
    Ok(out
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
}

fn nightly_rust_src() -> Result<()> {
    if nightly_sysroot()?.is_none() {
        step("nightly toolchain", "installing");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain, which builds the BPF object")?;
    }
    let sysroot = nightly_sysroot()?.context("rustc +nightly still missing after install")?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to nightly (needed for -Z build-std=core)")
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// bpf-linker must use the same LLVM as the nightly rustc that emits the
/// bitcode; that LLVM ships as a shared library inside the toolchain.
fn bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        step("bpf-linker", "present");
        return Ok(());
    }
    let sysroot = nightly_sysroot()?.context("nightly toolchain missing")?;
    let lib = fs::read_dir(sysroot.join("lib"))
        .context("listing the nightly toolchain's lib/")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context(
            "the nightly toolchain ships no libLLVM.so.*; cannot build bpf-linker against it",
        )?;
    let major = llvm_major()?;

    // A lasting folder: the installed linker loads LLVM through it (rpath).
    let prefix = data_dir()?.join("llvm").join(&lib);
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let target = sysroot.join("lib").join(&lib);
    for name in ["libLLVM.so", lib.as_str()] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }

    step(
        "bpf-linker",
        &format!("building {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"),
    );
    status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC"),
    )
    .context("installing bpf-linker")?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn llvm_major() -> Result<String> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .context("rustc +nightly -vV prints no LLVM version")
}

fn data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("netpath"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/netpath"))
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .iter()
        .any(|dir| Path::new(dir).join(command).is_file())
}

fn debian_tools(need: Need) -> Result<()> {
    let missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(command, _, needs)| needs.contains(&need) && !on_path(command))
        .map(|(_, package, _)| *package)
        .collect();
    if missing.is_empty() {
        step("Debian tools", "present");
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "missing tools ({}) and no apt-get here: install them by hand",
            missing.join(", ")
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages ({}): run as root so setup can apt-get them",
            missing.join(", ")
        );
    }
    step("Debian tools", &format!("installing {}", missing.join(" ")));
    status(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

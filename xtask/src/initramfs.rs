//! The guest's initramfs: static busybox, the modules needed to reach the
//! host's root over 9p, and an /init that mounts it and hands over.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::kernel::Kernel;

/// From Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";

/// Modules the guest needs before it can mount anything over 9p; their
/// dependencies come from modules.dep, built-in ones are skipped.
const EARLY_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Stage one, run by busybox as PID 1: mount the host's `/` read-only over
/// 9p under a tmpfs overlay, mount the writable share at /vmout, and run
/// the stage-two script from it in the new root (with the host's userland).
/// Any failure powers the guest off, so the host sees it at once.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "vm-init: $*"; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m"; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro root /lower || fail "mounting the host's / over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay root"
mkdir -p /newroot/vmout
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/vmout || fail "mounting the results share"
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /vmout/run.sh
"#;

/// Builds the initramfs for `kernel` into `out` (a newc cpio archive).
pub fn build(kernel: &Kernel, out: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static (cargo xtask setup does)");
    }
    let modules = early_modules(&kernel.modules)?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "modules"] {
        cpio.dir(dir);
    }
    cpio.file("bin/busybox", 0o755, &fs::read(BUSYBOX)?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT.as_bytes());
    let mut order = String::new();
    for module in &modules {
        let name = module
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".xz", "");
        cpio.file(&format!("modules/{name}"), 0o644, &module_bytes(module)?);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("modules.order", 0o644, order.as_bytes());
    let bytes = cpio.finish();
    // Rewritten only when it changed: the file doubles as the cache.
    if fs::read(out).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// busybox insmod loads plain .ko files only.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|x| x == "xz") {
        let out = Command::new("xz").arg("-dc").arg(path).output()?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        return Ok(out.stdout);
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// EARLY_MODULES and their dependencies as files, each after what it needs.
fn early_modules(dir: &Path) -> Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(dir.join("modules.dep")).context("reading modules.dep")?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let deps: Vec<(String, &str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| {
            let (module, needs) = l.split_once(':')?;
            Some((name_of(module), module, needs.split_whitespace().collect()))
        })
        .collect();
    let builtin: HashSet<String> = builtin.lines().map(name_of).collect();

    let mut ordered = Vec::new();
    let mut seen = HashSet::new();
    for wanted in EARLY_MODULES {
        if builtin.contains(*wanted) {
            continue;
        }
        let (_, path, needs) = deps
            .iter()
            .find(|(name, _, _)| name == wanted)
            .with_context(|| {
                format!("kernel module {wanted} is neither in modules.dep nor built in")
            })?;
        // modules.dep lists every dependency, transitive ones included, the
        // deepest last: loading them in reverse order satisfies each in turn.
        for file in needs.iter().rev().chain([path]) {
            if seen.insert(*file) {
                ordered.push(dir.join(file));
            }
        }
    }
    Ok(ordered)
}

/// A newc ("070701") cpio archive, what the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so equal inputs give equal archives
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // checksum (none in newc)
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

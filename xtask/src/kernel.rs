//! Debian kernels for the matrix: found and downloaded through apt with a
//! sources list of our own (the host's apt configuration stays untouched),
//! unpacked and cached under ~/.cache/netpath/kernels so that a second run
//! downloads nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::build::status;

/// A kernel line of the matrix: the Debian release that ships it.
pub struct Series {
    /// What `--kernel` takes.
    pub name: &'static str,
    /// The Debian suite whose archive has the package.
    suite: &'static str,
    /// Packages are `{prefix}N{suffix}`; the newest N wins.
    prefix: &'static str,
    suffix: &'static str,
    /// Which tests its guest runs by default.
    pub selection: Selection,
}

/// The tests a kernel's guest runs unless told which.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The matrix's selection: every hook, mode and map on this kernel.
    Matrix,
    /// netkit mode's proof, on the one kernel of the matrix that has
    /// netkit; what else it would run, 5.10 and 6.1 run already.
    Netkit,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
        selection: Selection::Matrix,
    },
    Series {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
        selection: Selection::Matrix,
    },
    // The line of Debian 13 and RHEL 10, for Debian 12 from backports:
    // netkit built in, WireGuard a module, tcx native. It runs netkit's
    // tests only: what else it would run, 5.10 and 6.1 run already, and
    // the whole selection would add 10 minutes to CI.
    Series {
        name: "6.12",
        suite: "bookworm-backports",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
        selection: Selection::Netkit,
    },
];

/// An unpacked kernel, ready to boot.
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. 5.10.0-32-amd64.
    pub release: String,
    /// What qemu's `-kernel` gets: the uncompressed vmlinux when the kernel
    /// has a PVH entry point (boots ~3 s faster under TCG), else vmlinuz.
    pub image: PathBuf,
    /// `lib/modules/RELEASE` of the package, with modules.dep.
    pub modules: PathBuf,
}

fn cache_dir() -> Result<PathBuf> {
    Ok(crate::cache_dir()?.join("kernels"))
}

/// The kernel of `series`, from the cache or downloaded and unpacked.
pub fn get(series: &Series) -> Result<Kernel> {
    let dir = cache_dir()?.join(series.name);
    // Written last: its presence means the unpacked kernel is complete.
    let ready = dir.join("release");
    if let Ok(release) = fs::read_to_string(&ready) {
        let release = release.trim().to_owned();
        eprintln!(
            "kernel {}: {release} (cached in {})",
            series.name,
            dir.display()
        );
        return kernel_in(&dir, release);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let apt = Apt::new(series)?;
    apt.update()?;
    let package = apt.newest_image(series)?;
    eprintln!(
        "kernel {}: downloading {package} from {} {}",
        series.name, apt.mirror, series.suite
    );
    let deb = apt.download(&package, &dir)?;

    let root = dir.join("root");
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .context("unpacking the kernel package")?;
    fs::remove_file(&deb)?;
    let release = only_entry(&root.join("lib/modules"))?;
    // Debian generates modules.dep at install time; the package has none.
    status(Command::new("depmod").arg("-b").arg(&root).arg(&release))
        .context("depmod on the unpacked kernel")?;
    if let Err(e) = uncompress(&root, &release, &dir.join("vmlinux")) {
        eprintln!("kernel {}: booting vmlinuz, {e:#}", series.name);
    }
    fs::write(&ready, &release)?;
    kernel_in(&dir, release)
}

fn kernel_in(dir: &Path, release: String) -> Result<Kernel> {
    let vmlinux = dir.join("vmlinux");
    let image = if vmlinux.exists() {
        vmlinux
    } else {
        dir.join("root/boot").join(format!("vmlinuz-{release}"))
    };
    let modules = dir.join("root/lib/modules").join(&release);
    if !image.exists() || !modules.join("modules.dep").exists() {
        bail!(
            "the kernel cache {} is incomplete: remove it and run again",
            dir.display()
        );
    }
    Ok(Kernel {
        release,
        image,
        modules,
    })
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    match (names.pop(), names.is_empty()) {
        (Some(name), true) => Ok(name),
        _ => bail!("expected one kernel release in {}", dir.display()),
    }
}

/// vmlinuz is a bzImage with an xz-compressed ELF kernel inside; qemu
/// boots that ELF directly through its PVH entry point, skipping the
/// decompressor, which is slow under TCG.
fn uncompress(root: &Path, release: &str, out: &Path) -> Result<()> {
    let config = fs::read_to_string(root.join("boot").join(format!("config-{release}")))?;
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        bail!("the kernel has no PVH entry point (CONFIG_PVH)");
    }
    let bzimage = fs::read(root.join("boot").join(format!("vmlinuz-{release}")))?;
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let start = bzimage
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("vmlinuz holds no xz stream")?;
    let payload = out.with_extension("xz");
    fs::write(&payload, &bzimage[start..])?;
    // --single-stream: the bzImage has more bytes after the stream.
    let elf = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&payload)
        .output()?;
    fs::remove_file(&payload)?;
    if !elf.status.success() || !elf.stdout.starts_with(b"\x7fELF") {
        bail!("xz found no ELF kernel in vmlinuz");
    }
    fs::write(out, elf.stdout)?;
    Ok(())
}

/// apt with a sources list of one suite and its own lists and cache, so
/// neither the host's sources nor its package lists change.
struct Apt {
    dir: PathBuf,
    mirror: String,
}

impl Apt {
    fn new(series: &Series) -> Result<Self> {
        let (mirror, signed_by) = debian_mirror()?;
        let dir = cache_dir()?.join("apt").join(series.suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let options = signed_by
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        fs::write(
            dir.join("sources.list"),
            format!("deb {options}{mirror} {} main\n", series.suite),
        )?;
        Ok(Apt { dir, mirror })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-o")
            .arg(format!(
                "Dir::Etc::sourcelist={}",
                self.dir.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(format!(
                "Dir::State::Lists={}",
                self.dir.join("lists").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.dir.join("cache").display()))
            // The cache is root's: apt's unprivileged download user cannot write it.
            .args(["-o", "APT::Sandbox::User=root"])
            // Only the package lists: no translations, no AppStream metadata.
            .args([
                "-o",
                "Acquire::Languages=none",
                "-o",
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            ]);
        cmd
    }

    fn update(&self) -> Result<()> {
        status(self.command("apt-get").args(["update", "-qq"]))
            .context("apt-get update of the kernel suite")
    }

    fn newest_image(&self, series: &Series) -> Result<String> {
        let (prefix, suffix) = (series.prefix, series.suffix);
        let out = self
            .command("apt-cache")
            .args(["pkgnames", prefix])
            .output()
            .context("apt-cache pkgnames")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|name| {
                let n = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                Some((n.parse::<u32>().ok()?, name.to_owned()))
            })
            .max()
            .map(|(_, name)| name)
            .with_context(|| format!("no {prefix}N{suffix} in {} {}", self.mirror, series.suite))
    }

    fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        status(
            self.command("apt-get")
                .args(["download", "-qq", package])
                .current_dir(into),
        )
        .with_context(|| format!("apt-get download {package}"))?;
        fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// The Debian archive mirror this machine's apt already uses (a URI ending
/// in /debian in /etc/apt/sources.list or sources.list.d), with its key.
pub fn debian_mirror() -> Result<(String, Option<String>)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        parts.sort();
        files.extend(parts);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let sources = match file.extension().and_then(|x| x.to_str()) {
            Some("sources") => deb822_sources(&text),
            Some("list") => one_line_sources(&text),
            _ => continue,
        };
        if let Some(found) = sources
            .into_iter()
            .find(|(uri, _)| uri.trim_end_matches('/').ends_with("/debian"))
        {
            return Ok(found);
        }
    }
    bail!(
        "no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d (a `deb` source whose URI ends in /debian): \
         the kernel matrix and the clean root come from the mirror apt already uses; add your Debian mirror there"
    )
}

/// `Types: deb` / `URIs:` / `Signed-By:` stanzas of a .sources file.
fn deb822_sources(text: &str) -> Vec<(String, Option<String>)> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
            };
            let is_deb = field("Types")?.split_whitespace().any(|t| t == "deb");
            let enabled = field("Enabled").is_none_or(|v| v != "no");
            let uris = field("URIs")?;
            let uri = uris.split_whitespace().next()?.to_owned();
            (is_deb && enabled).then(|| (uri, field("Signed-By").filter(|k| k.starts_with('/'))))
        })
        .collect()
}

/// `deb [signed-by=KEY] URI suite components` lines of a .list file.
fn one_line_sources(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?,
                None => ("", rest),
            };
            let signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            Some((rest.split_whitespace().next()?.to_owned(), signed_by))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_of_both_formats() {
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nSigned-By: /k.gpg\n\n\
                      Types: deb-src\nURIs: http://n.example/debian\n";
        assert_eq!(
            deb822_sources(deb822),
            vec![("http://m.example/debian".into(), Some("/k.gpg".into()))]
        );
        let list = "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\ndeb-src x y z\n";
        assert_eq!(
            one_line_sources(list),
            vec![("http://m.example/debian".into(), Some("/k.gpg".into()))]
        );
    }
}

//! The BPF object: embedded in the binary, loaded with its maps created
//! fresh or opened from (and pinned to) a datapath's bpffs directory; its
//! programs pinned there too, so that a port joining later attaches them
//! without loading and verifying the object again.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, ProgramArray},
    programs::{SchedClassifier, Xdp},
};
use aya_obj::programs::XdpAttachType;
use netpath_common::{
    LAYOUT_VERSION,
    maps::{self, Sizing},
    programs,
};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::maps::{check_layout, known};

/// The BPF object built by `cargo xtask build` from netpath-ebpf.
pub static OBJECT: &[u8] = include_bytes_aligned!(env!("NETPATH_BPF_OBJECT"));

pub const BPFFS: &str = "/sys/fs/bpf";

/// Where a datapath's maps and links are pinned.
pub fn pin_dir(datapath: &str) -> PathBuf {
    Path::new(BPFFS).join("netpath").join(datapath)
}

/// Mounts bpffs on /sys/fs/bpf if it is not there yet, but not in a mount
/// namespace made for this command (one its parent does not share, as `ip
/// netns exec` makes, with a /sys of its own): a bpffs mounted there would
/// go when the command exits, and with its pins the programs' links and the
/// FDB: the datapath would stop, and the next command would find nothing.
pub fn ensure_bpffs() -> Result<()> {
    let mounted = statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    if !shares_parents_mount_namespace() {
        bail!(
            "{BPFFS} holds no bpffs in this command's mount namespace, which its parent does \
             not share: a bpffs mounted here would vanish with this command, and with it the \
             datapath's pins (maps and links). `ip netns exec` makes such a namespace, with a \
             /sys of its own and no bpffs on it: enter only the network namespace instead \
             (`nsenter --net=/run/netns/NAME netpath ...`)"
        );
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs on {BPFFS}"))
}

/// Whether this process shares its parent's mount namespace; true where
/// that cannot be read (nothing to compare with: mount as before).
fn shares_parents_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let namespace = |pid: String| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
    match (
        namespace("self".into()),
        namespace(nix::unistd::getppid().to_string()),
    ) {
        (Ok(mine), Ok(parents)) => mine == parents,
        _ => true,
    }
}

/// What the kernel's common LRU takes aside per CPU (`LOCAL_FREE_TARGET` in
/// kernel/bpf/bpf_lru_list.c): a CPU whose free list runs dry moves that
/// many free entries to its own list, and evicts to make up whatever the
/// shared list lacks, even when the map is far from full.
const LRU_LOCAL_FREE: u32 = 128;

/// The learned FDB's real size: `fdb_size` plus one CPU-local batch per
/// possible CPU and one more, so that learning up to `fdb_size` entries
/// never makes the LRU evict (a 64-entry map on 2 CPUs evicted at 1 entry).
pub fn learned_capacity(fdb_size: u32) -> Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    Ok(fdb_size + (cpus as u32 + 1) * LRU_LOCAL_FREE)
}

/// The entries of the maps a datapath sizes at load (see [`Sizing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// The FDB's (static and remote entries): `--fdb-size`.
    pub fdb: u32,
    /// The learned FDB's.
    pub learned: u32,
    /// The remote containers' (an overlay's).
    pub remote: u32,
}

impl MapSizes {
    /// A new datapath's: the learned FDB as large as the FDB where a port
    /// may learn (a topology's container that routes for others), else
    /// only the LRU's per-CPU batches: a CNI network's pods all have their
    /// sources checked and learn nothing, and an LRU map is preallocated
    /// whole (65,920 entries took 2.8 ms of the first pod's ADD). The
    /// remote containers' maps as large as the FDB on an `overlay`, else
    /// one entry (their bucket arrays took 1.2 ms of it).
    pub fn new(fdb_size: u32, learning: bool, overlay: bool) -> Result<Self> {
        Ok(MapSizes {
            fdb: fdb_size,
            learned: learned_capacity(if learning { fdb_size } else { 0 })?,
            remote: if overlay { fdb_size } else { 1 },
        })
    }

    /// The sizes of the datapath pinned in `pins`, as it was made.
    pub fn pinned(pins: &Path) -> Result<Self> {
        let entries = |map: &str| -> Result<u32> {
            let pin = pins.join(map);
            Ok(aya::maps::MapInfo::from_pin(&pin)
                .with_context(|| format!("reading the size of {}", pin.display()))?
                .max_entries())
        };
        Ok(MapSizes {
            fdb: entries(maps::FDB_STATIC)?,
            learned: entries(maps::FDB_LEARNED)?,
            remote: entries(maps::REMOTE_FDB)?,
        })
    }
}

/// Loads the object and the programs named in `names` (the verifier
/// only sees those: every program costs a datapath's making its own walk,
/// and the one a datapath does not use need not be paid for; see
/// `programs_needed` in `datapath`), with maps created fresh (`pins` = None) or opened
/// from / pinned to the given directory, whose layout version is checked
/// first (and written when the maps are new).
pub fn load(pins: Option<&Path>, sizes: MapSizes, names: &[&str]) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "this netpath was built without its BPF object (a `cargo build` before `cargo xtask build`): \
             build it with `cargo xtask build`, which compiles netpath-ebpf first"
        );
    }
    super::memlock::raise_for_bpf()?;
    // The kernel's BTF only serves CO-RE relocations, which the programs do
    // not use. Should they gain some, the kernel's BTF is read again.
    let core_relocations = aya_obj::Object::parse(OBJECT)
        .context("parsing the BPF object")?
        .has_btf_relocations();
    let mut loader = if core_relocations {
        EbpfLoader::new()
    } else {
        loader_without_btf()
    };
    let judging = names.iter().any(|name| programs::is_judging_variant(name));
    for row in maps::ALL {
        match row.sizing {
            Sizing::Fixed => {}
            // An overlay's remote containers take entries as local ones do.
            Sizing::Fdb => {
                loader.map_max_entries(row.name, sizes.fdb);
            }
            Sizing::Learned => {
                loader.map_max_entries(row.name, sizes.learned);
            }
            Sizing::Remote => {
                loader.map_max_entries(row.name, sizes.remote);
            }
            Sizing::Judgement if judging => {}
            Sizing::Judgement => {
                loader.map_max_entries(row.name, 1);
            }
        }
    }
    let fresh = match pins {
        Some(dir) => {
            check_layout(dir, Some(sizes.fdb))?;
            if judging {
                make_judgement_maps_anew(dir)?;
            }
            for row in maps::ALL {
                loader.map_pin_path(row.name, dir.join(row.name));
            }
            !dir.join(maps::LAYOUT).exists()
        }
        None => true,
    };
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading the BPF object (maps and relocations)")?;
    // Sections such as .rodata are the object's constants, not shared state.
    let declared = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !name.starts_with('.'));
    if let Some(unknown) = declared.into_iter().find(|name| !known(name)) {
        bail!(
            "the BPF object declares map {unknown}, which the table of maps (netpath_common::datapath_maps!) \
             has no row for (so it would not be pinned)"
        );
    }
    if fresh {
        let mut layout: Array<_, u32> = Array::try_from(
            ebpf.map_mut(maps::LAYOUT)
                .context("the BPF object has no LAYOUT map")?,
        )?;
        layout
            .set(0, LAYOUT_VERSION, 0)
            .context("writing map LAYOUT")?;
    }
    for &name in names {
        let loaded = if is_xdp(name) {
            program_mut::<Xdp>(&mut ebpf, name)?.load()
        } else {
            program_mut::<SchedClassifier>(&mut ebpf, name)?.load()
        };
        loaded.with_context(|| format!("verifier rejected BPF program {name}"))?;
    }
    for tail in &programs::TAIL_CALLED {
        if names.contains(&tail.program) {
            fill_tail_call_slot(&mut ebpf, tail)?;
        }
    }
    Ok(ebpf)
}

/// Unpins the judgement's maps that a datapath made before it loaded a
/// judging program (one entry each: see `Sizing::Judgement`), so that the
/// load about to load the first makes them anew, full size. No program
/// loaded before uses them: only the judging programs do.
fn make_judgement_maps_anew(dir: &Path) -> Result<()> {
    for row in maps::ALL
        .iter()
        .filter(|row| row.sizing == Sizing::Judgement)
    {
        let pin = dir.join(row.name);
        if !pin.exists() {
            continue;
        }
        let entries = aya::maps::MapInfo::from_pin(&pin)
            .with_context(|| format!("reading the size of {}", pin.display()))?
            .max_entries();
        if entries == 1 {
            fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        }
    }
    Ok(())
}

fn is_xdp(program: &str) -> bool {
    matches!(
        program,
        programs::XDP_FORWARD | programs::XDP_PEER | programs::XDP_FORWARD_POLICY
    )
}

/// The kernel's BTF, where aya reads it.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A loader without the kernel's BTF. aya 0.14's `EbpfLoader::new()`
/// reads and parses it, megabytes, 20-30 ms here (the largest part of a
/// network's first ADD once the judgement of policy is not verified with
/// it), although netpath loads without it, and offers no way around:
/// aya 0.15 parses it only when a load needs it (aya-rs/aya#1639), but
/// needs Rust 1.98. So the loader is made on a thread of its own, in a
/// mount namespace of its own where /dev/null is bound over the BTF: the
/// read finds nothing, and the loader has none, as `btf(None)` would
/// leave it. The namespace goes with the thread. Where that cannot be
/// done, the BTF is parsed and dropped.
fn loader_without_btf() -> EbpfLoader<'static> {
    let made = std::thread::spawn(|| -> nix::Result<EbpfLoader<'static>> {
        use nix::{
            mount::{MsFlags, mount},
            sched::{CloneFlags, unshare},
        };
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Private first: a bind mount here must not reach the host's
        // namespace, with which `/` may share its mounts.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;
        mount(
            Some("/dev/null"),
            KERNEL_BTF,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(EbpfLoader::new())
    })
    .join();
    match made {
        Ok(Ok(loader)) => loader,
        failed => {
            log::debug!(
                "could not hide the kernel's BTF from the loader ({}): parsing it",
                match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "its thread panicked".to_owned(),
                }
            );
            let mut loader = EbpfLoader::new();
            loader.btf(None);
            loader
        }
    }
}

/// Puts a loaded tail-called program in its slot (the pinned map keeps
/// it there; a reload replaces it).
pub fn fill_tail_call_slot(ebpf: &mut Ebpf, tail: &programs::TailCall) -> Result<()> {
    let program = ebpf
        .program(tail.program)
        .with_context(|| format!("BPF object has no program {}", tail.program))?
        .fd()
        .with_context(|| format!("program {} is not loaded", tail.program))?
        .try_clone()
        .with_context(|| format!("duplicating program {}'s fd", tail.program))?;
    let mut slots: ProgramArray<_> = ProgramArray::try_from(
        ebpf.map_mut(tail.map)
            .with_context(|| format!("the BPF object has no map {}", tail.map))?,
    )?;
    slots.set(tail.slot, &program, 0).with_context(|| {
        format!(
            "writing slot {} of map {} ({})",
            tail.slot, tail.map, tail.program
        )
    })
}

/// Loads the programs in `names` a running datapath (pinned in `pins`)
/// has not pinned yet, with its maps, and pins them beside the others: a
/// datapath gains the program of a hook it did not have (a first policy,
/// joining an overlay) without the others being loaded again.
pub fn load_missing(pins: &Path, names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !programs_dir(pins).join(name).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut ebpf = load(Some(pins), MapSizes::pinned(pins)?, &missing)?;
    pin_programs(&mut ebpf, pins, &missing, false)
}

/// `names` and, if `judging`, the judging variant of each that has one
/// (`programs::with_policy`): a datapath loads those with its first policy
/// that isolates a container, so a datapath without one, and its first
/// port, never wait for the verifier to walk the judgement.
pub fn with_policy_variants(names: &[&'static str], judging: bool) -> Vec<&'static str> {
    let variants = names
        .iter()
        .filter(|_| judging)
        .filter_map(|name| programs::with_policy(name));
    names.iter().copied().chain(variants).collect()
}

/// Whether a datapath pinned in `pins` has its judging variants (a policy
/// isolated a container since it was made).
pub fn has_policy_variants(pins: &Path) -> bool {
    Programs::pinned_names(pins)
        .iter()
        .any(|name| programs::is_judging_variant(name))
}

/// Where the loaded programs are pinned, one file each by program name.
fn programs_dir(pins: &Path) -> PathBuf {
    pins.join("programs")
}

/// Pins the object's loaded programs `names` in the datapath's directory,
/// replacing the pins of an earlier load (links attached to those keep
/// their program); with `only`, unpins every other program, which the
/// datapath no longer uses.
pub fn pin_programs(ebpf: &mut Ebpf, pins: &Path, names: &[&str], only: bool) -> Result<()> {
    let dir = programs_dir(pins);
    // Like the maps, the programs are root's alone.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for name in programs::ALL {
        let pin = dir.join(name);
        let loaded = names.contains(&name);
        if pin.exists() && (loaded || only) {
            fs::remove_file(&pin)
                .with_context(|| format!("unpinning program {}", pin.display()))?;
        }
        if !loaded {
            continue;
        }
        ebpf.program_mut(name)
            .with_context(|| format!("BPF object has no program {name}"))?
            .pin(&pin)
            .with_context(|| format!("pinning program {name} at {}", pin.display()))?;
    }
    Ok(())
}

/// The datapath's loaded programs, opened from their pins: those of the
/// hooks it has (see `programs_needed` in `datapath`), the others None.
pub struct Programs {
    pub xdp_forward: Option<Xdp>,
    pub xdp_peer: Option<Xdp>,
    pub tc_forward: Option<SchedClassifier>,
    /// On the node's vxlan device, for a datapath on an overlay.
    pub tc_vxlan: Option<SchedClassifier>,
    /// On the interface that holds the underlay address, for a datapath on
    /// an overlay where the kernel has tcx.
    pub tc_underlay: Option<SchedClassifier>,
    /// Network policy alone, on the host-side veths where one isolates.
    pub tc_police: Option<SchedClassifier>,
}

impl Programs {
    /// The programs a datapath pinned in `pins` has pinned.
    pub fn pinned_names(pins: &Path) -> Vec<&'static str> {
        let dir = programs_dir(pins);
        programs::ALL
            .into_iter()
            .filter(|name| dir.join(name).exists())
            .collect()
    }

    /// Opens the programs pinned in `pins`, or None when one of `needed` is
    /// not pinned (a datapath made without the hook that needs it, or by a
    /// netpath that did not pin its programs).
    pub fn pinned(pins: &Path, needed: &[&str]) -> Result<Option<Programs>> {
        let dir = programs_dir(pins);
        if !needed.iter().all(|name| dir.join(name).exists()) {
            return Ok(None);
        }
        let open_error =
            |name: &str| format!("opening pinned program {}", dir.join(name).display());
        let xdp = |name: &str| {
            let pin = dir.join(name);
            pin.exists()
                .then(|| {
                    Xdp::from_pin(pin, XdpAttachType::Interface).with_context(|| open_error(name))
                })
                .transpose()
        };
        let tc = |name: &str| {
            let pin = dir.join(name);
            pin.exists()
                .then(|| SchedClassifier::from_pin(pin).with_context(|| open_error(name)))
                .transpose()
        };
        Ok(Some(Programs {
            xdp_forward: xdp(programs::XDP_FORWARD)?,
            xdp_peer: xdp(programs::XDP_PEER)?,
            tc_forward: tc(programs::TC_FORWARD)?,
            tc_vxlan: tc(programs::TC_VXLAN)?,
            tc_underlay: tc(programs::TC_UNDERLAY)?,
            tc_police: tc(programs::TC_POLICE)?,
        }))
    }
}

pub fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("BPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("BPF program {name} has an unexpected type"))
}

/// The name of a loaded program, for `status`.
pub fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("id {id}"))
}

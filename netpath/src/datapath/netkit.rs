//! netkit links: a program on a netkit pair's peer hook (it runs as the
//! container transmits), attached through the primary device as a
//! bpf_link, pinned like the XDP and tcx links. aya 0.14 attaches tcx but
//! not netkit (its `LinkType::Netkit` only names the kind), so these are the
//! four `bpf()` commands it needs, written out: create, pin, open a pin,
//! swap the program, and which program a device runs.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type`: the program the peer device runs as it
/// transmits (the container's frames), and the primary's (frames to it).
const BPF_NETKIT_PEER: u32 = 55;

/// `link_create` of `union bpf_attr`, as netkit reads it.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// `link_update` of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The pin commands' part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `query` of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the repr(C) prefix of `union bpf_attr` that `cmd`
    // reads, with its size; the kernel reads (and for a query, writes) no
    // more than that.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("pin path {} has a NUL byte", path.display()))
}

/// Attaches `program` to the peer hook of the netkit pair whose primary
/// device is `primary` (`ifindex`) and pins the link at `pin`.
pub fn attach_peer(program: impl AsFd, primary: &str, ifindex: u32, pin: &Path) -> Result<()> {
    let mut attr = LinkCreate {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_NETKIT_PEER,
        ..Default::default()
    };
    let link = bpf(BPF_LINK_CREATE, &mut attr)
        .map(owned)
        .with_context(|| {
            format!(
                "attaching the tc program to the netkit peer hook of {primary} (BPF_LINK_CREATE, \
             BPF_NETKIT_PEER; needs Linux 6.7+ and {primary} a netkit primary device)"
            )
        })?;
    let path = c_path(pin)?;
    let mut attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr)
        .with_context(|| format!("pinning netkit link {}", pin.display()))?;
    Ok(())
}

/// Gives the pinned netkit link at `pin` `program`, atomically (every
/// frame meets the old program or the new one).
pub fn update(pin: &Path, program: impl AsFd) -> Result<()> {
    let path = c_path(pin)?;
    let mut attr = ObjPin {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let link = bpf(BPF_OBJ_GET, &mut attr)
        .map(owned)
        .with_context(|| format!("opening pinned netkit link {}", pin.display()))?;
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr)
        .with_context(|| format!("replacing the program of netkit link {}", pin.display()))?;
    Ok(())
}

/// The ids of the programs on the peer hook of the netkit primary
/// `ifindex`; none for a device that is no netkit primary (or a kernel
/// without netkit).
pub fn peer_programs(ifindex: u32) -> Vec<u32> {
    let mut ids = [0u32; 8];
    let mut attr = ProgQuery {
        target_ifindex: ifindex,
        attach_type: BPF_NETKIT_PEER,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    match bpf(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec(),
        Err(_) => Vec::new(),
    }
}

//! The two offload settings XDP forwarding between veths depends on, set
//! through the SIOCETHTOOL ioctl on the interface of the calling thread's
//! network namespace.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// Legacy ethtool commands, still mapped onto netdev features by the kernel.
#[derive(Clone, Copy, Debug)]
pub enum Offload {
    /// `ethtool -K IF tx on|off`: checksum offload on transmit (and with it TSO).
    TxChecksum,
    /// `ethtool -K IF gro on|off`: generic receive offload (on veth: NAPI).
    Gro,
}

impl Offload {
    fn set_command(self) -> u32 {
        match self {
            Offload::TxChecksum => 0x17, // ETHTOOL_STXCSUM
            Offload::Gro => 0x2c,        // ETHTOOL_SGRO
        }
    }

    fn get_command(self) -> u32 {
        match self {
            Offload::TxChecksum => 0x16, // ETHTOOL_GTXCSUM
            Offload::Gro => 0x2b,        // ETHTOOL_GGRO
        }
    }
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// One SIOCETHTOOL call with `value` on interface `ifname`.
fn ioctl(ifname: &str, value: &mut EthtoolValue) -> std::io::Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: req is a valid ifreq whose data points at a live ethtool_value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns `offload` on or off for interface `ifname`.
pub fn set(ifname: &str, offload: Offload, on: bool) -> Result<()> {
    let mut value = EthtoolValue {
        cmd: offload.set_command(),
        data: on as u32,
    };
    let state = if on { "on" } else { "off" };
    ioctl(ifname, &mut value)
        .with_context(|| format!("ethtool: turning {offload:?} {state} on {ifname}"))
}

/// Whether `offload` is on for interface `ifname`.
pub fn get(ifname: &str, offload: Offload) -> Result<bool> {
    let mut value = EthtoolValue {
        cmd: offload.get_command(),
        data: 0,
    };
    ioctl(ifname, &mut value)
        .with_context(|| format!("ethtool: reading {offload:?} of {ifname}"))?;
    Ok(value.data != 0)
}

//! The two offload settings XDP forwarding between veths depends on, set
//! through the SIOCETHTOOL ioctl on the interface of the calling thread's
//! network namespace.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};
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

/// Turns `offload` on or off for interface `ifname`.
pub fn set(ifname: &str, offload: Offload, on: bool) -> Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname} is too long");
    }
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .context("opening a socket for ethtool")?;
    let mut value = EthtoolValue { cmd: offload.set_command(), data: on as u32 };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: req is a valid ifreq whose data points at a live ethtool_value.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    if ret < 0 {
        let state = if on { "on" } else { "off" };
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("ethtool: turning {offload:?} {state} on {ifname}"));
    }
    Ok(())
}

//! The crate's only unsafe code: the ioctls that turn an open
//! `/dev/net/tun` into a TUN device, and a thread's nice value. Neither
//! std nor nix wraps TUNSETIFF, TUNSETOFFLOAD or sched_setscheduler safely, and a
//! TUN crate would bring an async runtime and its own configuration layer
//! for two calls.
#![expect(
    unsafe_code,
    reason = "TUNSETIFF/TUNSETOFFLOAD ioctls and sched_setscheduler have no safe wrapper"
)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Size of the `virtio_net_hdr` that precedes every packet on a device
/// opened with offloads (the kernel's default TUNSETVNETHDRSZ).
pub(crate) const VNET_HDR_LEN: usize = 10;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a
/// `short`), padded to the union's 24 bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device `name` in the calling thread's network namespace and
/// returns its (non-blocking) file. Without `offload`, every read is one
/// IP packet. With `offload`, the device takes and gives TCP segments of up
/// to 64 KiB (GSO), each behind a [`VNET_HDR_LEN`]-byte header, which cuts
/// the per-packet system calls by up to forty times. The device goes away
/// when the file is closed.
pub(crate) fn create_tun(name: &str, offload: bool) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1-15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
    if offload {
        flags |= libc::IFF_VNET_HDR;
    }
    // The flag bits all fit in the kernel's `short`.
    req.flags = flags as libc::c_short;
    // SAFETY: `req` is a live, properly laid out `struct ifreq` (40 bytes,
    // name NUL-terminated because the name is shorter than IFNAMSIZ) for
    // the duration of the call, and the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if offload {
        let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value, not a pointer.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(features),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// Moves the calling thread to the real-time FIFO class at `priority`
/// (1 is the lowest), ahead of every ordinary thread.
pub(crate) fn set_thread_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}

//! Passing a descriptor over a unix socket (`SCM_RIGHTS`): the jailed child
//! hands its seccomp audit listener to the orchestrator, and QMP's `getfd`
//! takes the file a snapshot is written to.
//!
//! Sending is written against libc with the control buffer on the stack,
//! because the jail sends from the forked child, where nothing may allocate
//! (`nix::sys::socket::sendmsg` allocates its control buffer). Receiving
//! happens in the orchestrator and uses `nix`'s `recvmsg`, which parses the
//! control messages.

use std::io::IoSliceMut;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// `CMSG_SPACE(sizeof(int))`: room for one descriptor.
const SPACE: usize = {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
};

/// A control buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; SPACE]);

/// Sends `data` with `fd` attached in one `sendmsg` and returns the bytes
/// sent. Async-signal-safe: no allocation, one system call.
pub fn send_fd(sock: RawFd, data: &[u8], fd: RawFd, flags: libc::c_int) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control = Control([0; SPACE]);
    // SAFETY: msghdr is plain data, all zeroes is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = SPACE;
    // SAFETY: the control buffer holds CMSG_SPACE(sizeof(int)) bytes, so its
    // first header is non-null and has room for one descriptor after it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: every pointer in `msg` points at `iov`, `data` or `control`,
    // all alive for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives one message from `sock` without waiting and returns the
/// descriptor it carries (close-on-exec). Any further descriptors in it are
/// closed.
pub fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let msg = recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut space), flags)?;
    let mut fds: Vec<OwnedFd> = msg
        .cmsgs()?
        .filter_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        // SAFETY: the kernel installed these descriptors for us just now;
        // nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if fds.is_empty() {
        return Err(std::io::Error::other("no descriptor in the message"));
    }
    Ok(fds.swap_remove(0))
}

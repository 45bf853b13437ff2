//! The report channel: a pipe on which the forked child tells the
//! orchestrator which step failed (and its errno), and the reaper tells it
//! the VMM's pid. Messages are 8 bytes, written with one `write` each
//! (async-signal-safe), and read after the spawn returned.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::error::JailStep;
use super::sys;

/// A step failed: `[TAG_ERROR, step, 0, 0, errno]`.
pub(super) const TAG_ERROR: u8 = b'E';
/// The reaper forked the VMM: `[TAG_PID, 0, 0, 0, pid]`.
pub(super) const TAG_PID: u8 = b'P';

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(super) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes one report message (async-signal-safe).
pub(super) fn report(fd: RawFd, tag: u8, step: u8, value: i32) {
    let v = value.to_ne_bytes();
    let msg = [tag, step, 0, 0, v[0], v[1], v[2], v[3]];
    // A short write only loses the detail of an error that std reports anyway.
    let _ = sys::write(fd, &msg);
}

/// Fails the step: reports it on the pipe and returns the errno for std.
pub(super) fn fail(fd: RawFd, step: JailStep, err: i32) -> std::io::Error {
    report(fd, TAG_ERROR, step as u8, err);
    std::io::Error::from_raw_os_error(err)
}

/// Every message on the pipe as `(tag, step, value)`. Non-blocking: every
/// message was written before the spawn returned.
pub(super) fn read_reports(fd: &OwnedFd) -> Vec<(u8, u8, i32)> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on our own descriptor.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: reading into a stack buffer of the given size.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n != 8 {
            return out;
        }
        out.push((
            buf[0],
            buf[1],
            i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ));
    }
}

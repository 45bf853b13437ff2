//! The system calls the forked child makes, one `unsafe` block each.
//!
//! Every wrapper is async-signal-safe: it takes strings prepared before the
//! fork, allocates nothing, and returns the errno on failure.

use std::ffi::CStr;
use std::os::fd::RawFd;

/// The errno of the last failed call.
pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

pub(super) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
}

/// A bind mount of `source` on `target`, remounted read-only with `ro_flags`
/// (`MS_RDONLY` and friends) when `ro_flags` is not 0.
pub(super) fn bind(
    source: &CStr,
    target: &CStr,
    recursive: bool,
    ro_flags: libc::c_ulong,
) -> Result<(), i32> {
    let rec = if recursive { libc::MS_REC } else { 0 };
    mount(Some(source), target, None, libc::MS_BIND | rec, None)?;
    if ro_flags != 0 {
        mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | ro_flags,
            None,
        )?;
    }
    Ok(())
}

pub(super) fn umount_detach(target: &CStr) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// `mkdir`; a directory that exists already is fine.
pub(super) fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path alive for the call.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Creates an empty file (a bind-mount target).
pub(super) fn touch(path: &CStr) -> Result<(), i32> {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path alive for the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return Err(errno());
    }
    close(fd);
    Ok(())
}

pub(super) fn close(fd: RawFd) {
    // SAFETY: `fd` is a descriptor of this process that nothing uses after.
    unsafe { libc::close(fd) };
}

pub(super) fn symlink(target: &CStr, link: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated paths alive for the call.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
}

pub(super) fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<(), i32> {
    // SAFETY: NUL-terminated paths alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(rc as libc::c_int)
}

pub(super) fn chdir(path: &CStr) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::chdir(path.as_ptr()) })
}

pub(super) fn rmdir(path: &CStr) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::rmdir(path.as_ptr()) })
}

pub(super) fn unshare(flags: libc::c_int) -> Result<(), i32> {
    // SAFETY: unshare with integer flags, in a single-threaded child.
    check(unsafe { libc::unshare(flags) })
}

pub(super) fn sethostname(name: &[u8]) -> Result<(), i32> {
    // SAFETY: a buffer and its length.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Sets the supplementary groups to exactly `groups` (none: every one dropped).
pub(super) fn set_groups(groups: &[u32]) -> Result<(), i32> {
    // SAFETY: a buffer of `groups.len()` gids (gid_t is u32), alive for the call.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
}

pub(super) fn setresgid(gid: libc::gid_t) -> Result<(), i32> {
    // SAFETY: plain id syscall.
    check(unsafe { libc::setresgid(gid, gid, gid) })
}

pub(super) fn setresuid(uid: libc::uid_t) -> Result<(), i32> {
    // SAFETY: plain id syscall.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

pub(super) fn set_no_new_privs() -> Result<(), i32> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

pub(super) fn set_death_signal(signal: libc::c_int) -> Result<(), i32> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) })
}

/// Whether `fd` has something to read or was hung up, without waiting.
pub(super) fn ready(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
}

/// Writes all of `buf` in one call; a short write is `EIO`.
pub(super) fn write(fd: RawFd, buf: &[u8]) -> Result<(), i32> {
    // SAFETY: writing from a live buffer of the given length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    match n {
        n if n == buf.len() as isize => Ok(()),
        n if n < 0 => Err(errno()),
        _ => Err(libc::EIO),
    }
}

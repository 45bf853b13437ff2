//! The reaper: after `unshare(CLONE_NEWPID)` only later children enter the
//! new PID namespace, so the child forks once more. The new process becomes
//! the VMM, PID 1 of its namespace; the first stays as a small reaper that
//! reports the VMM's pid, mirrors its exit status and dies with it, and is
//! the process the orchestrator holds.
//!
//! An "alive" pipe ties the two: the reaper keeps its write end open, so the
//! VMM sees it hung up when the reaper is gone. With `PR_SET_PDEATHSIG` the
//! VMM is killed when the reaper dies.

use std::os::fd::RawFd;

use super::error::JailStep;
use super::report::{fail, report, TAG_PID};
use super::sys::{self, errno};

/// Forks; the parent becomes the reaper and never returns. Returns in the
/// VMM, tied to the reaper by the death signal.
pub(super) fn fork_into_pid_namespace(
    rep: RawFd,
    alive_r: RawFd,
    alive_w: RawFd,
) -> std::io::Result<()> {
    // SAFETY: fork in a single-threaded child; both sides only make
    // async-signal-safe calls afterwards.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(rep, JailStep::ForkPidNamespace, errno()));
    }
    if pid > 0 {
        reap(rep, pid, alive_w);
    }
    // The VMM side: die with the reaper.
    sys::close(alive_w);
    die_with_reaper(rep, alive_r)
}

/// The reaper: tells the orchestrator the VMM's pid, drops every descriptor
/// but the "alive" pipe (std's exec-status pipe included, or the spawn would
/// wait for this process), waits for the VMM and ends as it ended.
fn reap(rep: RawFd, pid: libc::pid_t, alive_w: RawFd) -> ! {
    report(rep, TAG_PID, 0, pid);
    close_all_but(alive_w);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child, into a stack integer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || (r < 0 && errno() != libc::EINTR) {
            break;
        }
    }
    if libc::WIFSIGNALED(status) {
        // Mirror a signal by re-raising it with its default action.
        let sig = libc::WTERMSIG(status);
        // SAFETY: resetting a signal's disposition to the default.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), sig) };
        exit(128 + sig);
    }
    exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    })
}

/// `_exit`: skips the atexit handlers of the orchestrator this was forked from.
fn exit(code: libc::c_int) -> ! {
    // SAFETY: _exit ends the process without running any user code.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor of this process but `keep`.
fn close_all_but(keep: RawFd) {
    let max = libc::c_uint::MAX;
    // SAFETY: closing descriptors of this process only (Linux >= 5.9).
    let a = unsafe { libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32) };
    // SAFETY: as above.
    let b = unsafe { libc::syscall(libc::SYS_close_range, (keep + 1) as u32, max, 0u32) };
    if a != 0 || b != 0 {
        // Older kernels: one by one.
        for fd in (0..4096).filter(|fd| *fd != keep) {
            sys::close(fd);
        }
    }
}

/// Sets SIGKILL as parent-death signal and checks that the reaper did not
/// die before (its end of the "alive" pipe would be closed). Needed again
/// after the uid change, which clears the death signal.
pub(super) fn die_with_reaper(rep: RawFd, alive_r: RawFd) -> std::io::Result<()> {
    sys::set_death_signal(libc::SIGKILL).map_err(|e| fail(rep, JailStep::ParentDeathSignal, e))?;
    if sys::ready(alive_r) {
        return Err(fail(rep, JailStep::ParentDeathSignal, libc::ESRCH));
    }
    Ok(())
}

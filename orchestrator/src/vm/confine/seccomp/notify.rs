//! Supervisors of a process's user-notification listener
//! (`SECCOMP_RET_USER_NOTIF`): the audit one records each unlisted call and
//! lets it continue, or refuses it when it is in the *never* set; the
//! exec-once one lets the process's own start through and refuses every
//! later `execve`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::audit::AuditLog;
use super::error::SeccompError;
use super::rules::is_never;

/// Serves the audit listener of one process on its own thread until every
/// task using the filter has exited.
pub fn supervise(
    listener: OwnedFd,
    process: &'static str,
    log: Arc<AuditLog>,
) -> Result<std::thread::JoinHandle<()>, SeccompError> {
    std::thread::Builder::new()
        .name("ironclaw-seccomp-audit".into())
        .spawn(move || serve(listener, process, &log))
        .map_err(SeccompError::Supervisor)
}

/// Serves the exec listener of one process until it exits: the first
/// `execve` (the one that starts the process, made by our jail child) goes
/// through, every later one is refused with EPERM. Should this stop, the
/// kernel answers the process's `execve` with ENOSYS: it fails closed.
pub fn serve_exec_once(listener: OwnedFd, process: &'static str) {
    let mut started = false;
    serve_with(listener, |pid, nr, _| {
        let first = !started && (nr == libc::SYS_execve || nr == libc::SYS_execveat);
        if first {
            started = true;
        } else {
            tracing::warn!(process, pid, "an exec after start was refused");
        }
        first
    })
}

fn serve(listener: OwnedFd, process: &'static str, log: &AuditLog) {
    serve_with(listener, |pid, nr, arg0| {
        let refused = is_never(nr, arg0);
        log.record(process, pid, nr, arg0, refused);
        !refused
    })
}

/// Answers every notification of `listener` with `decide(pid, nr, arg0)`:
/// continue the call, or refuse it with EPERM; until no task uses the filter.
fn serve_with(listener: OwnedFd, mut decide: impl FnMut(u32, i64, u64) -> bool) {
    let fd = listener.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            // No task uses the filter any more.
            return;
        }
        // The kernel wants it zeroed.
        // SAFETY: plain integers: all zeroes is a valid value.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel fills `notif`, the type the RECV ioctl expects.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } != 0 {
            // ENOENT: the caller died before we read it; go on.
            continue;
        }
        let allowed = decide(notif.pid, notif.data.nr as i64, notif.data.args[0]);
        let refused = !allowed;
        let mut resp = libc::seccomp_notif_resp {
            id: notif.id,
            val: 0,
            error: if refused { -libc::EPERM } else { 0 },
            flags: if refused {
                0
            } else {
                libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
            },
        };
        // SAFETY: `resp` is the type the SEND ioctl expects. An error means
        // the caller is gone, which needs no answer.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

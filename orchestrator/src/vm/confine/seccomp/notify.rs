//! The audit supervisor: serves the user-notification listener of one
//! process (`SECCOMP_RET_USER_NOTIF`), records each unlisted call and lets
//! it continue, or refuses it when it is in the *never* set.

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

fn serve(listener: OwnedFd, process: &'static str, log: &AuditLog) {
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
        let nr = notif.data.nr as i64;
        let arg0 = notif.data.args[0];
        let refused = is_never(nr, arg0);
        log.record(process, notif.pid, nr, arg0, refused);
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

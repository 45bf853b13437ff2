//! The jail every VMM process starts in.
//!
//! In the forked child, before `exec`, in this order (each failure stops the
//! spawn with an error naming the step; nothing is skipped with a warning):
//! 1. join the VM's cgroup (memory, CPU, pids limits: [`super::cgroup`]);
//! 2. new mount, PID, IPC, UTS and network namespaces. The network namespace
//!    is empty: no interface but a `lo` that stays down, so even an IP socket
//!    the seccomp filter let through would reach nothing;
//! 3. fork, so the VMM is PID 1 of its PID namespace (`unshare` moves only
//!    later children); the first child stays as a small reaper that mirrors
//!    the VMM's exit status and dies with it, and is what the orchestrator holds;
//! 4. mounts made private, a fresh `/proc` for the new PID namespace, and the
//!    boot files bind-mounted read-only into the runtime directory (so an
//!    unprivileged uid can read an initramfs cached under a private home);
//! 5. hostname, then an unprivileged uid/gid with no supplementary groups
//!    but those the spec keeps (`/dev/kvm`'s for QEMU with KVM);
//! 6. `no_new_privs` and the seccomp filter ([`super::seccomp`]), last, so it
//!    covers everything from `exec` on.
//!
//! The files follow these steps: [`child`] runs them in the forked child
//! (the `pre_exec` closure), [`reaper`] is step 3, [`root`] the minimal root
//! of step 4, [`report`] the pipe on which the child names a failed step,
//! [`error`] the steps and errors, [`ids`] the uid choice, and [`inspect`]
//! reads back from `/proc` what confines a running process.

mod child;
mod error;
mod ids;
mod inspect;
mod reaper;
mod report;
mod root;
mod sys;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::fd_pass;
pub use super::perm::reachable;
use super::perm::readable_by;
use super::seccomp::{self, SeccompFilter};
use crate::vm::process;
use child::ChildPlan;
pub use error::{JailError, JailStep};
pub use ids::{dir_hash, lease_from, vm_ids};
pub use inspect::{proc_status, ProcStatus, ProcessConfinement};
use report::{pipe, read_reports, TAG_ERROR, TAG_PID};
use root::{cstr, RootPlan};

/// A read-only bind mount into the runtime directory.
#[derive(Debug, Clone)]
pub struct Bind {
    pub what: &'static str,
    pub source: PathBuf,
    pub target: PathBuf,
    /// A program: keep it executable (boot files are mounted `noexec`).
    pub exec: bool,
}

/// How to confine one process.
#[derive(Debug, Default)]
pub struct JailSpec {
    /// New namespaces (+ the fork for the PID namespace), private mounts, /proc.
    pub namespaces: bool,
    /// `(uid, gid)` to switch to; `None` keeps the orchestrator's.
    pub ids: Option<(u32, u32)>,
    /// Supplementary groups kept after the uid change: the group of a device
    /// the process must open (`/dev/kvm`'s, with KVM). Every other group is
    /// dropped.
    pub groups: Vec<u32>,
    pub binds: Vec<Bind>,
    /// The files the (single-threaded) child writes `0` to, to join the VM's
    /// cgroup(s): [`super::cgroup::VmCgroup::join_files`].
    pub cgroup_join: Vec<OwnedFd>,
    pub seccomp: Option<SeccompFilter>,
    /// With namespaces: switch into a minimal root holding only what a VMM
    /// needs (`/usr` and the loader's cache read-only, a few devices, `/proc`,
    /// `/sys` read-only) and this runtime directory, read-write at its own
    /// path. Nothing else of the host's file system is visible to the VMM.
    pub minimal_root: Option<PathBuf>,
}

/// A started, confined process.
#[derive(Debug)]
pub struct Confined {
    /// The child the orchestrator forked: the VMM itself, or (with namespaces)
    /// the reaper whose child is the VMM. Killing it kills the VMM.
    pub child: Child,
    /// Host pid of the VMM process itself.
    pub pid: u32,
    /// A pidfd of the VMM, to signal it without racing pid reuse.
    pub pidfd: Option<OwnedFd>,
    /// The seccomp user-notification listener (audit level).
    pub audit_listener: Option<OwnedFd>,
}

impl Confined {
    /// SIGKILLs the VMM and its reaper and waits for the reaper (which waits
    /// for the VMM, PID 1 of its namespace, whose death ends the namespace).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(fd) = &self.pidfd {
                // SAFETY: pidfd_send_signal on a pidfd we own.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                // Let the reaper collect the VMM and exit by itself: killed
                // first, it would leave the VMM a zombie for init to reap.
                // Woken by the reaper's exit (its pidfd becomes readable),
                // not by a polling step; 2 s at most.
                let reaper = process::pidfd_open(self.child.id());
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while matches!(self.child.try_wait(), Ok(None)) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match &reaper {
                        Some(fd) => process::wait_readable(fd, left),
                        None => std::thread::sleep(std::time::Duration::from_millis(1)),
                    }
                }
            }
        }
        process::kill_and_reap(&mut self.child);
    }
}

/// Checks that `uid`/`gid` can read `path` by its mode bits (the jail reads
/// it through a bind mount, so only the file's own permissions count).
pub fn check_readable(
    what: &'static str,
    path: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|source| JailError::Prepare {
        process: "vmm",
        what,
        source,
    })?;
    if readable_by(&m, uid, gid) {
        Ok(())
    } else {
        Err(JailError::Unreadable {
            what,
            path: path.to_path_buf(),
            uid,
            mode: m.mode() & 0o7777,
        })
    }
}

/// Starts `cmd` confined as `spec` says, killed when the orchestrator dies.
/// `process` names it in errors.
pub fn spawn(cmd: Command, spec: JailSpec, process: &'static str) -> Result<Confined, JailError> {
    let prep = |what| {
        move |source| JailError::Prepare {
            process,
            what,
            source,
        }
    };
    let (report_r, report_w) = pipe().map_err(prep("the report pipe"))?;
    let (alive_r, alive_w) = pipe().map_err(prep("the reaper pipe"))?;
    let listens = spec.seccomp.as_ref().is_some_and(|f| f.has_listener());
    let exec_once = spec.seccomp.as_ref().is_some_and(|f| f.exec_once);
    let (audit_parent, audit_child) = if listens {
        let (a, b) = std::os::unix::net::UnixStream::pair().map_err(prep("the audit socket"))?;
        (Some(a), Some(OwnedFd::from(b)))
    } else {
        (None, None)
    };
    let binds = spec
        .binds
        .iter()
        .map(|b| Ok((cstr(&b.source)?, cstr(&b.target)?, b.exec)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(prep("bind mount paths"))?;
    let namespaces = spec.namespaces;
    let root = match (&spec.minimal_root, namespaces) {
        (Some(dir), true) => Some(RootPlan::prepare(dir).map_err(prep("the minimal root"))?),
        _ => None,
    };
    let mut plan = ChildPlan {
        namespaces,
        ids: spec.ids,
        groups: spec.groups,
        binds,
        cgroup_join: spec.cgroup_join,
        seccomp: spec.seccomp,
        report_w,
        alive_r,
        alive_w,
        audit_sock: audit_child,
        root,
    };
    // ChildPlan::run makes only async-signal-safe calls and allocates
    // nothing (all strings and programs were prepared above).
    // Exec-once: the child's exec waits for its supervisor, and spawning
    // waits for that exec; so the supervisor takes the listener and serves
    // it on a thread of its own, started first. Without it (the child
    // failed before sending one) the exec fails (ENOSYS): closed.
    let mut audit_parent = audit_parent;
    if exec_once {
        let sock = audit_parent
            .take()
            .expect("exec-once filters have a listener");
        std::thread::Builder::new()
            .name("ironclaw-seccomp-exec".into())
            .spawn(move || {
                if let Some(listener) = recv_listener(&sock) {
                    seccomp::serve_exec_once(listener, process);
                }
            })
            .map_err(prep("the exec supervisor"))?;
    }
    let spawned = process::spawn_child_then(cmd, move || plan.run());
    // The Command (and with it the child's ends of the pipes) is gone now.
    let msgs = read_reports(&report_r);
    let failed = msgs.iter().find(|m| m.0 == TAG_ERROR);
    let mut child = match (spawned, failed) {
        (Err(_), Some(&(_, step, err))) | (Ok(_), Some(&(_, step, err))) => {
            let step = JailStep::from_u8(step).unwrap_or(JailStep::Unshare);
            return Err(JailError::Step {
                process,
                step,
                source: std::io::Error::from_raw_os_error(err),
            });
        }
        (Err(source), None) => return Err(JailError::Spawn { process, source }),
        (Ok(child), None) => child,
    };
    let pid = if namespaces {
        match msgs.iter().find(|m| m.0 == TAG_PID) {
            Some(&(_, _, p)) => p as u32,
            None => {
                process::kill_and_reap(&mut child);
                return Err(JailError::Step {
                    process,
                    step: JailStep::ForkPidNamespace,
                    source: std::io::Error::other("the reaper did not report the VMM's pid"),
                });
            }
        }
    } else {
        child.id()
    };
    // Our child or grandchild: it cannot be reaped and its pid reused before
    // its reaper, which is alive, waits for it.
    let pidfd = process::pidfd_open(pid);
    let audit_listener = match audit_parent {
        Some(sock) => match fd_pass::recv_fd(sock.as_raw_fd()) {
            Ok(fd) => Some(fd),
            Err(source) => {
                let mut c = Confined {
                    child,
                    pid,
                    pidfd,
                    audit_listener: None,
                };
                c.kill();
                return Err(JailError::Step {
                    process,
                    step: JailStep::SendAuditListener,
                    source,
                });
            }
        },
        None => None,
    };
    Ok(Confined {
        child,
        pid,
        pidfd,
        audit_listener,
    })
}

/// The listener the child sends before its exec: waits (boundedly) for it;
/// `None` when the child failed before sending one.
fn recv_listener(sock: &std::os::unix::net::UnixStream) -> Option<OwnedFd> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. Bounded: a child that failed before sending
    // may leave the socket open in its reaper.
    unsafe { libc::poll(&mut pfd, 1, LISTENER_WAIT_MS) };
    fd_pass::recv_fd(sock.as_raw_fd()).ok()
}

/// How long the child may take to send its listener.
const LISTENER_WAIT_MS: libc::c_int = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kernel");
        std::fs::write(&f, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = check_readable("kernel", &f, 2_000_000_001, 2_000_000_001).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
        assert!(err.to_string().contains("600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        check_readable("kernel", &f, 2_000_000_001, 2_000_000_001).unwrap();
    }
}

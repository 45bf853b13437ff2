//! The jail's steps in the forked child, before `exec` (the `pre_exec`
//! closure). Everything was prepared before the fork: only async-signal-safe
//! calls here, no allocation.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::super::fd_pass;
use super::super::seccomp::{InstallStep, SeccompFilter};
use super::error::JailStep;
use super::reaper;
use super::report::fail;
use super::root::{RootPlan, PROC, RO, SLASH};
use super::sys;

const HOSTNAME: &[u8] = b"ironclaw-vm";

/// Everything the child needs, prepared before the fork.
pub(super) struct ChildPlan {
    pub namespaces: bool,
    pub ids: Option<(u32, u32)>,
    /// Supplementary groups to keep (prepared before the fork).
    pub groups: Vec<u32>,
    /// (source, target, executable) read-only bind mounts.
    pub binds: Vec<(CString, CString, bool)>,
    pub cgroup_join: Vec<OwnedFd>,
    pub seccomp: Option<SeccompFilter>,
    /// The write end of the report channel.
    pub report_w: OwnedFd,
    /// Both ends of the reaper's "alive" pipe.
    pub alive_r: OwnedFd,
    pub alive_w: OwnedFd,
    /// Where the audit listener goes (audit level).
    pub audit_sock: Option<OwnedFd>,
    pub root: Option<RootPlan>,
}

impl ChildPlan {
    /// Runs in the forked child, in the jail's order (see [`super`]).
    pub(super) fn run(&mut self) -> std::io::Result<()> {
        let rep = self.report_w.as_raw_fd();
        for fd in &self.cgroup_join {
            sys::write(fd.as_raw_fd(), b"0").map_err(|e| fail(rep, JailStep::JoinCgroup, e))?;
        }
        if self.namespaces {
            let flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET;
            sys::unshare(flags).map_err(|e| fail(rep, JailStep::Unshare, e))?;
            reaper::fork_into_pid_namespace(
                rep,
                self.alive_r.as_raw_fd(),
                self.alive_w.as_raw_fd(),
            )?;
            self.mounts(rep)?;
            if let Some(root) = &self.root {
                root.enter(rep)?;
            }
            sys::sethostname(HOSTNAME).map_err(|e| fail(rep, JailStep::Hostname, e))?;
        }
        if let Some((uid, gid)) = self.ids {
            sys::set_groups(&self.groups).map_err(|e| fail(rep, JailStep::SetGroups, e))?;
            sys::setresgid(gid).map_err(|e| fail(rep, JailStep::SetGid, e))?;
            sys::setresuid(uid).map_err(|e| fail(rep, JailStep::SetUid, e))?;
            if self.namespaces {
                // The credential change cleared the death signal.
                reaper::die_with_reaper(rep, self.alive_r.as_raw_fd())?;
            }
        }
        match &self.seccomp {
            Some(filter) => self.install(filter, rep),
            None => sys::set_no_new_privs().map_err(|e| fail(rep, JailStep::NoNewPrivs, e)),
        }
    }

    /// `no_new_privs` and the filter, last; at audit level the listener goes
    /// to the orchestrator and is closed here (the VMM must not keep it: it
    /// could answer its own notifications).
    fn install(&self, filter: &SeccompFilter, rep: RawFd) -> std::io::Result<()> {
        match filter.install() {
            Ok(Some(listener)) => {
                let sock = self.audit_sock.as_ref().map_or(-1, |s| s.as_raw_fd());
                let sent = fd_pass::send_fd(sock, &[0], listener, 0);
                sys::close(listener);
                match sent {
                    Ok(_) => Ok(()),
                    Err(e) => Err(fail(
                        rep,
                        JailStep::SendAuditListener,
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )),
                }
            }
            Ok(None) => Ok(()),
            Err((InstallStep::NoNewPrivs, e)) => Err(fail(rep, JailStep::NoNewPrivs, e)),
            Err((InstallStep::Seccomp, e)) => Err(fail(rep, JailStep::Seccomp, e)),
        }
    }

    /// Private mounts, a `/proc` of the new PID namespace, the boot files.
    fn mounts(&self, rep: RawFd) -> std::io::Result<()> {
        sys::mount(None, SLASH, None, libc::MS_REC | libc::MS_PRIVATE, None)
            .map_err(|e| fail(rep, JailStep::MountPrivate, e))?;
        let noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        sys::mount(Some(PROC), c"/proc", Some(PROC), noexec, None)
            .map_err(|e| fail(rep, JailStep::MountProc, e))?;
        for (src, dst, exec) in &self.binds {
            let ro = if *exec { RO } else { RO | libc::MS_NOEXEC };
            sys::bind(src, dst, false, ro).map_err(|e| fail(rep, JailStep::BindBootFiles, e))?;
        }
        Ok(())
    }
}

//! The steps of the jail and its errors: a failing step stops the spawn
//! and is named.

use std::path::PathBuf;

use serde::Serialize;

use super::super::cgroup::CgroupError;
use super::super::seccomp::SeccompError;

/// The steps of the jail, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum JailStep {
    JoinCgroup = 1,
    Unshare,
    ForkPidNamespace,
    ParentDeathSignal,
    MountPrivate,
    MountProc,
    BindBootFiles,
    Hostname,
    SetGroups,
    SetGid,
    SetUid,
    NoNewPrivs,
    Seccomp,
    SendAuditListener,
    MinimalRoot,
    PivotRoot,
}

impl JailStep {
    pub(super) const ALL: [JailStep; 16] = [
        JailStep::JoinCgroup,
        JailStep::Unshare,
        JailStep::ForkPidNamespace,
        JailStep::ParentDeathSignal,
        JailStep::MountPrivate,
        JailStep::MountProc,
        JailStep::BindBootFiles,
        JailStep::Hostname,
        JailStep::SetGroups,
        JailStep::SetGid,
        JailStep::SetUid,
        JailStep::NoNewPrivs,
        JailStep::Seccomp,
        JailStep::SendAuditListener,
        JailStep::MinimalRoot,
        JailStep::PivotRoot,
    ];

    pub(super) fn from_u8(v: u8) -> Option<JailStep> {
        JailStep::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

impl std::fmt::Display for JailStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailStep::JoinCgroup => "joining the VM's cgroup",
            JailStep::Unshare => "creating mount/PID/IPC/UTS/network namespaces",
            JailStep::ForkPidNamespace => "forking into the new PID namespace",
            JailStep::ParentDeathSignal => "setting the parent-death signal",
            JailStep::MountPrivate => "making mounts private",
            JailStep::MountProc => "mounting /proc for the PID namespace",
            JailStep::BindBootFiles => "bind-mounting the boot files read-only",
            JailStep::Hostname => "setting the hostname",
            JailStep::SetGroups => "dropping supplementary groups",
            JailStep::SetGid => "switching to the jail gid",
            JailStep::SetUid => "switching to the jail uid",
            JailStep::NoNewPrivs => "setting no_new_privs",
            JailStep::Seccomp => "installing the seccomp filter",
            JailStep::SendAuditListener => "handing the seccomp audit listener to the orchestrator",
            JailStep::MinimalRoot => "building the minimal root file system",
            JailStep::PivotRoot => "switching into the minimal root (pivot_root)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail of {process}: {step} failed: {source}")]
    Step {
        process: &'static str,
        step: JailStep,
        #[source]
        source: std::io::Error,
    },
    #[error("jail of {process}: starting it failed: {source}")]
    Spawn {
        process: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail of {process}: preparing {what} failed: {source}")]
    Prepare {
        process: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: {what} {path} cannot be read by the jail uid {uid} (mode {mode:o}); make it readable by others (chmod o+r) or set confinement.uid to a uid that can read it")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        mode: u32,
    },
    #[error("jail: confining the VMM needs root (namespaces, cgroups, a uid change); run as root, or set confinement.jail = false to run with the seccomp filter only")]
    NotRoot,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: VM cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("jail: {0}")]
    Seccomp(#[from] SeccompError),
}

impl JailError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> JailError {
        JailError::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_the_report_byte() {
        for s in JailStep::ALL {
            assert_eq!(JailStep::from_u8(s as u8), Some(s));
            assert!(!s.to_string().is_empty());
        }
    }
}

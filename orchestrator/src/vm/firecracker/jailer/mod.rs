//! Launching Firecracker through its `jailer`.
//!
//! The jailer (Firecracker's own, run as root) builds the chroot
//! `<chroot base>/<exec-file name>/<id>/root`, copies the `firecracker`
//! binary into it, creates the VM's cgroups
//! (`<controller mount>/<parent cgroup>/<id>`) and writes the `--cgroup`
//! limits, joins the network namespace given with `--netns`, `pivot_root`s
//! into the chroot, makes `/dev/kvm`, drops to `--uid`/`--gid` and execs
//! Firecracker in the same process (no `--daemonize`, no `--new-pid-ns`: the
//! pid the orchestrator spawned stays the Firecracker process it kills).
//!
//! What the jailer leaves to its caller, and [`Jail`] does:
//! - place every file Firecracker opens inside the chroot (hard link when on
//!   the same file system and readable by the jail uid, else a copy owned by
//!   it) and name it in API requests by its path *inside* the chroot;
//! - create what Firecracker writes (its log, the `/run` directory of the API
//!   socket) owned by the jail uid;
//! - snapshots: written by Firecracker into a directory of the chroot it may
//!   write, then checked and moved out ([`Jail::take_snapshot_out`]); placed
//!   into a new jail's chroot for loading ([`Jail::prepare_restore`]);
//! - an empty network namespace, so Firecracker has no interface but a down `lo`;
//! - clean up: the chroot directory `<base>/<exec name>/<id>` and the cgroups
//!   on destroy, and (recorded in the runtime directory) after a crash.
//!
//! Every step fails closed: an error names the step and nothing is started
//! unjailed.

mod cgroups;
mod config;
mod jail;
mod netns;
mod snapshot;

use std::path::PathBuf;

use super::files::SnapshotFiles;

pub use cgroups::{cgroup_args, cgroup_dirs, CgroupVersion};
pub use config::{check_id, JailerConfig};
pub use jail::Jail;
pub use netns::Netns;

pub const JAILER_BINARY: &str = "jailer";
/// The jailer's own default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// `--parent-cgroup`: the same parent name as the QEMU backend's VM cgroups,
/// so [`cgroup::is_ours`](crate::vm::cgroup::is_ours) (used when reaping) accepts the jailer's cgroups too.
pub const PARENT_CGROUP: &str = "ironclaw";
/// Paths as the jailed Firecracker sees them (relative to the chroot).
pub const API_SOCKET_IN_JAIL: &str = "/run/firecracker.socket";
pub const KERNEL_IN_JAIL: &str = "/vmlinux";
pub const INITRAMFS_IN_JAIL: &str = "/initrd";
pub const ROOTFS_IN_JAIL: &str = "/rootfs";
pub const VSOCK_IN_JAIL: &str = "/vsock.sock";
pub const LOG_IN_JAIL: &str = "/firecracker.log";
pub const SECCOMP_FILTER_IN_JAIL: &str = "/seccomp-filter.bpf";
/// Where a snapshot is written (a directory owned by the jail uid while
/// Firecracker writes it) and where a snapshot is placed for loading.
pub const SNAPSHOT_DIR_IN_JAIL: &str = "/snapshot";
pub const VMSTATE_IN_JAIL: &str = "/snapshot/vmstate";
pub const MEMORY_IN_JAIL: &str = "/snapshot/memory";
/// The snapshot files as the jailed Firecracker names them
/// ([`VMSTATE_IN_JAIL`], [`MEMORY_IN_JAIL`]): where it writes one and where
/// one is placed for loading.
pub fn snapshot_files_in_jail() -> SnapshotFiles {
    SnapshotFiles {
        state: VMSTATE_IN_JAIL.into(),
        memory: MEMORY_IN_JAIL.into(),
    }
}
/// The jailer refuses longer ids.
pub const MAX_JAIL_ID: usize = 64;

/// The steps of a jailed launch, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailerStep {
    CheckJailer,
    CheckId,
    DetectCgroups,
    CreateChroot,
    PlaceFiles,
    CreateNetns,
    RunJailer,
    SnapshotOut,
}

impl std::fmt::Display for JailerStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailerStep::CheckJailer => "checking the jailer and firecracker binaries",
            JailerStep::CheckId => "checking the VM id for the jailer",
            JailerStep::DetectCgroups => "finding the cgroup hierarchies for the jailer",
            JailerStep::CreateChroot => "creating the jailer's chroot",
            JailerStep::PlaceFiles => "placing the VM's files in the chroot",
            JailerStep::CreateNetns => "creating an empty network namespace",
            JailerStep::RunJailer => "running the jailer",
            JailerStep::SnapshotOut => "moving the snapshot out of the chroot",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("jailer: {step} failed: {detail}")]
    Invalid { step: JailerStep, detail: String },
    #[error("jailer: {step} failed: {detail}: {source}")]
    Io {
        step: JailerStep,
        detail: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jailer: {step} failed: the jailer {jailer} exited ({status}) before Firecracker created its API socket {socket}; jailer/firecracker output: {output}")]
    Exited {
        step: JailerStep,
        jailer: PathBuf,
        status: String,
        socket: PathBuf,
        output: String,
    },
    #[error("${var}={value:?} is not valid: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

pub(super) fn invalid(step: JailerStep, detail: impl Into<String>) -> JailerError {
    JailerError::Invalid {
        step,
        detail: detail.into(),
    }
}

pub(super) fn io(
    step: JailerStep,
    detail: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> JailerError {
    let detail = detail.into();
    move |source| JailerError::Io {
        step,
        detail,
        source,
    }
}

//! The VMM backends behind one trait. Everything above this module (vsock,
//! agent, CLI) never asks which backend runs a VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::accel::Accel;
use super::channel::GuestChannel;
use super::config::{BackendChoice, VmConfig};
use super::runtime::RuntimeDir;
use super::VmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Qemu,
    Firecracker,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        })
    }
}

/// What a VM is launched for. A backend may set a VM up differently when it
/// is to be snapshotted (QEMU: a virtio-serial channel instead of vsock,
/// because its vhost-user vsock device cannot migrate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchPurpose {
    /// Run commands; never snapshotted.
    Run,
    /// Boot, then [`VmInstance::snapshot`] it (a prototype).
    Snapshot,
}

/// What a backend can do in its current mode, so callers (and `auto`) can
/// choose by what an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// [`VmInstance::snapshot`] and [`Hypervisor::restore`] work.
    pub snapshots: bool,
}

impl From<BackendKind> for BackendChoice {
    fn from(kind: BackendKind) -> BackendChoice {
        match kind {
            BackendKind::Qemu => BackendChoice::Qemu,
            BackendKind::Firecracker => BackendChoice::Firecracker,
        }
    }
}

/// A VMM: starts VMs, from scratch or from a snapshot one of its instances
/// wrote. Everything above this trait (prototypes, the pool, spawn) is
/// backend-neutral.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn kind(&self) -> BackendKind;

    fn capabilities(&self) -> Capabilities;

    /// The accelerator a VM of `config` will run on.
    fn accel(&self, config: &VmConfig) -> Accel;

    /// Everything about this backend that decides whether a snapshot it
    /// wrote of a VM of `config` on `accel` can be restored by it (the VMM
    /// executable, how it is launched, the guest kernel's command line it
    /// boots with), as `name=value` lines for a prototype key.
    fn snapshot_identity(&self, config: &VmConfig, accel: Accel) -> Result<Vec<String>, VmError>;

    /// Starts the VM described by the (validated) `config`, with all its files
    /// in `dir`. On error nothing it started is left running.
    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        purpose: LaunchPurpose,
    ) -> Result<Box<dyn VmInstance>, VmError>;

    /// Starts a VM in `dir` from `snapshot` (the files a
    /// [`VmInstance::snapshot`] of this backend wrote, main file first) and
    /// resumes it. `config` is the snapshotted VM's, renamed for this one.
    async fn restore(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        snapshot: &[PathBuf],
    ) -> Result<Box<dyn VmInstance>, VmError>;
}

/// How a live snapshot copies guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCopy {
    /// The guest runs while its memory is copied and is paused only to copy
    /// what it changed meanwhile and its device state (pre-copy): the
    /// shortest pause, for a VM that runs on. A backend that cannot
    /// (Firecracker) pauses for the whole copy.
    Precopy,
    /// The guest is paused for the whole copy: the shortest call, for a VM
    /// that is destroyed afterwards.
    Paused,
}

/// What a live snapshot wrote.
#[derive(Debug, Clone)]
pub struct LiveSnapshot {
    /// File names in the snapshot directory, main file first.
    pub files: Vec<String>,
    /// How long the guest was paused, as the host measured it (from the
    /// pause, or from when QEMU says it stopped the guest, to the resume).
    pub paused: Duration,
}

/// A running VM as its backend sees it.
#[async_trait]
pub trait VmInstance: Send + Sync {
    /// Pauses the VM and writes its state into the directory `out` (which
    /// exists and is empty); returns the names of the files written, main
    /// file first. The VM stays paused: the caller destroys it.
    async fn snapshot(&mut self, out: &Path) -> Result<Vec<String>, VmError>;
    /// Like [`VmInstance::snapshot`], but the VM runs on afterwards: it is
    /// paused only while its state is written, memory copied as `copy` says
    /// (it runs on also when writing fails). The VM must have been started
    /// for snapshots (a restored clone, or launched with
    /// [`LaunchPurpose::Snapshot`]).
    async fn snapshot_live(&self, out: &Path, copy: LiveCopy) -> Result<LiveSnapshot, VmError>;
    /// The accelerator the VM runs on.
    fn accel(&self) -> Accel;
    /// The transport to the guest agent.
    fn channel(&self) -> Arc<dyn GuestChannel>;
    /// Pids of every host process that belongs to this VM.
    fn pids(&self) -> Vec<u32>;
    /// The guest's serial console log.
    fn console_log(&self) -> PathBuf;
    /// Whether the VMM process has exited (e.g. the guest kernel panicked).
    fn exited(&mut self) -> Option<String>;
    /// Kills every process of the VM and waits for them. Idempotent.
    fn kill(&mut self);
    /// Where the agent announces that it listens, if the backend set that up.
    /// Without it the host probes the channel until the agent answers.
    fn take_ready_listener(&mut self) -> Option<tokio::net::UnixListener> {
        None
    }
    /// What confines each host process of the VM (empty when the backend
    /// leaves confinement to the VMM itself, as Firecracker's built-in filters do).
    fn confinement(&self) -> Vec<super::jail::ProcessConfinement> {
        Vec::new()
    }
    /// The VM's cgroup directories (empty when it runs without a jail).
    fn cgroup_dirs(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// The bounded log of unlisted syscalls, in seccomp audit level.
    fn audit_log(&self) -> Option<Arc<super::seccomp::AuditLog>> {
        None
    }
}

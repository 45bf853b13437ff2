//! Firecracker backend: one `firecracker` process per VM, driven over its API
//! socket (`firecracker.sock` in the VM's runtime directory).
//!
//! [`start_firecracker`] validates the config, starts the process, waits for
//! the socket and then calls [`configure_vm`] (machine, boot source, optional
//! read-only rootfs drive, [`configure_vsock`]) and [`start_instance`]. The
//! guest agent is reached over Firecracker's hybrid vsock socket with the same
//! [`Vsock`](super::vsock::Vsock) type as under QEMU.
//!
//! What is never done: no `/network-interfaces` request exists in [`api`], so
//! no path of this code can give a VM a network device; `--no-seccomp` is never
//! passed, so Firecracker always runs under its built-in seccomp filters (or
//! the filter file given with `--seccomp-filter`).
//!
//! With [`FirecrackerOptions::jailer`] set, Firecracker is started through
//! its `jailer` ([`jailer`]): chroot, unprivileged uid/gid, cgroup limits, an
//! empty network namespace. Every failing step stops the launch; it never
//! falls back to an unjailed Firecracker.

mod actions;
pub mod api;
pub mod client;
mod error;
mod files;
pub mod jailer;
mod launch;
mod options;
mod placement;
mod process;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::accel::Accel;
use super::backend::{BackendKind, Capabilities, Hypervisor, LaunchPurpose, VmInstance};
use super::config::VmConfig;
use super::runtime::{self, RuntimeDir};
use super::VmError;

pub use actions::{
    configure_vm, configure_vsock, create_snapshot, load_snapshot, pause_vm, resume_vm,
    send_ctrl_alt_del, start_instance, ROOTFS_DRIVE_ID,
};
pub use client::{ApiClient, ClientError};
pub use error::FirecrackerError;
pub use files::{
    SnapshotFiles, API_SOCKET, CONSOLE_LOG, FIRECRACKER_BINARY, FIRECRACKER_LOG, MEMORY_FILE,
    VMSTATE_FILE, VSOCK_SOCKET,
};
pub use jailer::{JailerConfig, JailerError};
pub use launch::{launch_in, restore_in};
pub use options::{find_binary, FirecrackerOptions};
use placement::Purpose;
pub use process::{FirecrackerProcess, Stopped, STOP_GRACE};

/// Validates `config`, starts Firecracker (options from the environment) with
/// its API socket in the VM's runtime directory, configures and boots the VM.
/// On any failure the process is killed and the runtime directory removed.
pub async fn start_firecracker(config: &VmConfig) -> Result<FirecrackerProcess, FirecrackerError> {
    config.validate()?;
    let opts = FirecrackerOptions::from_env()?;
    start_firecracker_in(&opts, config, &runtime::runtime_root()).await
}

/// [`start_firecracker`] with explicit options and runtime root.
pub async fn start_firecracker_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    root: &Path,
) -> Result<FirecrackerProcess, FirecrackerError> {
    launch::start_in_new_dir(opts, config, root, Purpose::Boot).await
}

/// Starts a fresh Firecracker process as VM `config.id` under `root` and loads
/// the snapshot `files` into it, its vsock socket moved into the new runtime
/// directory. `config` is the prototype's (for the guest CID); its boot
/// settings are in the snapshot and are not sent again. With a jailer the
/// clone gets a jail of its own, the snapshot (and the rootfs its drive
/// names) placed in its chroot ([`jailer::Jail::prepare_restore`]).
pub async fn restore_firecracker_in(
    opts: &FirecrackerOptions,
    config: &VmConfig,
    root: &Path,
    files: &SnapshotFiles,
    resume: bool,
) -> Result<FirecrackerProcess, FirecrackerError> {
    launch::start_in_new_dir(opts, config, root, Purpose::Restore { files, resume }).await
}

/// The Firecracker backend behind [`Hypervisor`].
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub options: FirecrackerOptions,
}

impl FirecrackerBackend {
    pub fn from_env() -> Result<FirecrackerBackend, VmError> {
        Ok(FirecrackerBackend {
            options: FirecrackerOptions::from_env()?,
        })
    }
}

#[async_trait]
impl Hypervisor for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn capabilities(&self) -> Capabilities {
        // Directly and through the jailer (files moved out of and placed
        // into the chroot).
        Capabilities { snapshots: true }
    }

    fn accel(&self, _config: &VmConfig) -> Accel {
        // Firecracker has no emulator: it always runs on KVM.
        Accel::Kvm
    }

    fn snapshot_identity(&self, config: &VmConfig, _accel: Accel) -> Result<Vec<String>, VmError> {
        Ok(vec![
            format!("vmm={}", super::host::file_identity(&self.options.binary)?),
            // A snapshot holds the paths its VMM saw: a jailed one's are chroot paths.
            format!("launch={}", options::launch_kind(&self.options)),
            format!("cmdline={}", super::cmdline::firecracker(config)),
        ])
    }

    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        purpose: LaunchPurpose,
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let fc = match purpose {
            LaunchPurpose::Run => launch_in(&self.options, config, dir).await?,
            // The socket goes into the VM's own runtime directory: a path from
            // the config would be recorded in the snapshot as the socket of
            // every clone (each clone gets its own through `vsock_override`).
            LaunchPurpose::Snapshot => {
                let config = VmConfig {
                    vsock: super::config::VsockConfig {
                        uds_path: None,
                        ..config.vsock.clone()
                    },
                    ..config.clone()
                };
                launch_in(&self.options, &config, dir).await?
            }
        };
        Ok(Box::new(fc))
    }

    async fn restore(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
        snapshot: &[PathBuf],
    ) -> Result<Box<dyn VmInstance>, VmError> {
        let [state, memory] = snapshot else {
            return Err(VmError::SnapshotIncompatible(format!(
                "a Firecracker snapshot is a microVM state and a memory file, not {} files",
                snapshot.len()
            )));
        };
        let files = SnapshotFiles {
            state: state.clone(),
            memory: memory.clone(),
        };
        // Loaded paused and resumed explicitly, so a refused resume is
        // reported as such rather than as a failed load.
        let fc = restore_in(&self.options, config, dir, &files, false).await?;
        fc.resume().await?;
        Ok(Box::new(fc))
    }
}

#[cfg(test)]
mod tests {
    use super::options::tests::opts;
    use super::*;

    #[test]
    fn audit_level_is_refused_before_firecracker_starts() {
        let exe = std::env::current_exe().unwrap();
        let mut config = VmConfig::new("fc-audit", &exe, &exe);
        config.confinement.seccomp = crate::vm::seccomp::SeccompLevel::Audit;
        let root = std::env::temp_dir().join(format!("ironclaw-fc-audit-{}", std::process::id()));
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(start_firecracker_in(&opts(), &config, &root))
            .err()
            .unwrap();
        assert!(
            matches!(err, FirecrackerError::SeccompAuditUnsupported),
            "{err}"
        );
        assert!(!root.join("fc-audit").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}

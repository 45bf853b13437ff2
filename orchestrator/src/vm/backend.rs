//! The VMM backends behind one trait. Everything above this module (vsock,
//! agent, CLI) never asks which backend runs a VM.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::accel::Accel;
use super::channel::GuestChannel;
use super::config::{AccelChoice, BackendChoice, VmConfig};
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

/// A VMM that can start VMs.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Starts the VM described by the (validated) `config`, with all its files
    /// in `dir`. On error nothing it started is left running.
    async fn launch(
        &self,
        config: &VmConfig,
        dir: &RuntimeDir,
    ) -> Result<Box<dyn VmInstance>, VmError>;
}

/// A running VM as its backend sees it.
pub trait VmInstance: Send + Sync {
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
    /// The bounded log of unlisted syscalls, in seccomp audit level.
    fn audit_log(&self) -> Option<Arc<super::seccomp::AuditLog>> {
        None
    }
}

/// The backend for `choice`, whatever the accelerator ([`select_for`] with
/// `auto`).
pub fn select(choice: BackendChoice) -> Result<Box<dyn Hypervisor>, VmError> {
    select_for(choice, AccelChoice::Auto)
}

/// Whether `auto` takes Firecracker for a VM asking for `accel`: Firecracker
/// has no emulator, so never with an explicit TCG request; otherwise when it
/// is installed and KVM is really usable.
pub fn auto_prefers_firecracker(accel: AccelChoice) -> bool {
    accel != AccelChoice::Tcg
        && super::firecracker::find_binary().is_some_and(|p| p.is_file())
        && super::accel::probe_kvm().usable
}

/// The backend for `choice` and the accelerator the VM asks for. `auto`
/// takes Firecracker when [`auto_prefers_firecracker`] and its options
/// (jailer policy) are usable, QEMU otherwise. An explicit Firecracker with
/// TCG is refused ([`super::config::check_backend_accel`]).
pub fn select_for(
    choice: BackendChoice,
    accel: AccelChoice,
) -> Result<Box<dyn Hypervisor>, VmError> {
    super::config::check_backend_accel(choice, accel)?;
    match choice {
        BackendChoice::Qemu => Ok(Box::new(super::qemu::QemuBackend::from_env()?)),
        BackendChoice::Firecracker => {
            Ok(Box::new(super::firecracker::FirecrackerBackend::from_env()?))
        }
        BackendChoice::Auto => {
            if auto_prefers_firecracker(accel) {
                match super::firecracker::FirecrackerBackend::from_env() {
                    Ok(fc) => return Ok(Box::new(fc)),
                    // E.g. no jailer configured for a root orchestrator: QEMU,
                    // which IronClaw confines itself, is the safe choice.
                    Err(e) => tracing::warn!("not using Firecracker: {e}; using QEMU"),
                }
            }
            Ok(Box::new(super::qemu::QemuBackend::from_env()?))
        }
    }
}

//! What can go wrong with a VM, by cause.

use std::path::PathBuf;

use super::config::ConfigError;
use super::jail;
use crate::agent::AgentError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("a VM with id {0:?} is already running (its runtime directory exists)")]
    AlreadyRunning(String),
    #[error("{tool} not found; {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Qemu(Box<super::qemu::QemuError>),
    #[error(transparent)]
    Firecracker(Box<super::firecracker::FirecrackerError>),
    /// Restoring from a snapshot failed in a way that points at the snapshot
    /// itself (the VMM refused it, or the restored guest never answered).
    #[error("restoring from {}: {source}", snapshot.display())]
    RestoreFailed {
        snapshot: PathBuf,
        #[source]
        source: Box<VmError>,
    },
    /// A snapshot that does not fit the backend asked to load it.
    #[error("snapshot incompatible: {0}")]
    SnapshotIncompatible(String),
    /// A command IronClaw runs in the guest to check it (not the user's) failed.
    #[error("`{command}` failed in the guest of {vm}: {status}")]
    GuestCheckFailed {
        vm: String,
        command: String,
        status: String,
    },
    #[error("the host's random number generator failed: {0}")]
    Randomness(String),
    #[error("a background task of IronClaw failed: {0}")]
    TaskFailed(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("the guest agent did not answer within {timeout_ms} ms ({last_error}); serial console tail:\n{console_tail}")]
    BootTimeout {
        timeout_ms: u64,
        last_error: String,
        console_tail: String,
    },
    #[error("the VM stopped during boot ({status}); serial console tail:\n{console_tail}")]
    BootFailed {
        status: String,
        console_tail: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("boot files: {0}")]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl VmError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> VmError {
        VmError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<super::qemu::QemuError> for VmError {
    fn from(e: super::qemu::QemuError) -> VmError {
        VmError::Qemu(Box::new(e))
    }
}

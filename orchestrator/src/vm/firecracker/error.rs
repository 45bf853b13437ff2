//! [`FirecrackerError`], and how it maps onto [`VmError`].

use std::path::PathBuf;
use std::time::Duration;

use super::super::config::{ConfigError, MAX_SOCKET_PATH};
use super::super::VmError;
use super::api;
use super::client::ClientError;
use super::files::FIRECRACKER_BINARY;
use super::jailer::JailerError;

#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("firecracker not found: set $IRONCLAW_FIRECRACKER or put `firecracker` on PATH (it needs a host with usable KVM)")]
    MissingBinary,
    #[error("refusing to run Firecracker as root without a jail: set $IRONCLAW_FIRECRACKER_JAILER to Firecracker's jailer (see docs/firecracker.md), or $IRONCLAW_FIRECRACKER_ALLOW_UNJAILED=1 to accept it running as root in the host's namespaces (its built-in seccomp filters still apply)")]
    UnjailedAsRoot,
    #[error("the seccomp filter file {path} given for Firecracker is not usable: {reason}")]
    SeccompFilter { path: PathBuf, reason: String },
    #[error("seccomp level audit is not implemented for Firecracker: its filters are built into it (strict, the default, keeps them); pass a custom filter file with $IRONCLAW_FIRECRACKER_SECCOMP_FILTER instead")]
    SeccompAuditUnsupported,
    #[error(transparent)]
    Jailer(#[from] JailerError),
    #[error("FirecrackerOptions::command starts Firecracker unjailed, but a jailer ({jailer}) is configured; launch through start_firecracker / the backend instead")]
    JailerBypassed { jailer: PathBuf },
    #[error("a VM with id {0:?} is already running (its runtime directory exists)")]
    AlreadyRunning(String),
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter runtime directory ($IRONCLAW_RUNTIME_DIR) or VM id")]
    SocketPathTooLong { path: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker ({binary}) could not be started: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker exited ({status}) before creating its API socket {socket}; its log: {log_tail}")]
    ExitedEarly {
        status: String,
        socket: PathBuf,
        log_tail: String,
    },
    #[error("firecracker did not create its API socket {socket} within {waited:?}")]
    SocketTimeout { socket: PathBuf, waited: Duration },
    #[error("{step}: {source}")]
    Api {
        step: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("{step}: {source}")]
    Drive {
        step: &'static str,
        #[source]
        source: api::BadDriveId,
    },
}

impl FirecrackerError {
    pub(super) fn io(context: impl Into<String>, source: std::io::Error) -> FirecrackerError {
        FirecrackerError::Io {
            context: context.into(),
            source,
        }
    }

    /// Firecracker's own explanation, when an API request was refused.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            FirecrackerError::Api { source, .. } => source.fault_message(),
            _ => None,
        }
    }
}

impl From<FirecrackerError> for VmError {
    fn from(e: FirecrackerError) -> VmError {
        match e {
            FirecrackerError::Config(c) => VmError::Config(c),
            FirecrackerError::UnjailedAsRoot => VmError::Unsupported(e.to_string()),
            FirecrackerError::MissingBinary => VmError::MissingTool {
                tool: FIRECRACKER_BINARY.into(),
                hint: "set $IRONCLAW_FIRECRACKER or put it on PATH; it needs a host with usable KVM (or use --backend qemu)".into(),
            },
            FirecrackerError::AlreadyRunning(id) => VmError::AlreadyRunning(id),
            other => VmError::Firecracker(Box::new(other)),
        }
    }
}

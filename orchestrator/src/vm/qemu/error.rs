//! What went wrong with a QEMU VM.

use std::path::PathBuf;
use std::time::Duration;

use crate::vm::qmp::QmpError;

/// What went wrong with a QEMU VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("QMP: {source}; QEMU {status}: {log_tail}")]
    Qmp {
        #[source]
        source: QmpError,
        /// Whether QEMU is still running, or how it exited.
        status: String,
        log_tail: String,
    },
    #[error("restoring {}: {source}: {log_tail}", snapshot.display())]
    Incoming {
        snapshot: PathBuf,
        #[source]
        source: QmpError,
        log_tail: String,
    },
    #[error("QEMU is not running the VM after start: {status}")]
    NotRunning { status: String },
    #[error("snapshot: QMP: {0}")]
    SnapshotQmp(#[source] QmpError),
    #[error("snapshot failed: {0}")]
    MigrationFailed(String),
    #[error("snapshot did not finish within {0:?}")]
    MigrationTimeout(Duration),
    #[error("{process} exited ({status}) before creating {}: {log_tail}", socket.display())]
    ExitedEarly {
        process: &'static str,
        status: String,
        socket: PathBuf,
        log_tail: String,
    },
    #[error("{process} did not create {} within {waited:?}", socket.display())]
    SocketTimeout {
        process: &'static str,
        socket: PathBuf,
        waited: Duration,
    },
}

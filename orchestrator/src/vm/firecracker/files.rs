//! The names of Firecracker's files: its executable, its files in a VM's
//! runtime directory, and the two files of a snapshot.

use std::path::PathBuf;

pub const FIRECRACKER_BINARY: &str = "firecracker";

/// The API socket's file name in the runtime directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// The hybrid vsock socket's file name in the runtime directory (when the
/// config names none).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The guest's serial console: Firecracker writes the guest's ttyS0 to its stdout.
pub const CONSOLE_LOG: &str = "console.log";
/// Firecracker's own log (`--log-path`).
pub const FIRECRACKER_LOG: &str = "firecracker.log";

/// The files of a Firecracker snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The microVM state (`snapshot_path`).
    pub state: PathBuf,
    /// The guest memory (`mem_file_path` / memory backend file).
    pub memory: PathBuf,
}

/// The microVM state (`snapshot_path`), small.
pub const VMSTATE_FILE: &str = "snapshot.vmstate";
/// The guest memory (`mem_file_path`), as large as the VM's memory.
pub const MEMORY_FILE: &str = "snapshot.mem";

//! The request and answer bodies of the sandbox API (REST and MCP share
//! them). Every request body refuses unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::command::CommandEnd;
use super::ring::OutputStream;

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Userland image: a name from `ironclaw image list`, `default`, or
    /// `none` (the busybox initramfs only). Default: `default` when built.
    pub image: Option<String>,
    /// Virtual CPUs (default: the service's).
    pub vcpus: Option<u32>,
    /// Guest memory in MiB (default: the service's).
    pub memory_mib: Option<u32>,
    /// Environment of every command in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of every command (default `/root`).
    pub cwd: Option<String>,
    /// Free-form labels, returned by inspect and list.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Maximum lifetime in seconds; the service destroys the sandbox after it.
    pub timeout_s: Option<u64>,
    /// Destroy the sandbox after this many seconds without a request.
    pub idle_timeout_s: Option<u64>,
    /// Start from this snapshot (id or name) instead of a fresh clone: its
    /// files, memory and running processes. Its image, vCPUs and memory are
    /// the snapshot's (do not set them); `env` and `cwd` default to the
    /// snapshotted sandbox's.
    pub from_snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    /// Memory and files on disk, no VM: `resume` brings it back.
    Paused,
}

/// A sandbox as inspect and list show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// When the service destroys it (seconds since the epoch).
    pub expires_at: u64,
    pub age_s: u64,
    pub idle_s: u64,
    pub idle_timeout_s: Option<u64>,
    /// Resident memory of its VM processes on the host, in MiB.
    pub host_rss_mib: u64,
    /// Commands that have not ended yet.
    pub running_commands: usize,
    pub kernel_release: String,
    /// The VM's name: its runtime directory (console log, records) is
    /// `<runtime root>/<vm_id>` (empty while paused).
    pub vm_id: String,
    /// The snapshot it was created from, if any.
    pub from_snapshot: Option<String>,
    /// While paused: the size of its snapshot on disk.
    pub paused_bytes: Option<u64>,
}

/// `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// A name to create sandboxes from it by (`from_snapshot`), besides its id.
    pub name: Option<String>,
}

/// `POST /v1/sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkSandbox {
    /// How many sandboxes to make from the snapshot (1 to 16, default 1).
    pub count: Option<u32>,
    /// Lifetime of each new sandbox in seconds (default: the service's).
    pub timeout_s: Option<u64>,
    /// Idle timeout of each new sandbox.
    pub idle_timeout_s: Option<u64>,
    /// Labels of each new sandbox.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A snapshot of a sandbox, as stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: Option<String>,
    /// The sandbox it was taken of.
    pub source_sandbox: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub backend: String,
    pub kernel: String,
    /// Size on disk.
    pub bytes: u64,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// When retention removes it (seconds since the epoch).
    pub expires_at: u64,
    /// How long the sandbox was paused while its state was written.
    pub pause_ms: u64,
    /// Writing, checksumming and storing it.
    pub total_ms: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

/// What a fork made.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ForkResult {
    pub snapshot: SnapshotInfo,
    pub sandboxes: Vec<SandboxInfo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// New remaining lifetime in seconds, counted from now.
    pub timeout_s: u64,
}

/// How output (and binary input) is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Text; bytes that are not UTF-8 are replaced with U+FFFD.
    #[default]
    Utf8,
    Base64,
}

/// A command to run: `argv`, or `cmd` for `/bin/sh -c`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// Program and arguments (looked up in `PATH`).
    pub argv: Option<Vec<String>>,
    /// A shell command line, run with `/bin/sh -c`.
    pub cmd: Option<String>,
    /// Extra environment on top of the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the sandbox's).
    pub cwd: Option<String>,
    /// Input for the command (text, or base64 with `stdin_encoding`).
    pub stdin: Option<String>,
    #[serde(default)]
    pub stdin_encoding: Encoding,
    /// Keep stdin open for later writes (background commands only).
    #[serde(default)]
    pub interactive_stdin: bool,
    /// Kill the command after this many seconds (default: the service's).
    pub timeout_s: Option<f64>,
    /// Bytes kept of each of stdout and stderr (run to completion).
    pub max_output_bytes: Option<u64>,
    /// How stdout and stderr are returned.
    #[serde(default)]
    pub encoding: Encoding,
}

/// The result of a command run to completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub encoding: Encoding,
    /// More than `max_output_bytes` were written; the start is kept.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// A started background command.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandInfo {
    pub command_id: String,
    pub argv: Vec<String>,
    pub pid: Option<u32>,
    pub started_at: u64,
    /// Bytes of output so far (stdout and stderr together).
    pub output_bytes: u64,
    /// Absent while it runs.
    pub end: Option<CommandEnd>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandList {
    pub commands: Vec<CommandInfo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputChunk {
    /// Offset of the chunk's first byte in the command's whole output.
    pub offset: u64,
    pub stream: OutputStream,
    pub data: String,
}

/// Output of a background command from a cursor.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputPage {
    pub chunks: Vec<OutputChunk>,
    pub encoding: Encoding,
    /// Pass as `cursor` to read on.
    pub next_cursor: u64,
    /// Bytes after the cursor that were dropped from the ring before they were read.
    pub dropped_bytes: u64,
    /// Present once the command ended (and all its output up to `next_cursor` was read).
    pub end: Option<CommandEnd>,
}

/// `POST .../commands/{cid}/stdin`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinBody {
    pub data: Option<String>,
    #[serde(default)]
    pub encoding: Encoding,
    /// Close stdin after writing `data`.
    #[serde(default)]
    pub close: bool,
}

/// `POST .../commands/{cid}/signal`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    /// `TERM`, `KILL`, `INT`, `HUP`, `QUIT`, `USR1`, `USR2`, `STOP`, `CONT`
    /// (with or without `SIG`), or a number.
    pub signal: String,
}

/// One event of a streamed exec (a line of NDJSON).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    /// First event: the id to signal or write stdin to.
    Started {
        command_id: String,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// A slow reader missed this many bytes (the ring dropped them).
    Dropped {
        bytes: u64,
    },
    /// Last event.
    Exit {
        #[serde(flatten)]
        end: CommandEnd,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileInfo {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub link_target: Option<String>,
}

impl FileInfo {
    pub fn of(name: String, s: ironclaw_protocol::FileStat) -> FileInfo {
        use ironclaw_protocol::FileKind as K;
        FileInfo {
            name,
            kind: match s.kind {
                K::File => FileKind::File,
                K::Dir => FileKind::Dir,
                K::Symlink => FileKind::Symlink,
                K::Other => FileKind::Other,
            },
            size: s.size,
            mode: s.mode,
            mtime: s.mtime,
            link_target: s.link_target,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<FileInfo>,
}

/// `POST /v1/sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirBody {
    pub path: String,
    #[serde(default)]
    pub parents: bool,
    /// Permission bits (default 0755).
    pub mode: Option<u32>,
}

/// Bytes written by an upload.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Written {
    pub path: String,
    pub bytes: u64,
}

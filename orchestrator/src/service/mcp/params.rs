//! The arguments of the MCP tools. Their doc comments are the field
//! descriptions of the JSON schemas a model reads, so they say units,
//! defaults and limits.

use std::collections::BTreeMap;

use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;

/// `sandbox_create`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Userland image: `default` (Debian with python3, the default) or
    /// `none` (busybox only), or a name the operator built.
    pub image: Option<String>,
    /// Virtual CPUs (default: the service's, usually 1).
    pub vcpus: Option<u32>,
    /// Guest memory in MiB (default: the service's).
    pub memory_mib: Option<u32>,
    /// Environment variables of every command run in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory of every command (default `/work`, created).
    pub cwd: Option<String>,
    /// Free-form labels shown by sandbox_list, e.g. {"task": "tests"}.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds; the sandbox is destroyed after it (default 300).
    pub timeout_s: Option<u64>,
    /// Destroy the sandbox after this many seconds without any call on it.
    pub idle_timeout_s: Option<u64>,
    /// Start from this snapshot (a `snap-…` id or its name, from
    /// sandbox_snapshot): a copy of the snapshotted sandbox with its files,
    /// memory and background processes. Leave image, vcpus and memory_mib
    /// out then (they are the snapshot's).
    pub from_snapshot: Option<String>,
}

/// Names a sandbox.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxParams {
    /// The sandbox id returned by sandbox_create (`sb-…`).
    pub sandbox_id: String,
}

/// `sandbox_exec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// A shell command line, run with `/bin/sh -c` (pipes, redirections and
    /// `&&` work). Give this or `argv`, not both.
    pub cmd: Option<String>,
    /// Program and arguments, run without a shell, e.g. ["python3", "-c", "print(1)"].
    pub argv: Option<Vec<String>>,
    /// Text written to the command's standard input (then closed).
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (default 300).
    pub timeout_s: Option<f64>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory (default: the sandbox's, `/work`).
    pub cwd: Option<String>,
    /// Bytes kept of each of stdout and stderr (default 65536, at most
    /// 196608); beyond it the start is kept and `*_truncated` is true.
    pub max_output_bytes: Option<u64>,
}

/// `sandbox_exec_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecStartParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// A shell command line, run with `/bin/sh -c`. Give this or `argv`.
    pub cmd: Option<String>,
    /// Program and arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// Text written to standard input first.
    pub stdin: Option<String>,
    /// Keep standard input open for sandbox_exec_write_stdin (default
    /// false: stdin is closed after `stdin`, so programs reading it see EOF).
    #[serde(default)]
    pub keep_stdin_open: bool,
    /// Kill the command after this many seconds (default 300).
    pub timeout_s: Option<f64>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory (default: the sandbox's).
    pub cwd: Option<String>,
}

/// `sandbox_exec_poll`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// The command id returned by sandbox_exec_start (`cmd-…`).
    pub command_id: String,
    /// Read output from this byte offset: 0 first, then the `next_cursor`
    /// of the previous poll.
    #[serde(default)]
    pub cursor: u64,
    /// Wait up to this many milliseconds for new output or the end
    /// (default 1000, at most 60000; 0 answers at once).
    pub wait_ms: Option<u64>,
}

/// `sandbox_exec_write_stdin`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// The command id returned by sandbox_exec_start (started with keep_stdin_open).
    pub command_id: String,
    /// Text to write (include "\n" to end a line).
    pub data: Option<String>,
    /// Close standard input after writing `data` (the program sees EOF).
    #[serde(default)]
    pub close: bool,
}

/// `sandbox_exec_signal`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// The command id returned by sandbox_exec_start.
    pub command_id: String,
    /// TERM (default), KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT, or a number.
    pub signal: Option<String>,
}

/// How file content is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileEncoding {
    /// UTF-8 text (bytes that are not UTF-8 read as U+FFFD).
    #[default]
    Text,
    /// Base64 of the raw bytes (for binary files).
    Base64,
}

/// `sandbox_fs_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// File path; relative paths are under the sandbox's working directory.
    pub path: String,
    /// `text` (default) or `base64` for binary files.
    #[serde(default)]
    pub encoding: FileEncoding,
}

/// `sandbox_fs_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// File path; relative paths are under the sandbox's working directory.
    /// Missing parent directories are created; an existing file is replaced.
    pub path: String,
    /// The whole new content of the file.
    pub content: String,
    /// How `content` is written: `text` (default) or `base64`.
    #[serde(default)]
    pub encoding: FileEncoding,
    /// Permission bits, e.g. 493 (0o755) for a script (default 420, 0o644).
    pub mode: Option<u32>,
}

/// `sandbox_fs_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// Directory path (default: the sandbox's working directory).
    pub path: Option<String>,
}

/// `sandbox_fs_remove`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// The sandbox id returned by sandbox_create.
    pub sandbox_id: String,
    /// Path of the file or directory to remove.
    pub path: String,
    /// Remove a directory and everything in it (default false: only files
    /// and empty directories).
    #[serde(default)]
    pub recursive: bool,
}

/// The language of `run_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (`python3 main.py`).
    Python,
    /// POSIX shell (`/bin/sh main.sh`).
    Sh,
}

/// `run_code`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeParams {
    /// `python` or `sh`.
    pub language: Language,
    /// The program's source code.
    pub code: String,
    /// Extra files written before the run, {path: text content}; relative
    /// paths are under `/work`, the program's working directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Text given to the program on standard input.
    pub stdin: Option<String>,
    /// Kill the program after this many seconds (default 60).
    pub timeout_s: Option<f64>,
}

/// `sandbox_snapshot`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    /// The sandbox to snapshot (it keeps running).
    pub sandbox_id: String,
    /// A name to pass as `from_snapshot` later, besides the snapshot's id:
    /// 1 to 64 letters, digits, '.', '_' or '-', e.g. "deps-installed".
    pub name: Option<String>,
}

/// `sandbox_fork`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkParams {
    /// The sandbox to copy (it keeps running).
    pub sandbox_id: String,
    /// How many copies to make, 1 to 16 (default 1).
    pub count: Option<u32>,
    /// Lifetime of each copy in seconds (default 300).
    pub timeout_s: Option<u64>,
    /// Labels of each copy, e.g. {"try": "b"}.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Names a snapshot.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotIdParams {
    /// The snapshot's id (`snap-…`) or name.
    pub snapshot_id: String,
}

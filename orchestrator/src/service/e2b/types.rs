//! The JSON shapes of the E2B API, written from the official SDKs (PyPI
//! `e2b` 2.63.0, npm `e2b` 2.51.0; see `docs/e2b.md`):
//!
//! - control plane: the SDK's generated OpenAPI client
//!   (`e2b/api/client/models/{new_sandbox_v2,sandbox,sandbox_detail,listed_sandbox,
//!   sandbox_pause_request,connect_sandbox_v2,resumed_sandbox,sandbox_snapshot_request,
//!   snapshot_info,sandbox_fork_request,sandbox_fork_result}.py`);
//! - envd: the protobuf messages of `spec/envd/process/process.proto` and
//!   `spec/envd/filesystem/filesystem.proto` in their canonical JSON form
//!   (lowerCamel field names, enums by name, `bytes` as base64, `int64` as
//!   a string, `Timestamp` as RFC 3339), as Connect's JSON codec sends them.
//!
//! Request types ignore fields they do not know (a newer SDK may add some),
//! as protobuf JSON parsers and E2B's own API do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The envd version IronClaw answers as: the SDKs gate features on it
/// (0.3.0 stdin, 0.5.2 close stdin, 0.5.7 octet-stream uploads).
pub const ENVD_VERSION: &str = "0.5.7";
/// The `clientID` of every sandbox (E2B names its cluster node there).
pub const CLIENT_ID: &str = "ironclaw";

// ---- control plane ----

/// `POST /v2/sandboxes` (and `POST /sandboxes`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID", default)]
    pub template_id: String,
    /// Lifetime in seconds.
    pub timeout: Option<u64>,
    pub auto_pause: Option<bool>,
    pub auto_resume: Option<Value>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    pub network: Option<Value>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub mcp: Option<Value>,
    pub iam: Option<Value>,
    pub volume_mounts: Option<Vec<Value>>,
}

/// The answer to create and connect.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    pub envd_version: &'static str,
    pub envd_access_token: String,
    /// No domain of its own: the SDK reaches envd at `E2B_SANDBOX_URL`.
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    /// Its memory and files on disk, no VM: connect resumes it.
    Paused,
}

/// `GET /sandboxes/{id}` and each entry of `GET /v2/sandboxes`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    /// ISO 8601.
    pub started_at: String,
    /// ISO 8601: when the sandbox's lifetime ends.
    pub end_at: String,
    pub envd_version: &'static str,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// The writable layer is memory (a tmpfs overlay): no disk of its own.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u32,
    pub state: SandboxState,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// What a paused sandbox's pause saved: always `full` (memory and
    /// files); absent while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<&'static str>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Default, Deserialize)]
pub struct TimeoutBody {
    /// Seconds from now.
    pub timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect` (and `/sandboxes/{id}/connect`).
#[derive(Debug, Default, Deserialize)]
pub struct ConnectBody {
    /// Seconds from now.
    pub timeout: Option<u64>,
    /// `false` (the SDK's `on_resume="reboot"`): cold-boot from the files only.
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/pause`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseBody {
    /// `false` (the SDK's `mode="filesystem"`): keep the files only.
    pub memory: Option<bool>,
    /// Refuse (503) unless the guest agent answers first (`strict=True`).
    pub require_healthy_guest: Option<bool>,
}

/// `POST /sandboxes/{id}/resume` (the older path; the SDKs now connect).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeBody {
    /// Seconds from now.
    pub timeout: Option<u64>,
    pub auto_pause: Option<bool>,
    pub memory: Option<bool>,
}

/// `GET /v2/sandboxes` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// `k1=v1&k2=v2`, URL-encoded as one parameter.
    pub metadata: Option<String>,
    /// `running`, `paused`, or both comma-separated.
    pub state: Option<String>,
    pub limit: Option<usize>,
    pub next_token: Option<String>,
    /// `asc` or `desc` by start time.
    pub order: Option<String>,
    /// Only sandboxes of this template.
    pub template: Option<String>,
    /// Only sandboxes started at or after this time (RFC 3339).
    pub started_after: Option<String>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotBody {
    /// A name to create sandboxes from it by, besides its id.
    pub name: Option<String>,
    /// `false` (the SDK's `mode="filesystem"`): the files only.
    pub memory: Option<bool>,
}

/// A snapshot, as create-snapshot and `GET /snapshots` answer it.
#[derive(Debug, Serialize)]
pub struct SnapshotEntry {
    /// The native snapshot id (`snap-…`): `Sandbox.create(<it>)` makes a
    /// sandbox from it.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// Its name, if it has one (it works wherever the id does).
    pub names: Vec<String>,
}

/// `GET /snapshots` query.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotListQuery {
    /// Only snapshots of this sandbox.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: Option<String>,
    /// Only the snapshot with this id or name.
    pub name: Option<String>,
    pub limit: Option<usize>,
    #[serde(rename = "nextToken")]
    pub next_token: Option<String>,
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Default, Deserialize)]
pub struct ForkBody {
    /// Lifetime of each fork in seconds.
    pub timeout: Option<u64>,
    /// How many forks (1 to 20; 1 when absent).
    pub count: Option<u32>,
}

/// One fork's outcome: its sandbox, or why it did not start.
#[derive(Debug, Serialize)]
pub struct ForkEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxCreated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// E2B's error shape.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

// ---- envd: process ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    pub process: Option<ProcessConfig>,
    pub pty: Option<Value>,
    pub tag: Option<String>,
    pub stdin: Option<bool>,
}

/// Which process: by `pid` (`tag` is refused as not supported).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProcessSelector {
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SelectRequest {
    pub process: Option<ProcessSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProcessInput {
    /// base64.
    pub stdin: Option<String>,
    pub pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    pub process: Option<ProcessSelector>,
    pub input: Option<ProcessInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    pub process: Option<ProcessSelector>,
    /// `SIGNAL_SIGKILL`, `SIGNAL_SIGTERM`, or the enum's number.
    pub signal: Value,
}

/// `StartResponse` and `ConnectResponse`: `{"event": {...}}`.
#[derive(Debug, Serialize)]
pub struct ProcessEventMessage {
    pub event: ProcessEvent,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    Start { pid: u32 },
    Data(DataEvent),
    End(EndEvent),
    Keepalive {},
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    /// base64.
    Stdout(String),
    Stderr(String),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    pub exit_code: i32,
    /// It exited (rather than being killed by a signal).
    pub exited: bool,
    /// As Go's `ProcessState.String()` says it: `exit status 1`, `signal: killed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Serialize)]
pub struct ProcessInfo {
    pub config: ProcessConfigOut,
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct ProcessConfigOut {
    pub cmd: String,
    pub args: Vec<String>,
}

// ---- envd: filesystem ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    pub path: String,
    pub depth: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
    /// int64: a string in protobuf JSON.
    pub size: String,
    pub mode: u32,
    /// `-rw-r--r--`, as Go's `FileMode.String()`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    /// RFC 3339.
    pub modified_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Serialize)]
pub struct EntryMessage {
    pub entry: EntryInfo,
}

#[derive(Debug, Serialize)]
pub struct EntryList {
    pub entries: Vec<EntryInfo>,
}

/// One written file, as `POST /files` lists them.
#[derive(Debug, Serialize)]
pub struct WriteInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
}

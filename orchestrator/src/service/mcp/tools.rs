//! The MCP tools: each a thin call of a [`Service`] method (the same ones
//! the REST API calls), with arguments shaped for models and outputs capped
//! for a model's context.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Extensions};
use rmcp::{tool, tool_router};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::params::*;
use super::{reply, SandboxMcp};
use crate::service::command::CommandEnd;
use crate::service::error::{ErrorCode, ServiceError};
use crate::service::exec::MAX_OUTPUT_BYTES;
use crate::service::lifecycle::DEFAULT_CWD;
use crate::service::ring::OutputStream;
use crate::service::types::{CreateSandbox, Encoding, ExecBody, ExecResult, StdinBody};
use crate::service::{Owner, Service};

/// Bytes of each of stdout and stderr an exec returns unless asked otherwise.
pub const DEFAULT_EXEC_OUTPUT: u64 = 64 << 10;
/// Bytes of a file `sandbox_fs_read` returns at most.
pub const READ_CAP: u64 = 1 << 20;
/// How long a poll waits for output unless asked otherwise.
const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(1);
/// Lifetime of a `run_code` sandbox beyond the program's timeout.
const RUN_CODE_SLACK_S: u64 = 60;
const RUN_CODE_TIMEOUT_S: f64 = 60.0;

/// The answer of `sandbox_exec_poll`.
#[derive(Serialize)]
struct Poll {
    /// Output since the cursor, by stream.
    stdout: String,
    stderr: String,
    next_cursor: u64,
    /// Output lost to the ring buffer before it was read.
    dropped_bytes: u64,
    /// Poll again with `next_cursor` while true.
    running: bool,
    end: Option<CommandEnd>,
}

/// The answer of `sandbox_fs_read`.
#[derive(Serialize)]
struct FileContent {
    path: String,
    /// Size of the whole file.
    size: u64,
    encoding: &'static str,
    content: String,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn decode(field: &str, text: String, encoding: FileEncoding) -> Result<Vec<u8>, ServiceError> {
    match encoding {
        FileEncoding::Text => Ok(text.into_bytes()),
        FileEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| ServiceError::bad_request(format!("{field}: not valid base64: {e}"))),
    }
}

fn parent_of(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&trimmed[..i]),
    }
}

/// A path an agent gave: absolute as is, relative under `cwd`.
fn under(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", cwd.trim_end_matches('/'), path)
    }
}

/// Creates the missing parents of `path`, then writes `data` to it.
async fn write_file(
    service: &Service,
    owner: &Owner,
    id: &str,
    path: &str,
    data: &[u8],
    mode: Option<u32>,
) -> Result<crate::service::types::Written, ServiceError> {
    if let Some(dir) = parent_of(path) {
        // Only a missing parent is made: mkdir sets the mode of the
        // directory it names, which must not touch an existing one (/tmp).
        match service.stat(owner, id, dir).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                service.mkdir(owner, id, dir, None, true).await?;
            }
            Err(e) => return Err(e),
        }
    }
    service.upload(owner, id, path, mode, &mut &data[..]).await
}

fn exec_body(
    cmd: Option<String>,
    argv: Option<Vec<String>>,
    stdin: Option<String>,
    timeout_s: Option<f64>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
) -> ExecBody {
    ExecBody {
        argv,
        cmd,
        env,
        cwd,
        stdin,
        timeout_s,
        ..ExecBody::default()
    }
}

impl SandboxMcp {
    /// `path` made absolute against the sandbox's working directory.
    fn path(&self, owner: &Owner, id: &str, path: &str) -> Result<String, ServiceError> {
        if path.starts_with('/') {
            return Ok(path.to_string());
        }
        let sandbox = self.service.get(owner, id)?;
        Ok(under(sandbox.spec.cwd.as_deref().unwrap_or(DEFAULT_CWD), path))
    }

    async fn read_file(&self, owner: &Owner, p: ReadParams) -> Result<FileContent, ServiceError> {
        let path = self.path(owner, &p.sandbox_id, &p.path)?;
        let (info, stream) = self.service.download(owner, &p.sandbox_id, &path).await?;
        let mut data = Vec::with_capacity(info.size.min(READ_CAP) as usize);
        // One byte past the cap tells a truncated read from a whole one;
        // dropping the stream early ends the transfer.
        stream
            .take(READ_CAP + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|e| ServiceError::internal(format!("reading {path}: {e}")))?;
        let truncated = data.len() as u64 > READ_CAP;
        if truncated {
            data.truncate(READ_CAP as usize);
        } else if (data.len() as u64) < info.size {
            return Err(ServiceError::internal(format!(
                "reading {path} ended after {} of {} bytes (the file shrank while it was read, or the sandbox failed)",
                data.len(),
                info.size
            )));
        }
        let (encoding, content) = match p.encoding {
            FileEncoding::Text => ("text", String::from_utf8_lossy(&data).into_owned()),
            FileEncoding::Base64 => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(&data),
            ),
        };
        let note = truncated.then(|| {
            format!(
                "only the first {READ_CAP} bytes of {} are returned; read the rest with sandbox_exec (e.g. `tail -c +{} {path} | head -c {READ_CAP}`)",
                info.size.max(READ_CAP + 1),
                READ_CAP + 1
            )
        });
        Ok(FileContent {
            path,
            size: info.size.max(data.len() as u64),
            encoding,
            content,
            truncated,
            note,
        })
    }

    async fn poll(&self, owner: &Owner, p: PollParams) -> Result<Poll, ServiceError> {
        let wait = p
            .wait_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_POLL_WAIT);
        // Base64 from the ring, so a character split between chunks is
        // joined before it is decoded as text.
        let page = self
            .service
            .command_output(
                owner,
                &p.sandbox_id,
                &p.command_id,
                p.cursor,
                wait,
                Encoding::Base64,
            )
            .await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for chunk in &page.chunks {
            let data = base64::engine::general_purpose::STANDARD
                .decode(&chunk.data)
                .map_err(|e| ServiceError::internal(format!("output chunk: {e}")))?;
            match chunk.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&data),
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            }
        }
        Ok(Poll {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            next_cursor: page.next_cursor,
            dropped_bytes: page.dropped_bytes,
            running: page.end.is_none(),
            end: page.end,
        })
    }
}

/// `run_code` in a sandbox of its own: files, the program, its run.
async fn run_code_in(
    service: &Service,
    owner: &Owner,
    id: &str,
    p: RunCodeParams,
) -> Result<ExecResult, ServiceError> {
    for (path, content) in &p.files {
        write_file(service, owner, id, &under(DEFAULT_CWD, path), content.as_bytes(), None).await?;
    }
    let (program, argv) = match p.language {
        Language::Python => ("/tmp/main.py", ["python3", "/tmp/main.py"]),
        Language::Sh => ("/tmp/main.sh", ["/bin/sh", "/tmp/main.sh"]),
    };
    service.upload(owner, id, program, None, &mut p.code.as_bytes()).await?;
    let mut body = exec_body(
        None,
        Some(argv.map(String::from).to_vec()),
        p.stdin,
        Some(p.timeout_s.unwrap_or(RUN_CODE_TIMEOUT_S)),
        BTreeMap::new(),
        None,
    );
    body.max_output_bytes = Some(DEFAULT_EXEC_OUTPUT);
    service.exec(owner, id, body).await
}

#[tool_router(vis = "pub(super)")]
impl SandboxMcp {
    /// Create a sandbox: a fresh Linux microVM with its own file system and
    /// no network. Returns its `id` (pass it as `sandbox_id` to the other
    /// tools) and `expires_at`. It is destroyed after `timeout_s` (default
    /// 300) or by sandbox_destroy; destroy it when you are done.
    #[tool]
    async fn sandbox_create(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<CreateParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let req = CreateSandbox {
                image: p.image,
                vcpus: p.vcpus,
                memory_mib: p.memory_mib,
                env: p.env,
                cwd: p.cwd,
                labels: p.labels,
                timeout_s: p.timeout_s,
                idle_timeout_s: p.idle_timeout_s,
            };
            self.service.create(&owner, req).await
        }.await)
    }

    /// List your live sandboxes (id, image, labels, expiry, running commands).
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_list(&self, extensions: Extensions) -> CallToolResult {
        reply(self.owner(&extensions).map(|owner| {
            serde_json::json!({ "sandboxes": self.service.list(&owner) })
        }))
    }

    /// Destroy a sandbox and everything in it (its commands are killed).
    #[tool(annotations(destructive_hint = true))]
    async fn sandbox_destroy(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SandboxParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            self.service.destroy(&owner, &p.sandbox_id).await?;
            Ok(serde_json::json!({ "destroyed": p.sandbox_id }))
        }.await)
    }

    /// Run a command in a sandbox and wait for it to end. Give `cmd` (a
    /// shell line, e.g. "pip list | head") or `argv`. Returns `exit_code`
    /// (null if killed by `signal`), `timed_out`, `stdout`, `stderr` (each
    /// capped at max_output_bytes, default 65536, with `*_truncated`) and
    /// `duration_ms`. For commands that run long or need input while they
    /// run, use sandbox_exec_start.
    #[tool]
    async fn sandbox_exec(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ExecParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let cap = p.max_output_bytes.unwrap_or(DEFAULT_EXEC_OUTPUT);
            if cap > MAX_OUTPUT_BYTES.min(READ_CAP) {
                return Err(ServiceError::bad_request(format!(
                    "max_output_bytes {cap} is more than {}",
                    MAX_OUTPUT_BYTES.min(READ_CAP)
                )));
            }
            let mut body = exec_body(p.cmd, p.argv, p.stdin, p.timeout_s, p.env, p.cwd);
            body.max_output_bytes = Some(cap);
            self.service.exec(&owner, &p.sandbox_id, body).await
        }.await)
    }

    /// Start a command in the background and return its `command_id` at
    /// once. Read its output with sandbox_exec_poll, feed it input with
    /// sandbox_exec_write_stdin (start it with keep_stdin_open), stop it
    /// with sandbox_exec_signal. The last 4 MiB of output are kept.
    #[tool]
    async fn sandbox_exec_start(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ExecStartParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let mut body = exec_body(p.cmd, p.argv, p.stdin, p.timeout_s, p.env, p.cwd);
            body.interactive_stdin = p.keep_stdin_open;
            let command = self
                .service
                .start_command(&owner, &p.sandbox_id, body)
                .await?;
            Ok(crate::service::exec::command_info(&command))
        }.await)
    }

    /// Read a background command's output from `cursor` (0 at first, then
    /// the previous `next_cursor`), waiting up to `wait_ms` for some.
    /// Returns `stdout`, `stderr`, `next_cursor`, and `running`; once it is
    /// false, `end` has `exit_code`, `signal` and `timed_out`.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_exec_poll(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<PollParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            self.poll(&owner, p).await
        }.await)
    }

    /// Write text to the standard input of a background command started
    /// with keep_stdin_open; `close` ends its input (EOF).
    #[tool]
    async fn sandbox_exec_write_stdin(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<StdinParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let written = p.data.as_ref().map_or(0, String::len);
            let body = StdinBody {
                data: p.data,
                encoding: Encoding::Utf8,
                close: p.close,
            };
            self.service
                .command_stdin(&owner, &p.sandbox_id, &p.command_id, body)
                .await?;
            Ok(serde_json::json!({ "written_bytes": written, "closed": p.close }))
        }.await)
    }

    /// Send a signal (default TERM; KILL cannot be ignored) to a background command.
    #[tool]
    async fn sandbox_exec_signal(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SignalParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let signal = p.signal.unwrap_or_else(|| "TERM".into());
            self.service
                .command_signal(&owner, &p.sandbox_id, &p.command_id, &signal)?;
            Ok(serde_json::json!({ "signaled": signal }))
        }.await)
    }

    /// Read a file from a sandbox, as text (default) or base64. At most the
    /// first 1 MiB (1048576 bytes) is returned: `truncated` is then true and
    /// `size` is the whole file's.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_fs_read(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ReadParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            self.read_file(&owner, p).await
        }.await)
    }

    /// Write a whole file in a sandbox (text, or base64 for binary),
    /// creating missing parent directories and replacing an existing file.
    #[tool]
    async fn sandbox_fs_write(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<WriteParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let path = self.path(&owner, &p.sandbox_id, &p.path)?;
            let data = decode("content", p.content, p.encoding)?;
            write_file(&self.service, &owner, &p.sandbox_id, &path, &data, p.mode).await
        }.await)
    }

    /// List a directory in a sandbox: each entry's name, kind (file, dir,
    /// symlink, other), size, mode and mtime.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_fs_list(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ListParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let path = self.path(&owner, &p.sandbox_id, p.path.as_deref().unwrap_or("."))?;
            let path = path.strip_suffix("/.").unwrap_or(&path).to_string();
            self.service.list_dir(&owner, &p.sandbox_id, &path).await
        }.await)
    }

    /// Remove a file or directory in a sandbox (`recursive` for a
    /// directory that is not empty).
    #[tool(annotations(destructive_hint = true))]
    async fn sandbox_fs_remove(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<RemoveParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let path = self.path(&owner, &p.sandbox_id, &p.path)?;
            self.service
                .remove(&owner, &p.sandbox_id, &path, p.recursive)
                .await?;
            Ok(serde_json::json!({ "removed": path }))
        }.await)
    }

    /// Run a program once in a throwaway sandbox (created, used, destroyed
    /// in this call): `language` python or sh, its `code`, optional extra
    /// `files` {path: content} in its working directory /work, optional
    /// `stdin`. Returns `exit_code`, `stdout`, `stderr` (64 KiB each at
    /// most), `timed_out`. Nothing persists between calls; use
    /// sandbox_create for state that must.
    #[tool]
    async fn run_code(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<RunCodeParams>,
    ) -> CallToolResult {
        let owner = match self.owner(&extensions) {
            Ok(owner) => owner,
            Err(e) => return reply::<()>(Err(e)),
        };
        let service = self.service.clone();
        // In a task of its own: the sandbox is destroyed even when the
        // client cancels the call (which drops this future).
        let run = tokio::spawn(async move {
            let timeout = p.timeout_s.unwrap_or(RUN_CODE_TIMEOUT_S);
            let lifetime = (timeout.max(0.0).ceil() as u64)
                .saturating_add(RUN_CODE_SLACK_S)
                .min(service.config().max_timeout.as_secs());
            let req = CreateSandbox {
                labels: [("tool".to_string(), "run_code".to_string())].into(),
                timeout_s: Some(lifetime),
                ..CreateSandbox::default()
            };
            let id = service.create(&owner, req).await?.id;
            let result = run_code_in(&service, &owner, &id, p).await;
            if let Err(e) = service.destroy(&owner, &id).await {
                tracing::warn!(sandbox = %id, "run_code: destroying the sandbox: {}", e.message);
            }
            result
        });
        reply(run.await.unwrap_or_else(|e| {
            Err(ServiceError::internal(format!("run_code failed: {e}")))
        }))
    }
}

//! What the tools do beyond one service call: paths relative to the
//! sandbox, files read into an answer (capped), output of background
//! commands joined per stream (capped), `run_code`'s throwaway sandbox.
//!
//! Every cap keeps one answer well under what MCP clients accept in a
//! message (the Python SDK: 1 MiB per event; the JSON is sent twice, as
//! text and as structured content) and within a model's context.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::params::*;
use super::SandboxMcp;
use crate::service::command::CommandEnd;
use crate::service::error::{ErrorCode, ServiceError};
use crate::service::pools::DEFAULT_CWD;
use crate::service::ring::OutputStream;
use crate::service::types::{CreateSandbox, Encoding, ExecBody, ExecResult, Written};
use crate::service::{Owner, Service};

/// Bytes of each of stdout and stderr an exec returns unless asked otherwise.
pub const DEFAULT_EXEC_OUTPUT: u64 = 64 << 10;
/// The most of each of stdout and stderr an exec may ask for.
pub const MAX_EXEC_OUTPUT: u64 = 192 << 10;
/// Bytes of a file `sandbox_fs_read` returns at most.
pub const READ_CAP: u64 = 256 << 10;
/// Bytes of output one `sandbox_exec_poll` returns at most.
pub const POLL_CAP: u64 = 256 << 10;
/// The largest JSON answer sent; a bigger one is refused with advice.
pub const MAX_ANSWER_JSON: usize = 480 << 10;
/// How long a poll waits for output unless asked otherwise.
const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(1);
/// Lifetime of a `run_code` sandbox beyond the program's timeout.
const RUN_CODE_SLACK_S: u64 = 60;
const RUN_CODE_TIMEOUT_S: f64 = 60.0;

/// The answer of `sandbox_exec_poll`.
#[derive(Serialize)]
pub struct Poll {
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
pub struct FileContent {
    path: String,
    /// Size of the whole file.
    size: u64,
    encoding: &'static str,
    content: String,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub fn decode(field: &str, text: String, encoding: FileEncoding) -> Result<Vec<u8>, ServiceError> {
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
pub async fn write_file(
    service: &Service,
    owner: &Owner,
    id: &str,
    path: &str,
    data: &[u8],
    mode: Option<u32>,
) -> Result<Written, ServiceError> {
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

pub fn exec_body(
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
    pub(super) fn path(&self, owner: &Owner, id: &str, path: &str) -> Result<String, ServiceError> {
        if path.starts_with('/') {
            return Ok(path.to_string());
        }
        let sandbox = self.service.get(owner, id)?;
        Ok(under(
            sandbox.spec.cwd.as_deref().unwrap_or(DEFAULT_CWD),
            path,
        ))
    }

    pub(super) async fn read_file(
        &self,
        owner: &Owner,
        p: ReadParams,
    ) -> Result<FileContent, ServiceError> {
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
        let size = info.size.max(data.len() as u64 + u64::from(truncated));
        let note = truncated.then(|| {
            format!(
                "only the first {READ_CAP} bytes of {size} are returned; read further with sandbox_exec \
                 (e.g. `tail -c +{} {path} | head -c {READ_CAP}`, or grep/sed for the part you need)",
                READ_CAP + 1
            )
        });
        Ok(FileContent {
            path,
            size,
            encoding,
            content,
            truncated,
            note,
        })
    }

    pub(super) async fn poll(&self, owner: &Owner, p: PollParams) -> Result<Poll, ServiceError> {
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
        let mut next = page.next_cursor;
        let mut taken = 0u64;
        for chunk in &page.chunks {
            let mut data = base64::engine::general_purpose::STANDARD
                .decode(&chunk.data)
                .map_err(|e| ServiceError::internal(format!("output chunk: {e}")))?;
            if taken + data.len() as u64 > POLL_CAP {
                // The rest comes with the next poll, from here.
                data.truncate((POLL_CAP - taken) as usize);
                next = chunk.offset + data.len() as u64;
            }
            taken += data.len() as u64;
            match chunk.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&data),
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            }
            if next != page.next_cursor {
                break;
            }
        }
        // The end is news only with the last of the output.
        let end = page.end.filter(|_| next == page.next_cursor);
        Ok(Poll {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            next_cursor: next,
            dropped_bytes: page.dropped_bytes,
            running: end.is_none(),
            end,
        })
    }
}

/// `run_code`: a sandbox of its own, always destroyed, also when the
/// program or a step before it fails.
pub async fn run_code(
    service: Service,
    owner: Owner,
    p: RunCodeParams,
) -> Result<ExecResult, ServiceError> {
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
    let result = run_code_in(&service, &owner, &id, p, timeout).await;
    if let Err(e) = service.destroy(&owner, &id).await {
        tracing::warn!(sandbox = %id, "run_code: destroying the sandbox: {}", e.message);
    }
    result
}

async fn run_code_in(
    service: &Service,
    owner: &Owner,
    id: &str,
    p: RunCodeParams,
    timeout_s: f64,
) -> Result<ExecResult, ServiceError> {
    for (path, content) in &p.files {
        let path = under(DEFAULT_CWD, path);
        write_file(service, owner, id, &path, content.as_bytes(), None).await?;
    }
    let (program, argv) = match p.language {
        Language::Python => ("/tmp/main.py", ["python3", "/tmp/main.py"]),
        Language::Sh => ("/tmp/main.sh", ["/bin/sh", "/tmp/main.sh"]),
    };
    service
        .upload(owner, id, program, None, &mut p.code.as_bytes())
        .await?;
    let argv = argv.map(String::from).to_vec();
    let mut body = exec_body(
        None,
        Some(argv),
        p.stdin,
        Some(timeout_s),
        BTreeMap::new(),
        None,
    );
    body.max_output_bytes = Some(DEFAULT_EXEC_OUTPUT);
    service.exec(owner, id, body).await
}

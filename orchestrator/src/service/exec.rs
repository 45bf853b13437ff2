//! Commands in a sandbox: run to completion (output capped), or started in
//! the background and then read from a cursor, fed stdin, signalled and
//! waited for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;

use super::command::Command;
use super::error::{ErrorCode, ServiceError};
use super::lifecycle::check_env;
use super::ring::{DEFAULT_RING_BYTES, MAX_READ_BYTES};
use super::sandbox::{unix_secs, Owner, Sandbox};
use super::types::{
    CommandInfo, Encoding, ExecBody, ExecResult, OutputChunk, OutputPage, StdinBody,
};
use super::Service;
use crate::vm::ExecRequest;

/// Bytes kept of each of stdout and stderr when a request sets no cap.
pub const DEFAULT_OUTPUT_BYTES: u64 = 1 << 20;
/// The largest cap a request may set.
pub const MAX_OUTPUT_BYTES: u64 = 16 << 20;
/// The longest a poll may wait for new output.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// The largest stdin one request may carry.
pub const MAX_STDIN_BYTES: usize = 16 << 20;

pub fn encode(data: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(data).into_owned(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(data),
    }
}

pub fn decode(field: &str, text: &str, encoding: Encoding) -> Result<Vec<u8>, ServiceError> {
    let data = match encoding {
        Encoding::Utf8 => text.as_bytes().to_vec(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ServiceError::bad_request(format!("{field}: not valid base64: {e}")))?,
    };
    if data.len() > MAX_STDIN_BYTES {
        return Err(ServiceError::bad_request(format!(
            "{field}: more than {MAX_STDIN_BYTES} bytes; upload a file instead"
        )));
    }
    Ok(data)
}

/// A signal by name (`TERM`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Result<i32, ServiceError> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => other.parse().unwrap_or(0),
    };
    if (1..=64).contains(&n) {
        Ok(n)
    } else {
        Err(ServiceError::bad_request(format!(
            "signal: {s:?} is not a signal (TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT, or 1-64)"
        )))
    }
}

impl Service {
    /// The agent request for `body` in `sandbox`, and the stdin to send.
    fn request(
        &self,
        sandbox: &Sandbox,
        body: &ExecBody,
    ) -> Result<(ExecRequest, Option<Vec<u8>>), ServiceError> {
        let argv = match (&body.argv, &body.cmd) {
            (Some(argv), None) if !argv.is_empty() => argv.clone(),
            (None, Some(cmd)) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            (Some(_), Some(_)) => {
                return Err(ServiceError::bad_request("give argv or cmd, not both"))
            }
            _ => {
                return Err(ServiceError::bad_request(
                    "argv (a non-empty list) or cmd (a shell command) is required",
                ))
            }
        };
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(ServiceError::bad_request(
                "argv: arguments may not contain NUL",
            ));
        }
        check_env("env", &body.env)?;
        if let Some(cwd) = &body.cwd {
            super::lifecycle::check_guest_path("cwd", cwd)?;
        }
        let c = &self.inner.config;
        let timeout = match body.timeout_s {
            None => c.default_exec_timeout,
            Some(t) if t.is_finite() && t > 0.0 && t <= c.max_exec_timeout.as_secs_f64() => {
                Duration::from_secs_f64(t)
            }
            Some(t) => {
                return Err(ServiceError::bad_request(format!(
                    "timeout_s {t} must be more than 0 and at most {}",
                    c.max_exec_timeout.as_secs()
                )))
            }
        };
        let stdin = body
            .stdin
            .as_deref()
            .map(|s| decode("stdin", s, body.stdin_encoding))
            .transpose()?;
        let mut env = sandbox.spec.env.clone();
        env.extend(body.env.clone());
        let req = ExecRequest {
            argv,
            env,
            cwd: body.cwd.clone().or_else(|| sandbox.spec.cwd.clone()),
            stdin: stdin.is_some() || body.interactive_stdin,
            timeout_ms: Some(timeout.as_millis() as u64),
            // A held sandbox: `server &` keeps running after its command
            // (and into snapshots, forks and resumed sandboxes).
            keep_background: true,
        };
        Ok((req, stdin))
    }

    /// A failure of the guest ends the sandbox (it cannot be trusted to answer again).
    pub(super) async fn failed(&self, sandbox: &Sandbox, e: ServiceError) -> ServiceError {
        if e.code == ErrorCode::SandboxFailed {
            self.fail(&sandbox.id, &e.message).await;
        }
        e
    }

    /// Runs a command to completion.
    pub async fn exec(
        &self,
        owner: &Owner,
        id: &str,
        body: ExecBody,
    ) -> Result<ExecResult, ServiceError> {
        let sandbox = self.get(owner, id)?;
        let busy = sandbox.busy();
        let cap = body.max_output_bytes.unwrap_or(DEFAULT_OUTPUT_BYTES);
        if cap > MAX_OUTPUT_BYTES {
            return Err(ServiceError::bad_request(format!(
                "max_output_bytes {cap} is more than {MAX_OUTPUT_BYTES}"
            )));
        }
        let (req, stdin) = self.request(&sandbox, &body)?;
        self.inner.metrics.exec();
        let t0 = Instant::now();
        let out = match busy.agent().run_with_cap(req, stdin, cap as usize).await {
            Ok(out) => out,
            Err(e) => return Err(self.failed(&sandbox, e.into()).await),
        };
        Ok(ExecResult {
            exit_code: out.status.code,
            signal: out.status.signal,
            timed_out: out.status.timed_out,
            stdout: encode(&out.stdout, body.encoding),
            stderr: encode(&out.stderr, body.encoding),
            encoding: body.encoding,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
            duration_ms: t0.elapsed().as_millis() as u64,
        })
    }

    /// Starts a command in the background; read it with [`Service::command_output`].
    /// `paced`: one follower will read all its output (a streamed exec), so
    /// the command waits for it instead of dropping output; the follower
    /// acknowledges with [`Command::ack`] and calls [`Command::unpace`] when it goes.
    pub async fn start_command(
        &self,
        owner: &Owner,
        id: &str,
        body: ExecBody,
        paced: bool,
    ) -> Result<Arc<Command>, ServiceError> {
        let sandbox = self.get(owner, id)?;
        let _busy = sandbox.busy();
        if body.max_output_bytes.is_some() {
            return Err(ServiceError::bad_request(format!(
                "max_output_bytes applies to commands run to completion; a background command keeps its last {DEFAULT_RING_BYTES} bytes"
            )));
        }
        let (req, stdin) = self.request(&sandbox, &body)?;
        let cid = sandbox.command_slot()?;
        let argv = req.argv.clone();
        self.inner.metrics.exec();
        let session = match sandbox.agent().exec(req).await {
            Ok(s) => s,
            Err(e) => return Err(self.failed(&sandbox, e.into()).await),
        };
        let command = Command::start(cid, argv, session, DEFAULT_RING_BYTES, paced);
        sandbox.add_command(command.clone());
        if let Some(data) = stdin {
            command.write_stdin(Bytes::from(data)).await?;
            if !body.interactive_stdin {
                command.close_stdin().await?;
            }
        }
        tracing::info!(sandbox = %id, command = %command.id, "command started");
        Ok(command)
    }

    pub fn command(
        &self,
        owner: &Owner,
        id: &str,
        cid: &str,
    ) -> Result<Arc<Command>, ServiceError> {
        let sandbox = self.get(owner, id)?;
        sandbox.touch();
        sandbox.command(cid)
    }

    pub fn commands(&self, owner: &Owner, id: &str) -> Result<Vec<CommandInfo>, ServiceError> {
        Ok(self
            .get(owner, id)?
            .commands()
            .iter()
            .map(|c| command_info(c))
            .collect())
    }

    /// Output of a command from `cursor`, waiting up to `wait` for some.
    pub async fn command_output(
        &self,
        owner: &Owner,
        id: &str,
        cid: &str,
        cursor: u64,
        wait: Duration,
        encoding: Encoding,
    ) -> Result<OutputPage, ServiceError> {
        let command = self.command(owner, id, cid)?;
        command.wait_past(cursor, wait.min(MAX_POLL_WAIT)).await;
        let (read, end) = command.read(cursor, MAX_READ_BYTES);
        // The end is reported only with the last of the output.
        let end = end.filter(|_| read.next >= command.output_end());
        Ok(OutputPage {
            chunks: read
                .chunks
                .iter()
                .map(|c| OutputChunk {
                    offset: c.offset,
                    stream: c.stream,
                    data: encode(&c.data, encoding),
                })
                .collect(),
            encoding,
            next_cursor: read.next,
            dropped_bytes: read.dropped,
            end,
        })
    }

    pub async fn command_stdin(
        &self,
        owner: &Owner,
        id: &str,
        cid: &str,
        body: StdinBody,
    ) -> Result<(), ServiceError> {
        let command = self.command(owner, id, cid)?;
        if let Some(data) = &body.data {
            command
                .write_stdin(Bytes::from(decode("data", data, body.encoding)?))
                .await?;
        }
        if body.close {
            command.close_stdin().await?;
        }
        Ok(())
    }

    pub fn command_signal(
        &self,
        owner: &Owner,
        id: &str,
        cid: &str,
        signal: &str,
    ) -> Result<(), ServiceError> {
        let signal = parse_signal(signal)?;
        self.command(owner, id, cid)?.signal(signal)
    }

    /// Waits up to `timeout` for the command to end.
    pub async fn command_wait(
        &self,
        owner: &Owner,
        id: &str,
        cid: &str,
        timeout: Duration,
    ) -> Result<CommandInfo, ServiceError> {
        let command = self.command(owner, id, cid)?;
        command.wait(timeout.min(MAX_POLL_WAIT)).await;
        Ok(command_info(&command))
    }
}

pub fn command_info(c: &Command) -> CommandInfo {
    CommandInfo {
        command_id: c.id.clone(),
        argv: c.argv.clone(),
        pid: c.pid(),
        started_at: unix_secs(c.started_at),
        output_bytes: c.output_end(),
        end: c.end(),
    }
}

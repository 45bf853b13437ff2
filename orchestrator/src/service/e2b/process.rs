//! envd's `process.Process` service on the service's background commands
//! ([`Service::start_command`]): `Start` streams a paced command's events
//! (the guest's pid first), `Connect` follows a command again by pid,
//! `SendInput`, `CloseStdin`, `SendSignal` and `List` act on the commands
//! the sandbox keeps. Closing a stream leaves its process running.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::connect::{self, ConnectError};
use super::types::{
    DataEvent, EndEvent, ProcessConfigOut, ProcessEvent, ProcessEventMessage, ProcessInfo,
    ProcessList, ProcessSelector, SelectRequest, SendInputRequest, SendSignalRequest, StartRequest,
};
use super::{filesystem::guest_path, E2bState, Envd};
use crate::service::command::{Command, CommandEnd};
use crate::service::error::ErrorCode;
use crate::service::ring::OutputStream;
use crate::service::sandbox::Sandbox;
use crate::service::types::ExecBody;

/// Output bytes per read of the ring while streaming.
const STREAM_READ: usize = 64 << 10;
/// How long `Start` waits for the guest to report the pid.
const START_WAIT: Duration = Duration::from_secs(30);
/// Keepalive interval when the client asks for none (`Keepalive-Ping-Interval`).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);

/// `POST /process.Process/{method}`.
pub async fn rpc(
    State(s): State<E2bState>,
    Envd(sandbox): Envd,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    sandbox.touch();
    match method.as_str() {
        "Start" => start(&s, &sandbox, &headers, body)
            .await
            .unwrap_or_else(connect::stream_error),
        "Connect" => reconnect(&sandbox, &headers, body)
            .await
            .unwrap_or_else(connect::stream_error),
        "StreamInput" => connect::stream_error(ConnectError::unsupported(
            "process.Process/StreamInput (send_stdin works)",
        )),
        "List" => unary(list(&sandbox, &headers, body).await),
        "SendInput" => unary(send_input(&sandbox, &headers, body).await),
        "CloseStdin" => unary(close_stdin(&sandbox, &headers, body).await),
        "SendSignal" => unary(send_signal(&sandbox, &headers, body).await),
        "Update" => ConnectError::unsupported("a PTY (process.Process/Update)").into_response(),
        other => ConnectError::new(
            "unimplemented",
            format!("no method process.Process/{other}"),
        )
        .into_response(),
    }
}

fn unary(answer: Result<Value, ConnectError>) -> Response {
    match answer {
        Ok(v) => connect::unary_reply(&v),
        Err(e) => e.into_response(),
    }
}

fn keepalive_interval(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_KEEPALIVE, |s| Duration::from_secs(s.clamp(1, 300)))
}

async fn start(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ConnectError> {
    let req: StartRequest = connect::stream_request(headers, body).await?;
    if req.pty.is_some() {
        return Err(ConnectError::unsupported("a PTY (sandbox.pty)"));
    }
    let process = req
        .process
        .ok_or_else(|| ConnectError::invalid("process is required"))?;
    if process.cmd.is_empty() {
        return Err(ConnectError::invalid("process.cmd is required"));
    }
    // envd kills the process when the call's deadline passes; without one
    // it may run as long as the service lets a command run.
    let max = s.service.config().max_exec_timeout;
    let timeout = connect::timeout(headers).map_or(max, |t| t.min(max));
    let mut argv = vec![process.cmd];
    argv.extend(process.args);
    let body = ExecBody {
        argv: Some(argv),
        env: process.envs,
        cwd: process
            .cwd
            .filter(|c| !c.is_empty())
            .map(|c| guest_path(sandbox, &c)),
        interactive_stdin: req.stdin.unwrap_or(true),
        timeout_s: Some(timeout.as_secs_f64()),
        ..ExecBody::default()
    };
    let command = s
        .service
        .start_command(&sandbox.owner, &sandbox.id, body, true)
        .await?;
    let pid = command.wait_started(START_WAIT).await.unwrap_or(0);
    Ok(follow(command, pid, keepalive_interval(headers), true))
}

async fn reconnect(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ConnectError> {
    let req: SelectRequest = connect::stream_request(headers, body).await?;
    let command = selected(sandbox, req.process)?;
    let pid = command.pid().unwrap_or(0);
    Ok(follow(command, pid, keepalive_interval(headers), false))
}

/// The command a selector names (by pid; tags are not supported).
fn selected(sandbox: &Sandbox, sel: Option<ProcessSelector>) -> Result<Arc<Command>, ConnectError> {
    let sel = sel.unwrap_or_default();
    let pid = match (sel.pid, sel.tag) {
        (Some(pid), _) => pid,
        (None, Some(_)) => return Err(ConnectError::unsupported("selecting a process by tag")),
        (None, None) => return Err(ConnectError::invalid("process.pid is required")),
    };
    sandbox
        .command_by_pid(pid)
        .ok_or_else(|| ConnectError::not_found(format!("process with pid {pid} not found")))
}

/// A command that ended no longer takes input or signals: envd says it is not found.
fn ended_is_not_found(e: crate::service::ServiceError) -> ConnectError {
    if e.code == ErrorCode::Conflict {
        ConnectError::not_found(e.message)
    } else {
        e.into()
    }
}

async fn list(sandbox: &Sandbox, headers: &HeaderMap, body: Body) -> Result<Value, ConnectError> {
    let _: Value = connect::unary_request(headers, body).await?;
    let processes = sandbox
        .commands()
        .iter()
        .filter(|c| c.end().is_none())
        .filter_map(|c| {
            let pid = c.pid()?;
            let (cmd, args) = c.argv.split_first()?;
            Some(ProcessInfo {
                config: ProcessConfigOut {
                    cmd: cmd.clone(),
                    args: args.to_vec(),
                },
                pid,
            })
        })
        .collect();
    Ok(serde_json::to_value(ProcessList { processes }).expect("serializes"))
}

fn decode_bytes(field: &str, b64: &str) -> Result<Vec<u8>, ConnectError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    STANDARD
        .decode(b64)
        .or_else(|_| URL_SAFE.decode(b64))
        .map_err(|e| ConnectError::invalid(format!("{field}: not base64: {e}")))
}

async fn send_input(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: SendInputRequest = connect::unary_request(headers, body).await?;
    let command = selected(sandbox, req.process)?;
    let input = req.input.unwrap_or_default();
    if input.pty.is_some() {
        return Err(ConnectError::unsupported("input to a PTY"));
    }
    let data = decode_bytes("input.stdin", input.stdin.as_deref().unwrap_or(""))?;
    if !data.is_empty() {
        command
            .write_stdin(Bytes::from(data))
            .await
            .map_err(ended_is_not_found)?;
    }
    Ok(json!({}))
}

async fn close_stdin(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: SelectRequest = connect::unary_request(headers, body).await?;
    selected(sandbox, req.process)?
        .close_stdin()
        .await
        .map_err(ended_is_not_found)?;
    Ok(json!({}))
}

async fn send_signal(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: SendSignalRequest = connect::unary_request(headers, body).await?;
    let signal = match &req.signal {
        Value::String(s) if s == "SIGNAL_SIGKILL" => libc::SIGKILL,
        Value::String(s) if s == "SIGNAL_SIGTERM" => libc::SIGTERM,
        Value::Number(n) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
            n.as_i64().unwrap_or(9) as i32
        }
        other => {
            return Err(ConnectError::invalid(format!(
                "signal {other}: SIGNAL_SIGKILL or SIGNAL_SIGTERM"
            )))
        }
    };
    selected(sandbox, req.process)?
        .signal(signal)
        .map_err(ended_is_not_found)?;
    Ok(json!({}))
}

fn event(e: ProcessEvent) -> Bytes {
    connect::message(&ProcessEventMessage { event: e })
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGHUP => "hangup".into(),
        libc::SIGPIPE => "broken pipe".into(),
        n => format!("signal {n}"),
    }
}

/// envd's end event for how a command ended.
fn end_event(end: &CommandEnd) -> EndEvent {
    match (end.exit_code, end.signal, &end.error) {
        (_, _, Some(error)) => EndEvent {
            exit_code: -1,
            exited: false,
            status: "error".into(),
            error: Some(error.clone()),
        },
        (Some(code), _, None) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        (None, signal, None) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(signal.unwrap_or(libc::SIGKILL))),
            error: end
                .timed_out
                .then(|| "the command's timeout (the call's deadline) passed".into()),
        },
    }
}

/// One client following a command's output.
struct Follow {
    command: Arc<Command>,
    cursor: u64,
    first: Option<Bytes>,
    keepalive: Duration,
    done: bool,
    /// The follower of `Start`: the command is paced for it (acked as it
    /// reads); when it goes the command runs on, unpaced.
    paces: bool,
}

impl Drop for Follow {
    fn drop(&mut self) {
        if self.paces {
            self.command.unpace();
        }
    }
}

impl Follow {
    /// The next envelopes: output, a keepalive when idle, or the end.
    async fn next(&mut self) -> Bytes {
        self.command.wait_past(self.cursor, self.keepalive).await;
        let (read, end) = self.command.read(self.cursor, STREAM_READ);
        let mut out = BytesMut::new();
        if read.dropped > 0 {
            tracing::debug!(command = %self.command.id, bytes = read.dropped, "e2b: a follower missed output");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        for c in &read.chunks {
            let data = b64.encode(&c.data);
            out.extend_from_slice(&event(ProcessEvent::Data(match c.stream {
                OutputStream::Stdout => DataEvent::Stdout(data),
                OutputStream::Stderr => DataEvent::Stderr(data),
            })));
        }
        self.cursor = read.next;
        if self.paces {
            self.command.ack(self.cursor);
        }
        match end.filter(|_| self.cursor >= self.command.output_end()) {
            Some(end) => {
                out.extend_from_slice(&event(ProcessEvent::End(end_event(&end))));
                out.extend_from_slice(&connect::end_of_stream(None));
                self.done = true;
            }
            None if out.is_empty() => out.extend_from_slice(&event(ProcessEvent::Keepalive {})),
            None => {}
        }
        out.freeze()
    }
}

/// The command's events as a Connect stream: start (the pid), data, keepalives, end.
fn follow(command: Arc<Command>, pid: u32, keepalive: Duration, paces: bool) -> Response {
    let follow = Follow {
        command,
        cursor: 0,
        first: Some(event(ProcessEvent::Start { pid })),
        keepalive,
        done: false,
        paces,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        if let Some(first) = f.first.take() {
            return Some((Ok::<_, Infallible>(first), f));
        }
        if f.done {
            return None;
        }
        let bytes = f.next().await;
        Some((Ok(bytes), f))
    });
    connect::stream_reply(Body::from_stream(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_envds_json_shape() {
        let v = |b: Bytes| serde_json::from_slice::<Value>(&b[5..]).unwrap();
        assert_eq!(
            v(event(ProcessEvent::Start { pid: 7 })),
            json!({"event": {"start": {"pid": 7}}})
        );
        assert_eq!(
            v(event(ProcessEvent::Data(DataEvent::Stdout("aGk=".into())))),
            json!({"event": {"data": {"stdout": "aGk="}}})
        );
        assert_eq!(
            v(event(ProcessEvent::Keepalive {})),
            json!({"event": {"keepalive": {}}})
        );
        let end = CommandEnd {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            error: None,
        };
        assert_eq!(
            v(event(ProcessEvent::End(end_event(&end)))),
            json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3"}}})
        );
        let killed = CommandEnd {
            exit_code: None,
            signal: Some(9),
            timed_out: false,
            error: None,
        };
        assert_eq!(end_event(&killed).status, "signal: killed");
    }
}

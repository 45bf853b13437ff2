//! Commands: run to completion, streamed (NDJSON), or in the background
//! with output read from a cursor, stdin, signals and wait.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;

use super::body::{JsonBody, Params};
use super::{millis, AppState};
use crate::service::command::Command;
use crate::service::error::{ErrorBody, ServiceError};
use crate::service::exec::{command_info, encode};
use crate::service::ring::OutputStream;
use crate::service::types::{
    CommandInfo, CommandList, Encoding, ExecBody, ExecResult, OutputPage, SignalBody, StdinBody,
    StreamEvent,
};
use crate::service::Owner;

/// Bytes per streamed event, at most.
const STREAM_READ: usize = 64 << 10;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Offset in the command's output to read from (0: the start).
    pub cursor: Option<u64>,
    /// Wait up to this many milliseconds for output (at most 60000).
    pub wait_ms: Option<u64>,
    pub encoding: Option<Encoding>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Wait up to this many milliseconds (at most 60000).
    pub timeout_ms: Option<u64>,
}

/// Run a command to completion; stdout and stderr capped at `max_output_bytes` each.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "commands", params(("id" = String, Path)),
    request_body = ExecBody,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody), (status = 502, body = ErrorBody, description = "the guest stopped answering; the sandbox is destroyed")))]
pub async fn exec(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Json<ExecResult>, ServiceError> {
    Ok(Json(s.service.exec(&owner, &id, body).await?))
}

/// Run a command and stream its events as NDJSON (`started`, `stdout`,
/// `stderr`, `dropped`, `exit`) as they happen.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec/stream", tag = "commands", params(("id" = String, Path)),
    request_body = ExecBody,
    responses((status = 200, content_type = "application/x-ndjson", body = StreamEvent,
        description = "one StreamEvent per line"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn exec_stream(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Response, ServiceError> {
    let encoding = body.encoding;
    let command = s.service.start_command(&owner, &id, body, true).await?;
    let started = StreamEvent::Started {
        command_id: command.id.clone(),
    };
    Ok(ndjson(command, 0, encoding, Some(started), true))
}

/// Start a command in the background; its output is kept in a ring of 1 MiB.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands", tag = "commands", params(("id" = String, Path)),
    request_body = ExecBody,
    responses((status = 201, body = CommandInfo), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn start(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<(StatusCode, Json<CommandInfo>), ServiceError> {
    let command = s.service.start_command(&owner, &id, body, false).await?;
    Ok((StatusCode::CREATED, Json(command_info(&command))))
}

/// The sandbox's running and recently ended commands.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands", tag = "commands", params(("id" = String, Path)),
    responses((status = 200, body = CommandList), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<CommandList>, ServiceError> {
    Ok(Json(CommandList {
        commands: s.service.commands(&owner, &id)?,
    }))
}

/// One command.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands/{cid}", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path)),
    responses((status = 200, body = CommandInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<CommandInfo>, ServiceError> {
    let command = s.service.command(&owner, &id, &cid)?;
    Ok(Json(command_info(&command)))
}

/// Output from a cursor (waiting up to `wait_ms` for some); `end` once it ended.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands/{cid}/output", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path), OutputQuery),
    responses((status = 200, body = OutputPage), (status = 404, body = ErrorBody)))]
pub async fn output(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
    Params(q): Params<OutputQuery>,
) -> Result<Json<OutputPage>, ServiceError> {
    let page = s
        .service
        .command_output(
            &owner,
            &id,
            &cid,
            q.cursor.unwrap_or(0),
            millis(q.wait_ms),
            q.encoding.unwrap_or_default(),
        )
        .await?;
    Ok(Json(page))
}

/// Follow a command's output from a cursor as NDJSON until it ends.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands/{cid}/stream", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path), OutputQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = StreamEvent), (status = 404, body = ErrorBody)))]
pub async fn stream(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
    Params(q): Params<OutputQuery>,
) -> Result<Response, ServiceError> {
    if q.wait_ms.is_some() {
        return Err(ServiceError::bad_request(
            "wait_ms: a stream waits until the command ends",
        ));
    }
    let command = s.service.command(&owner, &id, &cid)?;
    Ok(ndjson(
        command,
        q.cursor.unwrap_or(0),
        q.encoding.unwrap_or_default(),
        None,
        false,
    ))
}

/// Write to a background command's stdin (started with `interactive_stdin`), or close it.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{cid}/stdin", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path)), request_body = StdinBody,
    responses((status = 204), (status = 409, body = ErrorBody, description = "the command ended"),
        (status = 429, body = ErrorBody, description = "the command is not reading its input")))]
pub async fn stdin(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
    JsonBody(body): JsonBody<StdinBody>,
) -> Result<StatusCode, ServiceError> {
    s.service.command_stdin(&owner, &id, &cid, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a signal to the command's process group.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{cid}/signal", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path)), request_body = SignalBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn signal(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
    JsonBody(body): JsonBody<SignalBody>,
) -> Result<StatusCode, ServiceError> {
    s.service.command_signal(&owner, &id, &cid, &body.signal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Wait up to `timeout_ms` for the command to end.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/commands/{cid}/wait", tag = "commands",
    params(("id" = String, Path), ("cid" = String, Path), WaitQuery),
    responses((status = 200, body = CommandInfo), (status = 404, body = ErrorBody)))]
pub async fn wait(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path((id, cid)): Path<(String, String)>,
    Params(q): Params<WaitQuery>,
) -> Result<Json<CommandInfo>, ServiceError> {
    let timeout = q
        .timeout_ms
        .map_or(Duration::from_secs(60), Duration::from_millis);
    Ok(Json(
        s.service.command_wait(&owner, &id, &cid, timeout).await?,
    ))
}

fn line(event: &StreamEvent) -> String {
    let mut s = serde_json::to_string(event).expect("events serialize");
    s.push('\n');
    s
}

struct Follow {
    command: Arc<Command>,
    cursor: u64,
    encoding: Encoding,
    first: Option<StreamEvent>,
    done: bool,
    /// The stream is the command's only reader (a streamed exec): if the
    /// client goes away before the end, the command is killed, as a command
    /// whose terminal closed.
    owns_command: bool,
}

impl Drop for Follow {
    /// The client went away (or read the end): stop holding output for it.
    fn drop(&mut self) {
        if self.owns_command {
            self.command.unpace();
            if !self.done {
                let _ = self.command.signal(libc::SIGKILL);
            }
        }
    }
}

/// The command's events from `cursor` on, one JSON object per line, ending with `exit`.
fn ndjson(
    command: Arc<Command>,
    cursor: u64,
    encoding: Encoding,
    first: Option<StreamEvent>,
    owns_command: bool,
) -> Response {
    let follow = Follow {
        command,
        cursor,
        encoding,
        first,
        done: false,
        owns_command,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        if let Some(first) = f.first.take() {
            return Some((Ok::<_, Infallible>(Bytes::from(line(&first))), f));
        }
        loop {
            f.command.wait_past(f.cursor, Duration::from_secs(30)).await;
            let (read, end) = f.command.read(f.cursor, STREAM_READ);
            let mut out = String::new();
            if read.dropped > 0 {
                out += &line(&StreamEvent::Dropped {
                    bytes: read.dropped,
                });
            }
            for c in &read.chunks {
                let data = encode(&c.data, f.encoding);
                out += &line(&match c.stream {
                    OutputStream::Stdout => StreamEvent::Stdout { data },
                    OutputStream::Stderr => StreamEvent::Stderr { data },
                });
            }
            f.cursor = read.next;
            if f.owns_command {
                // Only the command's own reader paces it.
                f.command.ack(f.cursor);
            }
            if let Some(end) = end.filter(|_| f.cursor >= f.command.output_end()) {
                out += &line(&StreamEvent::Exit { end });
                f.done = true;
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), f));
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(events),
    )
        .into_response()
}

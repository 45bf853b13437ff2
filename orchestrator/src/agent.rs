//! Host side of the agent protocol: one multiplexed session per connection.
//!
//! A reader task dispatches incoming frames to the request they belong to (by
//! stream id); a writer task owns the write half. Every request stream has
//! its own credit windows (protocol version 2, see `ironclaw_protocol`'s flow
//! control and `docs/decisions.md`): the reader queues a stream's frames in
//! that stream's inbox without ever waiting for its consumer, and the guest
//! may not send a stream more than [`ironclaw_protocol::STREAM_WINDOW`] bytes the consumer has
//! not taken — so a caller that stops reading one stream stops only that
//! stream, and the host holds at most a window of it. A guest that sends
//! beyond its credit, or oversized or malformed frames, ends the session.
//! The other way, writers of stdin and uploads wait for the guest's credit.
//!
//! # Deadlines
//!
//! The guest is not trusted to end what it was asked to do: its root can
//! stop or replace the agent. So every request has a host-side deadline,
//! after which it fails with [`AgentError::Deadline`]:
//!
//! - an exec, its timeout (the request's `timeout_ms`, or
//!   [`DEFAULT_EXEC_TIMEOUT`] filled in when it has none, see
//!   [`AgentClient::with_default_exec_timeout`]) plus a grace period
//!   ([`DEFAULT_EXEC_GRACE`], [`AgentClient::with_exec_grace`]) from its start;
//! - a file operation, a time without progress ([`DEFAULT_FILE_IDLE_LIMIT`],
//!   [`AgentClient::with_file_idle_limit`]): no reply, chunk or credit from
//!   the guest for that long.
//!
//! A deadline error means the guest stopped answering (or cheats): the
//! client itself stays usable, but what the guest does next cannot be
//! trusted. The caller decides; `ironclaw run` destroys the VM (exit 124
//! for an exec, 125 otherwise), which is the advised course.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    ExecRequest, Frame, FrameCodec, FrameKind, Message, ProtocolError, SendCredit,
    PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::vm::channel::BoxedStream;

mod exec;
pub mod files;
mod inbox;
mod streams;

pub use exec::{ExecEvent, ExecOutput, ExecSession, StdinWriter};
pub use files::MAX_LIST_BYTES;
pub use files::{FileError, GetFileOptions, DEFAULT_MAX_GET_BYTES};
use inbox::*;
use streams::*;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after its timeout an exec may still take to report its end
/// before the host gives it up (the guest kills it at the timeout).
pub const DEFAULT_EXEC_GRACE: Duration = Duration::from_secs(5);
/// The timeout given to an exec request that has none: the same as
/// `VmConfig`'s `exec_timeout_ms` default.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a file operation may go without progress from the guest.
pub const DEFAULT_FILE_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// What [`AgentClient::run`] keeps of each of stdout and stderr.
pub const DEFAULT_OUTPUT_CAP: usize = 16 << 20;

/// The request whose deadline passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineOf {
    /// A command (its timeout plus the grace period).
    Exec,
    /// A file operation (a time without progress).
    File { op: &'static str, path: String },
}

impl DeadlineOf {
    /// Whether the request was a command.
    pub fn is_exec(&self) -> bool {
        matches!(self, DeadlineOf::Exec)
    }
}

impl std::fmt::Display for DeadlineOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadlineOf::Exec => f.write_str("the command did not end"),
            DeadlineOf::File { op, path } => write!(f, "{op} {path} made no progress"),
        }
    }
}

/// The host-side limits of one client (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Limits {
    exec_grace: Duration,
    default_exec_timeout: Duration,
    file_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            exec_grace: DEFAULT_EXEC_GRACE,
            default_exec_timeout: DEFAULT_EXEC_TIMEOUT,
            file_idle: DEFAULT_FILE_IDLE_LIMIT,
        }
    }
}
/// Frames of an earlier session skipped while waiting for the hello answer
/// (on virtio-serial the agent may still be flushing an old session's output).
const HANDSHAKE_SKIP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("agent handshake failed: {0}")]
    Handshake(String),
    #[error("the connection to the guest agent closed")]
    Closed,
    #[error("the session with the guest agent ended: {0}")]
    SessionFailed(String),
    #[error("the request ended before all its input was sent")]
    StreamEnded,
    #[error("guest agent: {0}")]
    Remote(String),
    #[error("the guest agent sent an unexpected message: {0}")]
    Unexpected(String),
    #[error("no answer from the guest agent within {0:?}")]
    Timeout(Duration),
    /// The host-side deadline of a request passed: the guest stopped
    /// answering (its agent stopped, killed or replaced). See the module docs.
    #[error("the guest stopped answering: {what} within {after:?}")]
    Deadline { what: DeadlineOf, after: Duration },
}

/// How the session ended, told to every request still waiting on it.
#[derive(Debug, Clone)]
enum SessionEnd {
    /// The guest closed the connection.
    Closed,
    /// A broken or malformed frame, a flow-control violation, an i/o error.
    Failed(String),
}

impl From<SessionEnd> for AgentError {
    fn from(end: SessionEnd) -> AgentError {
        match end {
            SessionEnd::Closed => AgentError::Closed,
            SessionEnd::Failed(why) => AgentError::SessionFailed(why),
        }
    }
}

/// A connected, version-checked session with the guest agent.
#[derive(Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
    agent_version: String,
    kernel_release: String,
    limits: Limits,
}

impl AgentClient {
    /// Says hello on `stream` and starts the session.
    pub async fn handshake(stream: BoxedStream) -> Result<AgentClient, AgentError> {
        let (r, w) = tokio::io::split(stream);
        let mut reader = FramedRead::new(r, FrameCodec::new());
        let mut writer = FramedWrite::new(w, FrameCodec::new());
        let hello = async {
            writer
                .send(Frame::control(
                    SESSION_STREAM,
                    &Message::Hello {
                        version: PROTOCOL_VERSION,
                    },
                ))
                .await?;
            // Frames of an earlier session, and a new agent's announcement,
            // may come before the answer.
            let mut frame = reader.next().await.ok_or(AgentError::Closed)??;
            for _ in 0..HANDSHAKE_SKIP {
                let announcement = frame.stream == SESSION_STREAM
                    && frame.kind == FrameKind::Control
                    && matches!(frame.message(), Ok(Message::AgentStarted));
                if frame.stream == SESSION_STREAM && !announcement {
                    break;
                }
                frame = reader.next().await.ok_or(AgentError::Closed)??;
            }
            if frame.stream != SESSION_STREAM || frame.kind != FrameKind::Control {
                return Err(AgentError::Handshake(
                    "no answer to hello on the session stream".into(),
                ));
            }
            match frame.message()? {
                Message::HelloAck {
                    version,
                    agent_version,
                    kernel_release,
                } if version == PROTOCOL_VERSION => Ok((agent_version, kernel_release)),
                Message::HelloAck { version, .. } => Err(AgentError::Handshake(format!(
                    "agent speaks protocol version {version}, this host {PROTOCOL_VERSION}"
                ))),
                Message::Error { message } => Err(AgentError::Handshake(message)),
                other => Err(AgentError::Unexpected(format!("{other:?}"))),
            }
        };
        let (agent_version, kernel_release) = tokio::time::timeout(HANDSHAKE_TIMEOUT, hello)
            .await
            .map_err(|_| AgentError::Timeout(HANDSHAKE_TIMEOUT))??;

        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let streams: Streams = Arc::default();
        // Frames queued by many requests leave in batches, large bodies
        // without a copy (see `ironclaw_protocol::write_frames`).
        let writer = writer.into_inner();
        let write_task = tokio::spawn(async move {
            if let Err(e) = ironclaw_protocol::write_frames(writer, &mut out_rx).await {
                tracing::debug!("agent writer: {e}");
            }
        });
        let streams_r = streams.clone();
        let out_r = out_tx.clone();
        // Never waits for a consumer: frames go to their stream's inbox,
        // which the guest's credit bounds.
        let read_task = tokio::spawn(async move {
            let end = loop {
                let frame = match reader.next().await {
                    None => break SessionEnd::Closed,
                    Some(Ok(f)) => f,
                    Some(Err(e)) => break SessionEnd::Failed(e.to_string()),
                };
                if let Err(why) = dispatch(&streams_r, frame) {
                    tracing::warn!("guest agent broke the protocol: {why}");
                    // Tell the agent why; it then ends the session too.
                    let _ = out_r.try_send(Frame::control(
                        SESSION_STREAM,
                        &Message::Error {
                            message: format!("protocol violation: {why}"),
                        },
                    ));
                    break SessionEnd::Failed(format!("the guest broke the protocol: {why}"));
                }
            };
            // Wakes every waiting request with the reason.
            let mut table = streams_r.lock().expect("streams lock");
            table.ended = Some(end.clone());
            for (_, entry) in table.map.drain() {
                entry.inbox.end(end.clone());
                entry.credit.close();
            }
        });
        let shared = Arc::new(Shared {
            out: out_tx,
            streams,
            next_id: AtomicU32::new(1),
            tasks: vec![write_task, read_task],
        });
        Ok(AgentClient {
            shared,
            agent_version,
            kernel_release,
            limits: Limits::default(),
        })
    }

    /// This client with `grace` as the time an exec may take past its
    /// timeout before it fails with [`AgentError::Deadline`] (clones share
    /// the session, not the limits).
    pub fn with_exec_grace(mut self, grace: Duration) -> AgentClient {
        self.limits.exec_grace = grace;
        self
    }

    /// This client with `timeout` given to exec requests that have none.
    pub fn with_default_exec_timeout(mut self, timeout: Duration) -> AgentClient {
        self.limits.default_exec_timeout = timeout;
        self
    }

    /// This client with `limit` as the time a file operation may go without
    /// progress before it fails with [`AgentError::Deadline`].
    pub fn with_file_idle_limit(mut self, limit: Duration) -> AgentClient {
        self.limits.file_idle = limit;
        self
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// Starts `req` on a new stream. A request without a timeout gets the
    /// client's default ([`DEFAULT_EXEC_TIMEOUT`] unless set otherwise); the
    /// session fails with [`AgentError::Deadline`] if the guest has not
    /// reported the end by the timeout plus the grace period.
    pub async fn exec(&self, mut req: ExecRequest) -> Result<ExecSession, AgentError> {
        let timeout = match req.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => {
                let t = self.limits.default_exec_timeout;
                req.timeout_ms = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                t
            }
        };
        let after = timeout.saturating_add(self.limits.exec_grace);
        let deadline = tokio::time::Instant::now()
            .checked_add(after)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
        let stream = self.open_stream()?;
        let id = stream.id;
        let session = ExecSession {
            stream,
            client: self.clone(),
            done: false,
            deadline,
            after,
        };
        let sent =
            tokio::time::timeout_at(deadline, self.send(Frame::control(id, &Message::Exec(req))));
        sent.await.map_err(|_| AgentError::Deadline {
            what: DeadlineOf::Exec,
            after,
        })??;
        Ok(session)
    }

    /// Registers a new request stream (odd ids, so they never collide with
    /// the session stream 0).
    fn open_stream(&self) -> Result<StreamHandle, AgentError> {
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::new(id));
        let credit = Arc::new(SendCredit::new(id));
        let mut table = self.shared.streams.lock().expect("streams lock");
        if let Some(end) = &table.ended {
            return Err(end.clone().into());
        }
        table.map.insert(
            id,
            StreamEntry {
                inbox: inbox.clone(),
                credit: credit.clone(),
            },
        );
        Ok(StreamHandle { id, inbox, credit })
    }

    /// Forgets a stream its caller is done with; what the guest still sends
    /// on it is dropped, and its writers stop.
    fn close_stream(&self, stream: &StreamHandle) {
        let mut table = self.shared.streams.lock().expect("streams lock");
        let open = table
            .map
            .get(&stream.id)
            .is_some_and(|e| Arc::ptr_eq(&e.inbox, &stream.inbox));
        if open {
            table.map.remove(&stream.id);
        }
        drop(table);
        stream.credit.close();
        if open {
            // The request has not ended: give the guest its whole window back
            // so its senders can flush (into the void) and its request end.
            let grant = stream
                .inbox
                .state
                .lock()
                .expect("inbox lock")
                .window
                .release();
            if let Some(bytes) = grant {
                let _ = self
                    .shared
                    .out
                    .try_send(Frame::control(stream.id, &Message::Credit { bytes }));
            }
        }
    }

    /// The next item the guest sent on `stream`; gives the guest credit
    /// back as items are taken.
    async fn next_incoming(&self, stream: &StreamHandle) -> Result<Incoming, AgentError> {
        let (item, grant) = stream.inbox.pop().await?;
        if let Some(bytes) = grant {
            // Never awaited here, so that a caller may cancel this call (in a
            // `select!`) without losing the item it took.
            let credit = Frame::control(stream.id, &Message::Credit { bytes });
            if let Err(mpsc::error::TrySendError::Full(credit)) = self.shared.out.try_send(credit) {
                let out = self.shared.out.clone();
                tokio::spawn(async move { out.send(credit).await });
            }
        }
        Ok(item)
    }

    /// Like [`Self::next_incoming`], but `None` once `deadline` has passed
    /// and nothing is queued. Past the deadline what is already queued is
    /// still delivered, but no more credit is given: the guest can add at
    /// most one window to it.
    async fn next_incoming_by(
        &self,
        stream: &StreamHandle,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Incoming>, AgentError> {
        if tokio::time::Instant::now() >= deadline {
            return match stream.inbox.try_pop() {
                Some(Ok((item, _withheld))) => Ok(Some(item)),
                Some(Err(end)) => Err(end.into()),
                None => Ok(None),
            };
        }
        match tokio::time::timeout_at(deadline, self.next_incoming(stream)).await {
            Ok(item) => item.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Mixes `entropy` into the guest kernel's random pool, reseeds it and sets
    /// the guest's wall clock (used on every VM restored from a snapshot).
    pub async fn reseed(&self, entropy: Vec<u8>, unix_time_ns: u64) -> Result<(), AgentError> {
        let stream = self.open_stream()?;
        let id = stream.id;
        let answer = async {
            self.send(Frame::control(
                id,
                &Message::Reseed {
                    entropy,
                    unix_time_ns,
                },
            ))
            .await?;
            match self.next_incoming(&stream).await? {
                Incoming::Msg(Message::Done, _) => Ok(()),
                Incoming::Msg(Message::Error { message }, _) => Err(AgentError::Remote(message)),
                other => Err(AgentError::Unexpected(format!("{other:?}"))),
            }
        };
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer)
            .await
            .map_err(|_| AgentError::Timeout(HANDSHAKE_TIMEOUT));
        self.close_stream(&stream);
        result?
    }
    /// Runs `req` to completion, feeding it `stdin`, and collects its
    /// output: at most [`DEFAULT_OUTPUT_CAP`] bytes of each of stdout and
    /// stderr (see [`Self::run_with_cap`]).
    ///
    /// Fails with [`AgentError::Deadline`] if the guest has not reported the
    /// end by the request's timeout plus the grace period (see the module
    /// docs); the caller should then destroy the VM.
    pub async fn run(
        &self,
        req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput, AgentError> {
        self.run_with_cap(req, stdin, DEFAULT_OUTPUT_CAP).await
    }

    /// [`Self::run`] keeping at most `cap` bytes of each of stdout and
    /// stderr. Output past the cap is read and dropped (the command runs to
    /// its end or its timeout) and the output says it was truncated
    /// (`stdout_truncated`, `stderr_truncated`).
    pub async fn run_with_cap(
        &self,
        mut req: ExecRequest,
        stdin: Option<Vec<u8>>,
        cap: usize,
    ) -> Result<ExecOutput, AgentError> {
        req.stdin = stdin.is_some();
        let mut session = self.exec(req).await?;
        let feeder = session.stdin_writer();
        // Its own task, stopped when the command is over (or given up): a
        // stopped guest gives no credit, and the wait for it must not keep
        // this call from returning.
        let feed = tokio::spawn(async move {
            if let Some(data) = stdin {
                if let Err(e) = feeder.write(&data).await {
                    // A process that exits without reading all its stdin is not an error.
                    tracing::debug!("stdin not fully delivered: {e}");
                    return;
                }
                let _ = feeder.close().await;
            }
        });
        let keep = |buf: &mut Vec<u8>, truncated: &mut bool, data: &[u8]| {
            let room = cap.saturating_sub(buf.len());
            if data.len() > room {
                *truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        };
        let collected = async {
            let mut out = ExecOutput::default();
            loop {
                match session.next_event().await? {
                    ExecEvent::Started { .. } => {}
                    ExecEvent::Stdout(b) => keep(&mut out.stdout, &mut out.stdout_truncated, &b),
                    ExecEvent::Stderr(b) => keep(&mut out.stderr, &mut out.stderr_truncated, &b),
                    ExecEvent::Exit(status) => {
                        out.status = status;
                        return Ok::<_, AgentError>(out);
                    }
                }
            }
        }
        .await;
        feed.abort();
        collected
    }

    async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.shared
            .out
            .send(frame)
            .await
            .map_err(|_| AgentError::Closed)
    }
}

#[cfg(test)]
#[path = "agent/flow_tests.rs"]
mod flow_tests;

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_exec_timeout_is_the_configs() {
        let config = crate::vm::VmConfig::new("x", "k", "i");
        assert_eq!(
            super::DEFAULT_EXEC_TIMEOUT.as_millis(),
            u128::from(config.exec_timeout_ms)
        );
    }
}

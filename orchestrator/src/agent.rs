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
pub use files::FileError;
use inbox::*;
use streams::*;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
            let mut frame = reader.next().await.ok_or(AgentError::Closed)??;
            for _ in 0..HANDSHAKE_SKIP {
                if frame.stream == SESSION_STREAM {
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
        let write_task = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if let Err(e) = writer.send(frame).await {
                    tracing::debug!("agent writer: {e}");
                    break;
                }
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
        })
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// Starts `req` on a new stream.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession, AgentError> {
        let stream = self.open_stream()?;
        let id = stream.id;
        let session = ExecSession {
            stream,
            client: self.clone(),
            done: false,
        };
        self.send(Frame::control(id, &Message::Exec(req))).await?;
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
    /// Runs `req` to completion, feeding it `stdin`, and collects its output.
    pub async fn run(
        &self,
        mut req: ExecRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput, AgentError> {
        req.stdin = stdin.is_some();
        let mut session = self.exec(req).await?;
        let feeder = session.stdin_writer();
        let feed = async move {
            if let Some(data) = stdin {
                feeder.write(&data).await?;
                feeder.close().await?;
            }
            Ok::<_, AgentError>(())
        };
        let collect = async {
            let mut out = ExecOutput::default();
            loop {
                match session.next_event().await? {
                    ExecEvent::Started { .. } => {}
                    ExecEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                    ExecEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                    ExecEvent::Exit(status) => {
                        out.status = status;
                        return Ok::<_, AgentError>(out);
                    }
                }
            }
        };
        let (fed, collected) = tokio::join!(feed, collect);
        // A process that exits without reading all its stdin is not an error.
        let out = collected?;
        if let Err(e) = fed {
            tracing::debug!("stdin not fully delivered: {e}");
        }
        Ok(out)
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

//! Host side of the agent protocol: one multiplexed session per connection.
//!
//! A reader task dispatches incoming frames to the request they belong to (by
//! stream id); a writer task owns the write half. Each request has a bounded
//! queue: a consumer that stops reading eventually stops the guest's output
//! (back-pressure), it is never buffered without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    ExecRequest, ExitStatus, Frame, FrameCodec, FrameKind, Message, ProtocolError, DATA_CHUNK,
    PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::vm::channel::BoxedStream;

pub mod files;
pub use files::FileError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued per request before the reader waits for its consumer.
const STREAM_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("agent handshake failed: {0}")]
    Handshake(String),
    #[error("the connection to the guest agent closed")]
    Closed,
    #[error("guest agent: {0}")]
    Remote(String),
    #[error("the guest agent sent an unexpected message: {0}")]
    Unexpected(String),
    #[error("no answer from the guest agent within {0:?}")]
    Timeout(Duration),
}

type StreamMap = Arc<Mutex<HashMap<u32, mpsc::Sender<Frame>>>>;

struct Shared {
    out: mpsc::Sender<Frame>,
    /// Per-request queues, shared with the reader task.
    streams: StreamMap,
    next_id: AtomicU32,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
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
            let frame = reader.next().await.ok_or(AgentError::Closed)??;
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
        let streams: StreamMap = Arc::default();
        let write_task = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if let Err(e) = writer.send(frame).await {
                    tracing::debug!("agent writer: {e}");
                    break;
                }
            }
        });
        let streams_r = streams.clone();
        let read_task = tokio::spawn(async move {
            while let Some(frame) = reader.next().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("agent connection: {e}");
                        break;
                    }
                };
                if frame.stream == SESSION_STREAM {
                    tracing::warn!("agent session message: {:?}", frame.message());
                    continue;
                }
                let tx = streams_r
                    .lock()
                    .expect("streams lock")
                    .get(&frame.stream)
                    .cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(frame).await;
                }
            }
            // Wakes every waiting request with "closed".
            streams_r.lock().expect("streams lock").clear();
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
        // Odd ids, so they never collide with the session stream 0.
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.streams().lock().expect("streams lock").insert(id, tx);
        let session = ExecSession {
            id,
            events: rx,
            client: self.clone(),
            done: false,
        };
        self.send(Frame::control(id, &Message::Exec(req))).await?;
        Ok(session)
    }

    /// Mixes `entropy` into the guest kernel's random pool, reseeds it and sets
    /// the guest's wall clock (used on every VM restored from a snapshot).
    pub async fn reseed(&self, entropy: Vec<u8>, unix_time_ns: u64) -> Result<(), AgentError> {
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(4);
        self.streams().lock().expect("streams lock").insert(id, tx);
        let answer = async {
            self.send(Frame::control(
                id,
                &Message::Reseed {
                    entropy,
                    unix_time_ns,
                },
            ))
            .await?;
            let frame = rx.recv().await.ok_or(AgentError::Closed)?;
            match frame.message()? {
                Message::Done => Ok(()),
                Message::Error { message } => Err(AgentError::Remote(message)),
                other => Err(AgentError::Unexpected(format!("{other:?}"))),
            }
        };
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer)
            .await
            .map_err(|_| AgentError::Timeout(HANDSHAKE_TIMEOUT));
        self.streams().lock().expect("streams lock").remove(&id);
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

    fn streams(&self) -> &Mutex<HashMap<u32, mpsc::Sender<Frame>>> {
        &self.shared.streams
    }
}

/// Output of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

/// What a running request reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// Last event of the request.
    Exit(ExitStatus),
}

/// One running request. Dropping it before the process exited kills the process.
pub struct ExecSession {
    id: u32,
    events: mpsc::Receiver<Frame>,
    client: AgentClient,
    done: bool,
}

impl ExecSession {
    /// The next event; `Err` when the request failed or the connection broke.
    pub async fn next_event(&mut self) -> Result<ExecEvent, AgentError> {
        if self.done {
            return Err(AgentError::Unexpected("event read after exit".into()));
        }
        let frame = self.events.recv().await.ok_or(AgentError::Closed)?;
        let event = match frame.kind {
            FrameKind::Stdout => ExecEvent::Stdout(frame.body),
            FrameKind::Stderr => ExecEvent::Stderr(frame.body),
            FrameKind::Stdin | FrameKind::FileData => {
                return Err(AgentError::Unexpected(format!(
                    "{:?} frame on an exec stream",
                    frame.kind
                )))
            }
            FrameKind::Control => match frame.message()? {
                Message::Started { pid } => ExecEvent::Started { pid },
                Message::Exited(status) => {
                    self.done = true;
                    ExecEvent::Exit(status)
                }
                Message::Error { message } => {
                    self.done = true;
                    return Err(AgentError::Remote(message));
                }
                other => return Err(AgentError::Unexpected(format!("{other:?}"))),
            },
        };
        Ok(event)
    }

    /// A handle that writes this request's stdin (usable from another task).
    pub fn stdin_writer(&self) -> StdinWriter {
        StdinWriter {
            id: self.id,
            client: self.client.clone(),
        }
    }

    /// Sends `signal` to the request's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.client
            .send(Frame::control(self.id, &Message::Signal { signal }))
            .await
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.client
            .streams()
            .lock()
            .expect("streams lock")
            .remove(&self.id);
        if !self.done {
            let kill = Frame::control(
                self.id,
                &Message::Signal {
                    signal: libc::SIGKILL,
                },
            );
            let _ = self.client.shared.out.try_send(kill);
        }
    }
}

/// Writes the stdin of one request, in frames of at most [`DATA_CHUNK`] bytes.
#[derive(Clone)]
pub struct StdinWriter {
    id: u32,
    client: AgentClient,
}

impl StdinWriter {
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(DATA_CHUNK) {
            let frame = Frame::data(self.id, FrameKind::Stdin, Bytes::copy_from_slice(chunk));
            self.client.send(frame).await?;
        }
        Ok(())
    }

    /// End of input: the process sees EOF on stdin.
    pub async fn close(&self) -> Result<(), AgentError> {
        self.client
            .send(Frame::control(self.id, &Message::CloseStdin))
            .await
    }
}

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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    check_data_frame, ExecRequest, ExitStatus, Frame, FrameCodec, FrameKind, Message,
    ProtocolError, RecvWindow, SendCredit, DATA_CHUNK, FILE_CHUNK, MAX_FINAL_LEN, PROTOCOL_VERSION,
    SESSION_STREAM,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::vm::channel::BoxedStream;

pub mod files;
pub use files::FileError;

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

/// What the guest sent on one stream, as its consumer gets it.
#[derive(Debug)]
enum Incoming {
    /// Data of one kind; consecutive frames of a kind are merged (copied out
    /// of the connection's read buffer, so nothing else is kept alive).
    Data(FrameKind, BytesMut),
    /// A control message and the bytes it was charged.
    Msg(Message, usize),
}

impl Incoming {
    fn charged(&self) -> usize {
        match self {
            Incoming::Data(_, b) => b.len(),
            Incoming::Msg(_, charged) => *charged,
        }
    }
}

/// The frames of one stream waiting for its consumer: at most a window of
/// them (the guest's credit), plus the stream's last message.
#[derive(Debug)]
struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

#[derive(Debug)]
struct InboxState {
    queue: VecDeque<Incoming>,
    window: RecvWindow,
    end: Option<SessionEnd>,
}

impl Inbox {
    fn new(stream: u32) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                window: RecvWindow::new(stream),
                end: None,
            }),
            notify: Notify::new(),
        }
    }

    /// Queues a charged data frame; refused beyond the guest's credit.
    fn push_data(&self, kind: FrameKind, body: &[u8]) -> Result<(), ProtocolError> {
        let mut st = self.state.lock().expect("inbox lock");
        st.window.receive(body.len())?;
        match st.queue.back_mut() {
            Some(Incoming::Data(k, buf)) if *k == kind && buf.len() + body.len() <= FILE_CHUNK => {
                buf.extend_from_slice(body)
            }
            _ => st
                .queue
                .push_back(Incoming::Data(kind, BytesMut::from(body))),
        }
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// Queues a control message, charged `charged` bytes (0 for the last one).
    fn push_msg(&self, msg: Message, charged: usize) -> Result<(), ProtocolError> {
        let mut st = self.state.lock().expect("inbox lock");
        st.window.receive(charged)?;
        st.queue.push_back(Incoming::Msg(msg, charged));
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    fn end(&self, end: SessionEnd) {
        self.state
            .lock()
            .expect("inbox lock")
            .end
            .get_or_insert(end);
        self.notify.notify_one();
    }

    /// The next item, or why there will be none; with the credit to give
    /// back to the guest now that it is consumed, if one is due.
    fn try_pop(&self) -> Option<Result<(Incoming, Option<u32>), SessionEnd>> {
        let mut st = self.state.lock().expect("inbox lock");
        if let Some(item) = st.queue.pop_front() {
            let grant = st.window.consume(item.charged());
            return Some(Ok((item, grant)));
        }
        st.end.clone().map(Err)
    }

    async fn pop(&self) -> Result<(Incoming, Option<u32>), SessionEnd> {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_pop() {
                return item;
            }
            notified.await;
        }
    }

    fn has_items(&self) -> bool {
        !self.state.lock().expect("inbox lock").queue.is_empty()
    }

    /// Charged bytes received and not yet taken by the consumer.
    fn buffered(&self) -> u64 {
        self.state.lock().expect("inbox lock").window.buffered()
    }
}

/// One open request stream, as the reader sees it.
struct StreamEntry {
    inbox: Arc<Inbox>,
    /// The guest's credit for what the host sends on this stream.
    credit: Arc<SendCredit>,
}

#[derive(Default)]
struct StreamTable {
    map: HashMap<u32, StreamEntry>,
    /// Set when the session ended: no new request may start.
    ended: Option<SessionEnd>,
}

type Streams = Arc<Mutex<StreamTable>>;

/// A request's own view of its stream.
struct StreamHandle {
    id: u32,
    inbox: Arc<Inbox>,
    credit: Arc<SendCredit>,
}

struct Shared {
    out: mpsc::Sender<Frame>,
    /// The open request streams, shared with the reader task.
    streams: Streams,
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

/// Routes one frame from the guest. An error is a protocol violation that
/// ends the session.
fn dispatch(streams: &Streams, frame: Frame) -> Result<(), String> {
    let id = frame.stream;
    if frame.kind != FrameKind::Control {
        check_data_frame(&frame).map_err(|e| ProtocolError::from(e).to_string())?;
    }
    if id == SESSION_STREAM {
        if frame.kind != FrameKind::Control {
            return Err(format!("a {:?} frame on the session stream", frame.kind));
        }
        match frame.message().map_err(|e| e.to_string())? {
            Message::Error { message } => tracing::warn!("guest agent: {message}"),
            other => return Err(format!("unexpected session message {other:?}")),
        }
        return Ok(());
    }
    let mut table = streams.lock().expect("streams lock");
    match frame.kind {
        FrameKind::Stdin => Err(format!("the guest sent stdin on stream {id}")),
        FrameKind::Stdout | FrameKind::Stderr | FrameKind::FileData => {
            // A stream its caller dropped: the data goes nowhere.
            let Some(entry) = table.map.get(&id) else {
                return Ok(());
            };
            entry
                .inbox
                .push_data(frame.kind, &frame.body)
                .map_err(|e| e.to_string())
        }
        FrameKind::Control => {
            let msg = frame.message().map_err(|e| e.to_string())?;
            let len = frame.body.len();
            if let Message::Credit { bytes } = msg {
                if let Some(entry) = table.map.get(&id) {
                    entry
                        .credit
                        .grant(bytes)
                        .map_err(|e| ProtocolError::from(e).to_string())?;
                }
                return Ok(());
            }
            if msg.is_final() {
                if len > MAX_FINAL_LEN {
                    return Err(
                        ProtocolError::from(ironclaw_protocol::FlowError::FinalTooLarge {
                            stream: id,
                            len,
                        })
                        .to_string(),
                    );
                }
                // The stream is over: its writers stop, later frames on it go nowhere.
                if let Some(entry) = table.map.remove(&id) {
                    entry.credit.close();
                    entry.inbox.push_msg(msg, 0).map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            match table.map.get(&id) {
                Some(entry) => entry.inbox.push_msg(msg, len).map_err(|e| e.to_string()),
                None => Ok(()),
            }
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
    stream: StreamHandle,
    client: AgentClient,
    done: bool,
}

impl ExecSession {
    /// The next event; `Err` when the request failed or the connection broke.
    /// Cancel-safe: usable in a `select!`.
    pub async fn next_event(&mut self) -> Result<ExecEvent, AgentError> {
        if self.done {
            return Err(AgentError::Unexpected("event read after exit".into()));
        }
        let event = match self.client.next_incoming(&self.stream).await? {
            Incoming::Data(FrameKind::Stdout, b) => ExecEvent::Stdout(b.freeze()),
            Incoming::Data(FrameKind::Stderr, b) => ExecEvent::Stderr(b.freeze()),
            Incoming::Data(kind, _) => {
                return Err(AgentError::Unexpected(format!(
                    "{kind:?} frame on an exec stream"
                )))
            }
            Incoming::Msg(msg, _) => match msg {
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

    /// Bytes the guest sent for this request that the caller has not read
    /// yet. Never more than [`ironclaw_protocol::STREAM_WINDOW`]: the guest waits for credit.
    pub fn buffered_bytes(&self) -> u64 {
        self.stream.inbox.buffered()
    }

    /// A handle that writes this request's stdin (usable from another task).
    pub fn stdin_writer(&self) -> StdinWriter {
        StdinWriter {
            id: self.stream.id,
            credit: self.stream.credit.clone(),
            client: self.client.clone(),
        }
    }

    /// Sends `signal` to the request's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.client
            .send(Frame::control(self.stream.id, &Message::Signal { signal }))
            .await
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.client.close_stream(&self.stream);
        if !self.done {
            let kill = Frame::control(
                self.stream.id,
                &Message::Signal {
                    signal: libc::SIGKILL,
                },
            );
            let _ = self.client.shared.out.try_send(kill);
        }
    }
}

/// Writes the stdin of one request, in frames of at most [`DATA_CHUNK`]
/// bytes, within the credit the guest gives as its process reads: a process
/// that does not read its stdin holds up this writer, nothing else.
#[derive(Clone)]
pub struct StdinWriter {
    id: u32,
    credit: Arc<SendCredit>,
    client: AgentClient,
}

impl StdinWriter {
    /// Fails with [`AgentError::StreamEnded`] if the request ends first.
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(DATA_CHUNK) {
            self.credit
                .take(chunk.len())
                .await
                .map_err(|_| AgentError::StreamEnded)?;
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

#[cfg(test)]
#[path = "agent/flow_tests.rs"]
mod flow_tests;

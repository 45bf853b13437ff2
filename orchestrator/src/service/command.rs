//! A command running in a sandbox, owned by the service rather than by one
//! HTTP request: its output goes to a bounded [`OutputRing`] that callers
//! read from a cursor (poll, or follow as a stream), its stdin and signals
//! are forwarded from any request, and its end is kept for `wait`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::error::ServiceError;
use super::ring::{OutputRing, OutputStream, Read};
use crate::agent::{ExecEvent, ExecSession};

/// How long a stdin write may wait for the command to take earlier input.
pub const STDIN_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Stdin writes queued per command (each at most one request body).
const STDIN_QUEUE: usize = 16;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CommandEnd {
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// It was killed because its timeout passed.
    pub timed_out: bool,
    /// The sandbox failed before the command ended (the guest stopped answering).
    pub error: Option<String>,
}

impl CommandEnd {
    fn of(status: ironclaw_protocol::ExitStatus) -> CommandEnd {
        CommandEnd {
            exit_code: status.code,
            signal: status.signal,
            timed_out: status.timed_out,
            error: None,
        }
    }

    fn failed(error: String) -> CommandEnd {
        CommandEnd {
            exit_code: None,
            signal: None,
            timed_out: false,
            error: Some(error),
        }
    }
}

enum StdinOp {
    Data(Bytes),
    Close,
}

struct State {
    ring: OutputRing,
    pid: Option<u32>,
    end: Option<CommandEnd>,
}

pub struct Command {
    pub id: String,
    pub argv: Vec<String>,
    pub started_at: SystemTime,
    state: Mutex<State>,
    /// Bumped on every change (output, end), for followers.
    changes: watch::Sender<u64>,
    stdin: mpsc::Sender<StdinOp>,
    signals: mpsc::UnboundedSender<i32>,
    /// Paced: a follower reads everything, so output waits for it instead
    /// of being dropped (the guest's writes block, by the credit windows).
    paced: AtomicBool,
    /// The offset the follower has read up to.
    acked: watch::Sender<u64>,
    ring_bytes: usize,
}

impl Command {
    /// Takes over a started request: its events are read by a task of its
    /// own until it ends (or the sandbox goes away).
    pub fn start(
        id: String,
        argv: Vec<String>,
        session: ExecSession,
        ring_bytes: usize,
        paced: bool,
    ) -> Arc<Command> {
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        let command = Arc::new(Command {
            id,
            argv,
            started_at: SystemTime::now(),
            state: Mutex::new(State {
                ring: OutputRing::new(ring_bytes),
                pid: None,
                end: None,
            }),
            changes: watch::channel(0).0,
            stdin: stdin_tx,
            signals: signal_tx,
            paced: AtomicBool::new(paced),
            acked: watch::channel(0).0,
            ring_bytes,
        });
        tokio::spawn(feed_stdin(session.stdin_writer(), stdin_rx));
        tokio::spawn(drive(command.clone(), session, signal_rx));
        command
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("command lock"));
        self.changes.send_modify(|v| *v += 1);
    }

    /// Up to `max` bytes of output from `cursor`, and the end if it came.
    pub fn read(&self, cursor: u64, max: usize) -> (Read, Option<CommandEnd>) {
        let state = self.state.lock().expect("command lock");
        (state.ring.read(cursor, max), state.end.clone())
    }

    /// The follower has read everything before `cursor`.
    pub fn ack(&self, cursor: u64) {
        self.acked.send_if_modified(|a| {
            let moved = cursor > *a;
            *a = (*a).max(cursor);
            moved
        });
    }

    /// The follower went away: output is no longer held for it.
    pub fn unpace(&self) {
        self.paced.store(false, Ordering::SeqCst);
        self.acked.send_modify(|_| {});
    }

    /// While paced, waits until `more` bytes fit in the ring without
    /// dropping anything the follower has not read.
    async fn room_for(&self, more: usize) {
        let mut acked = self.acked.subscribe();
        loop {
            if !self.paced.load(Ordering::SeqCst) {
                return;
            }
            let end = self.output_end();
            let read = *acked.borrow_and_update();
            if (end.saturating_sub(read) as usize).saturating_add(more) <= self.ring_bytes {
                return;
            }
            if acked.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.state.lock().expect("command lock").pid
    }

    pub fn end(&self) -> Option<CommandEnd> {
        self.state.lock().expect("command lock").end.clone()
    }

    pub fn output_end(&self) -> u64 {
        self.state.lock().expect("command lock").ring.end()
    }

    /// Waits until there is output past `cursor`, the command ended, or
    /// `timeout` passed.
    pub async fn wait_past(&self, cursor: u64, timeout: Duration) {
        let mut changes = self.changes.subscribe();
        let ready = || {
            let s = self.state.lock().expect("command lock");
            s.end.is_some() || s.ring.end() > cursor
        };
        let _ = tokio::time::timeout(timeout, async {
            while !ready() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Waits until the guest said the process started (its pid) or the
    /// command ended, at most `timeout`; the pid if it started.
    pub async fn wait_started(&self, timeout: Duration) -> Option<u32> {
        let mut changes = self.changes.subscribe();
        let started = || {
            let s = self.state.lock().expect("command lock");
            s.pid.is_some() || s.end.is_some()
        };
        let _ = tokio::time::timeout(timeout, async {
            while !started() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.pid()
    }

    /// Waits for the end (at most `timeout`).
    pub async fn wait(&self, timeout: Duration) -> Option<CommandEnd> {
        let mut changes = self.changes.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            while self.end().is_none() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.end()
    }

    fn refuse_if_ended(&self) -> Result<(), ServiceError> {
        if self.end().is_some() {
            return Err(ServiceError::conflict(format!(
                "command {} has already ended",
                self.id
            )));
        }
        Ok(())
    }

    /// Queues `data` for the command's stdin (it must have been started with stdin).
    pub async fn write_stdin(&self, data: Bytes) -> Result<(), ServiceError> {
        self.refuse_if_ended()?;
        self.queue_stdin(StdinOp::Data(data)).await
    }

    /// End of input: the command sees EOF once it read what was queued.
    pub async fn close_stdin(&self) -> Result<(), ServiceError> {
        self.refuse_if_ended()?;
        self.queue_stdin(StdinOp::Close).await
    }

    async fn queue_stdin(&self, op: StdinOp) -> Result<(), ServiceError> {
        match tokio::time::timeout(STDIN_ACCEPT_TIMEOUT, self.stdin.send(op)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ServiceError::conflict(format!(
                "command {} no longer takes input (it ended or closed its stdin)",
                self.id
            ))),
            Err(_) => Err(ServiceError::limit(format!(
                "command {} has not read its earlier input for {}s; try again later",
                self.id,
                STDIN_ACCEPT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Sends `signal` to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), ServiceError> {
        self.refuse_if_ended()?;
        self.signals
            .send(signal)
            .map_err(|_| ServiceError::conflict(format!("command {} has already ended", self.id)))
    }
}

async fn feed_stdin(writer: crate::agent::StdinWriter, mut ops: mpsc::Receiver<StdinOp>) {
    while let Some(op) = ops.recv().await {
        let sent = match op {
            StdinOp::Data(data) => writer.write(&data).await,
            StdinOp::Close => {
                let _ = writer.close().await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn drive(
    command: Arc<Command>,
    mut session: ExecSession,
    mut signals: mpsc::UnboundedReceiver<i32>,
) {
    let end = loop {
        tokio::select! {
            event = session.next_event() => match event {
                Ok(ExecEvent::Started { pid }) => command.update(|s| s.pid = Some(pid)),
                Ok(ExecEvent::Stdout(b)) => {
                    command.room_for(b.len()).await;
                    command.update(|s| s.ring.push(OutputStream::Stdout, b));
                }
                Ok(ExecEvent::Stderr(b)) => {
                    command.room_for(b.len()).await;
                    command.update(|s| s.ring.push(OutputStream::Stderr, b));
                }
                Ok(ExecEvent::Exit(status)) => break CommandEnd::of(status),
                Err(e) => break CommandEnd::failed(e.to_string()),
            },
            Some(signal) = signals.recv() => {
                if let Err(e) = session.signal(signal).await {
                    break CommandEnd::failed(e.to_string());
                }
            }
        }
    };
    command.update(|s| s.end = Some(end));
}

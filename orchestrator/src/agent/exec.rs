//! One running command: its events, its stdin, its output when it is done.

use super::inbox::*;
use super::streams::*;
use std::sync::Arc;

use bytes::Bytes;
use ironclaw_protocol::{ExitStatus, Frame, FrameKind, Message, SendCredit, DATA_CHUNK};

use super::{AgentClient, AgentError, DeadlineOf};

/// Output of a finished command, as collected by [`AgentClient::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    /// The command wrote more to stdout than the cap; `stdout` holds its start.
    pub stdout_truncated: bool,
    /// The same for stderr.
    pub stderr_truncated: bool,
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
    pub(super) stream: StreamHandle,
    pub(super) client: AgentClient,
    pub(super) done: bool,
    /// When the host gives the request up (its timeout plus the grace).
    pub(super) deadline: tokio::time::Instant,
    /// The time from the start to `deadline`, for the error.
    pub(super) after: std::time::Duration,
}

impl ExecSession {
    /// The next event; `Err` when the request failed or the connection broke,
    /// or [`AgentError::Deadline`] when the guest has not reported the end by
    /// the request's timeout plus the grace period (the guest stopped
    /// answering: destroy the VM). Cancel-safe: usable in a `select!`.
    pub async fn next_event(&mut self) -> Result<ExecEvent, AgentError> {
        if self.done {
            return Err(AgentError::Unexpected("event read after exit".into()));
        }
        let next = self
            .client
            .next_incoming_by(&self.stream, self.deadline)
            .await?;
        let Some(next) = next else {
            return Err(AgentError::Deadline {
                what: DeadlineOf::Exec,
                after: self.after,
            });
        };
        let event = match next {
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
    pub(super) id: u32,
    pub(super) credit: Arc<SendCredit>,
    pub(super) client: AgentClient,
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

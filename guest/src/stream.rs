//! One request stream of a session, as the task serving it sees it: sending
//! within the host's credit ([`StreamOut`]), and receiving the host's data
//! within the credit given to the host ([`InputRx`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ironclaw_protocol::{
    Frame, FrameKind, Message, RecvWindow, SendCredit, CREDIT_THRESHOLD, MAX_FINAL_LEN,
    STREAM_WINDOW,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pgroup::ProcessGroup;

/// What one request stream of a session holds while its request runs.
pub(crate) struct StreamState {
    /// Credit the host gave for what this stream sends.
    pub(crate) credit: Arc<SendCredit>,
    /// Where the host's data for this stream (stdin, or an upload) goes.
    pub(crate) input: Option<InputTx>,
    /// The process group, for an exec.
    pub(crate) process: Option<ProcessGroup>,
}

/// The request streams of one session, by id. Shared with the requests'
/// tasks, which remove their own entry when they end.
pub(crate) type Streams = Arc<Mutex<HashMap<u32, StreamState>>>;

/// The sending side of one request stream, for the task that serves it.
#[derive(Clone)]
pub struct StreamOut {
    pub(crate) id: u32,
    pub(crate) out: mpsc::Sender<Frame>,
    pub(crate) credit: Arc<SendCredit>,
    /// Cancelled when the session ends or is reset: nothing of an older
    /// session may reach the host of a newer one.
    pub(crate) epoch: CancellationToken,
    pub(crate) streams: Streams,
}

/// The stream or the session ended while a request's task was sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended;

impl StreamOut {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends a frame charged against the stream's window (data, `Started`,
    /// `Stat`, `DirEntries`), waiting for the host's credit first. Only this
    /// task waits: the session loop and the other streams go on.
    pub async fn send(&self, frame: Frame) -> Result<(), Ended> {
        debug_assert!(frame.body.len() <= (STREAM_WINDOW - CREDIT_THRESHOLD) as usize);
        tokio::select! {
            biased;
            _ = self.epoch.cancelled() => return Err(Ended),
            taken = self.credit.take(frame.body.len()) => taken.map_err(|_| Ended)?,
        }
        self.send_uncharged(frame).await
    }

    /// Sends the stream's last message (`Exited`, `Error`, `FileDone`) and
    /// ends the stream: it is free for a new request, and senders still
    /// waiting for credit give up.
    pub async fn finish(&self, msg: &Message) {
        debug_assert!(msg.is_final());
        let mut frame = Frame::control(self.id, msg);
        if frame.body.len() > MAX_FINAL_LEN {
            // Only an error text can be that long; the host would refuse it.
            let message = match msg {
                Message::Error { message } => {
                    let mut end = MAX_FINAL_LEN / 2;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!("{}…", &message[..end])
                }
                _ => "reply too long".into(),
            };
            frame = Frame::control(self.id, &Message::Error { message });
        }
        let _ = self.send_uncharged(frame).await;
        self.end();
    }

    /// Ends the stream without a message (the session is gone).
    pub(crate) fn end(&self) {
        self.credit.close();
        let mut streams = self.streams.lock().expect("streams lock");
        if streams
            .get(&self.id)
            .is_some_and(|s| Arc::ptr_eq(&s.credit, &self.credit))
        {
            streams.remove(&self.id);
        }
    }

    /// Gives the host `bytes` more credit for its data on this stream.
    pub(crate) async fn grant(&self, bytes: u32) {
        let _ = self
            .send_uncharged(Frame::control(self.id, &Message::Credit { bytes }))
            .await;
    }

    async fn send_uncharged(&self, frame: Frame) -> Result<(), Ended> {
        tokio::select! {
            biased;
            _ = self.epoch.cancelled() => Err(Ended),
            sent = self.out.send(frame) => sent.map_err(|_| Ended),
        }
    }
}

/// What the host sends a request's task: stdin or a file's data, then (for
/// an upload) the end of it.
#[derive(Debug)]
pub enum Input {
    Data(Bytes),
    /// `DataEnd`: an upload is complete.
    End,
}

/// The session loop's end of a stream's input. Unbounded, because the credit
/// window bounds it: the loop never waits for a request's consumer.
pub(crate) struct InputTx {
    pub(crate) kind: FrameKind,
    pub(crate) tx: mpsc::UnboundedSender<Input>,
    pub(crate) window: Arc<Mutex<RecvWindow>>,
}

/// A request task's end of its stream's input.
pub struct InputRx {
    rx: mpsc::UnboundedReceiver<Input>,
    window: Arc<Mutex<RecvWindow>>,
    out: StreamOut,
}

impl InputRx {
    /// The next input; `None` once the host closed it (or the session ended).
    pub async fn recv(&mut self) -> Option<Input> {
        self.rx.recv().await
    }

    /// The task is done with `len` bytes of input: the host gets credit back
    /// once enough is consumed.
    pub async fn consumed(&self, len: usize) {
        let grant = self.window.lock().expect("window lock").consume(len);
        if let Some(bytes) = grant {
            self.out.grant(bytes).await;
        }
    }
}

pub(crate) fn input_channel(kind: FrameKind, out: &StreamOut) -> (InputTx, InputRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let window = Arc::new(Mutex::new(RecvWindow::new(out.id)));
    (
        InputTx {
            kind,
            tx,
            window: window.clone(),
        },
        InputRx {
            rx,
            window,
            out: out.clone(),
        },
    )
}

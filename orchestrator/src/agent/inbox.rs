//! The frames of one stream waiting for its consumer: bounded by the credit
//! the guest was given, never waited on by the connection reader.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::BytesMut;
use ironclaw_protocol::{FrameKind, Message, ProtocolError, RecvWindow, FILE_CHUNK};
use tokio::sync::Notify;

use super::SessionEnd;

/// What the guest sent on one stream, as its consumer gets it.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Data of one kind; consecutive frames of a kind are merged (copied out
    /// of the connection's read buffer, so nothing else is kept alive).
    Data(FrameKind, BytesMut),
    /// A control message and the bytes it was charged.
    Msg(Message, usize),
}

impl Incoming {
    pub(crate) fn charged(&self) -> usize {
        match self {
            Incoming::Data(_, b) => b.len(),
            Incoming::Msg(_, charged) => *charged,
        }
    }
}

/// The frames of one stream waiting for its consumer: at most a window of
/// them (the guest's credit), plus the stream's last message.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) state: Mutex<InboxState>,
    pub(crate) notify: Notify,
}

#[derive(Debug)]
pub(crate) struct InboxState {
    pub(crate) queue: VecDeque<Incoming>,
    pub(crate) window: RecvWindow,
    pub(crate) end: Option<SessionEnd>,
}

impl Inbox {
    pub(crate) fn new(stream: u32) -> Inbox {
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
    pub(crate) fn push_data(&self, kind: FrameKind, body: &[u8]) -> Result<(), ProtocolError> {
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
    pub(crate) fn push_msg(&self, msg: Message, charged: usize) -> Result<(), ProtocolError> {
        let mut st = self.state.lock().expect("inbox lock");
        st.window.receive(charged)?;
        st.queue.push_back(Incoming::Msg(msg, charged));
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    pub(crate) fn end(&self, end: SessionEnd) {
        self.state
            .lock()
            .expect("inbox lock")
            .end
            .get_or_insert(end);
        self.notify.notify_one();
    }

    /// The next item, or why there will be none; with the credit to give
    /// back to the guest now that it is consumed, if one is due.
    pub(crate) fn try_pop(&self) -> Option<Result<(Incoming, Option<u32>), SessionEnd>> {
        let mut st = self.state.lock().expect("inbox lock");
        if let Some(item) = st.queue.pop_front() {
            let grant = st.window.consume(item.charged());
            return Some(Ok((item, grant)));
        }
        st.end.clone().map(Err)
    }

    pub(crate) async fn pop(&self) -> Result<(Incoming, Option<u32>), SessionEnd> {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_pop() {
                return item;
            }
            notified.await;
        }
    }

    pub(crate) fn has_items(&self) -> bool {
        !self.state.lock().expect("inbox lock").queue.is_empty()
    }

    /// Charged bytes received and not yet taken by the consumer.
    pub(crate) fn buffered(&self) -> u64 {
        self.state.lock().expect("inbox lock").window.buffered()
    }
}

//! The open request streams of a session, and the reader's routing of each
//! frame from the guest to its stream.

use super::inbox::*;
use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use ironclaw_protocol::{
    check_data_frame, Frame, FrameKind, Message, ProtocolError, SendCredit, MAX_FINAL_LEN,
    SESSION_STREAM,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::SessionEnd;

/// One open request stream, as the reader sees it.
pub(crate) struct StreamEntry {
    pub(crate) inbox: Arc<Inbox>,
    /// The guest's credit for what the host sends on this stream.
    pub(crate) credit: Arc<SendCredit>,
}

#[derive(Default)]
pub(crate) struct StreamTable {
    pub(crate) map: HashMap<u32, StreamEntry>,
    /// Set when the session ended: no new request may start.
    pub(crate) ended: Option<SessionEnd>,
}

pub(crate) type Streams = Arc<Mutex<StreamTable>>;

/// A request's own view of its stream.
pub(crate) struct StreamHandle {
    pub(crate) id: u32,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) credit: Arc<SendCredit>,
}

pub(crate) struct Shared {
    pub(crate) out: mpsc::Sender<Frame>,
    /// The open request streams, shared with the reader task.
    pub(crate) streams: Streams,
    pub(crate) next_id: AtomicU32,
    pub(crate) tasks: Vec<JoinHandle<()>>,
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
pub(crate) fn dispatch(streams: &Streams, frame: Frame) -> Result<(), String> {
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
            Message::AgentStarted => {
                return Err(
                    "the guest agent restarted (it was killed or crashed in the guest): \
                            the requests of this session are lost"
                        .into(),
                )
            }
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

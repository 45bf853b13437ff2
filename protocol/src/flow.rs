//! Per-stream flow control: credit windows, like HTTP/2 or SSH channels.
//!
//! On every request stream each direction has a window of [`STREAM_WINDOW`]
//! bytes. A sender may have at most that many *charged* bytes in flight
//! (sent, and not yet given back by the receiver with [`crate::Message::Credit`]);
//! the receiver gives bytes back only as its consumer takes them, in grants of
//! at least [`CREDIT_THRESHOLD`] bytes. So a consumer that stops reading stops
//! its own stream's sender and nothing else, and the receiver never buffers
//! more than a window per stream.
//!
//! What is charged: the body length of every frame a side sends on a request
//! stream except `Credit` itself and the stream's last message (`Exited`,
//! `Error`, `FileDone`, `Done`), which is bounded by [`MAX_FINAL_LEN`] instead.
//! The host's control requests (`Exec`, `Signal`, `CloseStdin`, `DataEnd`, …)
//! are handled at once by the agent and are not charged; only its data frames
//! (`Stdin`, `FileData`) are. Data frames are never empty and never larger
//! than their kind's chunk size ([`max_data_len`]).
//!
//! A frame that exceeds the credit left, a grant that would raise the window
//! above [`STREAM_WINDOW`], a zero grant, or an empty or oversized data frame
//! is a protocol violation: the receiver ends the session (an `Error` on
//! stream 0, then the connection closes). Nothing is ever buffered past the
//! window.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::{Frame, FrameKind, DATA_CHUNK, FILE_CHUNK};

/// Bytes a side may have in flight on one stream, per direction.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// A receiver gives credit back once its consumer has taken at least this
/// many bytes since the last grant: half the window, so a bulk transfer
/// needs few credit frames (each costs the emulated guest an interrupt and a
/// wake-up) while the other half is still in flight. With the largest
/// charged frame it stays within the window, so a sender waiting for room
/// for one frame is always granted it.
pub const CREDIT_THRESHOLD: u32 = STREAM_WINDOW / 2;

/// Largest body of a stream's last message (not charged against the window).
pub const MAX_FINAL_LEN: usize = 64 * 1024;

/// Largest charged control message the agent sends (a batch of directory
/// entries is cut below this); anything larger could never fit the window
/// together with a pending grant.
pub const MAX_CHARGED_CONTROL_LEN: usize = 128 * 1024;

const _: () = assert!(FILE_CHUNK as u32 + CREDIT_THRESHOLD <= STREAM_WINDOW);
const _: () = assert!(MAX_CHARGED_CONTROL_LEN as u32 + CREDIT_THRESHOLD <= STREAM_WINDOW);

/// A flow-control violation by the peer. It ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("stream {stream}: a {len}-byte frame exceeds the {available} bytes of credit left")]
    CreditExceeded {
        stream: u32,
        len: usize,
        available: u64,
    },
    #[error("stream {stream}: a grant of {grant} bytes would raise the window to {total} bytes, above {STREAM_WINDOW}")]
    GrantTooLarge { stream: u32, grant: u32, total: u64 },
    #[error("stream {stream}: a grant of zero bytes")]
    ZeroGrant { stream: u32 },
    #[error("stream {stream}: an empty {kind:?} frame")]
    EmptyData { stream: u32, kind: FrameKind },
    #[error(
        "stream {stream}: a {kind:?} frame of {len} bytes exceeds its chunk size of {max} bytes"
    )]
    DataTooLarge {
        stream: u32,
        kind: FrameKind,
        len: usize,
        max: usize,
    },
    #[error("stream {stream}: a last message of {len} bytes exceeds {MAX_FINAL_LEN} bytes")]
    FinalTooLarge { stream: u32, len: usize },
}

/// Largest body of a data frame of `kind`; `None` for control frames.
pub fn max_data_len(kind: FrameKind) -> Option<usize> {
    match kind {
        FrameKind::Control => None,
        FrameKind::Stdin | FrameKind::Stdout | FrameKind::Stderr => Some(DATA_CHUNK),
        FrameKind::FileData => Some(FILE_CHUNK),
    }
}

/// Checks the size of a data frame (control frames pass).
pub fn check_data_frame(frame: &Frame) -> Result<(), FlowError> {
    let Some(max) = max_data_len(frame.kind) else {
        return Ok(());
    };
    let len = frame.body.len();
    if len == 0 {
        return Err(FlowError::EmptyData {
            stream: frame.stream,
            kind: frame.kind,
        });
    }
    if len > max {
        return Err(FlowError::DataTooLarge {
            stream: frame.stream,
            kind: frame.kind,
            len,
            max,
        });
    }
    Ok(())
}

/// Receiving side of one stream's window.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    stream: u32,
    /// Charged bytes the peer sent that have not been given back yet
    /// (buffered here, or taken by the consumer but not yet granted).
    outstanding: u64,
    /// Bytes the consumer took since the last grant.
    consumed: u64,
}

impl RecvWindow {
    pub fn new(stream: u32) -> RecvWindow {
        RecvWindow {
            stream,
            outstanding: 0,
            consumed: 0,
        }
    }

    /// A charged frame of `len` bytes arrived: refused if the peer had no
    /// credit for it.
    pub fn receive(&mut self, len: usize) -> Result<(), FlowError> {
        let available = u64::from(STREAM_WINDOW) - self.outstanding;
        if len as u64 > available {
            return Err(FlowError::CreditExceeded {
                stream: self.stream,
                len,
                available,
            });
        }
        self.outstanding += len as u64;
        Ok(())
    }

    /// The consumer took `len` charged bytes. Returns the credit to grant
    /// the peer now, if one is due.
    pub fn consume(&mut self, len: usize) -> Option<u32> {
        self.consumed = (self.consumed + len as u64).min(self.outstanding);
        if self.consumed >= u64::from(CREDIT_THRESHOLD) {
            let grant = self.consumed;
            self.outstanding -= grant;
            self.consumed = 0;
            // At most the window, which fits a u32.
            Some(grant as u32)
        } else {
            None
        }
    }

    /// The receiver is abandoning the stream (its consumer is gone): gives
    /// the peer back everything it has in flight, so a sender waiting for
    /// credit can flush what it holds into the void and end.
    pub fn release(&mut self) -> Option<u32> {
        let grant = self.outstanding;
        self.outstanding = 0;
        self.consumed = 0;
        // At most the window, which fits a u32.
        (grant > 0).then_some(grant as u32)
    }

    /// Charged bytes received and not yet consumed.
    pub fn buffered(&self) -> u64 {
        self.outstanding - self.consumed
    }
}

/// Sending side of one stream's window.
#[derive(Debug, Clone)]
pub struct SendWindow {
    stream: u32,
    available: u64,
}

impl SendWindow {
    pub fn new(stream: u32) -> SendWindow {
        SendWindow {
            stream,
            available: u64::from(STREAM_WINDOW),
        }
    }

    /// Takes room for a frame of `len` bytes if there is enough.
    pub fn try_take(&mut self, len: usize) -> bool {
        if len as u64 <= self.available {
            self.available -= len as u64;
            true
        } else {
            false
        }
    }

    /// The peer granted `grant` more bytes.
    pub fn grant(&mut self, grant: u32) -> Result<(), FlowError> {
        if grant == 0 {
            return Err(FlowError::ZeroGrant {
                stream: self.stream,
            });
        }
        let total = self.available + u64::from(grant);
        if total > u64::from(STREAM_WINDOW) {
            return Err(FlowError::GrantTooLarge {
                stream: self.stream,
                grant,
                total,
            });
        }
        self.available = total;
        Ok(())
    }

    pub fn available(&self) -> u64 {
        self.available
    }
}

/// The stream ended (its last message was exchanged, or the session ended)
/// while a sender waited for credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream ended")]
pub struct StreamClosed;

/// A [`SendWindow`] that senders can wait on, shared between the tasks that
/// send on one stream and the reader that receives the peer's grants.
#[derive(Debug)]
pub struct SendCredit {
    state: Mutex<(SendWindow, bool)>,
    notify: Notify,
}

impl SendCredit {
    pub fn new(stream: u32) -> SendCredit {
        SendCredit {
            state: Mutex::new((SendWindow::new(stream), false)),
            notify: Notify::new(),
        }
    }

    /// Waits until `len` bytes of credit are available and takes them.
    /// `len` must be at most [`STREAM_WINDOW`] - [`CREDIT_THRESHOLD`].
    pub async fn take(&self, len: usize) -> Result<(), StreamClosed> {
        loop {
            // Registered before the check, so a grant in between is not missed.
            let notified = self.notify.notified();
            {
                let mut st = self.state.lock().expect("credit lock");
                if st.1 {
                    return Err(StreamClosed);
                }
                if st.0.try_take(len) {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Adds the peer's grant; a violation if it overflows the window.
    pub fn grant(&self, grant: u32) -> Result<(), FlowError> {
        let result = self.state.lock().expect("credit lock").0.grant(grant);
        self.notify.notify_waiters();
        result
    }

    /// Ends the stream for senders: waiting and later `take`s fail.
    pub fn close(&self) {
        self.state.lock().expect("credit lock").1 = true;
        self.notify.notify_waiters();
    }

    pub fn available(&self) -> u64 {
        self.state.lock().expect("credit lock").0.available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn receiver_refuses_more_than_the_window() {
        let mut w = RecvWindow::new(3);
        w.receive(STREAM_WINDOW as usize - 10).unwrap();
        assert!(matches!(
            w.receive(11),
            Err(FlowError::CreditExceeded {
                stream: 3,
                len: 11,
                available: 10
            })
        ));
        w.receive(10).unwrap();
        assert_eq!(w.buffered(), u64::from(STREAM_WINDOW));
    }

    #[test]
    fn grants_follow_consumption_in_threshold_steps() {
        let mut w = RecvWindow::new(1);
        let step = CREDIT_THRESHOLD as usize;
        w.receive(step).unwrap();
        assert_eq!(w.consume(1000), None);
        assert_eq!(w.buffered(), step as u64 - 1000);
        assert_eq!(w.consume(step - 1000), Some(step as u32));
        assert_eq!(w.buffered(), 0);
        // Granted bytes are room again.
        w.receive(STREAM_WINDOW as usize).unwrap();
        // Abandoning the stream gives everything back, once.
        assert_eq!(w.consume(1000), None);
        assert_eq!(w.release(), Some(STREAM_WINDOW));
        assert_eq!(w.release(), None);
        w.receive(STREAM_WINDOW as usize).unwrap();
        // Consuming more than was received grants no more than was received.
        let mut w = RecvWindow::new(1);
        w.receive(10).unwrap();
        assert_eq!(w.consume(CREDIT_THRESHOLD as usize), None);
        assert_eq!(w.buffered(), 0);
    }

    #[test]
    fn sender_window_and_bad_grants() {
        let mut s = SendWindow::new(5);
        assert!(s.try_take(STREAM_WINDOW as usize));
        assert!(!s.try_take(1));
        s.grant(100).unwrap();
        assert!(s.try_take(100));
        assert_eq!(s.grant(0), Err(FlowError::ZeroGrant { stream: 5 }));
        s.grant(STREAM_WINDOW).unwrap();
        assert!(matches!(
            s.grant(1),
            Err(FlowError::GrantTooLarge { stream: 5, .. })
        ));
    }

    #[test]
    fn data_frames_are_bounded_by_their_chunk_size() {
        let f = |kind, len| Frame::data(7, kind, Bytes::from(vec![0u8; len]));
        assert!(check_data_frame(&f(FrameKind::Stdout, DATA_CHUNK)).is_ok());
        assert!(matches!(
            check_data_frame(&f(FrameKind::Stdout, DATA_CHUNK + 1)),
            Err(FlowError::DataTooLarge { .. })
        ));
        assert!(check_data_frame(&f(FrameKind::FileData, FILE_CHUNK)).is_ok());
        assert!(matches!(
            check_data_frame(&f(FrameKind::FileData, FILE_CHUNK + 1)),
            Err(FlowError::DataTooLarge { .. })
        ));
        assert!(matches!(
            check_data_frame(&f(FrameKind::Stdin, 0)),
            Err(FlowError::EmptyData { .. })
        ));
        assert!(check_data_frame(&Frame::control(1, &crate::Message::Done)).is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_sender_wakes_on_grant_and_on_close() {
        let c = std::sync::Arc::new(SendCredit::new(1));
        c.take(STREAM_WINDOW as usize).await.unwrap();
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.take(1000).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.grant(999).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.grant(1).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.take(1).await });
        tokio::task::yield_now().await;
        c.close();
        assert_eq!(waiter.await.unwrap(), Err(StreamClosed));
    }
}

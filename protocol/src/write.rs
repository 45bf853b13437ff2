//! The writing side of a connection: frames queued by many tasks, written in
//! batches.
//!
//! Both ends of a session have one writer task draining a channel of frames.
//! Writing each frame on its own (encode, copy the body into the codec's
//! buffer, one `write` per frame) costs, per frame, a copy of the body and a
//! system call, and on the guest a transport notification (an exit of the
//! emulated vCPU). [`write_frames`] instead takes every frame already queued
//! (up to [`MAX_BATCH_FRAMES`] frames or [`MAX_BATCH_BYTES`] bytes), encodes
//! the headers and small bodies into one buffer, and hands large bodies to
//! the kernel where they are (`writev`, no copy): a command's `Started` and
//! `Exited`, or a chunk and a credit grant, leave in one write.
//!
//! Nothing about the wire changes: the bytes are exactly the frames'
//! encodings, in the order they were queued.

use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{Frame, ProtocolError, FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Most frames written in one batch.
pub const MAX_BATCH_FRAMES: usize = 64;

/// A batch is closed once it holds this many bytes (one more frame may
/// follow: a batch is at most this plus one frame).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Bodies up to this size are copied next to their header; larger ones are
/// written from where they are (vectored writers only).
const INLINE_BODY: usize = 16 * 1024;

/// Encodes frames into a list of byte segments to be written in order.
#[derive(Default)]
pub struct FrameBatch {
    /// Encoded headers and small bodies not yet closed into a segment.
    inline: BytesMut,
    segments: Vec<Bytes>,
    frames: usize,
    bytes: usize,
}

impl FrameBatch {
    pub fn new() -> FrameBatch {
        FrameBatch::default()
    }

    /// Adds `frame`; with `vectored`, a large body becomes a segment of its own.
    pub fn push(&mut self, frame: Frame, vectored: bool) -> Result<(), ProtocolError> {
        let len = FRAME_HEADER_LEN + frame.body.len();
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge { len });
        }
        let inline_body = !vectored || frame.body.len() <= INLINE_BODY;
        self.inline
            .reserve(4 + FRAME_HEADER_LEN + if inline_body { frame.body.len() } else { 0 });
        self.inline.put_u32(len as u32);
        self.inline.put_u32(frame.stream);
        self.inline.put_u8(frame.kind as u8);
        if inline_body {
            self.inline.put_slice(&frame.body);
        } else {
            self.segments.push(self.inline.split().freeze());
            self.segments.push(frame.body);
        }
        self.frames += 1;
        self.bytes += 4 + len;
        Ok(())
    }

    /// Whether the batch should be written before more is added.
    pub fn is_full(&self) -> bool {
        self.frames >= MAX_BATCH_FRAMES || self.bytes >= MAX_BATCH_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The segments to write, in order; the batch is empty afterwards.
    pub fn take(&mut self) -> Vec<Bytes> {
        if !self.inline.is_empty() {
            self.segments.push(self.inline.split().freeze());
        }
        self.frames = 0;
        self.bytes = 0;
        std::mem::take(&mut self.segments)
    }
}

/// Writes all of `segments`, in order, with as few system calls as the writer allows.
pub async fn write_segments<W: AsyncWrite + Unpin>(
    w: &mut W,
    segments: &[Bytes],
) -> std::io::Result<()> {
    if !w.is_write_vectored() || segments.len() == 1 {
        for s in segments {
            w.write_all(s).await?;
        }
        return Ok(());
    }
    // The segment and offset where writing resumes.
    let (mut i, mut off) = (0usize, 0usize);
    while i < segments.len() {
        let mut slices = Vec::with_capacity(segments.len() - i);
        slices.push(IoSlice::new(&segments[i][off..]));
        slices.extend(segments[i + 1..].iter().map(|s| IoSlice::new(s)));
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < segments.len() {
            let left = segments[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Writes the frames of `rx` to `w` until the channel closes or a write
/// fails, in batches of what is already queued (see the module docs).
/// Returns why it stopped (`Ok` when the channel closed).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    rx: &mut mpsc::Receiver<Frame>,
) -> Result<(), ProtocolError> {
    let vectored = w.is_write_vectored();
    let mut batch = FrameBatch::new();
    while let Some(first) = rx.recv().await {
        batch.push(first, vectored)?;
        while !batch.is_full() {
            match rx.try_recv() {
                Ok(frame) => batch.push(frame, vectored)?,
                Err(_) => break,
            }
        }
        write_segments(&mut w, &batch.take()).await?;
        w.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameCodec, FrameKind, Message, FILE_CHUNK};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio_util::codec::Decoder;

    /// A writer that takes at most `max` bytes a call (vectored or not), so
    /// every partial-write path runs.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        vectored: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.max;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Frame> {
        let mut v = Vec::new();
        for i in 0..150u32 {
            let len = match i % 5 {
                0 => FILE_CHUNK,
                1 => 1,
                2 => INLINE_BODY + 1,
                3 => 3000,
                _ => 0,
            };
            if len == 0 {
                v.push(Frame::control(i, &Message::Credit { bytes: i + 1 }));
            } else {
                let body: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
                v.push(Frame::data(i, FrameKind::FileData, body.into()));
            }
        }
        v
    }

    async fn written(max: usize, vectored: bool) -> (Vec<Frame>, usize) {
        let (tx, mut rx) = mpsc::channel(256);
        for f in frames() {
            tx.send(f).await.unwrap();
        }
        drop(tx);
        let mut w = Trickle {
            out: Vec::new(),
            max,
            vectored,
            calls: 0,
        };
        write_frames(&mut w, &mut rx).await.unwrap();
        let mut buf = BytesMut::from(&w.out[..]);
        let mut codec = FrameCodec::new();
        let mut got = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            got.push(f);
        }
        assert!(buf.is_empty());
        (got, w.calls)
    }

    #[tokio::test]
    async fn batched_writes_deliver_every_frame_in_order() {
        for (max, vectored) in [
            (usize::MAX, true),
            (usize::MAX, false),
            (7, true),
            (4099, true),
            (65536, false),
        ] {
            let (got, calls) = written(max, vectored).await;
            assert_eq!(got, frames(), "max {max}, vectored {vectored}");
            if max == usize::MAX {
                // Queued frames leave in few writes, not one per frame.
                assert!(calls < 40, "{calls} writes (vectored {vectored})");
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_by_the_batch() {
        let body = Bytes::from(vec![0u8; MAX_FRAME_LEN]);
        let mut b = FrameBatch::new();
        assert!(matches!(
            b.push(Frame::data(1, FrameKind::Stdout, body), true),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(b.is_empty());
    }
}

//! The bounded output of one command: stdout and stderr chunks in the order
//! they came, addressed by byte offset in the command's whole output (both
//! streams together). When the ring is full the oldest chunks are dropped;
//! a reader whose cursor points before what is kept learns how many bytes it
//! missed.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Serialize;

/// Bytes kept per command (stdout and stderr together): 1 MiB. With 32
/// running and 16 ended commands per sandbox kept, a sandbox holds at most
/// 48 MiB of output on the host.
pub const DEFAULT_RING_BYTES: usize = 1 << 20;
/// The most bytes one read returns.
pub const MAX_READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first byte in the command's output.
    pub offset: u64,
    pub stream: OutputStream,
    pub data: Bytes,
}

/// What [`OutputRing::read`] found from a cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub chunks: Vec<Chunk>,
    /// The cursor to read from next.
    pub next: u64,
    /// Bytes between the cursor and the oldest byte kept that were dropped.
    pub dropped: u64,
}

#[derive(Debug)]
pub struct OutputRing {
    chunks: VecDeque<Chunk>,
    kept: usize,
    cap: usize,
    /// Offset after the last byte ever pushed.
    end: u64,
}

impl OutputRing {
    pub fn new(cap: usize) -> OutputRing {
        OutputRing {
            chunks: VecDeque::new(),
            kept: 0,
            cap: cap.max(1),
            end: 0,
        }
    }

    /// Offset after the last byte pushed (the total output so far).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.chunks.front().map_or(self.end, |c| c.offset)
    }

    pub fn push(&mut self, stream: OutputStream, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut offset = self.end;
        self.end += data.len() as u64;
        if data.len() > self.cap {
            let skip = data.len() - self.cap;
            offset += skip as u64;
            data = data.slice(skip..);
        }
        self.kept += data.len();
        self.chunks.push_back(Chunk {
            offset,
            stream,
            data,
        });
        while self.kept > self.cap {
            let excess = self.kept - self.cap;
            let front = self.chunks.front_mut().expect("kept > 0 means a chunk");
            if front.data.len() <= excess {
                self.kept -= front.data.len();
                self.chunks.pop_front();
            } else {
                front.data = front.data.slice(excess..);
                front.offset += excess as u64;
                self.kept -= excess;
            }
        }
    }

    /// Up to `max` bytes from `cursor` on (a cursor past the end reads nothing).
    pub fn read(&self, cursor: u64, max: usize) -> Read {
        let start = self.start();
        let from = cursor.max(start).min(self.end);
        let mut out = Read {
            chunks: Vec::new(),
            next: from,
            dropped: start.saturating_sub(cursor),
        };
        let mut room = max;
        for c in &self.chunks {
            let c_end = c.offset + c.data.len() as u64;
            if c_end <= from || room == 0 {
                continue;
            }
            let skip = from.saturating_sub(c.offset) as usize;
            let take = (c.data.len() - skip).min(room);
            out.chunks.push(Chunk {
                offset: c.offset + skip as u64,
                stream: c.stream,
                data: c.data.slice(skip..skip + take),
            });
            room -= take;
            out.next = c.offset + (skip + take) as u64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Read) -> String {
        r.chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[test]
    fn reads_from_a_cursor_in_order() {
        let mut ring = OutputRing::new(100);
        ring.push(OutputStream::Stdout, Bytes::from_static(b"hello "));
        ring.push(OutputStream::Stderr, Bytes::from_static(b"world"));
        let all = ring.read(0, 1000);
        assert_eq!(
            (text(&all), all.next, all.dropped),
            ("hello world".into(), 11, 0)
        );
        assert_eq!(all.chunks[1].stream, OutputStream::Stderr);
        let tail = ring.read(3, 4);
        assert_eq!((text(&tail), tail.next), ("lo w".into(), 7));
        assert!(ring.read(11, 10).chunks.is_empty());
        assert_eq!(ring.read(50, 10).next, 11);
    }

    #[test]
    fn drops_the_oldest_and_says_how_much() {
        let mut ring = OutputRing::new(8);
        ring.push(OutputStream::Stdout, Bytes::from_static(b"0123456"));
        ring.push(OutputStream::Stdout, Bytes::from_static(b"789ab"));
        assert_eq!((ring.start(), ring.end()), (4, 12));
        let r = ring.read(0, 100);
        assert_eq!((text(&r), r.dropped, r.next), ("456789ab".into(), 4, 12));
        // One push larger than the ring keeps its tail.
        ring.push(OutputStream::Stderr, Bytes::from(vec![b'x'; 20]));
        assert_eq!((ring.start(), ring.end()), (24, 32));
        assert_eq!(ring.read(12, 100).dropped, 12);
    }
}

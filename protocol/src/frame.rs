//! Framing: length prefix, stream id, kind; bounded at [`MAX_FRAME_LEN`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::Message;

/// Largest frame accepted or sent (length field value): 16 MiB.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Bytes after the length prefix that every frame has: stream id and kind.
pub const FRAME_HEADER_LEN: usize = 5;

/// Errors of the framing layer. Any of them ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the agent channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes", max = MAX_FRAME_LEN)]
    FrameTooLarge { len: usize },
    #[error("frame of {len} bytes is shorter than its {FRAME_HEADER_LEN}-byte header")]
    FrameTooShort { len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("flow control: {0}")]
    Flow(#[from] crate::FlowError),
    #[error("malformed control message on stream {stream}: {source}")]
    BadMessage {
        stream: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// What the body of a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON-encoded [`Message`].
    Control = 0,
    /// Bytes for the standard input of the process on this stream.
    Stdin = 1,
    /// Bytes the process wrote to its standard output.
    Stdout = 2,
    /// Bytes the process wrote to its standard error.
    Stderr = 3,
    /// A chunk of a file being transferred (either way; see [`crate::FILE_CHUNK`]).
    FileData = 4,
}

impl TryFrom<u8> for FrameKind {
    type Error = ProtocolError;
    fn try_from(v: u8) -> Result<Self, ProtocolError> {
        Ok(match v {
            0 => FrameKind::Control,
            1 => FrameKind::Stdin,
            2 => FrameKind::Stdout,
            3 => FrameKind::Stderr,
            4 => FrameKind::FileData,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub stream: u32,
    pub kind: FrameKind,
    pub body: Bytes,
}

impl Frame {
    /// A control frame carrying `msg` on `stream`.
    pub fn control(stream: u32, msg: &Message) -> Frame {
        // Serializing these plain data types cannot fail.
        let body = serde_json::to_vec(msg).expect("protocol messages always serialize");
        Frame {
            stream,
            kind: FrameKind::Control,
            body: body.into(),
        }
    }

    pub fn data(stream: u32, kind: FrameKind, body: Bytes) -> Frame {
        Frame { stream, kind, body }
    }

    /// Decodes the JSON body of a control frame.
    pub fn message(&self) -> Result<Message, ProtocolError> {
        serde_json::from_slice(&self.body).map_err(|source| ProtocolError::BadMessage {
            stream: self.stream,
            source,
        })
    }
}

/// Tokio codec for [`Frame`]s. Length checks happen on the 4-byte prefix,
/// so an oversized frame is refused without buffering it.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// Length of a frame refused for its size; decoding stays failed after it.
    too_large: Option<usize>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    pub fn new() -> FrameCodec {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        FrameCodec {
            inner,
            too_large: None,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some(len) = self.too_large {
            return Err(ProtocolError::FrameTooLarge { len });
        }
        if src.len() >= 4 {
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if len > MAX_FRAME_LEN {
                self.too_large = Some(len);
                return Err(ProtocolError::FrameTooLarge { len });
            }
        }
        let Some(mut buf) = self.inner.decode(src)? else {
            return Ok(None);
        };
        if buf.len() < FRAME_HEADER_LEN {
            return Err(ProtocolError::FrameTooShort { len: buf.len() });
        }
        let stream = buf.get_u32();
        let kind = FrameKind::try_from(buf.get_u8())?;
        Ok(Some(Frame {
            stream,
            kind,
            body: buf.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let len = FRAME_HEADER_LEN + frame.body.len();
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge { len });
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u32(frame.stream);
        dst.put_u8(frame.kind as u8);
        dst.put_slice(&frame.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(frame, &mut buf).unwrap();
        buf
    }

    #[test]
    fn round_trip_control_and_data() {
        let msg = Message::Error {
            message: "boom".into(),
        };
        let mut buf = encode(Frame::control(7, &msg));
        buf.extend_from_slice(&encode(Frame::data(
            9,
            FrameKind::Stdout,
            Bytes::from_static(b"hi"),
        )));
        let mut codec = FrameCodec::new();
        let a = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(a.stream, 7);
        assert_eq!(a.message().unwrap(), msg);
        let b = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            (b.stream, b.kind, &b.body[..]),
            (9, FrameKind::Stdout, &b"hi"[..])
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let full = encode(Frame::data(
            1,
            FrameKind::Stdin,
            Bytes::from_static(b"abcdef"),
        ));
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&full[..6]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[6..]);
        assert_eq!(
            &codec.decode(&mut buf).unwrap().unwrap().body[..],
            b"abcdef"
        );
    }

    #[test]
    fn oversized_frame_refused_from_header() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME_LEN + 1) as u32);
        buf.put_slice(&[0; 16]);
        let mut codec = FrameCodec::new();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        // Stays failed: the stream is out of sync and must be closed.
        assert!(codec.decode(&mut BytesMut::new()).is_err());
    }

    #[test]
    fn encoder_refuses_oversized_body() {
        let body = Bytes::from(vec![0u8; MAX_FRAME_LEN]);
        let mut buf = BytesMut::new();
        let err = FrameCodec::new().encode(Frame::data(1, FrameKind::Stdout, body), &mut buf);
        assert!(matches!(err, Err(ProtocolError::FrameTooLarge { .. })));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = FrameCodec::new();
        // Too short for the header.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 1, 2][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::FrameTooShort { len: 2 })
        ));
        // Unknown kind.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 0, 0, 0, 1, 99][..]);
        assert!(matches!(
            FrameCodec::new().decode(&mut buf),
            Err(ProtocolError::UnknownKind(99))
        ));
        // Control frame whose body is not JSON.
        let mut buf = encode(Frame::data(
            1,
            FrameKind::Control,
            Bytes::from_static(b"{nope"),
        ));
        let frame = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            frame.message(),
            Err(ProtocolError::BadMessage { stream: 1, .. })
        ));
    }
}

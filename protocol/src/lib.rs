//! The IronClaw host ↔ guest wire protocol.
//!
//! One byte stream (a vsock connection, or a virtio-serial port) carries many
//! concurrent requests. Every unit on the wire is a *frame*:
//!
//! ```text
//! u32 big-endian length | u32 big-endian stream id | u8 kind | body
//! ```
//!
//! The length counts everything after itself and is at most [`MAX_FRAME_LEN`];
//! a larger length is refused from the 4-byte header alone, before anything is
//! allocated. `kind` says whether the body is a JSON control [`Message`] or raw
//! bytes of a stream (stdin, stdout, stderr, file data). Stream 0 is the session itself
//! (hello, session-level errors); the host opens request streams with odd ids.
//!
//! A session starts with the host's [`Message::Hello`] and the agent's
//! [`Message::HelloAck`]; a version mismatch ends it. A malformed or oversized
//! frame gets a [`Message::Error`] on stream 0 and the connection is closed.
//!
//! Every request stream is flow-controlled in both directions by a credit
//! window (the rules are in `protocol/src/flow.rs`, the reasons in
//! `docs/decisions.md`): one
//! stream whose consumer stops reading never stalls the others, and neither
//! side buffers more than [`STREAM_WINDOW`] bytes of a stream.

mod files;
mod flow;
mod frame;
mod message;
mod write;

pub use files::{DirEntry, FileKind, FileStat, DIR_BATCH, FILE_CHUNK};
pub use flow::{
    check_data_frame, max_data_len, FlowError, RecvWindow, SendCredit, SendWindow, StreamClosed,
    CREDIT_THRESHOLD, MAX_CHARGED_CONTROL_LEN, MAX_FINAL_LEN, STREAM_WINDOW,
};
pub use frame::{Frame, FrameCodec, FrameKind, ProtocolError, FRAME_HEADER_LEN, MAX_FRAME_LEN};
pub use message::{ExecRequest, ExitStatus, Message};
pub use write::{write_frames, write_segments, FrameBatch, MAX_BATCH_BYTES, MAX_BATCH_FRAMES};

/// Version of the protocol spoken by this build. Bumped on any incompatible change.
/// Version 2 added per-stream credit windows ([`Message::Credit`]).
pub const PROTOCOL_VERSION: u32 = 2;

/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The host port the agent connects to (guest-initiated vsock, which hybrid
/// vsock maps to the unix socket `<uds_path>_<port>`) once it is listening:
/// the host waits for this instead of probing a guest that is still booting.
pub const AGENT_READY_PORT: u32 = 1025;

/// Name of the virtio-serial port the agent serves on when the kernel command
/// line says `ironclaw.transport=serial` (QEMU VMs that are snapshotted: a
/// vhost-user vsock device cannot be migrated).
pub const AGENT_SERIAL_PORT_NAME: &str = "ironclaw.agent";

/// Kernel command-line switch selecting the virtio-serial transport.
pub const SERIAL_TRANSPORT_ARG: &str = "ironclaw.transport=serial";

/// Kernel command-line key naming the block device of the root file system
/// image (`ironclaw.rootfs=/dev/vda`); the guest boots into it under an overlay.
pub const ROOTFS_ARG: &str = "ironclaw.rootfs";

/// Kernel command-line key giving the size of that overlay in MiB.
pub const OVERLAY_MIB_ARG: &str = "ironclaw.overlay_mib";

/// Largest entropy blob accepted in a `Reseed`.
pub const MAX_RESEED_ENTROPY: usize = 512;

/// The stream id of the session itself (hello, session errors).
pub const SESSION_STREAM: u32 = 0;

/// Largest chunk of stream data (stdout, stderr, stdin) put in one frame.
/// Much smaller than [`MAX_FRAME_LEN`] so output is streamed promptly and
/// concurrent streams interleave fairly.
pub const DATA_CHUNK: usize = 64 * 1024;

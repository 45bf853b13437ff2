//! File transfer and file-system requests: what the guest reports about a path.
//!
//! A transfer is one request stream. Put: the host sends
//! [`crate::Message::PutFile`], then the file's bytes as
//! [`crate::FrameKind::FileData`] frames of at most [`FILE_CHUNK`] bytes, then
//! [`crate::Message::DataEnd`]; the guest answers [`crate::Message::FileDone`] with
//! the byte count once the file is complete and in place (or `Error`). Get: the
//! host sends [`crate::Message::GetFile`]; the guest answers
//! [`crate::Message::Stat`], the bytes as `FileData` frames, then `FileDone`. No
//! side ever holds a whole file: it is read and written chunk by chunk.

use serde::{Deserialize, Serialize};

/// Largest file chunk in one `FileData` frame. Larger than
/// [`crate::DATA_CHUNK`] because per-frame costs dominate bulk transfers in an
/// emulated guest, yet far below [`crate::MAX_FRAME_LEN`] so other streams of
/// the session still interleave.
pub const FILE_CHUNK: usize = 256 * 1024;

/// Most entries in one [`crate::Message::DirEntries`] batch, so that a huge
/// directory never needs a frame near the size limit.
pub const DIR_BATCH: usize = 512;

/// What kind of file a path names (symlinks are reported, not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Device, socket, fifo.
    Other,
}

/// `lstat` of a guest path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    pub kind: FileKind,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target of a symlink.
    #[serde(default)]
    pub link_target: Option<String>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// File name (not a path); non-UTF-8 bytes are replaced.
    pub name: String,
    pub stat: FileStat,
}

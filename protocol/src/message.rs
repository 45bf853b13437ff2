//! Control messages (the JSON bodies of [`crate::FrameKind::Control`] frames).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::files::{DirEntry, FileStat};

/// A control message. Unknown message types and unknown fields are refused,
/// so a mistyped request is an error rather than a silently ignored field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Host → guest, first frame of a session on stream 0.
    Hello { version: u32 },
    /// Guest → host, on stream 0, first thing a newly started agent says on
    /// a transport without connections (virtio-serial): a host still in a
    /// session with an agent that died (killed in the guest) learns at once
    /// that its requests are lost. A host's handshake skips it.
    AgentStarted,
    /// Guest → host answer to `Hello`.
    HelloAck {
        version: u32,
        agent_version: String,
        kernel_release: String,
    },
    /// Host → guest: run a process on a new stream.
    Exec(ExecRequest),
    /// Host → guest: no more stdin for the process on this stream.
    CloseStdin,
    /// Host → guest: send a signal to the process group on this stream.
    Signal { signal: i32 },
    /// Guest → host: the process on this stream started.
    Started { pid: u32 },
    /// Guest → host: the process on this stream ended; last message of the stream.
    Exited(ExitStatus),
    /// Host → guest, on its own stream: mix `entropy` into the kernel's random
    /// pool and reseed it, and set the wall clock. Sent to every VM restored
    /// from a snapshot before any user command runs, so clones of one
    /// prototype share no random state and see the right time.
    Reseed { entropy: Vec<u8>, unix_time_ns: u64 },
    /// Guest → host: the request on this stream (a `Reseed`) is done.
    Done,
    /// Either way, on a request stream: the sender's consumer took data, so the
    /// peer may send `bytes` more charged bytes on this stream (see the
    /// crate's flow-control rules: [`crate::STREAM_WINDOW`]).
    Credit { bytes: u32 },
    /// Either way: the request on this stream (or, on stream 0, the session) failed.
    Error { message: String },
    /// Host → guest: create or replace the file at `path` (absolute, or relative
    /// to `/root`) with permission bits `mode`; its bytes follow as `FileData`
    /// frames, then `DataEnd`. The file appears only once complete.
    PutFile { path: String, mode: u32 },
    /// Host → guest: no more `FileData` on this stream.
    DataEnd,
    /// Host → guest: send the regular file at `path` (`Stat`, `FileData`…, `FileDone`).
    GetFile { path: String },
    /// Host → guest: `lstat` of `path`; answered with `Stat`.
    StatPath { path: String },
    /// Host → guest: list the directory `path`; answered with `DirEntries`
    /// batches, then `FileDone` with the number of entries.
    ListDir { path: String },
    /// Host → guest: create directory `path` (and missing parents if `parents`).
    MakeDir {
        path: String,
        #[serde(default = "default_dir_mode")]
        mode: u32,
        #[serde(default)]
        parents: bool,
    },
    /// Host → guest: remove `path` (a directory's contents too if `recursive`).
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Guest → host: what a path is.
    Stat(FileStat),
    /// Guest → host: some entries of a listed directory.
    DirEntries { entries: Vec<DirEntry> },
    /// Guest → host: the file request on this stream succeeded; last message of
    /// the stream. `count` is bytes for put/get, entries for a listing, else 0.
    FileDone { count: u64 },
}

impl Message {
    /// Whether this is the last message of a request stream (guest → host):
    /// not charged against the stream's window, and nothing follows it.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Message::Exited(_) | Message::Error { .. } | Message::FileDone { .. } | Message::Done
        )
    }
}

fn default_dir_mode() -> u32 {
    0o755
}

/// What to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment, on top of the agent's base environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's default (`/root`) when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Whether the host will send stdin frames; stdin is `/dev/null` otherwise.
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// When the command exits, leave what it started in the background
    /// running (a sandbox held for many commands: `server &` keeps serving).
    /// By default the command's whole process group is killed when it exits,
    /// so nothing outlives the request. A timeout kills the group either way.
    #[serde(default)]
    pub keep_background: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    /// The process was killed because its timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// The conventional shell exit code: the code, 128+signal, or 124 on timeout.
    pub fn shell_code(&self) -> i32 {
        if self.timed_out {
            124
        } else if let Some(code) = self.code {
            code
        } else if let Some(sig) = self.signal {
            128 + sig
        } else {
            255
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(serde_json::from_str::<Message>(r#"{"type":"hello","version":1,"x":2}"#).is_err());
        assert!(serde_json::from_str::<Message>(r#"{"type":"format_disk"}"#).is_err());
        let ok: Message = serde_json::from_str(r#"{"type":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(
            ok,
            Message::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            })
        );
    }

    #[test]
    fn file_messages_round_trip() {
        let put: Message =
            serde_json::from_str(r#"{"type":"put_file","path":"/root/a","mode":420}"#).unwrap();
        assert_eq!(
            put,
            Message::PutFile {
                path: "/root/a".into(),
                mode: 0o644
            }
        );
        let mk: Message = serde_json::from_str(r#"{"type":"make_dir","path":"/x"}"#).unwrap();
        assert_eq!(
            mk,
            Message::MakeDir {
                path: "/x".into(),
                mode: 0o755,
                parents: false
            }
        );
        let stat = Message::Stat(FileStat {
            kind: crate::FileKind::Symlink,
            size: 3,
            mode: 0o777,
            mtime: 1,
            link_target: Some("/etc".into()),
        });
        let text = serde_json::to_string(&stat).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), stat);
        assert!(serde_json::from_str::<Message>(
            r#"{"type":"get_file","path":"/a","follow":true}"#
        )
        .is_err());
    }

    #[test]
    fn shell_codes() {
        assert_eq!(
            ExitStatus {
                code: Some(3),
                ..Default::default()
            }
            .shell_code(),
            3
        );
        assert_eq!(
            ExitStatus {
                signal: Some(9),
                ..Default::default()
            }
            .shell_code(),
            137
        );
        let t = ExitStatus {
            signal: Some(9),
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(t.shell_code(), 124);
    }
}

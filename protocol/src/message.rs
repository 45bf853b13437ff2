//! Control messages (the JSON bodies of [`crate::FrameKind::Control`] frames).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A control message. Unknown message types and unknown fields are refused,
/// so a mistyped request is an error rather than a silently ignored field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Host → guest, first frame of a session on stream 0.
    Hello { version: u32 },
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
    /// Either way: the request on this stream (or, on stream 0, the session) failed.
    Error { message: String },
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

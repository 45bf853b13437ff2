//! Session handling tests: a fake host talks to [`serve_session`] over a unix
//! socket pair, exactly as the host does over vsock or virtio-serial.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    ExecRequest, Frame, FrameCodec, FrameKind, Message, DATA_CHUNK, PROTOCOL_VERSION,
    SESSION_STREAM, STREAM_WINDOW,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::serve_session;

const WAIT: Duration = Duration::from_secs(10);

struct Host {
    r: FramedRead<ReadHalf<UnixStream>, FrameCodec>,
    w: Option<FramedWrite<WriteHalf<UnixStream>, FrameCodec>>,
}

impl Host {
    /// Starts a session and says hello.
    async fn connect() -> Host {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(serve_session(b, false));
        let (r, w) = tokio::io::split(a);
        let mut host = Host {
            r: FramedRead::new(r, FrameCodec::new()),
            w: Some(FramedWrite::new(w, FrameCodec::new())),
        };
        host.hello().await;
        host
    }

    async fn hello(&mut self) {
        self.send(Frame::control(
            SESSION_STREAM,
            &Message::Hello {
                version: PROTOCOL_VERSION,
            },
        ))
        .await;
        // Frames of an earlier session may come first; the ack ends them.
        loop {
            let f = self.next().await.expect("hello answered");
            if f.stream == SESSION_STREAM {
                assert!(matches!(f.message().unwrap(), Message::HelloAck { .. }));
                return;
            }
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.w.as_mut().unwrap().send(frame).await.unwrap();
    }

    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.r.next())
            .await
            .expect("the agent answers within 10 s")
            .map(|f| f.unwrap())
    }

    /// The next control message on `stream`, skipping other streams' frames
    /// and credit grants.
    async fn message_on(&mut self, stream: u32) -> Message {
        loop {
            let f = self.next().await.expect("connection open");
            if f.stream == stream && f.kind == FrameKind::Control {
                match f.message().unwrap() {
                    Message::Credit { .. } => {}
                    m => return m,
                }
            }
        }
    }

    /// Takes the write half to a task that sends `frames` in order.
    fn send_all_in_background(&mut self, frames: Vec<Frame>) {
        let mut w = self.w.take().unwrap();
        tokio::spawn(async move {
            for f in frames {
                if w.send(f).await.is_err() {
                    return;
                }
            }
            // Keep the connection open for writing until the test ends.
            std::future::pending::<()>().await;
        });
    }
}

fn exec(argv: &[&str], stdin: bool) -> Message {
    Message::Exec(ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: Some("/tmp".into()),
        stdin,
        timeout_ms: Some(60_000),
        ..Default::default()
    })
}

fn stdin_frames(stream: u32, total: usize, chunk: usize) -> Vec<Frame> {
    (0..total / chunk)
        .map(|_| Frame::data(stream, FrameKind::Stdin, Bytes::from(vec![b'x'; chunk])))
        .collect()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ironclaw-guest-session-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A process that never reads its stdin, while the host fills its window,
/// must not hold up a signal to it or a new request on another stream.
#[tokio::test(flavor = "current_thread")]
async fn unread_stdin_does_not_block_signals_or_other_streams() {
    let mut host = Host::connect().await;
    host.send(Frame::control(1, &exec(&["sleep", "30"], true)))
        .await;
    assert!(matches!(host.message_on(1).await, Message::Started { .. }));
    // A whole window of stdin in small frames (many frames, few bytes).
    let mut frames = stdin_frames(1, STREAM_WINDOW as usize, 1024);
    frames.push(Frame::control(3, &exec(&["sh", "-c", "echo hi"], false)));
    frames.push(Frame::control(
        1,
        &Message::Signal {
            signal: libc::SIGKILL,
        },
    ));
    host.send_all_in_background(frames);

    let mut exits = HashMap::new();
    let mut out3 = Vec::new();
    while exits.len() < 2 {
        let f = host.next().await.expect("connection open");
        match (f.stream, f.kind) {
            (3, FrameKind::Stdout) => out3.extend_from_slice(&f.body),
            (id, FrameKind::Control) => {
                if let Message::Exited(st) = f.message().unwrap() {
                    exits.insert(id, st);
                }
            }
            _ => {}
        }
    }
    assert_eq!(out3, b"hi\n");
    assert_eq!(exits[&3].code, Some(0));
    assert_eq!(exits[&1].signal, Some(libc::SIGKILL));
    assert!(!exits[&1].timed_out);
}

/// A hello in the middle of a session (a new host on virtio-serial) ends
/// every request of the old one, including an upload that never finished.
#[tokio::test(flavor = "current_thread")]
async fn hello_reset_frees_a_stream_with_an_unfinished_upload() {
    let dir = scratch("reset");
    let path = dir.join("f").to_string_lossy().into_owned();
    let mut host = Host::connect().await;
    let put = Message::PutFile {
        path: path.clone(),
        mode: 0o644,
    };
    host.send(Frame::control(1, &put)).await;
    host.send(Frame::data(
        1,
        FrameKind::FileData,
        Bytes::from_static(b"stale"),
    ))
    .await;
    host.hello().await;

    host.send(Frame::control(1, &put)).await;
    host.send(Frame::data(
        1,
        FrameKind::FileData,
        Bytes::from_static(b"fresh"),
    ))
    .await;
    host.send(Frame::control(1, &Message::DataEnd)).await;
    assert_eq!(
        host.message_on(1).await,
        Message::FileDone { count: 5 },
        "stream 1 must be free again after the reset"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"fresh");
    // The abandoned upload left no temporary file behind.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends stdin beyond the window to a process that does not read it:
/// the agent must refuse it and end the session rather than buffer it.
#[tokio::test(flavor = "current_thread")]
async fn stdin_beyond_the_credit_is_a_violation() {
    let mut host = Host::connect().await;
    host.send(Frame::control(1, &exec(&["sleep", "30"], true)))
        .await;
    assert!(matches!(host.message_on(1).await, Message::Started { .. }));
    host.send_all_in_background(stdin_frames(1, STREAM_WINDOW as usize + 4096, 1024));
    let err = host.message_on(SESSION_STREAM).await;
    let Message::Error { message } = err else {
        panic!("expected a session error, got {err:?}");
    };
    assert!(message.contains("credit"), "{message}");
    // Then the agent hangs up (frames of other streams may come first; the
    // stdin it did not read may make the close a reset).
    loop {
        match tokio::time::timeout(WAIT, host.r.next()).await {
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the agent did not hang up"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn oversized_or_empty_data_frames_are_violations() {
    for len in [DATA_CHUNK + 1, 0] {
        let mut host = Host::connect().await;
        host.send(Frame::control(1, &exec(&["cat"], true))).await;
        assert!(matches!(host.message_on(1).await, Message::Started { .. }));
        host.send(Frame::data(
            1,
            FrameKind::Stdin,
            Bytes::from(vec![0u8; len]),
        ))
        .await;
        let Message::Error { message } = host.message_on(SESSION_STREAM).await else {
            panic!("expected a session error for a {len}-byte stdin frame");
        };
        assert!(message.contains("Stdin frame"), "{message}");
    }
}

/// A grant that would raise the agent's window above its size is refused.
#[tokio::test(flavor = "current_thread")]
async fn credit_above_the_window_is_a_violation() {
    let mut host = Host::connect().await;
    host.send(Frame::control(1, &exec(&["sleep", "30"], true)))
        .await;
    assert!(matches!(host.message_on(1).await, Message::Started { .. }));
    // The agent has sent only `Started`, so its window is nearly full.
    host.send(Frame::control(
        1,
        &Message::Credit {
            bytes: STREAM_WINDOW,
        },
    ))
    .await;
    let Message::Error { message } = host.message_on(SESSION_STREAM).await else {
        panic!("expected a session error");
    };
    assert!(message.contains("window"), "{message}");
}

/// The agent sends no more output than the host gave it credit for, and
/// resumes when credit comes.
#[tokio::test(flavor = "current_thread")]
async fn output_stops_at_the_window_until_credit_is_granted() {
    let mut host = Host::connect().await;
    let total = 3 * STREAM_WINDOW as usize;
    host.send(Frame::control(
        1,
        &exec(&["head", "-c", &total.to_string(), "/dev/zero"], false),
    ))
    .await;
    let mut charged = 0usize;
    let mut stdout = 0usize;
    // Read until the agent stops for lack of credit.
    loop {
        match tokio::time::timeout(Duration::from_millis(500), host.r.next()).await {
            Err(_) => break,
            Ok(f) => {
                let f = f.expect("connection open").unwrap();
                assert_eq!(f.stream, 1);
                if f.kind == FrameKind::Control {
                    let m = f.message().unwrap();
                    assert!(!m.is_final(), "the command cannot end yet: {m:?}");
                } else {
                    stdout += f.body.len();
                }
                charged += f.body.len();
            }
        }
    }
    assert!(charged <= STREAM_WINDOW as usize, "{charged} bytes sent");
    assert!(charged + DATA_CHUNK > STREAM_WINDOW as usize, "{charged}");
    // The command has written everything it could into its pipe and waits;
    // a host that takes its time must still get every byte.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Grant as a host does, as the bytes are consumed: the rest follows.
    host.send(Frame::control(
        1,
        &Message::Credit {
            bytes: charged as u32,
        },
    ))
    .await;
    let mut since_grant = 0usize;
    loop {
        let f = host.next().await.expect("connection open");
        if f.kind == FrameKind::Control {
            match f.message().unwrap() {
                Message::Exited(st) => {
                    assert_eq!(st.code, Some(0));
                    break;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        stdout += f.body.len();
        since_grant += f.body.len();
        if since_grant >= ironclaw_protocol::CREDIT_THRESHOLD as usize {
            host.send(Frame::control(
                1,
                &Message::Credit {
                    bytes: since_grant as u32,
                },
            ))
            .await;
            since_grant = 0;
        }
    }
    assert_eq!(stdout, total);
}

//! The host client against a scripted, hostile guest: credit is enforced,
//! bounded in bytes, and one stream's unread data stalls no other stream.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    ExecRequest, ExitStatus, Frame, FrameCodec, FrameKind, Message, DATA_CHUNK, MAX_FRAME_LEN,
    PROTOCOL_VERSION, SESSION_STREAM, STREAM_WINDOW,
};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{AgentClient, AgentError, ExecEvent};

const WAIT: Duration = Duration::from_secs(10);

/// The guest's end of a session: answers hello, then does what a test says.
struct FakeGuest {
    r: FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
    w: FramedWrite<WriteHalf<DuplexStream>, FrameCodec>,
}

impl FakeGuest {
    async fn start() -> (AgentClient, FakeGuest) {
        let (host, guest) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(guest);
        let mut fake = FakeGuest {
            r: FramedRead::new(r, FrameCodec::new()),
            w: FramedWrite::new(w, FrameCodec::new()),
        };
        let answer = async {
            let hello = fake.r.next().await.unwrap().unwrap();
            assert!(matches!(hello.message().unwrap(), Message::Hello { .. }));
            fake.send(Frame::control(
                SESSION_STREAM,
                &Message::HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_version: "fake".into(),
                    kernel_release: "fake".into(),
                },
            ))
            .await;
        };
        let (client, ()) = tokio::join!(AgentClient::handshake(Box::new(host)), answer);
        (client.unwrap(), fake)
    }

    async fn send(&mut self, frame: Frame) {
        self.w.send(frame).await.unwrap();
    }

    /// The next control message from the host, skipping credit grants.
    async fn message(&mut self) -> (u32, Message) {
        loop {
            let f = tokio::time::timeout(WAIT, self.r.next())
                .await
                .expect("the host sends within 10 s")
                .expect("connection open")
                .unwrap();
            if f.kind == FrameKind::Control {
                match f.message().unwrap() {
                    Message::Credit { .. } => {}
                    m => return (f.stream, m),
                }
            }
        }
    }

    /// Waits for an exec request; returns its stream id.
    async fn exec_request(&mut self) -> u32 {
        match self.message().await {
            (id, Message::Exec(_)) => id,
            other => panic!("expected an exec, got {other:?}"),
        }
    }
}

fn req(argv: &str) -> ExecRequest {
    ExecRequest {
        argv: vec![argv.into()],
        ..Default::default()
    }
}

fn stdout(id: u32, len: usize) -> Frame {
    Frame::data(id, FrameKind::Stdout, Bytes::from(vec![b'o'; len]))
}

/// A stream whose caller reads nothing does not hold up another stream, and
/// what is buffered for it stays within the window.
#[tokio::test]
async fn unread_stream_does_not_stall_the_others() {
    let (client, mut guest) = FakeGuest::start().await;
    let slow = client.exec(req("slow")).await.unwrap();
    let slow_id = guest.exec_request().await;
    // A window's worth of output in small frames (many frames, few bytes).
    for _ in 0..STREAM_WINDOW / 1024 {
        guest.send(stdout(slow_id, 1024)).await;
    }
    let fast = client.exec(req("fast"));
    let answer = async {
        let id = guest.exec_request().await;
        guest.send(stdout(id, 3)).await;
        guest
            .send(Frame::control(id, &Message::Exited(ExitStatus::default())))
            .await;
    };
    let (fast, ()) = tokio::join!(fast, answer);
    let mut fast = fast.unwrap();
    let got = tokio::time::timeout(WAIT, async {
        let mut out = Vec::new();
        loop {
            match fast.next_event().await.unwrap() {
                ExecEvent::Stdout(b) => out.extend_from_slice(&b),
                ExecEvent::Exit(_) => return out,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the second stream completes while the first is unread");
    assert_eq!(got, b"ooo");
    assert_eq!(slow.buffered_bytes(), u64::from(STREAM_WINDOW));
    // Abandoning the unread stream kills its process and gives the guest its
    // window back, so the guest's senders are not left waiting forever.
    drop(slow);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let f = tokio::time::timeout(WAIT, guest.r.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(f.stream, slow_id);
        seen.push(f.message().unwrap());
    }
    assert!(seen.contains(&Message::Signal {
        signal: libc::SIGKILL
    }));
    assert!(seen.contains(&Message::Credit {
        bytes: STREAM_WINDOW
    }));
}

/// A guest that sends beyond the credit it was given ends the session:
/// refused, not buffered.
#[tokio::test]
async fn output_beyond_the_credit_ends_the_session() {
    let (client, mut guest) = FakeGuest::start().await;
    let mut session = client.exec(req("x")).await.unwrap();
    let id = guest.exec_request().await;
    for _ in 0..STREAM_WINDOW as usize / DATA_CHUNK + 1 {
        guest.send(stdout(id, DATA_CHUNK)).await;
    }
    // The host says why and stops.
    let (stream, msg) = guest.message().await;
    assert_eq!(stream, SESSION_STREAM);
    let Message::Error { message } = msg else {
        panic!("{msg:?}")
    };
    assert!(message.contains("credit"), "{message}");
    assert!(session.buffered_bytes() <= u64::from(STREAM_WINDOW));
    // The caller reads what was within the window, then the reason.
    let err = loop {
        match session.next_event().await {
            Ok(ExecEvent::Stdout(_)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, AgentError::SessionFailed(why) if why.contains("credit")),
        "{err}"
    );
    // And no new request starts on the dead session.
    assert!(matches!(
        client.exec(req("y")).await,
        Err(AgentError::SessionFailed(_))
    ));
}

/// A forged big frame (the guest chooses frame sizes up to the 16 MiB frame
/// limit) is refused, whether or not its stream is read.
#[tokio::test]
async fn data_frame_above_the_chunk_size_ends_the_session() {
    let (client, mut guest) = FakeGuest::start().await;
    let mut session = client.exec(req("x")).await.unwrap();
    let id = guest.exec_request().await;
    guest.send(stdout(id, MAX_FRAME_LEN - 5)).await;
    let err = tokio::time::timeout(WAIT, session.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::SessionFailed(why) if why.contains("chunk size")),
        "{err}"
    );
}

/// A last message larger than its bound, or a grant above the window, is refused.
#[tokio::test]
async fn oversized_final_message_and_excess_grant_are_violations() {
    let (client, mut guest) = FakeGuest::start().await;
    let mut session = client.exec(req("x")).await.unwrap();
    let id = guest.exec_request().await;
    let message = "e".repeat(ironclaw_protocol::MAX_FINAL_LEN);
    guest
        .send(Frame::control(id, &Message::Error { message }))
        .await;
    let err = session.next_event().await.unwrap_err();
    assert!(matches!(err, AgentError::SessionFailed(_)), "{err}");

    let (client, mut guest) = FakeGuest::start().await;
    let mut session = client.exec(req("x")).await.unwrap();
    let id = guest.exec_request().await;
    guest
        .send(Frame::control(id, &Message::Credit { bytes: 1 }))
        .await;
    let err = session.next_event().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::SessionFailed(why) if why.contains("window")),
        "{err}"
    );
}

/// Stdin is sent only within the guest's credit; when the request ends,
/// a writer waiting for credit gives up instead of hanging.
#[tokio::test]
async fn stdin_waits_for_credit_and_stops_when_the_request_ends() {
    let (client, mut guest) = FakeGuest::start().await;
    let mut session = client
        .exec(ExecRequest {
            stdin: true,
            ..req("cat")
        })
        .await
        .unwrap();
    let id = guest.exec_request().await;
    let writer = session.stdin_writer();
    let data = vec![b'i'; 2 * STREAM_WINDOW as usize];
    let write = tokio::spawn(async move { writer.write(&data).await });
    // Exactly a window arrives, then nothing until credit is granted.
    let mut got = 0usize;
    while got < STREAM_WINDOW as usize {
        let f = tokio::time::timeout(WAIT, guest.r.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((f.stream, f.kind), (id, FrameKind::Stdin));
        got += f.body.len();
    }
    assert_eq!(got, STREAM_WINDOW as usize);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), guest.r.next())
            .await
            .is_err(),
        "the host sent stdin beyond its credit"
    );
    guest
        .send(Frame::control(id, &Message::Credit { bytes: 65536 }))
        .await;
    let f = guest.r.next().await.unwrap().unwrap();
    assert_eq!((f.kind, f.body.len()), (FrameKind::Stdin, 65536));
    // The process exits without reading the rest: the writer is released.
    guest
        .send(Frame::control(id, &Message::Exited(ExitStatus::default())))
        .await;
    assert!(matches!(
        session.next_event().await.unwrap(),
        ExecEvent::Exit(_)
    ));
    let written = tokio::time::timeout(WAIT, write).await.unwrap().unwrap();
    assert!(
        matches!(written, Err(AgentError::StreamEnded)),
        "{written:?}"
    );
}

/// A guest that never answers an exec fails it at its timeout plus the
/// grace, with `Deadline`, instead of hanging.
#[tokio::test]
async fn a_silent_guest_fails_an_exec_at_timeout_plus_grace() {
    let (client, mut guest) = FakeGuest::start().await;
    let client = client.with_exec_grace(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let run = client.run(
        ExecRequest {
            timeout_ms: Some(200),
            ..req("sleep")
        },
        None,
    );
    let answer = async {
        let id = guest.exec_request().await;
        // Started, some output, then silence.
        guest
            .send(Frame::control(id, &Message::Started { pid: 7 }))
            .await;
        guest.send(stdout(id, 10)).await;
    };
    let (ran, ()) = tokio::time::timeout(WAIT, async { tokio::join!(run, answer) })
        .await
        .expect("run() returned");
    let took = t0.elapsed();
    assert!(
        matches!(&ran, Err(AgentError::Deadline { what, after })
            if what.is_exec() && *after == Duration::from_millis(500)),
        "{ran:?}"
    );
    assert!(ran.unwrap_err().to_string().contains("stopped answering"));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    // The host gave the request up: it kills it, should the guest wake.
    let (_, msg) = guest.message().await;
    assert_eq!(
        msg,
        Message::Signal {
            signal: libc::SIGKILL
        }
    );
}

/// Without a timeout in the request, the client's default applies (and is
/// sent to the guest), so no exec waits forever.
#[tokio::test]
async fn an_exec_without_timeout_gets_the_default() {
    let (client, mut guest) = FakeGuest::start().await;
    let client = client
        .with_default_exec_timeout(Duration::from_millis(100))
        .with_exec_grace(Duration::from_millis(100));
    let mut session = client.exec(req("sleep")).await.unwrap();
    match guest.message().await {
        (_, Message::Exec(r)) => assert_eq!(r.timeout_ms, Some(100)),
        other => panic!("{other:?}"),
    }
    let err = tokio::time::timeout(WAIT, session.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Deadline { .. }), "{err}");
}

/// A file operation the guest stops answering fails after the idle limit.
#[tokio::test]
async fn a_silent_guest_fails_a_file_operation_after_the_idle_limit() {
    let (client, mut guest) = FakeGuest::start().await;
    let client = client.with_file_idle_limit(Duration::from_millis(300));
    let stat = client.stat("/root/x");
    let answer = async {
        let (_, msg) = guest.message().await;
        assert!(matches!(msg, Message::StatPath { .. }), "{msg:?}");
    };
    let (got, ()) = tokio::time::timeout(WAIT, async { tokio::join!(stat, answer) })
        .await
        .expect("stat() returned");
    match got {
        Err(super::FileError::Agent(AgentError::Deadline { what, after })) => {
            assert!(!what.is_exec());
            assert!(what.to_string().contains("/root/x"), "{what}");
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
}

/// A listing is bounded in bytes, not only in entries: few entries with
/// huge names are refused once they pass the bound.
#[tokio::test]
async fn a_listing_is_bounded_in_bytes() {
    let (client, mut guest) = FakeGuest::start().await;
    // The session outlives the listing (a clone keeps it open).
    let lister = client.clone();
    let list = tokio::spawn(async move { lister.list_dir("/big").await });
    let (id, msg) = guest.message().await;
    assert!(matches!(msg, Message::ListDir { .. }), "{msg:?}");
    let entry = ironclaw_protocol::DirEntry {
        name: "n".repeat(900 * 1024),
        stat: ironclaw_protocol::FileStat {
            kind: ironclaw_protocol::FileKind::File,
            size: 0,
            mode: 0o644,
            mtime: 0,
            link_target: None,
        },
    };
    let batch = Frame::control(
        id,
        &Message::DirEntries {
            entries: vec![entry],
        },
    );
    // Each batch is within the window; the guest waits for credit between them.
    let mut sent = 0usize;
    let mut credit = STREAM_WINDOW as usize;
    let result = loop {
        if list.is_finished() {
            break list.await.unwrap();
        }
        assert!(
            sent < 2 * super::files::MAX_LIST_BYTES,
            "the host took {sent} bytes of listing"
        );
        if credit >= batch.body.len() {
            guest.send(batch.clone()).await;
            sent += batch.body.len();
            credit -= batch.body.len();
            continue;
        }
        // Waits for the host's credit (or for it to give up).
        if let Ok(Some(Ok(f))) =
            tokio::time::timeout(Duration::from_millis(100), guest.r.next()).await
        {
            if let Ok(Message::Credit { bytes }) = f.message() {
                credit += bytes as usize;
            }
        }
    };
    assert!(
        matches!(&result, Err(super::FileError::ListingTooLarge { .. })),
        "{result:?}"
    );
    assert!(sent <= super::files::MAX_LIST_BYTES + 2 * (900 * 1024 + 4096));
}

/// An upload through the host's batched writer reaches the guest whole and
/// in order, in chunks within the file chunk size and the credit given; a
/// guest that then forges a frame above the size limit still ends the session.
#[tokio::test]
async fn an_upload_arrives_whole_and_in_order_and_a_forged_oversize_frame_is_refused() {
    use ironclaw_protocol::{CREDIT_THRESHOLD, FILE_CHUNK};
    let (client, mut guest) = FakeGuest::start().await;
    let data: Vec<u8> = (0..(3 * STREAM_WINDOW as usize + 12345))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let upload = {
        let client = client.clone();
        let data = data.clone();
        tokio::spawn(async move { client.put(&mut &data[..], "/x", 0o644).await })
    };
    let id = match guest.message().await {
        (id, Message::PutFile { path, mode }) => {
            assert_eq!((path.as_str(), mode), ("/x", 0o644));
            id
        }
        other => panic!("expected a put, got {other:?}"),
    };
    let mut got = Vec::new();
    let (mut outstanding, mut consumed) = (0usize, 0usize);
    loop {
        let f = tokio::time::timeout(WAIT, guest.r.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(f.stream, id);
        match f.kind {
            FrameKind::FileData => {
                assert!(!f.body.is_empty() && f.body.len() <= FILE_CHUNK);
                outstanding += f.body.len();
                assert!(outstanding <= STREAM_WINDOW as usize, "beyond the credit");
                got.extend_from_slice(&f.body);
                consumed += f.body.len();
                if consumed >= CREDIT_THRESHOLD as usize {
                    outstanding -= consumed;
                    let bytes = consumed as u32;
                    consumed = 0;
                    guest
                        .send(Frame::control(id, &Message::Credit { bytes }))
                        .await;
                }
            }
            FrameKind::Control => match f.message().unwrap() {
                Message::DataEnd => break,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?} frame"),
        }
    }
    assert!(got == data, "the bytes differ from what was put");
    guest
        .send(Frame::control(
            id,
            &Message::FileDone {
                count: data.len() as u64,
            },
        ))
        .await;
    assert_eq!(upload.await.unwrap().unwrap(), data.len() as u64);

    let mut session = client.exec(req("x")).await.unwrap();
    guest.exec_request().await;
    // A length prefix above the limit, written raw.
    let forged = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    tokio::io::AsyncWriteExt::write_all(guest.w.get_mut(), &forged)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::flush(guest.w.get_mut())
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, session.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::SessionFailed(why) if why.contains("exceeds the limit")),
        "{err}"
    );
}

//! Running commands in a real VM (QEMU microvm, the real guest agent, real
//! vhost-device-vsock). The tests share one booted VM.

mod common;

use std::time::{Duration, Instant};

use common::{runtime, sh, shared_vm, text};
use ironclaw_orchestrator::agent::ExecEvent;
use ironclaw_orchestrator::vm::{exec_request, ExecRequest};

#[test]
fn stdout_stderr_and_exit_codes() {
    let vm = shared_vm();
    let out = sh(vm, "echo to-out; echo to-err >&2; exit 42");
    assert_eq!(text(&out.stdout), "to-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");
    assert_eq!(
        (out.status.code, out.status.signal, out.status.timed_out),
        (Some(42), None, false)
    );
    assert_eq!(sh(vm, "true").status.code, Some(0));
    assert_eq!(sh(vm, "false").status.code, Some(1));
    let killed = sh(vm, "kill -9 $$");
    assert_eq!((killed.status.code, killed.status.signal), (None, Some(9)));
    assert_eq!(killed.status.shell_code(), 137);
}

#[test]
fn kernel_is_the_guest_kernel() {
    let vm = shared_vm();
    let out = sh(vm, "uname -r");
    assert_eq!(text(&out.stdout).trim(), vm.agent().kernel_release());
    // The microVM kernel unless the environment chose another.
    if std::env::var_os("IRONCLAW_KERNEL").is_none() {
        assert!(
            text(&out.stdout).trim().ends_with("-ironclaw"),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn stdin_is_piped_in() {
    let vm = shared_vm();
    let req = exec_request(["cat"]);
    let out = runtime()
        .block_on(vm.agent().run(req, Some(b"hello stdin\n".to_vec())))
        .unwrap();
    assert_eq!(text(&out.stdout), "hello stdin\n");
    // More than one frame's worth, through a pipe that fills up.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = runtime()
        .block_on(vm.agent().run(exec_request(["wc", "-c"]), Some(big)))
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "3000000");
    // Without stdin the process reads EOF at once.
    assert_eq!(text(&sh(vm, "cat; echo done").stdout), "done\n");
}

#[test]
fn env_and_cwd() {
    let vm = shared_vm();
    let mut req = exec_request(["sh", "-c", "echo $GREETING; pwd"]);
    req.env.insert("GREETING".into(), "hi there".into());
    req.cwd = Some("/tmp".into());
    let out = runtime().block_on(vm.agent().run(req, None)).unwrap();
    assert_eq!(text(&out.stdout), "hi there\n/tmp\n");
    let mut bad = exec_request(["true"]);
    bad.cwd = Some("/does/not/exist".into());
    let err = runtime().block_on(vm.agent().run(bad, None)).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let err = runtime()
        .block_on(vm.agent().run(exec_request(["no-such-program"]), None))
        .unwrap_err();
    assert!(err.to_string().contains("no-such-program"), "{err}");
}

#[test]
fn timeout_kills_the_process_group() {
    let vm = shared_vm();
    let req = ExecRequest {
        timeout_ms: Some(1500),
        ..exec_request(["sh", "-c", "sleep 1000 & sleep 1000"])
    };
    let t0 = Instant::now();
    let out = runtime().block_on(vm.agent().run(req, None)).unwrap();
    assert!(out.status.timed_out, "{:?}", out.status);
    assert_eq!(out.status.shell_code(), 124);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    // Neither sleep survives its request.
    let ps = sh(vm, "ps -o comm | grep -c '^sleep' || true");
    assert_eq!(text(&ps.stdout).trim(), "0", "leftover sleeps");
}

#[test]
fn output_is_streamed_not_buffered() {
    let vm = shared_vm();
    runtime().block_on(async {
        let mut s = vm
            .agent()
            .exec(exec_request([
                "sh",
                "-c",
                "echo first; sleep 2; echo second",
            ]))
            .await
            .unwrap();
        let mut first_at = None;
        loop {
            match s.next_event().await.unwrap() {
                ExecEvent::Stdout(b) if first_at.is_none() => {
                    assert_eq!(&b[..], b"first\n");
                    first_at = Some(Instant::now());
                }
                ExecEvent::Exit(st) => {
                    assert_eq!(st.code, Some(0));
                    let gap = first_at.expect("first line before exit").elapsed();
                    assert!(
                        gap >= Duration::from_millis(1500),
                        "first line came only {gap:?} before exit"
                    );
                    break;
                }
                _ => {}
            }
        }
    });
}

#[test]
fn concurrent_requests_share_one_session() {
    let vm = shared_vm();
    let outs = runtime().block_on(async {
        let runs = (0..6).map(|i| {
            vm.agent().run(
                exec_request(["sh", "-c", &format!("sleep 0.$((RANDOM%5)); echo {i}")]),
                None,
            )
        });
        futures::future::join_all(runs).await
    });
    for (i, out) in outs.into_iter().enumerate() {
        assert_eq!(text(&out.unwrap().stdout), format!("{i}\n"));
    }
}

#[test]
fn no_network_inside_the_guest() {
    let vm = shared_vm();
    let ifaces = sh(vm, "ls /sys/class/net");
    assert_eq!(
        text(&ifaces.stdout).split_whitespace().collect::<Vec<_>>(),
        ["lo"]
    );
    for addr in ["1.1.1.1", "10.0.2.2", "192.168.1.1"] {
        let out = sh(vm, &format!("nc -w 2 {addr} 80 </dev/null"));
        assert_ne!(out.status.code, Some(0), "TCP connect to {addr} succeeded");
        assert!(
            text(&out.stderr).contains("unreachable"),
            "{addr}: {}",
            text(&out.stderr)
        );
    }
}

mod protocol_abuse {
    //! Raw frames sent to the real agent: a bad frame ends that session with
    //! an error reply, and the agent goes on serving.

    use super::*;
    use bytes::{BufMut, Bytes, BytesMut};
    use futures::{SinkExt, StreamExt};
    use ironclaw_protocol::{
        Frame, FrameCodec, FrameKind, Message, PROTOCOL_VERSION, SESSION_STREAM,
    };
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Framed;

    /// Opens a session, says hello, sends `raw` bytes, and returns what the
    /// agent answered before closing the connection.
    async fn send_raw(raw: Bytes) -> Vec<Message> {
        let vm = shared_vm();
        let stream = vm.open_channel().await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec::new());
        framed
            .send(Frame::control(
                SESSION_STREAM,
                &Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            ))
            .await
            .unwrap();
        let ack = framed.next().await.unwrap().unwrap().message().unwrap();
        assert!(matches!(ack, Message::HelloAck { .. }), "{ack:?}");
        // The agent may close while a large write is still going: that is fine.
        let _ = framed.get_mut().write_all(&raw).await;
        let mut answers = Vec::new();
        let read_all = async {
            while let Some(Ok(frame)) = framed.next().await {
                if let Ok(m) = frame.message() {
                    answers.push(m);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .expect("agent closed the connection");
        answers
    }

    fn still_serving() {
        let vm = shared_vm();
        // The long-lived session still works, and so does a brand-new one.
        assert_eq!(text(&sh(vm, "echo alive").stdout), "alive\n");
        runtime().block_on(async {
            let stream = vm.open_channel().await.unwrap();
            let client = ironclaw_orchestrator::agent::AgentClient::handshake(stream)
                .await
                .unwrap();
            let out = client
                .run(exec_request(["echo", "fresh"]), None)
                .await
                .unwrap();
            assert_eq!(text(&out.stdout), "fresh\n");
        });
    }

    fn is_error(answers: &[Message], needle: &str) -> bool {
        answers
            .iter()
            .any(|m| matches!(m, Message::Error { message } if message.contains(needle)))
    }

    #[test]
    fn malformed_frame_is_refused() {
        let mut raw = BytesMut::new();
        // A frame of an unknown kind …
        raw.put_u32(5);
        raw.put_u32(1);
        raw.put_u8(0xEE);
        let answers = runtime().block_on(send_raw(raw.freeze()));
        assert!(is_error(&answers, "unknown frame kind"), "{answers:?}");
        // … and a control frame that is not JSON.
        let mut raw = BytesMut::new();
        raw.put_u32(5 + 6);
        raw.put_u32(1);
        raw.put_u8(FrameKind::Control as u8);
        raw.put_slice(b"{nope!");
        let answers = runtime().block_on(send_raw(raw.freeze()));
        assert!(
            is_error(&answers, "malformed control message"),
            "{answers:?}"
        );
        still_serving();
    }

    #[test]
    fn oversized_frame_is_refused() {
        let len = 17 * 1024 * 1024;
        let mut raw = BytesMut::with_capacity(len + 4);
        raw.put_u32(len as u32);
        raw.put_u32(1);
        raw.put_u8(FrameKind::Stdin as u8);
        raw.resize(len + 4, b'x');
        let answers = runtime().block_on(send_raw(raw.freeze()));
        assert!(is_error(&answers, "exceeds the limit"), "{answers:?}");
        still_serving();
    }

    #[test]
    fn wrong_version_is_refused() {
        runtime().block_on(async {
            let stream = shared_vm().open_channel().await.unwrap();
            let mut framed = Framed::new(stream, FrameCodec::new());
            framed
                .send(Frame::control(
                    SESSION_STREAM,
                    &Message::Hello { version: 999 },
                ))
                .await
                .unwrap();
            let answer = framed.next().await.unwrap().unwrap().message().unwrap();
            assert!(
                matches!(&answer, Message::Error { message } if message.contains("999")),
                "{answer:?}"
            );
            assert!(framed.next().await.is_none(), "connection should close");
        });
        still_serving();
    }
}

#[test]
fn processes_of_a_session_die_when_the_host_goes_away() {
    use futures::{SinkExt, StreamExt};
    use ironclaw_protocol::{Frame, FrameCodec, Message, PROTOCOL_VERSION, SESSION_STREAM};
    let vm = shared_vm();
    runtime().block_on(async {
        // Raw frames, so nothing but the closing connection tells the agent.
        let stream = vm.open_channel().await.unwrap();
        let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new());
        framed
            .send(Frame::control(
                SESSION_STREAM,
                &Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            ))
            .await
            .unwrap();
        framed.next().await.unwrap().unwrap();
        let req = exec_request(["sh", "-c", "sleep 4321 & exec sleep 4321"]);
        framed
            .send(Frame::control(1, &Message::Exec(req)))
            .await
            .unwrap();
        let started = framed.next().await.unwrap().unwrap().message().unwrap();
        assert!(matches!(started, Message::Started { .. }), "{started:?}");
        drop(framed);
    });
    let gone = (0..100).any(|_| {
        let ps = sh(vm, "ps -o args | grep -c '^sleep 4321' || true");
        if text(&ps.stdout).trim() == "0" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(gone, "the processes of a closed session are still running");
}

//! Per-stream flow control between the host client and the real guest agent:
//! one stream whose consumer does not read (its output, or the process its
//! stdin) stalls no other stream, and the host holds at most a window of it.
//!
//! Most tests run the guest agent binary outside a VM (`--listen-unix`, its
//! commands then run on this host); the last one uses a real VM.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ironclaw_orchestrator::agent::{AgentClient, AgentError, ExecEvent, ExecSession};
use ironclaw_orchestrator::vm::{exec_request, ExecRequest};
use ironclaw_protocol::STREAM_WINDOW;

/// How long a stream that is not held up may take (a generous bound: the
/// machines are shared; held up, it would never finish).
const PROMPT: Duration = Duration::from_secs(10);
const BIG: usize = 64 << 20;

/// The guest agent serving on a unix socket, killed when dropped.
struct LocalAgent {
    child: Child,
    dir: PathBuf,
}

impl LocalAgent {
    fn start(name: &str) -> (LocalAgent, PathBuf) {
        let bin = ironclaw_orchestrator::boot::initramfs::guest_binary()
            .expect("the guest agent is built");
        let dir = std::env::temp_dir().join(format!("ironclaw-flow-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("agent.sock");
        let child = Command::new(bin)
            .arg("--listen-unix")
            .arg(&sock)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PROMPT;
        while !sock.exists() {
            assert!(Instant::now() < deadline, "the agent did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        (LocalAgent { child, dir }, sock)
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(sock: &PathBuf) -> AgentClient {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    AgentClient::handshake(Box::new(stream)).await.unwrap()
}

fn sh(script: &str) -> ExecRequest {
    let mut req = exec_request(["sh", "-c", script]);
    req.cwd = Some("/tmp".into());
    req.timeout_ms = Some(120_000);
    req
}

/// Reads a request to its end; checks the host never held more than a
/// window of it. Returns the stdout byte count.
async fn drain(session: &mut ExecSession) -> usize {
    let mut n = 0;
    loop {
        assert!(session.buffered_bytes() <= u64::from(STREAM_WINDOW));
        match session.next_event().await.unwrap() {
            ExecEvent::Stdout(b) => n += b.len(),
            ExecEvent::Exit(st) => {
                assert_eq!(st.code, Some(0), "{st:?}");
                return n;
            }
            _ => {}
        }
    }
}

/// Two streams: the first produces 64 MiB its caller does not read; the
/// second must still complete promptly, and what the host buffered for the
/// first never exceeds the window.
async fn unread_output_case(client: &AgentClient) {
    let mut slow = client
        .exec(sh(&format!("head -c {BIG} /dev/zero")))
        .await
        .unwrap();
    assert!(matches!(
        slow.next_event().await.unwrap(),
        ExecEvent::Started { .. }
    ));
    // Let the guest send what it may.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let out = tokio::time::timeout(PROMPT, client.run(sh("echo other stream"), None))
        .await
        .expect("the other stream is not held up by the unread one")
        .unwrap();
    assert_eq!(out.stdout, b"other stream\n");
    assert!(t.elapsed() < PROMPT);
    let held = slow.buffered_bytes();
    assert!(
        held <= u64::from(STREAM_WINDOW),
        "{held} bytes held for the unread stream"
    );
    assert!(held > 0, "the guest sent nothing before it was read");
    // Nothing was lost: the whole output arrives once read.
    assert_eq!(drain(&mut slow).await, BIG);
}

#[test]
fn unread_output_does_not_stall_other_streams() {
    let (_agent, sock) = LocalAgent::start("output");
    common::runtime().block_on(async {
        let client = connect(&sock).await;
        unread_output_case(&client).await;
    });
}

/// A process that never reads its stdin while the host has more to send:
/// the writer waits for credit; other streams and a signal to that process
/// go through; the writer is released when the process ends.
#[test]
fn unread_stdin_does_not_stall_other_streams() {
    let (_agent, sock) = LocalAgent::start("stdin");
    common::runtime().block_on(async {
        let client = connect(&sock).await;
        let mut req = sh("sleep 60");
        req.stdin = true;
        let mut stuck = client.exec(req).await.unwrap();
        assert!(matches!(
            stuck.next_event().await.unwrap(),
            ExecEvent::Started { .. }
        ));
        let writer = stuck.stdin_writer();
        let write = tokio::spawn(async move { writer.write(&vec![b'x'; 8 << 20]).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!write.is_finished(), "8 MiB cannot fit a process's pipe");

        let out = tokio::time::timeout(PROMPT, client.run(sh("echo fine"), None))
            .await
            .expect("another stream is not held up by unread stdin")
            .unwrap();
        assert_eq!(out.stdout, b"fine\n");

        stuck.signal(libc::SIGKILL).await.unwrap();
        let exit = tokio::time::timeout(PROMPT, stuck.next_event())
            .await
            .expect("the signal is not held up by unread stdin")
            .unwrap();
        assert!(
            matches!(exit, ExecEvent::Exit(st) if st.signal == Some(libc::SIGKILL)),
            "{exit:?}"
        );
        // Released promptly: with `StreamEnded`, or with Ok when the guest
        // took (and dropped) the rest of the input while the killed process
        // was being reaped, before it reported the end (seen under load).
        let written = tokio::time::timeout(PROMPT, write)
            .await
            .expect("the stdin writer is released when the process ends")
            .unwrap();
        assert!(
            matches!(written, Ok(()) | Err(AgentError::StreamEnded)),
            "{written:?}"
        );
    });
}

/// A 64 MiB upload and download through the window, byte for byte, while a
/// stream next to them stays unread.
#[test]
fn bulk_transfers_pass_through_the_window() {
    let (agent, sock) = LocalAgent::start("files");
    common::runtime().block_on(async {
        let client = connect(&sock).await;
        let _unread = client
            .exec(sh(&format!("head -c {BIG} /dev/zero")))
            .await
            .unwrap();
        let data: Vec<u8> = (0..BIG).map(|i| (i * 7 + i / 4099) as u8).collect();
        let guest_path = agent.dir.join("up.bin").to_string_lossy().into_owned();
        let sent = client
            .put(&mut &data[..], &guest_path, 0o600)
            .await
            .unwrap();
        assert_eq!(sent, BIG as u64);
        let mut back = Vec::new();
        let (_, got) = client.get(&guest_path, &mut back).await.unwrap();
        assert_eq!(got, BIG as u64);
        assert!(back == data, "the file came back changed");
    });
}

/// The same as the first test in a real VM (virtio-serial or vsock, the
/// guest under TCG).
#[test]
fn vm_unread_output_does_not_stall_other_streams() {
    let vm = common::shared_vm();
    common::runtime().block_on(unread_output_case(vm.agent()));
}

//! What Firecracker's hybrid vsock host socket does, with a minimal guest
//! agent behind it: a connection says `CONNECT <port>\n`, is answered
//! `OK <host port>\n` when the guest is running, and is then the agent's
//! (hello → hello_ack, exec → started/exited 0, reseed → done).

use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{ExitStatus, Frame, FrameCodec, Message, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{FramedRead, FramedWrite};

/// What the fake guest agent of one VM was asked.
#[derive(Debug, Default, Clone)]
pub struct AgentLog {
    pub hellos: u32,
    pub execs: Vec<Vec<String>>,
    /// (entropy bytes, unix time in ns) of each reseed.
    pub reseeds: Vec<(usize, u64)>,
}

/// The guest behind a vsock socket, as the socket needs to know it.
pub trait Guest: Send + Sync + 'static {
    /// The VM's id, for messages.
    fn id(&self) -> &str;
    /// Whether it runs (a paused or unstarted guest does not answer).
    fn running(&self) -> bool;
    /// Records misuse that fails the test.
    fn violation(&self, v: String);
    /// Gives its agent's log to `f`.
    fn with_agent_log(&self, f: &mut dyn FnMut(&mut AgentLog));
}

/// Listens at `path` as Firecracker's hybrid vsock host socket of `guest`.
pub fn serve_vsock<G: Guest>(guest: Arc<G>, path: &Path) {
    let listener = UnixListener::bind(path).expect("binding the fake vsock socket");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(guest.clone(), stream));
        }
    });
}

async fn serve_connection<G: Guest>(guest: Arc<G>, mut stream: UnixStream) {
    // Byte by byte: the frames that follow the handshake line are the agent's.
    let mut line = Vec::new();
    loop {
        match stream.read_u8().await {
            Ok(b'\n') => break,
            Ok(b) if line.len() < 64 => line.push(b),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&line).to_string();
    if line != format!("CONNECT {}", ironclaw_protocol::AGENT_VSOCK_PORT) {
        guest.violation(format!("{}: unexpected vsock request {line:?}", guest.id()));
        return;
    }
    if !guest.running() {
        guest.violation(format!(
            "{}: agent connection while the VM is not running",
            guest.id()
        ));
        return;
    }
    if stream.write_all(b"OK 1073741824\n").await.is_err() {
        return;
    }
    serve_agent(guest, stream).await;
}

/// The minimal agent: answers each request frame until the host hangs up.
async fn serve_agent<G: Guest>(guest: Arc<G>, stream: UnixStream) {
    let (r, w) = tokio::io::split(stream);
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let mut out = FramedWrite::new(w, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                guest.violation(format!("{}: bad frame: {e}", guest.id()));
                return;
            }
        };
        let mut msg = Some(msg);
        let mut replies = Vec::new();
        guest.with_agent_log(&mut |agent| {
            replies = match msg.take().expect("asked once") {
                Message::Hello { .. } => {
                    agent.hellos += 1;
                    vec![Message::HelloAck {
                        version: PROTOCOL_VERSION,
                        agent_version: "fake".into(),
                        kernel_release: "fake-firecracker".into(),
                    }]
                }
                Message::Exec(req) => {
                    agent.execs.push(req.argv.clone());
                    vec![
                        Message::Started { pid: 42 },
                        Message::Exited(ExitStatus {
                            code: Some(0),
                            ..Default::default()
                        }),
                    ]
                }
                Message::Reseed {
                    entropy,
                    unix_time_ns,
                } => {
                    agent.reseeds.push((entropy.len(), unix_time_ns));
                    vec![Message::Done]
                }
                other => vec![Message::Error {
                    message: format!("the fake agent does not do {other:?}"),
                }],
            };
        });
        for m in replies {
            if out.send(Frame::control(frame.stream, &m)).await.is_err() {
                return;
            }
        }
    }
}

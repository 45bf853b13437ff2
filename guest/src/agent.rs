//! The agent: accepts host connections and serves one protocol session on each.
//!
//! Every connection is a fresh session; a protocol error ends only that
//! session (after an error reply where one can be sent) and the agent goes on
//! accepting. Processes started by a session are killed when it ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    Frame, FrameCodec, FrameKind, Message, ProtocolError, PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::exec;
use crate::files;

pub enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

pub fn serve(listen: Listen) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match listen {
            Listen::Vsock(_) if serial_transport() => {
                let path =
                    crate::serial::find_port(ironclaw_protocol::AGENT_SERIAL_PORT_NAME).await?;
                let port = crate::serial::SerialPort::open(&path)?;
                eprintln!("ironclaw-guest: agent serving on {}", path.display());
                loop {
                    port.wait_for_host().await;
                    // One session per host connection; it ends at EOF (host gone).
                    serve_session(port.session()?).await;
                }
            }
            Listen::Vsock(port) => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
                let listener = bind_with_retry(|| tokio_vsock::VsockListener::bind(addr)).await?;
                eprintln!("ironclaw-guest: agent listening on vsock port {port}");
                tokio::spawn(announce_ready());
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(serve_session(stream));
                        }
                        Err(e) => eprintln!("ironclaw-guest: accept: {e}"),
                    }
                }
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path)?;
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(serve_session(stream));
                        }
                        Err(e) => eprintln!("ironclaw-guest: accept: {e}"),
                    }
                }
            }
        }
    })
}

/// Whether the kernel command line selects the virtio-serial transport.
fn serial_transport() -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| {
        c.split_whitespace()
            .any(|a| a == ironclaw_protocol::SERIAL_TRANSPORT_ARG)
    })
}

/// Tells the host the agent is listening, by connecting to its ready port.
/// Probing a booting guest from the host instead can wedge the hybrid vsock
/// device (a connection request queued before the driver has RX buffers).
async fn announce_ready() {
    use tokio::io::AsyncWriteExt;
    let host = tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_HOST,
        ironclaw_protocol::AGENT_READY_PORT,
    );
    for _ in 0..20 {
        if let Ok(mut s) = tokio_vsock::VsockStream::connect(host).await {
            let _ = s.write_all(b"ready\n").await;
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ironclaw-guest: the host did not take the ready notice; it will probe instead");
}

/// The vsock transport may still be probing right after module load.
async fn bind_with_retry<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut last = None;
    for _ in 0..100 {
        match bind() {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.expect("loop ran"))
}

/// Process groups of the running requests of one session, by stream id.
pub type Running = Arc<Mutex<HashMap<u32, exec::Handle>>>;

/// Serves one host connection until it closes or breaks the protocol.
pub async fn serve_session<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) {
    let (r, w) = tokio::io::split(stream);
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);

    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(w, FrameCodec::new());
        while let Some(frame) = out_rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });

    let running: Running = Arc::default();
    if let Err(e) = session_loop(&mut frames, &out_tx, &running).await {
        let _ = out_tx
            .send(Frame::control(
                SESSION_STREAM,
                &Message::Error { message: e },
            ))
            .await;
    }
    // The host went away or broke the protocol: nothing of this session may go on.
    for (_, handle) in running.lock().expect("running map lock").drain() {
        handle.kill();
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

async fn session_loop<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, FrameCodec>,
    out: &mpsc::Sender<Frame>,
    running: &Running,
) -> Result<(), String> {
    let first = match frames.next().await {
        None => return Ok(()),
        Some(f) => f.map_err(|e| e.to_string())?,
    };
    match (first.stream, first.kind, first.message()) {
        (SESSION_STREAM, FrameKind::Control, Ok(Message::Hello { version }))
            if version == PROTOCOL_VERSION => {}
        (_, _, Ok(Message::Hello { version })) => {
            return Err(format!(
                "protocol version {version} not supported (agent speaks {PROTOCOL_VERSION})"
            ))
        }
        _ => return Err("the first frame of a session must be hello on stream 0".into()),
    }
    let ack = Message::HelloAck {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: kernel_release(),
    };
    out.send(Frame::control(SESSION_STREAM, &ack))
        .await
        .map_err(|_| "writer closed")?;

    // Stdin senders of the running requests, by stream id.
    let mut stdin: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    // Data senders of the running puts, by stream id.
    let mut uploads: HashMap<u32, mpsc::Sender<files::Upload>> = HashMap::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e: ProtocolError| e.to_string())?;
        let id = frame.stream;
        match frame.kind {
            FrameKind::Control => match frame.message().map_err(|e| e.to_string())? {
                // On a transport without connections (virtio-serial) a new host
                // may start over without the old session having seen EOF, e.g.
                // a clone restored from a snapshot taken mid-session: start afresh.
                Message::Hello { version }
                    if id == SESSION_STREAM && version == PROTOCOL_VERSION =>
                {
                    for (_, handle) in running.lock().expect("lock").drain() {
                        handle.kill();
                    }
                    stdin.clear();
                    out.send(Frame::control(SESSION_STREAM, &ack))
                        .await
                        .map_err(|_| "writer closed")?;
                }
                Message::Reseed {
                    entropy,
                    unix_time_ns,
                } => {
                    let reply = match crate::reseed::reseed(&entropy, unix_time_ns) {
                        Ok(()) => Message::Done,
                        Err(e) => Message::Error {
                            message: format!("reseed: {e}"),
                        },
                    };
                    let _ = out.send(Frame::control(id, &reply)).await;
                }
                Message::Exec(req) => {
                    uploads.retain(|_, tx| !tx.is_closed());
                    if stream_busy(id, running, &uploads) {
                        reply_error(
                            out,
                            id,
                            format!("stream {id} is not free for a new request"),
                        )
                        .await;
                        continue;
                    }
                    stdin.retain(|_, tx| !tx.is_closed());
                    if let Some(tx) = exec::start(id, req, out.clone(), running.clone()) {
                        stdin.insert(id, tx);
                    }
                }
                msg if files::is_file_request(&msg) => {
                    uploads.retain(|_, tx| !tx.is_closed());
                    if stream_busy(id, running, &uploads) {
                        reply_error(
                            out,
                            id,
                            format!("stream {id} is not free for a new request"),
                        )
                        .await;
                        continue;
                    }
                    if let Some(tx) = files::start(id, msg, out.clone()) {
                        uploads.insert(id, tx);
                    }
                }
                Message::DataEnd => {
                    if let Some(tx) = uploads.remove(&id) {
                        let _ = tx.send(files::Upload::End).await;
                    }
                }
                Message::CloseStdin => {
                    stdin.remove(&id);
                }
                Message::Signal { signal } => {
                    if let Some(h) = running.lock().expect("lock").get(&id) {
                        h.signal(signal);
                    }
                }
                other => {
                    return Err(format!(
                        "unexpected message from host on stream {id}: {other:?}"
                    ))
                }
            },
            FrameKind::Stdin => {
                if let Some(tx) = stdin.get(&id) {
                    // A process that no longer reads stdin just loses it.
                    if tx.send(frame.body).await.is_err() {
                        stdin.remove(&id);
                    }
                }
            }
            FrameKind::FileData => {
                if let Some(tx) = uploads.get(&id) {
                    // A put that failed (full disk, say) stops taking data; its
                    // error reply is on its way and the rest is dropped.
                    if tx.send(files::Upload::Data(frame.body)).await.is_err() {
                        uploads.remove(&id);
                    }
                }
            }
            FrameKind::Stdout | FrameKind::Stderr => {
                return Err(format!("host sent output frames on stream {id}"));
            }
        }
    }
    Ok(())
}

/// Whether `id` cannot take a new request: the session stream, or a stream
/// whose process or upload is still going.
fn stream_busy<T>(id: u32, running: &Running, uploads: &HashMap<u32, T>) -> bool {
    id == SESSION_STREAM
        || running.lock().expect("lock").contains_key(&id)
        || uploads.contains_key(&id)
}

async fn reply_error(out: &mpsc::Sender<Frame>, stream: u32, message: String) {
    let _ = out
        .send(Frame::control(stream, &Message::Error { message }))
        .await;
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

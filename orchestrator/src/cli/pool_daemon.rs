//! The pool daemon's server loop: serves the library's warm pool on a unix
//! socket, running commands for `ironclaw run --pool` calls.
//!
//! Why a daemon: a pool is only warm if something keeps it running between
//! calls, and a one-shot CLI process cannot. The daemon speaks the *same*
//! framed protocol as the guest agent, so `ironclaw run --pool` uses the very
//! same client code it uses for a VM; each `exec` gets its own VM from the
//! pool, destroyed when the command ends (never reused for another task).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    ExecRequest, Frame, FrameCodec, FrameKind, Message, PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use ironclaw_orchestrator::agent::ExecEvent;
use ironclaw_orchestrator::vm::pool::Pool;

/// Default socket of the pool daemon: `<runtime root>/pool.sock`.
pub fn default_socket() -> PathBuf {
    ironclaw_orchestrator::vm::runtime::runtime_root().join("pool.sock")
}

/// What a client asks of a running request, forwarded to its task.
enum Control {
    Stdin(Bytes),
    CloseStdin,
    Signal(i32),
}

/// Serves `pool` on `socket` until `shutdown` completes.
pub async fn serve(
    pool: &Arc<Pool>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!("a pool daemon already serves {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    let kernel = Arc::new(pool.kernel_release());
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(pool.clone(), stream, kernel.clone(), stop.clone()));
                }
                Err(e) => break Err(anyhow::Error::new(e).context("accepting a client")),
            },
            _ = &mut shutdown => break Ok(()),
        }
    };
    let _ = std::fs::remove_file(socket);
    // End every client and request: their VMs are destroyed as they return
    // their hold on the pool.
    stop.cancel();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Arc::strong_count(pool) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    result
}

/// Tells the client that `stream` failed (a client that is gone misses it).
async fn send_error(out: &mpsc::Sender<Frame>, stream: u32, message: String) {
    let _ = out
        .send(Frame::control(stream, &Message::Error { message }))
        .await;
}

async fn serve_client(
    pool: Arc<Pool>,
    stream: UnixStream,
    kernel: Arc<String>,
    stop: CancellationToken,
) {
    let (r, w) = stream.into_split();
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(w, FrameCodec::new());
        while let Some(f) = out_rx.recv().await {
            if sink.send(f).await.is_err() {
                break;
            }
        }
    });
    let mut requests: HashMap<u32, mpsc::Sender<Control>> = HashMap::new();
    let mut hello_done = false;
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = stop.cancelled() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let id = frame.stream;
        let msg = match frame.kind {
            FrameKind::Control => match frame.message() {
                Ok(m) => m,
                Err(e) => {
                    send_error(&out_tx, SESSION_STREAM, e.to_string()).await;
                    break;
                }
            },
            FrameKind::Stdin => {
                if let Some(tx) = requests.get(&id) {
                    let _ = tx.send(Control::Stdin(frame.body)).await;
                }
                continue;
            }
            // File requests are refused below (the daemon serves exec only),
            // so the data of a refused put is dropped.
            FrameKind::FileData => continue,
            FrameKind::Stdout | FrameKind::Stderr => break,
        };
        match msg {
            Message::Hello { version } if id == SESSION_STREAM && version == PROTOCOL_VERSION => {
                hello_done = true;
                let ack = Message::HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_version: format!("ironclaw-pool {}", env!("CARGO_PKG_VERSION")),
                    kernel_release: kernel.to_string(),
                };
                let _ = out_tx.send(Frame::control(SESSION_STREAM, &ack)).await;
            }
            _ if !hello_done => {
                let message =
                    format!("the first frame must be hello with version {PROTOCOL_VERSION}");
                send_error(&out_tx, SESSION_STREAM, message).await;
                break;
            }
            Message::Exec(req) if id != SESSION_STREAM && !requests.contains_key(&id) => {
                requests.retain(|_, tx| !tx.is_closed());
                let (tx, rx) = mpsc::channel(16);
                requests.insert(id, tx);
                tokio::spawn(run_request(
                    pool.clone(),
                    id,
                    req,
                    rx,
                    out_tx.clone(),
                    stop.clone(),
                ));
            }
            Message::CloseStdin => {
                if let Some(tx) = requests.get(&id) {
                    let _ = tx.send(Control::CloseStdin).await;
                }
            }
            Message::Signal { signal } => {
                if let Some(tx) = requests.get(&id) {
                    let _ = tx.send(Control::Signal(signal)).await;
                }
            }
            other => {
                let message = format!("unexpected request on stream {id}: {other:?}");
                send_error(&out_tx, id, message).await;
            }
        }
    }
    // The client is gone: dropping the control senders ends its requests,
    // which kills their processes and destroys their VMs.
    drop(requests);
    drop(out_tx);
    let _ = writer.await;
}

async fn run_request(
    pool: Arc<Pool>,
    id: u32,
    req: ExecRequest,
    mut ctl: mpsc::Receiver<Control>,
    out: mpsc::Sender<Frame>,
    stop: CancellationToken,
) {
    let vm = match pool.acquire().await {
        Ok(vm) => vm,
        Err(e) => {
            send_error(&out, id, format!("no VM: {e}")).await;
            return;
        }
    };
    let result: Result<(), String> = async {
        let mut session = vm.agent().exec(req).await.map_err(|e| e.to_string())?;
        let stdin = session.stdin_writer();
        loop {
            tokio::select! {
                ev = session.next_event() => {
                    let frame = match ev.map_err(|e| e.to_string())? {
                        ExecEvent::Started { pid } => Frame::control(id, &Message::Started { pid }),
                        ExecEvent::Stdout(b) => Frame::data(id, FrameKind::Stdout, b),
                        ExecEvent::Stderr(b) => Frame::data(id, FrameKind::Stderr, b),
                        ExecEvent::Exit(status) => {
                            let _ = out.send(Frame::control(id, &Message::Exited(status))).await;
                            return Ok(());
                        }
                    };
                    out.send(frame).await.map_err(|_| "client gone".to_string())?;
                }
                c = ctl.recv() => match c {
                    Some(Control::Stdin(b)) => { let _ = stdin.write(&b).await; }
                    Some(Control::CloseStdin) => { let _ = stdin.close().await; }
                    Some(Control::Signal(s)) => { let _ = session.signal(s).await; }
                    None => return Err("client gone".into()),
                },
                _ = stop.cancelled() => return Err("the pool daemon is stopping".into()),
            }
        }
    }
    .await;
    if let Err(message) = result {
        send_error(&out, id, message).await;
    }
    if let Err(e) = pool.release(vm).await {
        tracing::warn!("releasing a pool VM: {e}");
    }
}

//! The pool daemon's server loop: serves the library's warm pool on a unix
//! socket, running commands for `ironclaw run --pool` calls.
//!
//! Why a daemon: a pool is only warm if something keeps it running between
//! calls, and a one-shot CLI process cannot. The daemon speaks the *same*
//! framed protocol as the guest agent, so `ironclaw run --pool` uses the very
//! same client code it uses for a VM; each `exec` gets its own VM from the
//! pool, destroyed when the command ends (never reused for another task).
//!
//! Who may use it: the socket is a [`PrivateListener`] (explicit modes, peers
//! checked by `SO_PEERCRED`: the daemon's user, root, members of `--group`).
//! How much: each peer uid has at most `max_per_client` VMs in use at once,
//! and the pool caps the VMs in use in total; a request beyond either gets
//! an error ("limit reached: …, try again later") instead of a VM.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ironclaw_protocol::{
    check_data_frame, ExecRequest, Frame, FrameCodec, FrameKind, Message, RecvWindow, SendCredit,
    DATA_CHUNK, PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use ironclaw_orchestrator::agent::ExecEvent;
use ironclaw_orchestrator::listen::{Access, ListenError, PrivateListener};
use ironclaw_orchestrator::vm::pool::{Pool, PoolError};

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

/// One request of a client, as the client's session loop sees it. Both
/// directions follow the protocol's per-stream credit (like the guest agent):
/// the client's stdin is queued within the credit the daemon gave, and is
/// given back as the VM takes it; output goes to the client within the
/// credit the client gave.
struct ClientRequest {
    /// Unbounded as a channel; the stdin in it is bounded by `window`.
    ctl: mpsc::UnboundedSender<Control>,
    window: Arc<Mutex<RecvWindow>>,
    credit: Arc<SendCredit>,
}

/// Where and for whom the daemon serves.
pub struct ServeConfig {
    pub socket: PathBuf,
    pub access: Access,
    /// VMs one peer uid may have in use at once.
    pub max_per_client: usize,
}

/// VMs in use per peer uid, shared by all of that uid's connections.
struct ClientLimits {
    max: usize,
    in_use: Mutex<HashMap<u32, usize>>,
}

/// One VM in use by `uid`; given back on drop.
struct ClientSlot {
    limits: Arc<ClientLimits>,
    uid: u32,
}

impl ClientLimits {
    fn take(self: &Arc<Self>, uid: u32) -> Option<ClientSlot> {
        let mut in_use = self.in_use.lock().expect("limits lock");
        let n = in_use.entry(uid).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            limits: self.clone(),
            uid,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut in_use = self.limits.in_use.lock().expect("limits lock");
        if let Some(n) = in_use.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.uid);
            }
        }
    }
}

/// Serves `pool` as `config` says until `shutdown` completes.
pub async fn serve(
    pool: &Arc<Pool>,
    config: &ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = match PrivateListener::bind(&config.socket, config.access) {
        Ok(l) => l,
        Err(ListenError::InUse(p)) => {
            anyhow::bail!("a pool daemon already serves {}", p.display())
        }
        Err(e) => return Err(e.into()),
    };
    let limits = Arc::new(ClientLimits {
        max: config.max_per_client.max(1),
        in_use: Mutex::new(HashMap::new()),
    });
    let kernel = Arc::new(pool.kernel_release());
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let client = Client { uid: peer.uid, limits: limits.clone() };
                    tokio::spawn(serve_client(pool.clone(), stream, client, kernel.clone(), stop.clone()));
                }
                Err(e) => break Err(anyhow::Error::new(e)),
            },
            _ = &mut shutdown => break Ok(()),
        }
    };
    // Removes the socket.
    drop(listener);
    // End every client and request: their VMs are destroyed as they return
    // their hold on the pool.
    stop.cancel();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Arc::strong_count(pool) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    result
}

/// A connected peer: its uid and the per-uid limits.
struct Client {
    uid: u32,
    limits: Arc<ClientLimits>,
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
    client: Client,
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
    let mut requests: HashMap<u32, ClientRequest> = HashMap::new();
    let mut hello_done = false;
    let violation = |why: String| {
        Frame::control(
            SESSION_STREAM,
            &Message::Error {
                message: format!("protocol violation: {why}"),
            },
        )
    };
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = stop.cancelled() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let id = frame.stream;
        if let Err(e) = check_data_frame(&frame) {
            let _ = out_tx.send(violation(e.to_string())).await;
            break;
        }
        let msg = match frame.kind {
            FrameKind::Control => match frame.message() {
                Ok(m) => m,
                Err(e) => {
                    send_error(&out_tx, SESSION_STREAM, e.to_string()).await;
                    break;
                }
            },
            FrameKind::Stdin => {
                if let Some(r) = requests.get(&id) {
                    let received = r
                        .window
                        .lock()
                        .expect("window lock")
                        .receive(frame.body.len());
                    if let Err(e) = received {
                        let _ = out_tx.send(violation(e.to_string())).await;
                        break;
                    }
                    let _ = r.ctl.send(Control::Stdin(frame.body));
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
                requests.retain(|_, r| !r.ctl.is_closed());
                let Some(slot) = client.limits.take(client.uid) else {
                    let max = client.limits.max;
                    let message = format!(
                        "limit reached: uid {} already has {max} VMs in use \
                         (--max-per-client {max}), try again later",
                        client.uid
                    );
                    send_error(&out_tx, id, message).await;
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let window = Arc::new(Mutex::new(RecvWindow::new(id)));
                let credit = Arc::new(SendCredit::new(id));
                requests.insert(
                    id,
                    ClientRequest {
                        ctl: tx,
                        window: window.clone(),
                        credit: credit.clone(),
                    },
                );
                let link = ClientLink {
                    id,
                    out: out_tx.clone(),
                    window,
                    credit,
                };
                tokio::spawn(run_request(pool.clone(), link, req, rx, stop.clone(), slot));
            }
            Message::Credit { bytes } if id != SESSION_STREAM => {
                // Credit for a request that just ended is late, not wrong.
                if let Some(r) = requests.get(&id) {
                    if let Err(e) = r.credit.grant(bytes) {
                        let _ = out_tx.send(violation(e.to_string())).await;
                        break;
                    }
                }
            }
            Message::CloseStdin => {
                if let Some(r) = requests.get(&id) {
                    let _ = r.ctl.send(Control::CloseStdin);
                }
            }
            Message::Signal { signal } => {
                if let Some(r) = requests.get(&id) {
                    let _ = r.ctl.send(Control::Signal(signal));
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

/// A request's link to its client: its stream, the output channel, and the
/// two credit windows of the stream.
struct ClientLink {
    id: u32,
    out: mpsc::Sender<Frame>,
    /// The client's stdin, received within the daemon's credit.
    window: Arc<Mutex<RecvWindow>>,
    /// The client's credit for this request's output.
    credit: Arc<SendCredit>,
}

impl ClientLink {
    /// The client's stdin of `len` bytes reached the VM: give its credit back.
    async fn consumed(&self, len: usize) {
        let grant = self.window.lock().expect("window lock").consume(len);
        if let Some(bytes) = grant {
            let _ = self
                .out
                .send(Frame::control(self.id, &Message::Credit { bytes }))
                .await;
        }
    }
}

async fn run_request(
    pool: Arc<Pool>,
    link: ClientLink,
    req: ExecRequest,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    stop: CancellationToken,
    // Held until the VM is destroyed.
    _slot: ClientSlot,
) {
    let id = link.id;
    let out = link.out.clone();
    let vm = match pool.acquire().await {
        Ok(vm) => vm,
        Err(e @ PoolError::Limit { .. }) => {
            send_error(&out, id, e.to_string()).await;
            return;
        }
        Err(e) => {
            send_error(&out, id, format!("no VM: {e}")).await;
            return;
        }
    };
    let link = Arc::new(link);
    let mut stdin_task = None;
    let result: Result<(), String> = async {
        let mut session = vm.agent().exec(req).await.map_err(|e| e.to_string())?;
        // Stdin goes to the VM in its own task: waiting for the VM's credit
        // (a process that does not read) holds up neither output nor signals.
        let (stdin_tx, mut stdin_rx) = mpsc::unbounded_channel::<Control>();
        let writer = session.stdin_writer();
        let stdin_link = link.clone();
        stdin_task = Some(tokio::spawn(async move {
            while let Some(c) = stdin_rx.recv().await {
                match c {
                    Control::Stdin(b) => {
                        // A process that exited loses the rest; its credit
                        // still goes back so the client's writer is not stuck.
                        let _ = writer.write(&b).await;
                        stdin_link.consumed(b.len()).await;
                    }
                    _ => {
                        let _ = writer.close().await;
                    }
                }
            }
        }));
        // Output not yet sent for lack of the client's credit: at most one
        // event's worth, so the VM's own window bounds what the daemon holds.
        let mut pending: VecDeque<Frame> = VecDeque::new();
        loop {
            let room = pending.front().map_or(0, |f| f.body.len());
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err("the pool daemon is stopping".into()),
                c = ctl.recv() => match c {
                    Some(Control::Signal(s)) => { let _ = session.signal(s).await; }
                    Some(c) => { let _ = stdin_tx.send(c); }
                    None => return Err("client gone".into()),
                },
                taken = link.credit.take(room), if !pending.is_empty() => {
                    taken.map_err(|_| "client gone".to_string())?;
                    let frame = pending.pop_front().expect("pending is not empty");
                    out.send(frame).await.map_err(|_| "client gone".to_string())?;
                }
                ev = session.next_event(), if pending.is_empty() => {
                    match ev.map_err(|e| e.to_string())? {
                        ExecEvent::Started { pid } => {
                            pending.push_back(Frame::control(id, &Message::Started { pid }));
                        }
                        ExecEvent::Stdout(b) => pending.extend(chunks(id, FrameKind::Stdout, b)),
                        ExecEvent::Stderr(b) => pending.extend(chunks(id, FrameKind::Stderr, b)),
                        ExecEvent::Exit(status) => {
                            let _ = out.send(Frame::control(id, &Message::Exited(status))).await;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    .await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    if let Err(message) = result {
        send_error(&out, id, message).await;
    }
    if let Err(e) = pool.release(vm).await {
        tracing::warn!("releasing a pool VM: {e}");
    }
}

/// Output as data frames of at most the protocol's chunk size (the client
/// merges what it receives, so an event can be larger than a frame).
fn chunks(id: u32, kind: FrameKind, data: Bytes) -> impl Iterator<Item = Frame> {
    (0..data.len())
        .step_by(DATA_CHUNK)
        .map(move |at| Frame::data(id, kind, data.slice(at..(at + DATA_CHUNK).min(data.len()))))
}

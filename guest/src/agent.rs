//! The agent: accepts host connections and serves one protocol session on each.
//!
//! Every connection is a fresh session; a protocol error ends only that
//! session (after an error reply where one can be sent) and the agent goes on
//! accepting. Processes started by a session are killed when it ends.
//!
//! The session loop never waits for one request: each request stream has its
//! own task and its own credit windows (`ironclaw_protocol`'s flow control),
//! the host's data for a stream is queued for its task within the credit the
//! host was given, and a task waits for credit before it sends. A process
//! that does not read its stdin, or a host that does not read one stream's
//! output, holds up that stream only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use ironclaw_protocol::{
    check_data_frame, Frame, FrameCodec, FrameKind, Message, ProtocolError, SendCredit,
    PROTOCOL_VERSION, SESSION_STREAM,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::exec;
use crate::files;
use crate::stream::{input_channel, Input, StreamOut, StreamState, Streams};

pub enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

/// Frame buffers (up to a file chunk, a read buffer of a few) are allocated
/// and freed all the time. Left to glibc's defaults, buffers this large are
/// `mmap`ed or trimmed back to the kernel when freed, and every page of the
/// next one is faulted in again: under TCG each fault is an emulated
/// exception, and a 256 KiB chunk is 64 of them. Kept in the heap, freed
/// buffers are reused as they are. What is kept is bounded by the trim threshold.
fn keep_buffers_in_the_heap() {
    // SAFETY: mallopt only changes allocator parameters; called before the
    // runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// How long an idle thread of the runtime's blocking pool (file requests
/// run there) is kept. Tokio's default, 10 s, lets the pool empty between
/// requests and in every prototype snapshot, so the first file request in
/// each clone made a thread again: under TCG, translating the kernel's
/// `clone`, stack `mmap` and the thread start-up for the first time.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(24 * 3600);

pub fn serve(listen: Listen) -> std::io::Result<()> {
    keep_buffers_in_the_heap();
    // Read and opened now, before any snapshot, so clones need neither.
    kernel_release();
    crate::reseed::open_urandom();
    crate::spawn::open_dev_null();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()?;
    // One blocking thread now, so snapshots (and their clones) have it.
    rt.block_on(async { tokio::task::spawn_blocking(|| ()).await })
        .map_err(std::io::Error::other)?;
    rt.block_on(async move {
        match listen {
            Listen::Vsock(_) if serial_transport() => {
                let path =
                    crate::serial::find_port(ironclaw_protocol::AGENT_SERIAL_PORT_NAME).await?;
                let port = crate::serial::SerialPort::open(&path)?;
                eprintln!("ironclaw-guest: agent serving on {}", path.display());
                // A host may still be connected to an agent that died: the
                // first session tells it this one is new.
                let mut announce = true;
                loop {
                    port.wait_for_host().await;
                    // One session per host connection; it ends at EOF (host gone).
                    serve_session(port.session()?, std::mem::take(&mut announce)).await;
                }
            }
            Listen::Vsock(port) => {
                let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
                let listener = bind_with_retry(|| tokio_vsock::VsockListener::bind(addr)).await?;
                eprintln!("ironclaw-guest: agent listening on vsock port {port}");
                tokio::spawn(announce_ready());
                loop {
                    let accepted = std::future::poll_fn(|cx| listener.poll_accept_std(cx)).await;
                    match accepted.and_then(vsock_session) {
                        Ok(stream) => {
                            tokio::spawn(serve_session(stream, false));
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
                            tokio::spawn(serve_session(stream, false));
                        }
                        Err(e) => eprintln!("ironclaw-guest: accept: {e}"),
                    }
                }
            }
        }
    })
}

/// What the agent asks of the vsock transport for each connection: the
/// credit it advertises for data from the host (the kernel's default is
/// 256 KiB, which stalls an upload every 256 KiB on a host round trip). The
/// memory it allows the kernel to queue for the session is bounded by this.
const VSOCK_BUFFER: u64 = 2 * 1024 * 1024;

/// `<linux/vm_sockets.h>` (level `AF_VSOCK`); not in the libc crate.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// An accepted vsock connection as a session's stream: a larger receive
/// buffer, and vectored writes (see [`crate::fdstream`]).
fn vsock_session(
    (stream, _): (vsock::VsockStream, tokio_vsock::VsockAddr),
) -> std::io::Result<crate::fdstream::FdStream> {
    let fd = std::os::fd::OwnedFd::from(stream);
    // The maximum first: a size above it would be cut down to it.
    for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
        let size = VSOCK_BUFFER;
        // SAFETY: setsockopt on a socket we own, from a u64 that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::AF_VSOCK,
                opt,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<u64>() as libc::socklen_t,
            )
        };
        if r < 0 {
            // Only slower; the session works with the default.
            eprintln!(
                "ironclaw-guest: vsock buffer size: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    crate::fdstream::FdStream::new(fd)
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

/// Serves one host connection until it closes or breaks the protocol;
/// `announce` says first that this agent just started.
pub async fn serve_session<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, announce: bool) {
    let (r, w) = tokio::io::split(stream);
    let mut frames = FramedRead::new(r, FrameCodec::new());
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);

    // Every frame queued meanwhile leaves with the next write.
    let writer = tokio::spawn(async move {
        let _ = ironclaw_protocol::write_frames(w, &mut out_rx).await;
    });

    let mut session = Session {
        out: out_tx,
        streams: Arc::default(),
        epoch: CancellationToken::new(),
    };
    if announce {
        let _ = session
            .send(Frame::control(SESSION_STREAM, &Message::AgentStarted))
            .await;
    }
    if let Err(e) = session.run(&mut frames).await {
        let _ = session
            .out
            .send(Frame::control(
                SESSION_STREAM,
                &Message::Error { message: e },
            ))
            .await;
    }
    // The host went away or broke the protocol: nothing of this session may go on.
    session.reset();
    drop(session);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

struct Session {
    out: mpsc::Sender<Frame>,
    streams: Streams,
    epoch: CancellationToken,
}

impl Session {
    /// Ends every request of the session: processes killed, uploads
    /// abandoned (their temporary files removed), senders stopped, and
    /// nothing they still had to say sent.
    fn reset(&mut self) {
        self.epoch.cancel();
        self.epoch = CancellationToken::new();
        let old: Vec<StreamState> = self
            .streams
            .lock()
            .expect("streams lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for state in old {
            if let Some(handle) = state.process {
                handle.kill();
            }
            state.credit.close();
            // Dropping `input` closes the task's channel.
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), String> {
        self.out
            .send(frame)
            .await
            .map_err(|_| "writer closed".to_string())
    }

    /// Registers a new request on stream `id`, or says why it cannot run.
    fn open_stream(&self, id: u32) -> Result<StreamOut, String> {
        let mut streams = self.streams.lock().expect("streams lock");
        if id == SESSION_STREAM || streams.contains_key(&id) {
            return Err(format!("stream {id} is not free for a new request"));
        }
        let credit = Arc::new(SendCredit::new(id));
        streams.insert(
            id,
            StreamState {
                credit: credit.clone(),
                input: None,
                process: None,
            },
        );
        Ok(StreamOut {
            id,
            out: self.out.clone(),
            credit,
            epoch: self.epoch.clone(),
            streams: self.streams.clone(),
        })
    }

    fn with_stream<T>(&self, id: u32, f: impl FnOnce(&mut StreamState) -> T) -> Option<T> {
        self.streams
            .lock()
            .expect("streams lock")
            .get_mut(&id)
            .map(f)
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        frames: &mut FramedRead<R, FrameCodec>,
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
        self.send(Frame::control(SESSION_STREAM, &ack)).await?;

        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e: ProtocolError| e.to_string())?;
            let id = frame.stream;
            match frame.kind {
                FrameKind::Control => {
                    let msg = frame.message().map_err(|e| e.to_string())?;
                    self.control(id, msg).await?;
                }
                FrameKind::Stdin | FrameKind::FileData => {
                    check_data_frame(&frame).map_err(|e| ProtocolError::from(e).to_string())?;
                    self.data(id, frame.kind, frame.body)?;
                }
                FrameKind::Stdout | FrameKind::Stderr => {
                    return Err(format!("host sent output frames on stream {id}"));
                }
            }
        }
        Ok(())
    }

    /// Data from the host for the request on stream `id`: queued for its
    /// task without waiting, within the credit the host was given.
    fn data(&self, id: u32, kind: FrameKind, body: Bytes) -> Result<(), String> {
        let mut streams = self.streams.lock().expect("streams lock");
        let Some(state) = streams.get_mut(&id) else {
            // The request already ended (the host sent before it learnt so).
            return Ok(());
        };
        let Some(input) = state.input.as_ref().filter(|i| i.kind == kind) else {
            return Ok(());
        };
        input
            .window
            .lock()
            .expect("window lock")
            .receive(body.len())
            .map_err(|e| ProtocolError::from(e).to_string())?;
        if input.tx.send(Input::Data(body)).is_err() {
            // Its task stopped taking data (a failed upload: its error
            // reply is on its way); the rest is dropped.
            state.input = None;
        }
        Ok(())
    }

    async fn control(&mut self, id: u32, msg: Message) -> Result<(), String> {
        match msg {
            // On a transport without connections (virtio-serial) a new host
            // may start over without the old session having seen EOF, e.g.
            // a clone restored from a snapshot taken mid-session: start afresh.
            Message::Hello { version } if id == SESSION_STREAM && version == PROTOCOL_VERSION => {
                self.reset();
                let ack = Message::HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    kernel_release: kernel_release(),
                };
                self.send(Frame::control(SESSION_STREAM, &ack)).await?;
            }
            Message::Reseed {
                entropy,
                unix_time_ns,
            } if id != SESSION_STREAM => {
                let reply = match crate::reseed::reseed(&entropy, unix_time_ns) {
                    Ok(()) => Message::Done,
                    Err(e) => Message::Error {
                        message: format!("reseed: {e}"),
                    },
                };
                self.send(Frame::control(id, &reply)).await?;
            }
            Message::Exec(req) => {
                let out = match self.open_stream(id) {
                    Ok(out) => out,
                    Err(message) => return self.reply_error(id, message).await,
                };
                let (input_tx, input_rx) = if req.stdin {
                    let (tx, rx) = input_channel(FrameKind::Stdin, &out);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                if let Some(handle) = exec::start(out, req, input_rx) {
                    self.with_stream(id, |s| {
                        s.process = Some(handle);
                        s.input = input_tx;
                    });
                }
            }
            msg if files::is_file_request(&msg) => {
                let out = match self.open_stream(id) {
                    Ok(out) => out,
                    Err(message) => return self.reply_error(id, message).await,
                };
                let (input_tx, input_rx) = if matches!(msg, Message::PutFile { .. }) {
                    let (tx, rx) = input_channel(FrameKind::FileData, &out);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                self.with_stream(id, |s| s.input = input_tx);
                files::start(out, msg, input_rx);
            }
            Message::DataEnd => {
                self.with_stream(id, |s| {
                    if let Some(input) = s.input.take() {
                        let _ = input.tx.send(Input::End);
                    }
                });
            }
            Message::CloseStdin => {
                self.with_stream(id, |s| {
                    if s.input.as_ref().is_some_and(|i| i.kind == FrameKind::Stdin) {
                        s.input = None;
                    }
                });
            }
            Message::Signal { signal } => {
                self.with_stream(id, |s| {
                    if let Some(h) = &s.process {
                        h.signal(signal);
                    }
                });
            }
            Message::Credit { bytes } if id != SESSION_STREAM => {
                // A grant for a stream that just ended is late, not wrong.
                if let Some(granted) = self.with_stream(id, |s| s.credit.grant(bytes)) {
                    granted.map_err(|e| ProtocolError::from(e).to_string())?;
                }
            }
            other => {
                return Err(format!(
                    "unexpected message from host on stream {id}: {other:?}"
                ))
            }
        }
        Ok(())
    }

    async fn reply_error(&self, stream: u32, message: String) -> Result<(), String> {
        self.send(Frame::control(stream, &Message::Error { message }))
            .await
    }
}

/// The running kernel's release, read once when the agent starts (so a
/// snapshot's clones have it: the hello of every clone used to read it from
/// procfs, a few hundred blocks of kernel code translated anew under TCG).
fn kernel_release() -> String {
    static RELEASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RELEASE
        .get_or_init(|| {
            // SAFETY: utsname is plain data; uname fills it.
            let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
            if unsafe { libc::uname(&mut uts) } != 0 {
                return "unknown".into();
            }
            // SAFETY: uname NUL-terminates each field within its array.
            unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .clone()
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;

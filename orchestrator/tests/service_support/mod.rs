//! Shared by the tests of the sandbox service: a real `ironclaw serve`
//! (the built binary) on a private runtime root, and a small HTTP/1 client
//! over its unix socket or TCP port.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A running `ironclaw serve`; SIGKILLed (and its root removed) on drop.
pub struct Server {
    pub root: PathBuf,
    pub socket: PathBuf,
    /// `127.0.0.1:PORT` when started with TCP.
    pub tcp: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A token for tests: 64 hex characters.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).unwrap();
    hex::encode(b)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// `ironclaw serve` with the runtime root `/tmp/ironclaw-<name>-<pid>`,
    /// the socket in it, `extra` flags; with `tcp`, also on a free port with
    /// a fresh token. Waits until `/healthz` answers.
    pub fn start(name: &str, tcp: bool, extra: &[&str]) -> Server {
        let root = PathBuf::from(format!("/tmp/ironclaw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(snapshot_dir(&root));
        Server::start_in(root, tcp, extra)
    }

    /// The same on an existing runtime root (a restart after a crash).
    pub fn start_in(root: PathBuf, tcp: bool, extra: &[&str]) -> Server {
        let tokens = if tcp { vec![new_token()] } else { Vec::new() };
        Server::start_with_tokens(root, tokens, extra)
    }

    /// On TCP with these tokens (one tenant each; the first is `token`),
    /// or on the unix socket only when `tokens` is empty.
    pub fn start_with_tokens(root: PathBuf, tokens: Vec<String>, extra: &[&str]) -> Server {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = root.join("ironclaw.sock");
        let log = PathBuf::from(format!("{}.log", root.display()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironclaw"));
        cmd.env("IRONCLAW_RUNTIME_DIR", &root)
            .env("IRONCLAW_LOG", "info")
            .arg("serve")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        let (mut tcp_addr, mut token, mut token_file) = (None, None, None);
        if !tokens.is_empty() {
            let t = tokens[0].clone();
            let f = PathBuf::from(format!("{}.token", root.display()));
            std::fs::write(&f, tokens.join("\n") + "\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            cmd.arg("--listen").arg(&addr).arg("--token-file").arg(&f);
            tcp_addr = Some(addr);
            token = Some(t);
            token_file = Some(f);
        }
        // One service per snapshot directory: each server its own, beside
        // its runtime root (kept across a restart on the same root).
        if !extra.contains(&"--snapshot-dir") {
            cmd.arg("--snapshot-dir").arg(snapshot_dir(&root));
        }
        let child = cmd.spawn().unwrap();
        let server = Server {
            root,
            socket,
            tcp: tcp_addr,
            token,
            token_file,
            child: Some(child),
            log,
        };
        server.wait_healthy(Duration::from_secs(120));
        server
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        while Instant::now() < deadline {
            if self.socket.exists() {
                if let Ok(r) = rt.block_on(unix_request(&self.socket, "GET", "/healthz", None, &[]))
                {
                    if r.0 == 200 {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "ironclaw serve did not become healthy; log:\n{}",
            self.log_text()
        );
    }

    /// JSON request over the unix socket: (status, parsed body or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body.map(|b| Bytes::from(b.to_string()));
        let (status, _, body) = unix_request(&self.socket, method, path, bytes, &[])
            .await
            .unwrap();
        (status, parse(&body))
    }

    /// Raw request over the unix socket.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> (u16, Vec<(String, String)>, Bytes) {
        unix_request(&self.socket, method, path, body, &[])
            .await
            .unwrap()
    }

    /// JSON request over TCP with `token` (None: no Authorization header).
    pub async fn call_tcp(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let addr = self.tcp.as_ref().expect("started with tcp");
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, _, body) = request(
            stream,
            method,
            path,
            body.map(|b| Bytes::from(b.to_string())),
            &headers,
        )
        .await
        .unwrap();
        (status, parse(&body))
    }

    /// Sends `signal` to the service and waits (up to 60 s) for it to exit.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ironclaw serve did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The snapshot directory of the server on `root` (unless a test gives one).
pub fn snapshot_dir(root: &std::path::Path) -> PathBuf {
    PathBuf::from(format!("{}-snapshots", root.display()))
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server a test stopped itself may be restarted on the same root:
        // its snapshots stay for the next one.
        if self.child.is_some() {
            let _ = std::fs::remove_dir_all(snapshot_dir(&self.root));
        }
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so the service destroys its VMs; then make sure.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn parse(body: &[u8]) -> Value {
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    }
}

pub async fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Bytes>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<(String, String)>, Bytes)> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    request(stream, method, path, body, headers).await
}

/// One HTTP/1 request on a fresh connection; the whole answer.
pub async fn request<S>(
    stream: S,
    method: &str,
    path: &str,
    body: Option<Bytes>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<(String, String)>, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.unwrap_or_default())).unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, headers, body))
}

/// VM processes (QEMU and its helpers) whose command line names `root`.
pub fn vm_processes_under(root: &Path) -> Vec<String> {
    let needle = root.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) && !cmd.contains("ironclaw serve") && !cmd.contains(" serve ")
            {
                found.push(cmd);
            }
        }
    }
    found
}

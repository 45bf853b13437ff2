//! Who is calling. On the unix socket the kernel says (`SO_PEERCRED`, and
//! the [`PrivateListener`] already refused users that may not connect): the
//! caller is its uid. On TCP the caller must send one of the service's
//! tokens (`Authorization: Bearer <token>`, or `X-API-Key: <token>`),
//! compared in constant time; the caller is that token. Sandboxes belong to
//! their caller: another uid or another token neither sees nor touches them.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::listen::{PeerCred, PrivateListener};
use crate::service::error::{ErrorCode, ServiceError};
use crate::service::Owner;

/// Shortest token accepted: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 32;

/// Where a request came from.
#[derive(Debug, Clone)]
pub enum Caller {
    Unix(PeerCred),
    Tcp(SocketAddr),
}

impl Connected<IncomingStream<'_, UnixCallers>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixCallers>) -> Caller {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, TcpCallers>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TcpCallers>) -> Caller {
        stream.remote_addr().clone()
    }
}

/// The tokens TCP callers authenticate with (one tenant each).
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl Tokens {
    pub fn new(tokens: Vec<String>) -> Tokens {
        Tokens(Arc::new(
            tokens.into_iter().map(String::into_bytes).collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads one token per line (blank lines and `#` comments skipped). The
    /// file must not be readable by others, and each token must be at
    /// least [`MIN_TOKEN_LEN`] characters.
    pub fn from_file(path: &Path) -> Result<Tokens, String> {
        let what = |e: std::io::Error| format!("--token-file {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(what)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "--token-file {}: readable by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(what)?;
        let tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if tokens.is_empty() {
            return Err(format!("--token-file {}: no token in it", path.display()));
        }
        if let Some(n) = tokens.iter().position(|t| t.len() < MIN_TOKEN_LEN) {
            return Err(format!(
                "--token-file {}: token {} is shorter than {MIN_TOKEN_LEN} characters",
                path.display(),
                n + 1
            ));
        }
        Ok(Tokens::new(tokens))
    }

    /// The index of the token `given` is, checking every token in constant time.
    pub fn find(&self, given: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, t) in self.0.iter().enumerate() {
            if bool::from(t.as_slice().ct_eq(given)) {
                found = Some(i);
            }
        }
        found
    }
}

fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        return v
            .strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "));
    }
    headers.get("x-api-key").map(|v| v.as_bytes())
}

/// The owner of a request, or why it has none.
pub fn owner_of(
    caller: &Caller,
    headers: &HeaderMap,
    tokens: &Tokens,
) -> Result<Owner, ServiceError> {
    match caller {
        Caller::Unix(cred) => Ok(Owner::uid(cred.uid)),
        Caller::Tcp(_) => match presented(headers).and_then(|t| tokens.find(t)) {
            Some(i) => Ok(Owner::token(i)),
            None => Err(ServiceError::new(
                ErrorCode::Unauthorized,
                "missing or wrong token: send `Authorization: Bearer <token>` with a token from the service's --token-file",
            )),
        },
    }
}

/// Middleware: puts the request's [`Owner`] in its extensions, or answers 401.
pub async fn check(
    State(tokens): State<Tokens>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    mut req: Request,
    next: Next,
) -> Response {
    match owner_of(&caller, req.headers(), &tokens) {
        Ok(owner) => {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let t0 = std::time::Instant::now();
            req.extensions_mut().insert(owner.clone());
            let response = next.run(req).await;
            tracing::info!(
                owner = %owner.0, %method, %path, status = response.status().as_u16(),
                ms = t0.elapsed().as_millis() as u64, "request"
            );
            response
        }
        Err(e) => {
            tracing::warn!(?caller, path = %req.uri().path(), "refused: {}", e.message);
            let mut r = e.into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// The unix socket, as an axum listener: only allowed peers, with their credentials.
pub struct UnixCallers(pub PrivateListener);

impl Listener for UnixCallers {
    type Io = UnixStream;
    type Addr = Caller;

    async fn accept(&mut self) -> (UnixStream, Caller) {
        loop {
            match self.0.accept().await {
                Ok((stream, cred)) => return (stream, Caller::Unix(cred)),
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Caller> {
        Ok(Caller::Unix(PeerCred {
            pid: std::process::id() as i32,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }))
    }
}

/// A TCP listener whose callers are known by address (and must send a token).
pub struct TcpCallers(pub TcpListener);

impl Listener for TcpCallers {
    type Io = TcpStream;
    type Addr = Caller;

    async fn accept(&mut self) -> (TcpStream, Caller) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, Caller::Tcp(addr));
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Caller> {
        self.0.local_addr().map(Caller::Tcp)
    }
}

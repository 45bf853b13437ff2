//! A small HTTP/1 client of `ironclaw serve`: one connection per request,
//! over the service's unix socket (the default) or TCP with a bearer token.
//! Every connection attempt has a deadline; a plain JSON call has one for its
//! whole answer, while a streamed call (exec output, uploads, downloads)
//! runs as long as it takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Connecting (and the HTTP handshake), at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A JSON call's whole answer, at most (creating a sandbox may boot a VM).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Reading an error's body, at most.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body: nothing, bytes, or a stream.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn empty() -> Body {
    bytes_body(Bytes::new())
}

pub fn bytes_body(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A body streamed from `reader` as it is read.
pub fn reader_body<R: tokio::io::AsyncRead + Send + 'static>(reader: R) -> Body {
    use futures::TryStreamExt;
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10);
    BodyExt::boxed_unsync(StreamBody::new(stream.map_ok(Frame::data)))
}

/// An answer of the service that is not a success: its status and its
/// `{code, message}` (or its text when it is not that JSON).
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    /// `host:port`
    Tcp(String),
}

#[derive(Clone)]
pub struct Client {
    target: Target,
    token: Option<String>,
}

impl Client {
    /// The service at `host` (`http://ADDR:PORT` or `unix:PATH`; default:
    /// `IRONCLAW_HOST`, else the unix socket under the runtime root), with
    /// the token of `token_file` (default: `IRONCLAW_TOKEN_FILE`).
    pub fn new(host: Option<String>, token_file: Option<PathBuf>) -> anyhow::Result<Client> {
        let host = host.or_else(|| env_nonempty("IRONCLAW_HOST"));
        let token_file = token_file.or_else(|| env_nonempty("IRONCLAW_TOKEN_FILE").map(Into::into));
        let target = match host.as_deref() {
            None => Target::Unix(
                ironclaw_orchestrator::vm::runtime::runtime_root().join("ironclaw.sock"),
            ),
            Some(h) => parse_host(h)?,
        };
        let token = token_file.as_deref().map(read_token).transpose()?;
        if matches!(target, Target::Tcp(_)) && token.is_none() {
            bail!("--host {}: a TCP service needs a token: give --token-file FILE (or IRONCLAW_TOKEN_FILE)", host.unwrap_or_default());
        }
        Ok(Client { target, token })
    }

    /// Where the service is, as the user would write it.
    pub fn location(&self) -> String {
        match &self.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp(a) => format!("http://{a}"),
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Body>> {
        let no_service = |e: std::io::Error| {
            match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
                "no service at {}: start one with `ironclaw serve`",
                self.location()
            ),
            std::io::ErrorKind::PermissionDenied => anyhow!(
                "not allowed to use the service at {} (it serves its own user, root and the members of its --group)",
                self.location()
            ),
            _ => anyhow!("connecting to the service at {}: {e}", self.location()),
        }
        };
        let connect = async {
            match &self.target {
                Target::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(no_service)?;
                    handshake(s).await
                }
                Target::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(no_service)?;
                    let _ = s.set_nodelay(true);
                    handshake(s).await
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| self.no_answer(CONNECT_TIMEOUT))?
    }

    /// Sends a request and returns the answer once its headers arrived; an
    /// answer that is not a success is returned as an [`ApiError`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut sender = self.connect().await?;
        let host = match &self.target {
            Target::Unix(_) => "localhost",
            Target::Tcp(a) => a.as_str(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Some(t) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, t);
        }
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        // A body of known size is sent at once, so its answer is due soon;
        // a streamed one (an upload) is answered once it all went through.
        let deadline = body.size_hint().exact().map(|_| CALL_TIMEOUT);
        let req = req.body(body).context("building the request")?;
        let answer = sender.send_request(req);
        let resp = match deadline {
            Some(d) => tokio::time::timeout(d, answer)
                .await
                .map_err(|_| self.no_answer(d))?,
            None => answer.await,
        }
        .map_err(|e| anyhow!("the service at {}: {e}", self.location()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_of(resp).await.into())
    }

    /// A JSON call: `body` as JSON (if any), the answer parsed (Null when empty).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let call = async {
            let (ct, b) = match body {
                Some(v) => (
                    Some("application/json"),
                    bytes_body(Bytes::from(v.to_string())),
                ),
                None => (None, empty()),
            };
            let resp = self.send(method, path, ct, b).await?;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).context("the service's answer is not JSON")
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| self.no_answer(CALL_TIMEOUT))?
    }

    fn no_answer(&self, after: Duration) -> anyhow::Error {
        anyhow!(
            "the service at {} did not answer within {}s",
            self.location(),
            after.as_secs()
        )
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<SendRequest<Body>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the service")?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The error of an answer that is not a success.
async fn error_of(resp: Response<Incoming>) -> ApiError {
    let status = resp.status();
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, resp.into_body().collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => ApiError {
            status: status.as_u16(),
            code,
            message,
        },
        _ => ApiError {
            status: status.as_u16(),
            code: status.as_u16().to_string(),
            message: format!(
                "the service answered {}: {}",
                status.canonical_reason().unwrap_or("error"),
                String::from_utf8_lossy(&body).trim()
            ),
        },
    }
}

/// The status of `e` when it is an answer of the service.
pub fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<ApiError>()
        .and_then(|a| StatusCode::from_u16(a.status).ok())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_host(h: &str) -> anyhow::Result<Target> {
    if let Some(path) = h
        .strip_prefix("unix://")
        .or_else(|| h.strip_prefix("unix:"))
    {
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if h.starts_with("https://") {
        bail!("--host {h}: TLS is not supported; reach the service over plain http://ADDR:PORT (e.g. through an SSH tunnel or a TLS proxy)");
    }
    let addr = h.strip_prefix("http://").unwrap_or(h).trim_end_matches('/');
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok || addr.contains('/') {
        bail!("--host {h}: expected http://ADDR:PORT (or unix:PATH)");
    }
    Ok(Target::Tcp(addr.to_string()))
}

/// The token of a token file: its first line that is neither blank nor a `#` comment.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .ok_or_else(|| anyhow!("--token-file {}: no token in it", path.display()))
}

/// Reads an NDJSON body line by line (cancel-safe: no data is lost when a
/// call is dropped before it returns).
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next line (without its newline), or None at the end of the body.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(e)) => return Err(anyhow!("reading the stream from the service: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// The next piece of a streamed answer, or None at its end.
pub async fn next_data(body: &mut Incoming) -> anyhow::Result<Option<Bytes>> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(anyhow!("reading from the service: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// `s` for a query string: everything but unreserved characters and `/` escaped.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// `/v1/sandboxes/{id}` and what follows, with `id` escaped.
pub fn sandbox_path(id: &str, rest: &str) -> String {
    format!(
        "/v1/sandboxes/{}{rest}",
        query_escape(id).replace('/', "%2F")
    )
}

/// `/v1/snapshots/{id}`, with `id` (or a name) escaped.
pub fn snapshot_path(id: &str) -> String {
    format!("/v1/snapshots/{}", query_escape(id).replace('/', "%2F"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(
            matches!(parse_host("http://127.0.0.1:8080/").unwrap(), Target::Tcp(a) if a == "127.0.0.1:8080")
        );
        assert!(matches!(parse_host("localhost:1").unwrap(), Target::Tcp(a) if a == "localhost:1"));
        assert!(
            matches!(parse_host("unix:/run/x.sock").unwrap(), Target::Unix(p) if p == Path::new("/run/x.sock"))
        );
        for bad in ["http://host", "https://h:1", "http://h:1/api", ":80"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(query_escape("/a b/ü&x=1"), "/a%20b/%C3%BC%26x%3D1");
        assert_eq!(sandbox_path("a/b", "/files"), "/v1/sandboxes/a%2Fb/files");
        assert_eq!(snapshot_path("a b/c"), "/v1/snapshots/a%20b%2Fc");
    }
}

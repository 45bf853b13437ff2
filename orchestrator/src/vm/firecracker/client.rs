//! HTTP/1.1 client for Firecracker's API socket, built on hyper.
//!
//! One connection per request: Firecracker's API server serves one
//! connection at a time, and a fresh connection per call keeps the client
//! stateless (`Send + Sync`, no connection to poison after an error). Every
//! call is bounded by a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::{ApiRequest, Fault, InstanceInfo};

/// Default bound of one API call. Snapshot calls get their own, longer bound.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer body read: Firecracker's answers are a few hundred bytes.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the Firecracker API socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {path}: HTTP error: {source}")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("Firecracker refused {method} {path} ({status}): {fault_message}")]
    Fault {
        method: Method,
        path: String,
        status: StatusCode,
        fault_message: String,
    },
    #[error("{method} {path}: unexpected answer {status}: {body}")]
    UnexpectedStatus {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("{method} {path}: reading the answer (at most {MAX_ANSWER} bytes): {reason}")]
    ReadAnswer {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("{method} {path}: the request cannot be built: {reason}")]
    BuildRequest {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("encoding the body of {path}: {source}")]
    Encode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{method} {path}: cannot decode answer {body:?}: {source}")]
    Decode {
        method: Method,
        path: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// Firecracker's own explanation, when it refused a request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ClientError::Fault { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

/// A client for one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: API_TIMEOUT,
        }
    }

    /// The same client with another bound per call.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            socket: self.socket.clone(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `body` to its endpoint; Firecracker answers 204 No Content on success.
    pub async fn send<R: ApiRequest>(&self, body: &R) -> Result<(), ClientError> {
        let path = body.path();
        let json = serde_json::to_vec(body).map_err(|source| ClientError::Encode {
            path: path.clone(),
            source,
        })?;
        let (status, answer) = self.call(R::METHOD, &path, Some(json)).await?;
        if status == StatusCode::NO_CONTENT || status == StatusCode::OK {
            return Ok(());
        }
        Err(refusal(R::METHOD, path, status, &answer))
    }

    /// `GET /`: the instance's id, state and version.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, ClientError> {
        self.get("/").await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, answer) = self.call(Method::GET, path, None).await?;
        if status != StatusCode::OK {
            return Err(refusal(Method::GET, path.into(), status, &answer));
        }
        serde_json::from_slice(&answer).map_err(|source| ClientError::Decode {
            method: Method::GET,
            path: path.into(),
            body: String::from_utf8_lossy(&answer).into_owned(),
            source,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let timeout = self.timeout;
        let exchange = self.exchange(method.clone(), path, body);
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                method,
                path: path.into(),
                timeout,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let http = |source| ClientError::Http {
            method: method.clone(),
            path: path.into(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(http)?;
        // The connection future does the I/O; it ends when `sender` is dropped.
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            // Origin-form target: Firecracker's server expects `PUT /vsock HTTP/1.1`.
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BuildRequest {
                method: method.clone(),
                path: path.into(),
                reason: e.to_string(),
            })?;
        let result = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
            let answer = limited
                .collect()
                .await
                .map_err(|e| ClientError::ReadAnswer {
                    method: method.clone(),
                    path: path.into(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, answer))
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

/// The error for a non-success answer, with Firecracker's `fault_message`
/// when the body carries one.
fn refusal(method: Method, path: String, status: StatusCode, answer: &[u8]) -> ClientError {
    match serde_json::from_slice::<Fault>(answer) {
        Ok(fault) if !fault.fault_message.is_empty() => ClientError::Fault {
            method,
            path,
            status,
            fault_message: fault.fault_message,
        },
        _ => ClientError::UnexpectedStatus {
            method,
            path,
            status,
            body: String::from_utf8_lossy(answer).into_owned(),
        },
    }
}

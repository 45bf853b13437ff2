//! An E2B-compatible API (`ironclaw serve --e2b`): the official E2B SDKs
//! (PyPI and npm `e2b`) run unchanged against IronClaw with
//! `E2B_API_URL` and `E2B_SANDBOX_URL` both set to the service's address.
//!
//! One listener serves both of E2B's planes; their paths do not collide:
//!
//! - **control plane** ([`control`]): `/v2/sandboxes`, `/sandboxes/{id}`…,
//!   JSON, errors `{"code": <int>, "message"}`. The caller is checked like
//!   the native API's: on TCP the `X-API-KEY` header must be one of the
//!   service's tokens (constant time; that token's tenant owns what it
//!   creates), on the unix socket the peer's uid. Snapshots and forks:
//!   [`snapshots`].
//! - **envd** (the agent E2B runs in each sandbox): the Connect RPCs
//!   `process.Process/*` ([`process`]) and `filesystem.Filesystem/*`
//!   ([`filesystem`]) framed by [`connect`], `GET/POST /files` and
//!   `GET /health` ([`files`]). Every call names its sandbox in
//!   `E2b-Sandbox-Id` and proves access with that sandbox's own access
//!   token (`X-Access-Token`, the `envdAccessToken` create returned).
//!
//! Everything maps onto the same [`Service`] as the native REST API: the
//! same lifecycle, limits, exec and file code, and the same tenants.

mod connect;
mod control;
mod files;
mod filesystem;
mod process;
mod snapshots;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::{Caller, Tokens};
use super::error::{ErrorCode, ServiceError};
use super::sandbox::{Owner, Sandbox};
use super::Service;

/// envd's port in a sandbox: the only one IronClaw serves.
pub const ENVD_PORT: u16 = 49983;
/// Control-plane JSON bodies, at most.
const CONTROL_BODY_LIMIT: usize = 1 << 20;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct E2bState {
    pub service: Service,
    pub tokens: Tokens,
}

/// An error as E2B's API and envd's HTTP routes answer it:
/// `{"code": <HTTP status>, "message"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            retry_after: None,
        }
    }

    /// A path of E2B's API that IronClaw does not implement.
    pub fn unsupported(what: &str) -> ApiError {
        ApiError::new(
            501,
            format!("{what} is not supported by IronClaw's E2B-compatible API (see docs/e2b.md)"),
        )
    }

    /// The sandbox of an envd call is gone: the message E2B's proxy
    /// answers with, which the SDKs turn into "sandbox not running".
    fn sandbox_gone(id: &str) -> ApiError {
        ApiError::new(502, format!("The sandbox {id} was not found"))
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        // E2B answers 404 for a sandbox that ended, whatever ended it.
        let status = match e.code {
            ErrorCode::SandboxExpired => 404,
            code => code.http_status(),
        };
        ApiError {
            retry_after: e.retry_after,
            ..ApiError::new(status, e.message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// A JSON body of at most [`CONTROL_BODY_LIMIT`]; an empty one is the default.
pub async fn json_body<T: DeserializeOwned + Default>(
    body: axum::body::Body,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, CONTROL_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::new(400, format!("reading the body: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

/// The control-plane caller: the token's tenant on TCP, the uid on the
/// unix socket.
pub struct ApiOwner(pub Owner);

fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

impl FromRequestParts<E2bState> for ApiOwner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &E2bState) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<ConnectInfo<Caller>>()
            .map(|c| c.0.clone())
            .ok_or_else(|| ApiError::new(500, "no connection info"))?;
        match caller {
            Caller::Unix(cred) => Ok(ApiOwner(Owner::uid(cred.uid))),
            Caller::Tcp(addr) => match api_key(&parts.headers).and_then(|k| s.tokens.find(k)) {
                Some(i) => Ok(ApiOwner(Owner::token(i))),
                None => {
                    tracing::warn!(%addr, path = %parts.uri.path(), "e2b: refused: missing or wrong X-API-KEY");
                    Err(ApiError::new(
                        401,
                        "missing or wrong API key: set E2B_API_KEY to a token of the service's --token-file",
                    ))
                }
            },
        }
    }
}

/// The sandbox an envd call is for, its access token checked.
pub struct Envd(pub Arc<Sandbox>);

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl FromRequestParts<E2bState> for Envd {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &E2bState) -> Result<Self, ApiError> {
        let id = header_str(&parts.headers, "e2b-sandbox-id").ok_or_else(|| {
            ApiError::new(
                400,
                "missing the E2b-Sandbox-Id header (the E2B SDKs send it)",
            )
        })?;
        if let Some(port) = header_str(&parts.headers, "e2b-sandbox-port") {
            if port.trim() != ENVD_PORT.to_string() {
                return Err(ApiError::new(
                    502,
                    format!(
                        "The sandbox {id} is running but port {port} is not open: IronClaw serves envd \
                         ({ENVD_PORT}) only; the code interpreter and a sandbox's own servers are not supported"
                    ),
                ));
            }
        }
        let token = parts.headers.get("x-access-token").map(|v| v.as_bytes());
        match s.service.get_with_access_token(id, token) {
            Ok(sandbox) => Ok(Envd(sandbox)),
            Err(e) if e.code == ErrorCode::Unauthorized => {
                tracing::warn!(sandbox = %id, path = %parts.uri.path(), "e2b: refused: {}", e.message);
                Err(ApiError::new(401, e.message))
            }
            Err(_) => Err(ApiError::sandbox_gone(id)),
        }
    }
}

/// A path of E2B's API that IronClaw does not implement.
async fn unsupported(uri: axum::http::Uri) -> ApiError {
    ApiError::unsupported(&format!("{} (E2B API)", uri.path()))
}

/// The code interpreter's server (port 49999 in an E2B sandbox).
async fn code_interpreter() -> ApiError {
    ApiError::unsupported("the code interpreter (/execute, /contexts)")
}

async fn log(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let sandbox = header_str(req.headers(), "e2b-sandbox-id").map(String::from);
    let t0 = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method, %path, sandbox = sandbox.as_deref().unwrap_or("-"),
        status = response.status().as_u16(), ms = t0.elapsed().as_millis() as u64, "e2b request"
    );
    response
}

/// The E2B-compatible routes, to merge beside the native router (they are
/// not behind its caller check: the control plane checks `X-API-KEY`, envd
/// calls the sandbox's access token).
pub fn router(service: Service, tokens: Tokens) -> Router {
    let state = E2bState { service, tokens };
    Router::new()
        // Control plane.
        .route("/v2/sandboxes", post(control::create).get(control::list))
        .route("/sandboxes", post(control::create).get(control::list))
        .route(
            "/sandboxes/{id}",
            get(control::inspect).delete(control::kill),
        )
        .route("/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/sandboxes/{id}/connect", post(control::connect))
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/resume", post(control::resume))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/{action}", any(unsupported))
        .route("/v2/sandboxes/{id}/{action}", any(unsupported))
        .route("/sandboxes/metrics", any(unsupported))
        .route("/templates", any(unsupported))
        // E2B's snapshots are templates: `delete_snapshot` deletes one.
        .route(
            "/templates/{*rest}",
            delete(snapshots::delete).fallback(unsupported),
        )
        .route("/v2/templates", any(unsupported))
        .route("/v3/templates", any(unsupported))
        .route("/snapshots", get(snapshots::list))
        .route("/volumes", any(unsupported))
        .route("/volumes/{*rest}", any(unsupported))
        .route("/secrets", any(unsupported))
        .route("/secrets/{*rest}", any(unsupported))
        // envd.
        .route("/process.Process/{method}", post(process::rpc))
        .route("/filesystem.Filesystem/{method}", post(filesystem::rpc))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/health", get(files::health))
        .route("/execute", any(code_interpreter))
        .route("/contexts", any(code_interpreter))
        .route("/contexts/{*rest}", any(code_interpreter))
        .layer(axum::middleware::from_fn(log))
        .with_state(state)
}

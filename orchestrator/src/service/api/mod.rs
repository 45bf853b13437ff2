//! The REST API of the sandbox service, with axum: routes, who is calling
//! (a unix peer by `SO_PEERCRED`, a TCP client by bearer token), errors as
//! JSON with a stable code, and the listeners `ironclaw serve` uses.
//!
//! Streamed output is NDJSON over a chunked response (one JSON event per
//! line): any HTTP client reads it line by line (curl, `requests`, `fetch`),
//! it goes through proxies that pass chunked bodies, and it needs no
//! WebSocket upgrade. Interactive stdin is a request per write to a
//! background command (`POST …/commands/{cid}/stdin`), which keeps every
//! call a plain request with its own status code.

mod auth;
mod body;
mod commands;
mod files;
pub mod openapi;
mod sandboxes;
mod snapshots;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use auth::{Caller, TcpCallers, Tokens, UnixCallers};

use super::error::{ErrorBody, ServiceError};
use super::Service;

/// JSON request bodies, at most (stdin is capped below it).
const JSON_BODY_LIMIT: usize = 32 << 20;

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(ErrorBody::from(&self))).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
}

/// The REST routes (under `/v1`), `/openapi.json`, `/metrics` and
/// `/healthz`, all behind the caller check of `tokens`.
pub fn router(service: Service, tokens: Tokens) -> Router {
    let state = AppState { service };
    let v1 = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::inspect).delete(sandboxes::destroy),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/pause", post(snapshots::pause))
        .route("/sandboxes/{id}/resume", post(snapshots::resume))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/snapshots/{id}",
            get(snapshots::inspect).delete(snapshots::remove),
        )
        .route("/sandboxes/{id}/exec", post(commands::exec))
        .route("/sandboxes/{id}/exec/stream", post(commands::exec_stream))
        .route(
            "/sandboxes/{id}/commands",
            post(commands::start).get(commands::list),
        )
        .route("/sandboxes/{id}/commands/{cid}", get(commands::inspect))
        .route(
            "/sandboxes/{id}/commands/{cid}/output",
            get(commands::output),
        )
        .route(
            "/sandboxes/{id}/commands/{cid}/stream",
            get(commands::stream),
        )
        .route(
            "/sandboxes/{id}/commands/{cid}/stdin",
            post(commands::stdin),
        )
        .route(
            "/sandboxes/{id}/commands/{cid}/signal",
            post(commands::signal),
        )
        .route("/sandboxes/{id}/commands/{cid}/wait", post(commands::wait))
        .route(
            "/sandboxes/{id}/files",
            get(files::download)
                .put(files::upload)
                .delete(files::remove),
        )
        .route("/sandboxes/{id}/files/stat", get(files::stat))
        .route("/sandboxes/{id}/files/list", get(files::list))
        .route("/sandboxes/{id}/files/mkdir", post(files::mkdir))
        .route(
            "/sandboxes/{id}/tar",
            get(files::tar_out).put(files::tar_in),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .nest_service("/mcp", super::mcp::http_service(state.service.clone()))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(tokens, auth::check))
        .with_state(state)
}

async fn metrics(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    let text = s
        .service
        .metrics()
        .render(s.service.live_count(), &s.service.pool_stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A `Duration` from a query's milliseconds.
fn millis(ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(0))
}

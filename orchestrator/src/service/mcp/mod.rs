//! The MCP server of the sandbox service, with rmcp: the same [`Service`]
//! as the REST API, as tools an agent calls (`sandbox_create`,
//! `sandbox_exec`, `sandbox_fs_read`, `run_code`, …; see [`tools`]).
//!
//! Two transports: Streamable HTTP at `/mcp` of `ironclaw serve`
//! ([`http_service`], behind the same caller check as the REST routes, so
//! each call acts as the owner its HTTP request authenticated as), and
//! stdio for desktop agents (`ironclaw mcp`, one fixed owner:
//! [`SandboxMcp::for_owner`]).
//!
//! Service errors are tool results with `isError` and the stable code
//! first (`sandbox_expired: sandbox sb-… expired: …`), so a model reads and
//! handles them; only malformed calls are protocol errors.

mod ops;
pub mod params;
mod tools;

use std::sync::Arc;

use axum::http::request::Parts;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool_handler, ServerHandler};
use serde::Serialize;

use super::error::{ErrorCode, ServiceError};
use super::{Owner, Service};

/// What the server tells a model at initialize.
const INSTRUCTIONS: &str = "IronClaw sandboxes: isolated Linux microVMs (no network) for running \
untrusted code. For a quick one-off program use run_code. Otherwise: sandbox_create (returns a \
sandbox_id; it lives for timeout_s, default 300 s), then sandbox_exec / sandbox_fs_write / \
sandbox_fs_read with that sandbox_id, and sandbox_destroy when done. Long-running or \
interactive commands: sandbox_exec_start, then sandbox_exec_poll with the returned cursor, \
sandbox_exec_write_stdin, sandbox_exec_signal. To keep or branch a state: sandbox_snapshot, then \
sandbox_create with from_snapshot (or sandbox_fork for copies at once); sandbox_pause frees a \
sandbox's memory until sandbox_resume. The default image has python3 and coreutils; \
commands run as root in /work. Failed calls return an error result whose text starts with a \
stable code (bad_request, not_found, sandbox_expired, sandbox_paused, conflict, limit_reached, \
snapshot_invalid, storage_full, unavailable, sandbox_failed, internal).";

/// The MCP tools over one [`Service`].
#[derive(Clone)]
pub struct SandboxMcp {
    service: Service,
    /// The owner of every call (stdio); `None`: the owner each HTTP request
    /// authenticated as.
    owner: Option<Owner>,
    tool_router: ToolRouter<SandboxMcp>,
}

impl SandboxMcp {
    /// Every call acts as `owner` (stdio: the user who started `ironclaw mcp`).
    pub fn for_owner(service: Service, owner: Owner) -> SandboxMcp {
        SandboxMcp {
            service,
            owner: Some(owner),
            tool_router: Self::tool_router(),
        }
    }

    /// Each call acts as the [`Owner`] that the API's caller check put in
    /// its HTTP request's extensions; a call without one is refused.
    pub fn per_request(service: Service) -> SandboxMcp {
        SandboxMcp {
            service,
            owner: None,
            tool_router: Self::tool_router(),
        }
    }

    /// Who this call acts as.
    fn owner(&self, extensions: &Extensions) -> Result<Owner, ServiceError> {
        if let Some(owner) = &self.owner {
            return Ok(owner.clone());
        }
        // rmcp's Streamable HTTP server hands each call the HTTP request's
        // parts; the caller check inserted the Owner into their extensions.
        extensions
            .get::<Parts>()
            .and_then(|parts| parts.extensions.get::<Owner>())
            .cloned()
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::Unauthorized,
                    "this MCP call came without an authenticated caller",
                )
            })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SandboxMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("ironclaw", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// A successful tool result: the value as JSON text and as structured
/// content; refused when that JSON is too big for one MCP message (the
/// caps of the tools make this rare: text full of escaped control bytes).
fn ok(value: impl Serialize) -> CallToolResult {
    let value = match serde_json::to_value(value) {
        Ok(v) => v,
        Err(e) => return failed(ServiceError::internal(format!("encoding the result: {e}"))),
    };
    let len = value.to_string().len();
    if len > ops::MAX_ANSWER_JSON {
        return failed(ServiceError::bad_request(format!(
            "the answer would be {len} bytes of JSON, more than the {} one answer may carry; \
             ask for less (max_output_bytes, or encoding base64 for binary data)",
            ops::MAX_ANSWER_JSON
        )));
    }
    CallToolResult::structured(value)
}

/// A failed tool result: `code: message` as text, `{code, message}` as
/// structured content (with `retry_after_s` when retrying later may help).
fn failed(e: ServiceError) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        e.code.as_str(),
        e.message
    ))]);
    let mut body = serde_json::json!({ "code": e.code.as_str(), "message": e.message });
    if let Some(after) = e.retry_after {
        body["retry_after_s"] = after.as_secs().max(1).into();
    }
    result.structured_content = Some(body);
    result
}

fn reply<T: Serialize>(result: Result<T, ServiceError>) -> CallToolResult {
    match result {
        Ok(v) => ok(v),
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), "MCP tool failed: {}", e.message);
            failed(e)
        }
    }
}

/// Streamable HTTP for `ironclaw serve` (nested at `/mcp`, behind the
/// caller check): stateful sessions, each call acting as its request's owner.
pub fn http_service(service: Service) -> StreamableHttpService<SandboxMcp, LocalSessionManager> {
    // The Host check guards unauthenticated local servers against DNS
    // rebinding; here every request is authenticated (unix peer or token)
    // before it reaches MCP, and the service may listen on any address.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(SandboxMcp::per_request(service.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

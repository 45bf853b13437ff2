//! `/v1/sandboxes`: create, list, inspect, set the timeout, destroy.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::body::JsonBody;
use super::AppState;
use crate::service::error::{ErrorBody, ServiceError};
use crate::service::types::{CreateSandbox, SandboxInfo, SandboxList, SetTimeout};
use crate::service::Owner;

/// Create a sandbox (a VM from the warm pool of its shape).
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = SandboxInfo), (status = 400, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "--max-sandboxes or --max-memory reached"),
        (status = 503, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<(StatusCode, Json<SandboxInfo>), ServiceError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.create(&owner, req).await?),
    ))
}

/// The caller's sandboxes, running and paused.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", responses((status = 200, body = SandboxList)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
) -> Json<SandboxList> {
    Json(SandboxList {
        sandboxes: s.service.list(&owner),
    })
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "expired")))]
pub async fn inspect(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ServiceError> {
    Ok(Json(s.service.inspect(&owner, &id)?))
}

/// Set the remaining lifetime, counted from now.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes", params(("id" = String, Path)),
    request_body = SetTimeout,
    responses((status = 200, body = SandboxInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn set_timeout(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SetTimeout>,
) -> Result<Json<SandboxInfo>, ServiceError> {
    Ok(Json(s.service.set_timeout(&owner, &id, req.timeout_s)?))
}

/// Destroy a sandbox (its VM and everything in it).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn destroy(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServiceError> {
    s.service.destroy(&owner, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

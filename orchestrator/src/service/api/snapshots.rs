//! Snapshots, forks, pause and resume: `/v1/sandboxes/{id}/snapshots`,
//! `…/fork`, `…/pause`, `…/resume` and `/v1/snapshots`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::body::JsonBody;
use super::AppState;
use crate::service::error::{ErrorBody, ServiceError};
use crate::service::types::{
    CreateSnapshot, ForkResult, ForkSandbox, SandboxInfo, SnapshotInfo, SnapshotList,
};
use crate::service::Owner;

/// Snapshot a running sandbox (memory, files, processes); it runs on,
/// paused only while its state is written (`pause_ms`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots", params(("id" = String, Path)),
    request_body = CreateSnapshot,
    responses((status = 201, body = SnapshotInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the sandbox is paused"),
        (status = 507, body = ErrorBody, description = "--max-snapshot-storage reached")))]
pub async fn create(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ServiceError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.snapshot(&owner, &id, req).await?),
    ))
}

/// Snapshot a sandbox and make `count` new sandboxes from it.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "snapshots", params(("id" = String, Path)),
    request_body = ForkSandbox,
    responses((status = 201, body = ForkResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn fork(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ForkSandbox>,
) -> Result<(StatusCode, Json<ForkResult>), ServiceError> {
    Ok((
        StatusCode::CREATED,
        Json(s.service.fork(&owner, &id, req).await?),
    ))
}

/// Pause a sandbox: memory and files to disk, its VM destroyed; its
/// lifetime stops until it is resumed.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already paused"), (status = 507, body = ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ServiceError> {
    Ok(Json(s.service.pause(&owner, &id).await?))
}

/// Resume a paused sandbox under its own id.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not paused"),
        (status = 422, body = ErrorBody, description = "its snapshot is damaged or of another machine"),
        (status = 429, body = ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ServiceError> {
    Ok(Json(s.service.resume(&owner, &id).await?))
}

/// The caller's snapshots (paused sandboxes are listed with the sandboxes).
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", responses((status = 200, body = SnapshotList)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
) -> Json<SnapshotList> {
    Json(SnapshotList {
        snapshots: s.service.list_snapshots(&owner),
    })
}

/// One snapshot, by id or name.
#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 200, body = SnapshotInfo), (status = 404, body = ErrorBody)))]
pub async fn inspect(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotInfo>, ServiceError> {
    Ok(Json(s.service.get_snapshot(&owner, &id)?))
}

/// Remove a snapshot (sandboxes made from it are not affected).
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServiceError> {
    s.service.remove_snapshot(&owner, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

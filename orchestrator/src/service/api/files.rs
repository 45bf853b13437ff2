//! Files: streamed upload and download, stat, list, mkdir, remove, and
//! directories as tar streams.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};
use utoipa::IntoParams;

use super::body::{JsonBody, Params};
use super::AppState;
use crate::service::error::{ErrorBody, ServiceError};
use crate::service::types::{DirListing, FileInfo, MkdirBody, Written};
use crate::service::Owner;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// Absolute path in the sandbox.
    pub path: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Absolute path of the file to write (replaced when it exists).
    pub path: String,
    /// Permission bits in octal (default `644`).
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    pub path: String,
    /// Remove a directory and everything in it.
    #[serde(default)]
    pub recursive: bool,
}

fn body_reader(body: Body) -> impl tokio::io::AsyncRead + Unpin {
    StreamReader::new(body.into_data_stream().map_err(std::io::Error::other))
}

/// Upload a file: the request body is the file's bytes (streamed).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files", params(("id" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Written), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn upload(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<UploadQuery>,
    body: Body,
) -> Result<Json<Written>, ServiceError> {
    let mode = q
        .mode
        .as_deref()
        .map(|m| {
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    ServiceError::bad_request(format!("mode: {m:?} is not an octal mode like 644"))
                })
        })
        .transpose()?;
    let mut reader = body_reader(body);
    Ok(Json(
        s.service
            .upload(&owner, &id, &q.path, mode, &mut reader)
            .await?,
    ))
}

/// Download a regular file (streamed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files", params(("id" = String, Path), PathQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn download(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<PathQuery>,
) -> Result<Response, ServiceError> {
    let (stat, reader) = s.service.download(&owner, &id, &q.path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, stat.size.to_string()),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}

/// Stat a path (symlinks are not followed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", tag = "files", params(("id" = String, Path), PathQuery),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
pub async fn stat(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<PathQuery>,
) -> Result<Json<FileInfo>, ServiceError> {
    Ok(Json(s.service.stat(&owner, &id, &q.path).await?))
}

/// List a directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", tag = "files", params(("id" = String, Path), PathQuery),
    responses((status = 200, body = DirListing), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<PathQuery>,
) -> Result<Json<DirListing>, ServiceError> {
    Ok(Json(s.service.list_dir(&owner, &id, &q.path).await?))
}

/// Make a directory.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files", params(("id" = String, Path)),
    request_body = MkdirBody, responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn mkdir(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<MkdirBody>,
) -> Result<StatusCode, ServiceError> {
    s.service
        .mkdir(&owner, &id, &b.path, b.mode, b.parents)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a file, or a directory with `recursive=true`.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files", params(("id" = String, Path), RemoveQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<RemoveQuery>,
) -> Result<StatusCode, ServiceError> {
    s.service.remove(&owner, &id, &q.path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a directory as a tar stream.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/tar", tag = "files", params(("id" = String, Path), PathQuery),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tar_out(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<PathQuery>,
) -> Result<Response, ServiceError> {
    let reader = s.service.tar_out(&owner, &id, &q.path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}

/// Unpack a tar stream (the request body) into a directory, created if missing.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/tar", tag = "files", params(("id" = String, Path), PathQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tar_in(
    State(s): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    Params(q): Params<PathQuery>,
    body: Body,
) -> Result<StatusCode, ServiceError> {
    let mut reader = body_reader(body);
    s.service.tar_in(&owner, &id, &q.path, &mut reader).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! envd's HTTP routes: `GET /files?path=` (a download, streamed),
//! `POST /files` (uploads, streamed: a raw `application/octet-stream`
//! body, gzip-encoded or not, or `multipart/form-data` with one part per
//! file) and `GET /health`.

use std::collections::HashMap;
use std::sync::Arc;

use async_compression::tokio::bufread::GzipDecoder;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use super::filesystem::guest_path;
use super::types::WriteInfo;
use super::{ApiError, E2bState, Envd};
use crate::service::sandbox::Sandbox;

/// `GET /health`: 204 while the sandbox lives (502 "was not found" after).
pub async fn health(Envd(sandbox): Envd) -> StatusCode {
    sandbox.touch();
    StatusCode::NO_CONTENT
}

fn query(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(400, format!("invalid query: {}", e.body_text())))
}

/// `GET /files?path=P`: the file's bytes, streamed.
pub async fn download(
    State(s): State<E2bState>,
    Envd(sandbox): Envd,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q = query(&uri)?;
    let path = q
        .get("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::new(400, "the path query parameter is required"))?;
    let path = guest_path(&sandbox, path);
    let (stat, reader) = s
        .service
        .download(&sandbox.owner, &sandbox.id, &path)
        .await?;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        stat.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, stat.size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}

fn name_of(path: &str) -> String {
    path.rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string()
}

/// Writes `reader` to `path`, its directory made first (as envd does).
async fn write(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    path: &str,
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<WriteInfo, ApiError> {
    if let Some((dir, _)) = path.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
        s.service
            .mkdir(&sandbox.owner, &sandbox.id, dir, None, true)
            .await?;
    }
    s.service
        .upload(&sandbox.owner, &sandbox.id, path, None, reader)
        .await?;
    Ok(WriteInfo {
        name: name_of(path),
        kind: "file",
        path: path.to_string(),
    })
}

/// `POST /files?path=P`: 200 with the files written.
pub async fn upload(
    State(s): State<E2bState>,
    Envd(sandbox): Envd,
    req: Request,
) -> Result<Json<Vec<WriteInfo>>, ApiError> {
    let q = query(req.uri())?;
    let path = q
        .get("path")
        .filter(|p| !p.is_empty())
        .map(|p| guest_path(&sandbox, p));
    let headers = req.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    if content_type.starts_with("multipart/form-data") {
        if encoding.as_deref().is_some_and(|e| e != "identity") {
            return Err(ApiError::new(
                400,
                "a multipart upload cannot be Content-Encoded; send application/octet-stream",
            ));
        }
        let multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(400, format!("multipart body: {}", e.body_text())))?;
        return upload_parts(&s, &sandbox, path, multipart).await.map(Json);
    }
    let path = path.ok_or_else(|| {
        ApiError::new(
            400,
            "the path query parameter is required for an application/octet-stream upload",
        )
    })?;
    let body = StreamReader::new(
        req.into_body()
            .into_data_stream()
            .map_err(std::io::Error::other),
    );
    let written = match encoding.as_deref() {
        None | Some("identity") => write(&s, &sandbox, &path, &mut Box::pin(body)).await?,
        Some("gzip") => {
            let mut gunzip = Box::pin(GzipDecoder::new(BufReader::new(body)));
            write(&s, &sandbox, &path, &mut gunzip).await?
        }
        Some(other) => {
            return Err(ApiError::new(
                400,
                format!("Content-Encoding {other} is not supported (gzip or none)"),
            ))
        }
    };
    Ok(Json(vec![written]))
}

/// Each part of a multipart upload to its own path: the `path` query for
/// a single file, else the part's filename.
async fn upload_parts(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    path: Option<String>,
    mut multipart: Multipart,
) -> Result<Vec<WriteInfo>, ApiError> {
    let mut written = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::new(400, format!("multipart body: {}", e.body_text())))?
    {
        let target = match (&path, field.file_name()) {
            (Some(p), _) if written.is_empty() => p.clone(),
            (Some(_), _) => {
                return Err(ApiError::new(
                    400,
                    "several files with a path query: leave path out and name each part's file with its full path",
                ))
            }
            (None, Some(name)) if !name.is_empty() => guest_path(sandbox, name),
            (None, _) => {
                return Err(ApiError::new(
                    400,
                    "a multipart part without a filename: the filename is the file's path in the sandbox",
                ))
            }
        };
        let mut reader = Box::pin(StreamReader::new(field.map_err(std::io::Error::other)));
        written.push(write(s, sandbox, &target, &mut reader).await?);
    }
    if written.is_empty() {
        return Err(ApiError::new(400, "the multipart body has no file"));
    }
    Ok(written)
}

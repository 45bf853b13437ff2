//! E2B's snapshots on the service's: `create_snapshot` (`POST
//! /sandboxes/{id}/snapshots`), `list_snapshots` (`GET /snapshots`),
//! `delete_snapshot` (`DELETE /templates/{id}`: E2B's snapshots are
//! templates) and `fork` (`POST /sandboxes/{id}/fork`). A snapshot's E2B id
//! is its native id (`snap-…`); `Sandbox.create(<id or name>)` restores a
//! sandbox from it (see [`super::control::create`]): its files, memory and
//! running processes. The source sandbox runs on, paused only while its
//! state is written.
//!
//! Not supported, and refused as such: files-only snapshots
//! (`mode="filesystem"`), and a `name` that already names one of the
//! caller's snapshots (E2B makes that a new build of the same template;
//! IronClaw's snapshots have one build each).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Json;

use super::control::{check_timeout, control_error, created, is_image, page};
use super::types::{
    ErrorBody, ForkBody, ForkEntry, SnapshotBody, SnapshotEntry, SnapshotListQuery,
};
use super::{json_body, ApiError, ApiOwner, E2bState};
use crate::service::error::ErrorCode;
use crate::service::types::{CreateSandbox, CreateSnapshot, SnapshotInfo};

/// Forks one call may make: the SDK's bound (1 to 20).
const MAX_FORKS: u32 = 20;

fn entry(info: &SnapshotInfo) -> SnapshotEntry {
    SnapshotEntry {
        snapshot_id: info.id.clone(),
        names: info.name.iter().cloned().collect(),
    }
}

/// `POST /sandboxes/{id}/snapshots {name?, memory?}`: 201 with the
/// snapshot's id (and name); 404 when there is no such sandbox, 409 when
/// it is paused.
pub async fn create(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<SnapshotEntry>), ApiError> {
    let req: SnapshotBody = json_body(body).await?;
    if req.memory == Some(false) {
        return Err(ApiError::new(
            400,
            "a files-only snapshot (mode=\"filesystem\", memory: false) is not supported by \
             IronClaw: a snapshot keeps the sandbox's memory and files (see docs/e2b.md)",
        ));
    }
    if let Some(name) = req.name.as_deref() {
        if is_image(name) {
            return Err(ApiError::new(
                400,
                format!(
                    "name {name:?} is an image's (a template's): Sandbox.create({name:?}) would \
                     start that image; pick another name"
                ),
            ));
        }
        if s.service.get_snapshot(&owner, name).is_ok() {
            return Err(ApiError::new(
                409,
                format!(
                    "a snapshot named {name:?} exists: IronClaw does not make a new build of it \
                     (E2B does); delete it first (Sandbox.delete_snapshot) or pick another name"
                ),
            ));
        }
    }
    let info = s
        .service
        .snapshot(&owner, &id, CreateSnapshot { name: req.name })
        .await
        .map_err(|e| control_error(e, &id))?;
    Ok((StatusCode::CREATED, Json(entry(&info))))
}

/// `GET /snapshots?sandboxID&name&limit&nextToken`: the caller's
/// snapshots, oldest first, those of one sandbox or of one id or name,
/// `limit` at a time (`x-next-token` says where the next page starts).
pub async fn list(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: SnapshotListQuery = axum::extract::Query::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(400, format!("invalid query: {}", e.body_text())))?;
    // The service lists oldest first.
    let all: Vec<SnapshotEntry> = s
        .service
        .list_snapshots(&owner)
        .iter()
        .filter(|i| {
            q.sandbox_id
                .as_ref()
                .is_none_or(|sid| &i.source_sandbox == sid)
        })
        .filter(|i| {
            q.name
                .as_ref()
                .is_none_or(|n| &i.id == n || i.name.as_ref() == Some(n))
        })
        .map(entry)
        .collect();
    page(&all, q.next_token.as_deref(), q.limit)
}

/// `DELETE /templates/{id}`: the caller's snapshot by id or name → 204;
/// 404 when there is none. Deleting an image (a real template) is not
/// supported (501).
pub async fn delete(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id.contains('/') {
        return Err(ApiError::unsupported(&format!("/templates/{id} (E2B API)")));
    }
    match s.service.remove_snapshot(&owner, &id) {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.code == ErrorCode::NotFound && is_image(&id) => Err(ApiError::unsupported(
            &format!("deleting the template {id:?} (an image; `ironclaw image rm`)"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `POST /sandboxes/{id}/fork {timeout?, count?}`: the sandbox is
/// snapshotted once (it runs on) and `count` sandboxes are restored from
/// that snapshot, each succeeding or failing on its own: 201 with one
/// `{sandbox}` or `{error}` per fork. The snapshot is the fork's own: it
/// is removed once the forks are made (they do not need it) and is never
/// listed.
pub async fn fork(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Vec<ForkEntry>>), ApiError> {
    let req: ForkBody = json_body(body).await?;
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(ApiError::new(
            400,
            format!("count must be between 1 and {MAX_FORKS}"),
        ));
    }
    if let Some(t) = req.timeout {
        check_timeout(&s.service, t)?;
    }
    let snapshot = s
        .service
        .snapshot(&owner, &id, CreateSnapshot::default())
        .await
        .map_err(|e| control_error(e, &id))?;
    let creates = (0..count).map(|_| {
        s.service.create(
            &owner,
            CreateSandbox {
                from_snapshot: Some(snapshot.id.clone()),
                timeout_s: req.timeout,
                ..CreateSandbox::default()
            },
        )
    });
    let results = futures::future::join_all(creates).await;
    if let Err(e) = s.service.remove_snapshot(&owner, &snapshot.id) {
        tracing::warn!(sandbox = %id, snapshot = %snapshot.id, "e2b: fork: removing its snapshot: {}", e.message);
    }
    let entries = results
        .into_iter()
        .map(|r| {
            let made = r.and_then(|info| {
                let token = s.service.get(&owner, &info.id)?.access_token().to_string();
                Ok(created(&s.service, &info, token))
            });
            match made {
                Ok(c) => ForkEntry {
                    sandbox: Some(c),
                    error: None,
                },
                Err(e) => {
                    let e = ApiError::from(e);
                    ForkEntry {
                        sandbox: None,
                        error: Some(ErrorBody {
                            code: e.status.as_u16(),
                            message: e.message,
                        }),
                    }
                }
            }
        })
        .collect();
    tracing::info!(sandbox = %id, count, "e2b: forked");
    Ok((StatusCode::CREATED, Json(entries)))
}

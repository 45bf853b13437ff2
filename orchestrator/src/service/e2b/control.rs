//! E2B's control plane on the service's lifecycle: create (`templateID` →
//! image, `timeout` → lifetime, `metadata` → labels, `envVars` → env),
//! inspect, list, kill, set the timeout; pause, and connect (which resumes
//! a paused sandbox) on the service's pause and resume: the same id and the
//! same `envdAccessToken` after a resume, its memory (running processes)
//! and files as they were. A `templateID` that is one of the caller's
//! snapshots (see [`super::snapshots`]) creates the sandbox from it.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::types::{
    ConnectBody, ListQuery, NewSandbox, PauseBody, ResumeBody, SandboxCreated, SandboxDetail,
    SandboxState, TimeoutBody, CLIENT_ID, ENVD_VERSION,
};
use super::{json_body, ApiError, ApiOwner, E2bState};
use crate::service::error::{ErrorCode, ServiceError};
use crate::service::pools::NO_IMAGE;
use crate::service::sandbox::Owner;
use crate::service::types::{self as service_types, CreateSandbox, SandboxInfo};
use crate::service::Service;

/// E2B's default template: the service's default image.
pub const BASE_TEMPLATE: &str = "base";
/// How long a connect waits for a pause or resume someone else started.
const MOVING_WAIT: Duration = Duration::from_secs(120);
/// How long `requireHealthyGuest` waits for the guest agent to answer.
const HEALTHY_GUEST_WAIT: Duration = Duration::from_secs(10);
/// Sandboxes a list answers with when the query sets no limit.
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// `template` names an image: the default (`base`), none, or one of
/// `ironclaw image list`.
pub(super) fn is_image(template: &str) -> bool {
    template == BASE_TEMPLATE
        || template == NO_IMAGE
        || (crate::userland::validate_name(template).is_ok()
            && crate::userland::find(template).is_ok())
}

/// The image a template names; a clear error when there is none by that name.
fn image_of(service: &Service, template: &str) -> Result<String, ApiError> {
    if template.is_empty() {
        return Err(ApiError::new(400, "templateID is required"));
    }
    if template == BASE_TEMPLATE {
        return Ok(service.default_image().to_string());
    }
    if !is_image(template) {
        return Err(ApiError::new(
            404,
            format!(
                "template {template:?} not found: IronClaw's templates are its image names \
                 (`ironclaw image list`; `{BASE_TEMPLATE}` is the default image) and your \
                 snapshots' ids and names (Sandbox.list_snapshots()); building templates \
                 through the E2B API is not supported"
            ),
        ));
    }
    Ok(template.to_string())
}

/// The template name a sandbox's image is shown as.
fn template_of(service: &Service, image: &str) -> String {
    if image == service.default_image() {
        BASE_TEMPLATE.to_string()
    } else {
        image.to_string()
    }
}

pub fn iso8601(secs: u64) -> String {
    DateTime::<Utc>::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn detail(service: &Service, info: &SandboxInfo, token: Option<String>) -> SandboxDetail {
    let paused = info.state == service_types::SandboxState::Paused;
    SandboxDetail {
        template_id: template_of(service, &info.image),
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID,
        started_at: iso8601(info.created_at),
        end_at: iso8601(info.expires_at),
        envd_version: ENVD_VERSION,
        cpu_count: info.vcpus,
        memory_mb: info.memory_mib,
        disk_size_mb: 0,
        state: if paused {
            SandboxState::Paused
        } else {
            SandboxState::Running
        },
        metadata: info.labels.clone(),
        envd_access_token: token,
        // IronClaw's pause always keeps the memory.
        pause_mode: paused.then_some("full"),
    }
}

pub(super) fn created(service: &Service, info: &SandboxInfo, token: String) -> SandboxCreated {
    SandboxCreated {
        template_id: template_of(service, &info.image),
        sandbox_id: info.id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        envd_access_token: token,
        domain: None,
    }
}

/// A requested option IronClaw cannot honour: refused, never ignored.
fn refuse_unsupported(req: &NewSandbox) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    };
    let refuse = |what: &str| {
        Err(ApiError::new(
            400,
            format!("{what} is not supported by IronClaw (see docs/e2b.md)"),
        ))
    };
    if req.auto_pause == Some(true) {
        return refuse(
            "autoPause (lifecycle on_timeout \"pause\": a sandbox that reaches its timeout is \
             destroyed; pause it yourself with pause() and resume it with Sandbox.connect())",
        );
    }
    if req
        .auto_resume
        .as_ref()
        .and_then(|v| v.get("enabled"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return refuse(
            "autoResume (resuming a paused sandbox on traffic; resume it with Sandbox.connect())",
        );
    }
    if req.allow_internet_access == Some(true) {
        return refuse(
            "allow_internet_access: IronClaw sandboxes have no network device; internet access",
        );
    }
    if set(&req.network) {
        return refuse("network (IronClaw sandboxes have no network device)");
    }
    if set(&req.mcp) {
        return refuse("mcp (the MCP gateway)");
    }
    if set(&req.iam) {
        return refuse("iam");
    }
    if req.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return refuse("volumeMounts");
    }
    Ok(())
}

/// `POST /v2/sandboxes`: 201 with the ids, envd's version and the access token.
pub async fn create(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    body: Body,
) -> Result<(StatusCode, Json<SandboxCreated>), ApiError> {
    let req: NewSandbox = json_body(body).await?;
    refuse_unsupported(&req)?;
    // A template is an image, or else one of the caller's snapshots (by id
    // or name: `Sandbox.create(<snapshot id>)`), restored with its memory.
    let (image, from_snapshot) = if !is_image(&req.template_id)
        && s.service.get_snapshot(&owner, &req.template_id).is_ok()
    {
        (None, Some(req.template_id.clone()))
    } else {
        (Some(image_of(&s.service, &req.template_id)?), None)
    };
    let info = s
        .service
        .create(
            &owner,
            CreateSandbox {
                image,
                from_snapshot,
                env: req.env_vars.unwrap_or_default(),
                labels: req.metadata.unwrap_or_default(),
                timeout_s: req.timeout,
                ..CreateSandbox::default()
            },
        )
        .await?;
    let sandbox = s.service.get(&owner, &info.id)?;
    let token = sandbox.access_token().to_string();
    Ok((StatusCode::CREATED, Json(created(&s.service, &info, token))))
}

/// A service error as the control plane answers it: a paused sandbox's
/// 409 says how an E2B caller resumes it.
pub(super) fn control_error(e: ServiceError, id: &str) -> ApiError {
    if e.code == ErrorCode::SandboxPaused {
        return ApiError::new(
            409,
            format!("sandbox {id} is paused (or being paused or resumed): resume it with Sandbox.connect()"),
        );
    }
    e.into()
}

/// `GET /sandboxes/{id}`: a running sandbox (with its access token) or a
/// paused one (`state: "paused"`, `pauseMode: "full"`; `endAt` is when the
/// service removes it, `--paused-retention`).
pub async fn inspect(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    match s.service.get(&owner, &id) {
        Ok(sandbox) => {
            let token = sandbox.access_token().to_string();
            Ok(Json(detail(&s.service, &sandbox.info(), Some(token))))
        }
        Err(e) if e.code == ErrorCode::SandboxPaused => {
            // Paused, or between running and paused: what inspect sees now.
            let info = s
                .service
                .inspect(&owner, &id)
                .map_err(|e| control_error(e, &id))?;
            Ok(Json(detail(&s.service, &info, None)))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /sandboxes/{id}`: 204 (a paused sandbox: its snapshot is
/// removed), or 404 when there is no such sandbox.
pub async fn kill(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service
        .destroy(&owner, &id)
        .await
        .map_err(|e| control_error(e, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout {timeout}`: the remaining lifetime, from now.
pub async fn set_timeout(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let req: TimeoutBody = json_body(body).await?;
    s.service
        .set_timeout(&owner, &id, req.timeout)
        .map_err(|e| control_error(e, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A `timeout` (seconds from now) the service would take: checked before
/// a resume, so a wrong one leaves the sandbox paused.
pub(super) fn check_timeout(service: &Service, timeout: u64) -> Result<(), ApiError> {
    let max = service.config().max_timeout;
    if timeout == 0 || Duration::from_secs(timeout) > max {
        return Err(ApiError::new(
            400,
            format!("timeout must be between 1 and {} seconds", max.as_secs()),
        ));
    }
    Ok(())
}

/// `memory: false` on a resume: a cold boot from the files alone, which
/// IronClaw does not do (its pause keeps memory and files together).
fn refuse_reboot(memory: Option<bool>) -> Result<(), ApiError> {
    if memory == Some(false) {
        return Err(ApiError::new(
            400,
            "resuming without memory (on_resume=\"reboot\", memory: false) is not supported by \
             IronClaw: a paused sandbox resumes with its memory and files (see docs/e2b.md)",
        ));
    }
    Ok(())
}

/// Resumes the paused sandbox `id`; with a `timeout`, its lifetime is then
/// that many seconds from now (otherwise what it had left when paused).
async fn resume_with_timeout(
    service: &Service,
    owner: &Owner,
    id: &str,
    timeout: Option<u64>,
) -> Result<SandboxCreated, ServiceError> {
    let mut info = service.resume(owner, id).await?;
    if let Some(t) = timeout {
        info = service.set_timeout(owner, id, t)?;
    }
    let token = service.get(owner, id)?.access_token().to_string();
    Ok(created(service, &info, token))
}

/// `POST /v2/sandboxes/{id}/connect {timeout?, memory?}` (and
/// `/sandboxes/{id}/connect`): a running sandbox → 200 (a `timeout` longer
/// than what is left extends it); a paused one is resumed first → 201
/// (its lifetime then `timeout` from now, or what it had left). A pause or
/// resume under way is waited for. 404 when there is no such sandbox.
pub async fn connect(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<SandboxCreated>), ApiError> {
    let req: ConnectBody = json_body(body).await?;
    let deadline = Instant::now() + MOVING_WAIT;
    loop {
        let e = match s.service.get(&owner, &id) {
            Ok(sandbox) => {
                let mut info = sandbox.info();
                if let Some(t) = req.timeout {
                    let left = info
                        .expires_at
                        .saturating_sub(crate::service::sandbox::unix_secs(
                            std::time::SystemTime::now(),
                        ));
                    if t > left {
                        info = s.service.set_timeout(&owner, &id, t)?;
                    }
                }
                let token = sandbox.access_token().to_string();
                return Ok((StatusCode::OK, Json(created(&s.service, &info, token))));
            }
            Err(e) if e.code == ErrorCode::SandboxPaused => {
                refuse_reboot(req.memory)?;
                if let Some(t) = req.timeout {
                    check_timeout(&s.service, t)?;
                }
                match resume_with_timeout(&s.service, &owner, &id, req.timeout).await {
                    Ok(c) => {
                        tracing::info!(sandbox = %id, "e2b: connect resumed a paused sandbox");
                        return Ok((StatusCode::CREATED, Json(c)));
                    }
                    Err(e) => e,
                }
            }
            Err(e) => return Err(e.into()),
        };
        // Being paused or resumed by another call (or running again): look
        // again shortly, until that is done.
        let moving = matches!(e.code, ErrorCode::SandboxPaused | ErrorCode::Conflict);
        if !moving || Instant::now() >= deadline {
            return Err(control_error(e, &id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /sandboxes/{id}/pause {memory?, requireHealthyGuest?}`: 204 once
/// its memory and files are on disk and its VM is gone; 409 when it is
/// already paused, 404 when there is no such sandbox. `memory: false` (a
/// files-only pause) is refused; with `requireHealthyGuest` the guest
/// agent must answer first (503 and still running otherwise).
pub async fn pause(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let req: PauseBody = json_body(body).await?;
    if req.memory == Some(false) {
        return Err(ApiError::new(
            400,
            "a files-only pause (mode=\"filesystem\", memory: false) is not supported by \
             IronClaw: a pause keeps the sandbox's memory and files (see docs/e2b.md)",
        ));
    }
    if req.require_healthy_guest == Some(true) {
        let sandbox = s
            .service
            .get(&owner, &id)
            .map_err(|e| control_error(e, &id))?;
        let answered = tokio::time::timeout(HEALTHY_GUEST_WAIT, sandbox.agent().stat("/")).await;
        if !matches!(answered, Ok(Ok(_))) {
            return Err(ApiError::new(
                503,
                format!(
                    "the guest agent of sandbox {id} does not answer (requireHealthyGuest): not paused, it keeps running"
                ),
            ));
        }
    }
    s.service
        .pause(&owner, &id)
        .await
        .map_err(|e| control_error(e, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/resume {timeout?, autoPause?, memory?}` (the
/// older path; the SDKs connect instead): 201, 409 when it is running, 404
/// when there is no such sandbox.
pub async fn resume(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<SandboxCreated>), ApiError> {
    let req: ResumeBody = json_body(body).await?;
    if req.auto_pause == Some(true) {
        return Err(ApiError::new(
            400,
            "autoPause (pausing when the timeout is reached) is not supported by IronClaw (see docs/e2b.md)",
        ));
    }
    refuse_reboot(req.memory)?;
    if let Some(t) = req.timeout {
        check_timeout(&s.service, t)?;
    }
    let c = resume_with_timeout(&s.service, &owner, &id, req.timeout)
        .await
        .map_err(|e| control_error(e, &id))?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// `%XX` and `+` decoded (a query's key or value).
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1&k2=v2` (each part URL-encoded) as pairs.
fn metadata_filter(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `GET /v2/sandboxes` (and `GET /sandboxes`): the caller's sandboxes,
/// running and paused, filtered by `metadata`, `state` (`running`,
/// `paused` or both; both when absent), `template` and `startedAfter`,
/// `limit` at a time (`x-next-token` says where the next page starts).
pub async fn list(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: ListQuery = axum::extract::Query::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(400, format!("invalid query: {}", e.body_text())))?;
    let want = q
        .metadata
        .as_deref()
        .map(metadata_filter)
        .unwrap_or_default();
    let (mut running, mut paused) = (false, false);
    for st in q.state.as_deref().unwrap_or_default().split(',') {
        match st.trim() {
            "running" => running = true,
            "paused" => paused = true,
            "" => {}
            other => {
                return Err(ApiError::new(
                    400,
                    format!("state {other:?}: running or paused"),
                ))
            }
        }
    }
    // No `state`: both, as E2B lists them.
    if !running && !paused {
        (running, paused) = (true, true);
    }
    let after = match q.started_after.as_deref() {
        None | Some("") => 0,
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| ApiError::new(400, format!("startedAfter {t:?}: {e}")))?
            .timestamp()
            .max(0) as u64,
    };
    let mut all: Vec<SandboxDetail> = s
        .service
        .list(&owner)
        .iter()
        .filter(|i| match i.state {
            service_types::SandboxState::Running => running,
            service_types::SandboxState::Paused => paused,
        })
        .filter(|i| want.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
        .filter(|i| i.created_at >= after)
        .map(|i| detail(&s.service, i, None))
        .filter(|d| q.template.as_ref().is_none_or(|t| &d.template_id == t))
        .collect();
    // The service lists oldest first.
    match q.order.as_deref() {
        None | Some("") | Some("asc") => {}
        Some("desc") => all.reverse(),
        Some(o) => return Err(ApiError::new(400, format!("order {o:?}: asc or desc"))),
    }
    page(&all, q.next_token.as_deref(), q.limit)
}

/// One page of `items` as the E2B API lists: from `next_token` (an offset
/// this service gave), `limit` at a time (default 100, at most 1000), with
/// `x-next-token` when more follow.
pub(super) fn page<T: serde::Serialize>(
    items: &[T],
    next_token: Option<&str>,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let start = match next_token {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            ApiError::new(400, format!("nextToken {t:?} is not one this service gave"))
        })?,
    };
    let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT);
    let end = (start + limit).min(items.len());
    let page: Vec<&T> = items.iter().skip(start).take(limit).collect();
    let mut response = Json(page).into_response();
    if end < items.len() {
        if let Ok(v) = HeaderValue::from_str(&end.to_string()) {
            response.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn metadata_queries_are_decoded_pairs() {
        assert_eq!(
            metadata_filter("user%20id=a%26b&x=1"),
            vec![("user id".into(), "a&b".into()), ("x".into(), "1".into())]
        );
        assert_eq!(percent_decode("50%"), "50%");
    }
}

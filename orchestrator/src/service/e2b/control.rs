//! E2B's control plane on the service's lifecycle: create (`templateID` →
//! image, `timeout` → lifetime, `metadata` → labels, `envVars` → env),
//! inspect, list, kill, set the timeout, connect.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::types::{
    ConnectBody, ListQuery, NewSandbox, SandboxCreated, SandboxDetail, SandboxState, TimeoutBody,
    CLIENT_ID, ENVD_VERSION,
};
use super::{json_body, ApiError, ApiOwner, E2bState};
use crate::service::pools::NO_IMAGE;
use crate::service::types::{CreateSandbox, SandboxInfo};
use crate::service::Service;

/// E2B's default template: the service's default image.
pub const BASE_TEMPLATE: &str = "base";
/// Sandboxes a list answers with when the query sets no limit.
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// The image a template names; a clear error when there is none by that name.
fn image_of(service: &Service, template: &str) -> Result<String, ApiError> {
    if template.is_empty() {
        return Err(ApiError::new(400, "templateID is required"));
    }
    if template == BASE_TEMPLATE {
        return Ok(service.default_image().to_string());
    }
    if template == NO_IMAGE {
        return Ok(template.to_string());
    }
    let known =
        crate::userland::validate_name(template).is_ok() && crate::userland::find(template).is_ok();
    if !known {
        return Err(ApiError::new(
            404,
            format!(
                "template {template:?} not found: IronClaw's templates are its image names \
                 (`ironclaw image list`; `{BASE_TEMPLATE}` is the default image); \
                 building templates through the E2B API is not supported"
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
        state: SandboxState::Running,
        metadata: info.labels.clone(),
        envd_access_token: token,
    }
}

fn created(service: &Service, info: &SandboxInfo, token: String) -> SandboxCreated {
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
        return refuse("autoPause (pausing a sandbox)");
    }
    if req
        .auto_resume
        .as_ref()
        .and_then(|v| v.get("enabled"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return refuse("autoResume (pausing a sandbox)");
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
    let image = image_of(&s.service, &req.template_id)?;
    let info = s
        .service
        .create(
            &owner,
            CreateSandbox {
                image: Some(image),
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

/// `GET /sandboxes/{id}`.
pub async fn inspect(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    let sandbox = s.service.get(&owner, &id)?;
    let token = sandbox.access_token().to_string();
    Ok(Json(detail(&s.service, &sandbox.info(), Some(token))))
}

/// `DELETE /sandboxes/{id}`: 204, or 404 when there is no such sandbox.
pub async fn kill(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service.destroy(&owner, &id).await?;
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
    s.service.set_timeout(&owner, &id, req.timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v2/sandboxes/{id}/connect {timeout?}`: a running sandbox (there are
/// no paused ones); a `timeout` longer than what is left extends it.
pub async fn connect(
    State(s): State<E2bState>,
    ApiOwner(owner): ApiOwner,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<SandboxCreated>, ApiError> {
    let req: ConnectBody = json_body(body).await?;
    let sandbox = s.service.get(&owner, &id)?;
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
    Ok(Json(created(&s.service, &info, token)))
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
/// filtered by `metadata` and `state`, `limit` at a time (`x-next-token`
/// says where the next page starts).
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
    let running = q
        .state
        .as_deref()
        .is_none_or(|st| st.split(',').any(|x| x.trim() == "running"));
    let after = match q.started_after.as_deref() {
        None | Some("") => 0,
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| ApiError::new(400, format!("startedAfter {t:?}: {e}")))?
            .timestamp()
            .max(0) as u64,
    };
    let mut all: Vec<SandboxDetail> = if running {
        s.service
            .list(&owner)
            .iter()
            .filter(|i| want.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .filter(|i| i.created_at >= after)
            .map(|i| detail(&s.service, i, None))
            .filter(|d| q.template.as_ref().is_none_or(|t| &d.template_id == t))
            .collect()
    } else {
        Vec::new()
    };
    // The service lists oldest first.
    match q.order.as_deref() {
        None | Some("") | Some("asc") => {}
        Some("desc") => all.reverse(),
        Some(o) => return Err(ApiError::new(400, format!("order {o:?}: asc or desc"))),
    }
    let start = match q.next_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            ApiError::new(400, format!("nextToken {t:?} is not one this service gave"))
        })?,
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let end = (start + limit).min(all.len());
    let page: Vec<&SandboxDetail> = all.iter().skip(start).take(limit).collect();
    let mut response = Json(page).into_response();
    if end < all.len() {
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

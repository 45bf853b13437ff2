//! envd's `filesystem.Filesystem` service on the service's file calls:
//! `Stat`, `ListDir` (to a depth), `MakeDir`, `Remove`, `Move` (an exec of
//! `mv`). Watching directories is not supported.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::connect::{self, ConnectError};
use super::types::{EntryInfo, EntryList, EntryMessage, ListDirRequest, MoveRequest, PathRequest};
use super::{E2bState, Envd};
use crate::service::error::ErrorCode;
use crate::service::pools::DEFAULT_CWD;
use crate::service::sandbox::Sandbox;
use crate::service::types::{ExecBody, FileInfo, FileKind};

/// Entries one `ListDir` answers with, at most (all depths together).
const MAX_LIST_ENTRIES: usize = 100_000;

/// `path` in the sandbox: a relative one is taken from the sandbox's
/// working directory (E2B takes it from the user's home).
pub fn guest_path(sandbox: &Sandbox, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let base = sandbox.spec.cwd.as_deref().unwrap_or(DEFAULT_CWD);
    let rel = path.trim_start_matches("./");
    if rel.is_empty() || rel == "." {
        base.to_string()
    } else {
        format!("{}/{rel}", base.trim_end_matches('/'))
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Go's `FileMode.String()`: the type letter and `rwx` triplets.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'L',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// envd's `EntryInfo` of the entry at `path`.
pub fn entry_info(path: &str, info: &FileInfo) -> EntryInfo {
    EntryInfo {
        name: info.name.clone(),
        kind: match info.kind {
            FileKind::File => "FILE_TYPE_FILE",
            FileKind::Dir => "FILE_TYPE_DIRECTORY",
            FileKind::Symlink => "FILE_TYPE_SYMLINK",
            FileKind::Other => "FILE_TYPE_UNSPECIFIED",
        },
        path: path.to_string(),
        size: info.size.to_string(),
        mode: info.mode,
        permissions: permissions(info.kind, info.mode),
        // The guest agent's stat carries no owner.
        owner: String::new(),
        group: String::new(),
        modified_time: DateTime::<Utc>::from_timestamp(info.mtime, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        symlink_target: info.link_target.clone(),
    }
}

/// `POST /filesystem.Filesystem/{method}`.
pub async fn rpc(
    State(s): State<E2bState>,
    Envd(sandbox): Envd,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    sandbox.touch();
    let answer = match method.as_str() {
        "Stat" => stat(&s, &sandbox, &headers, body).await,
        "ListDir" => list_dir(&s, &sandbox, &headers, body).await,
        "MakeDir" => make_dir(&s, &sandbox, &headers, body).await,
        "Remove" => remove(&s, &sandbox, &headers, body).await,
        "Move" => rename(&s, &sandbox, &headers, body).await,
        "WatchDir" => {
            return connect::stream_error(ConnectError::unsupported("watching a directory"))
        }
        "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
            Err(ConnectError::unsupported("watching a directory"))
        }
        other => Err(ConnectError::new(
            "unimplemented",
            format!("no method filesystem.Filesystem/{other}"),
        )),
    };
    match answer {
        Ok(v) => connect::unary_reply(&v),
        Err(e) => e.into_response(),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("messages serialize")
}

async fn stat_entry(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    path: &str,
) -> Result<EntryInfo, ConnectError> {
    let info = s.service.stat(&sandbox.owner, &sandbox.id, path).await?;
    Ok(entry_info(path, &info))
}

async fn stat(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: PathRequest = connect::unary_request(headers, body).await?;
    let path = guest_path(sandbox, &req.path);
    Ok(to_value(EntryMessage {
        entry: stat_entry(s, sandbox, &path).await?,
    }))
}

async fn list_dir(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: ListDirRequest = connect::unary_request(headers, body).await?;
    let root = guest_path(sandbox, &req.path);
    let mut entries = Vec::new();
    // Breadth first, down to `depth` levels (0 means 1, as in envd).
    let mut dirs = vec![(root, req.depth.max(1))];
    while let Some((dir, depth)) = dirs.pop() {
        let listing = s
            .service
            .list_dir(&sandbox.owner, &sandbox.id, &dir)
            .await?;
        for e in &listing.entries {
            let path = join(&dir, &e.name);
            if depth > 1 && e.kind == FileKind::Dir {
                dirs.push((path.clone(), depth - 1));
            }
            entries.push(entry_info(&path, e));
        }
        if entries.len() > MAX_LIST_ENTRIES {
            return Err(ConnectError::new(
                "resource_exhausted",
                format!("more than {MAX_LIST_ENTRIES} entries; list with a smaller depth"),
            ));
        }
    }
    Ok(to_value(EntryList { entries }))
}

async fn make_dir(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: PathRequest = connect::unary_request(headers, body).await?;
    let path = guest_path(sandbox, &req.path);
    match s.service.stat(&sandbox.owner, &sandbox.id, &path).await {
        Ok(_) => {
            return Err(ConnectError::new(
                "already_exists",
                format!("{path} already exists"),
            ))
        }
        Err(e) if e.code == ErrorCode::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    s.service
        .mkdir(&sandbox.owner, &sandbox.id, &path, None, true)
        .await?;
    Ok(to_value(EntryMessage {
        entry: stat_entry(s, sandbox, &path).await?,
    }))
}

async fn remove(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: PathRequest = connect::unary_request(headers, body).await?;
    let path = guest_path(sandbox, &req.path);
    match s
        .service
        .remove(&sandbox.owner, &sandbox.id, &path, true)
        .await
    {
        // As envd (Go's `os.RemoveAll`): removing what is not there succeeds.
        Err(e) if e.code == ErrorCode::NotFound => Ok(json!({})),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(json!({})),
    }
}

async fn rename(
    s: &E2bState,
    sandbox: &Arc<Sandbox>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ConnectError> {
    let req: MoveRequest = connect::unary_request(headers, body).await?;
    let (from, to) = (
        guest_path(sandbox, &req.source),
        guest_path(sandbox, &req.destination),
    );
    let out = s
        .service
        .exec(
            &sandbox.owner,
            &sandbox.id,
            ExecBody {
                argv: Some(vec!["mv".into(), "--".into(), from.clone(), to.clone()]),
                timeout_s: Some(60.0),
                ..ExecBody::default()
            },
        )
        .await?;
    if out.exit_code != Some(0) {
        let why = out.stderr.trim();
        return Err(if why.contains("No such file") {
            ConnectError::not_found(format!("moving {from} to {to}: {why}"))
        } else {
            ConnectError::invalid(format!("moving {from} to {to}: {why}"))
        });
    }
    Ok(to_value(EntryMessage {
        entry: stat_entry(s, sandbox, &to).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_go() {
        assert_eq!(permissions(FileKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/tmp/", "a"), "/tmp/a");
    }
}

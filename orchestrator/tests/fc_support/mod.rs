//! Shared by the Firecracker test binaries: the repository's own description
//! of the part of Firecracker's API that IronClaw uses
//! (`tests/data/firecracker-api.json`, written by hand from Firecracker's
//! OpenAPI document), a checker of request bodies against it, the fake
//! Firecracker API server ([`fake_api`]) with the hybrid vsock socket and a
//! minimal guest agent behind it ([`vsock`]), the fake jailer, temporary
//! directories.

#![allow(dead_code)]

pub mod fake_api;
pub mod vsock;

// Not every test binary uses all of them.
#[allow(unused_imports)]
pub use fake_api::{Behaviour, FakeFirecracker, Place};

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value as Json};

/// The API description the fakes and checks use: in the repository, so the
/// tests need nothing beside it.
pub const API_DESCRIPTION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/firecracker-api.json"
);

/// The parsed API description (`operations`, `definitions`).
pub type Spec = Json;

pub fn spec() -> Arc<Spec> {
    let text = std::fs::read_to_string(API_DESCRIPTION).unwrap_or_else(|e| {
        panic!("IronClaw's Firecracker API description {API_DESCRIPTION}: {e}")
    });
    let spec: Spec =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {API_DESCRIPTION}: {e}"));
    assert!(
        spec["operations"].is_object() && spec["definitions"].is_object(),
        "{API_DESCRIPTION} has no operations or definitions"
    );
    Arc::new(spec)
}

// ---- the request checker ----------------------------------------------------

/// The definition called `name`; a name the description lacks is a bug in
/// the description (or the test), not a request error.
pub fn definition<'a>(spec: &'a Spec, name: &str) -> &'a Json {
    let def = &spec["definitions"][name];
    assert!(
        def.is_object(),
        "{API_DESCRIPTION} has no definition {name}"
    );
    def
}

/// Appends to `errs` every way `v` violates the definition `def`: not an
/// object, a required field missing, a field the description lacks, and
/// every field's own violations ([`check_field`]).
pub fn check_definition(spec: &Spec, def: &str, v: &Json, at: &str, errs: &mut Vec<String>) {
    let schema = definition(spec, def);
    let Some(obj) = v.as_object() else {
        errs.push(format!("{at}: expected an object ({def}), got {v}"));
        return;
    };
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().expect("required names are strings");
        if !obj.contains_key(req) {
            errs.push(format!("{at}: required field `{req}` missing"));
        }
    }
    for (k, val) in obj {
        match schema["properties"].get(k.as_str()) {
            Some(field) => check_field(spec, field, val, &format!("{at}.{k}"), errs),
            None => errs.push(format!("{at}: field `{k}` is not in the API description")),
        }
    }
}

/// Wrong type (string, integer, boolean, or another definition), a value
/// outside the listed enum values, an integer outside the range.
pub fn check_field(spec: &Spec, field: &Json, v: &Json, at: &str, errs: &mut Vec<String>) {
    if let Some(def) = field["definition"].as_str() {
        return check_definition(spec, def, v, at, errs);
    }
    if let Some(values) = field["enum"].as_array() {
        if !values.contains(v) {
            errs.push(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    match field["type"].as_str() {
        Some("string") if !v.is_string() => errs.push(format!("{at}: expected a string, got {v}")),
        Some("boolean") if !v.is_boolean() => {
            errs.push(format!("{at}: expected a boolean, got {v}"))
        }
        Some("integer") => match v.as_i64() {
            None => errs.push(format!("{at}: expected an integer, got {v}")),
            Some(n) => {
                if let Some(min) = field["minimum"].as_i64() {
                    if n < min {
                        errs.push(format!("{at}: {n} is below the minimum {min}"));
                    }
                }
                if let Some(max) = field["maximum"].as_i64() {
                    if n > max {
                        errs.push(format!("{at}: {n} is above the maximum {max}"));
                    }
                }
            }
        },
        Some("string" | "boolean") => {}
        other => {
            panic!("{API_DESCRIPTION}: field type {other:?} at {at} is not handled by the checker")
        }
    }
}

/// The operation for `method` on a concrete `path`, matching templated
/// segments like `{drive_id}`: (template, operation).
pub fn operation<'a>(spec: &'a Spec, method: &str, path: &str) -> Option<(String, &'a Json)> {
    let want: Vec<&str> = path.split('/').collect();
    spec["operations"]
        .as_object()?
        .iter()
        .find_map(|(tmpl, ops)| {
            let segs: Vec<&str> = tmpl.split('/').collect();
            let matches = segs.len() == want.len()
                && segs.iter().zip(&want).all(|(s, w)| {
                    s == w || (s.starts_with('{') && s.ends_with('}') && !w.is_empty())
                });
            let op = ops.get(method.to_ascii_uppercase().as_str())?;
            matches.then(|| (tmpl.clone(), op))
        })
}

/// Every violation of the description by a request: unknown path or
/// method, a missing required body, a body that does not fit its definition.
pub fn check_request(spec: &Spec, method: &str, path: &str, body: Option<&Json>) -> Vec<String> {
    let Some((tmpl, op)) = operation(spec, method, path) else {
        return vec![format!(
            "{method} {path}: no such operation in the API description"
        )];
    };
    let mut errs = Vec::new();
    match (op["body"].as_str(), body) {
        (Some(def), Some(b)) => {
            check_definition(spec, def, b, &format!("{method} {tmpl}"), &mut errs)
        }
        (Some(_), None) if op["body_required"] == json!(true) => {
            errs.push(format!("{method} {tmpl}: the required body is missing"))
        }
        (None, Some(b)) => errs.push(format!("{method} {tmpl}: takes no body, got {b}")),
        _ => {}
    }
    errs
}

pub fn definition_errors(spec: &Spec, name: &str, value: &Json) -> Vec<String> {
    let mut errs = Vec::new();
    check_definition(spec, name, value, name, &mut errs);
    errs
}

// ---- the fake jailer ----------------------------------------------------------

/// Does what the jailer documents, for the parts the orchestrator relies on.
/// `@OUT@` (replaced by the directory it records into) receives `argv` (one
/// argument a line; also as `argv-<id>` once everything is set up, which the
/// fake APIs wait for), `netns` (what the `--netns` path links to), `links`
/// and `cgroups`.
pub const FAKE_JAILER: &str = r#"#!/bin/sh
set -u
out=@OUT@
printf '%s\n' "$@" > "$out/argv.tmp"
id= exec_file= base=/srv/jailer netns= version=1 parent=
cgroups=
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2 ;;
    --exec-file) exec_file=$2; shift 2 ;;
    --uid|--gid) shift 2 ;;
    --chroot-base-dir) base=$2; shift 2 ;;
    --netns) netns=$2; shift 2 ;;
    --cgroup-version) version=$2; shift 2 ;;
    --parent-cgroup) parent=$2; shift 2 ;;
    --cgroup) cgroups="$cgroups
$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "fake jailer: unknown argument $1" >&2; exit 2 ;;
  esac
done
for a in "$@"; do
  [ "$a" = --no-seccomp ] && { echo "fake jailer: --no-seccomp" >&2; exit 3; }
done
case "$(basename "$exec_file")" in *firecracker*) ;; *) echo "bad exec file" >&2; exit 4 ;; esac
root="$base/$(basename "$exec_file")/$id/root"
[ -d "$root/run" ] || { echo "fake jailer: $root/run missing" >&2; exit 5; }
cp "$exec_file" "$root/$(basename "$exec_file")" || exit 6
readlink "$netns" > "$out/netns" || { echo "fake jailer: netns $netns" >&2; exit 7; }
if command -v nsenter >/dev/null && command -v ip >/dev/null; then
  nsenter --net="$netns" ip -o link > "$out/links" || exit 7
fi
[ "$version" = 1 ] || { echo "fake jailer: only v1 here" >&2; exit 8; }
echo "$cgroups" | while IFS= read -r c; do
  [ -n "$c" ] || continue
  file=${c%%=*}; value=${c#*=}; controller=${file%%.*}
  mount=$(awk -v c="$controller" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) { print $2; exit } }' /proc/mounts)
  [ -n "$mount" ] || { echo "fake jailer: no $controller mount" >&2; exit 9; }
  dir="$mount/$parent/$id"
  mkdir -p "$dir" && echo "$value" > "$dir/$file" && echo $$ > "$dir/tasks" || exit 10
  echo "$dir" >> "$out/cgroups"
done || exit 11
mv "$out/argv.tmp" "$out/argv"
cp "$out/argv" "$out/argv-$id.tmp" && mv "$out/argv-$id.tmp" "$out/argv-$id" || exit 12
exec "$root/$(basename "$exec_file")" --id="$id" "$@"
"#;

pub type Body = Full<Bytes>;

pub fn answer(status: StatusCode, body: Option<Json>) -> Response<Body> {
    let mut r = Response::builder().status(status);
    let bytes = match body {
        Some(b) => {
            r = r.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    r.body(Full::new(bytes)).unwrap()
}

pub fn fault(msg: impl Into<String>) -> Response<Body> {
    answer(
        StatusCode::BAD_REQUEST,
        Some(json!({ "fault_message": msg.into() })),
    )
}

/// A temporary directory under `dir`, removed when dropped.
pub fn tempdir_in(dir: impl AsRef<Path>, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .unwrap_or_else(|e| panic!("a temporary directory: {e}"))
}

/// A temporary directory, removed when dropped; in `/tmp`, whatever
/// `$TMPDIR` says, so that socket paths in it stay within their 107 bytes.
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    tempdir_in("/tmp", prefix)
}

/// Prints past the test harness's capture (it captures the print macros
/// only): a skipped or weakened check must be visible in every run.
pub fn visible(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

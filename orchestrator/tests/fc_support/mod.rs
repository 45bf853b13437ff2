//! Shared by the Firecracker test binaries: Firecracker's API description
//! (read at test time from ../shared/spec, never copied), a small Swagger 2.0
//! checker for request bodies, the fake API's answers, temporary directories.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;

pub const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/spec/firecracker-swagger.yaml"
);

pub fn spec() -> Arc<Yaml> {
    let text = std::fs::read_to_string(SPEC)
        .unwrap_or_else(|e| panic!("Firecracker's API description {SPEC}: {e}"));
    Arc::new(serde_yaml::from_str(&text).expect("parsing the Firecracker API description"))
}

// ---- a small Swagger 2.0 schema checker ----------------------------------

pub fn resolve<'a>(spec: &'a Yaml, schema: &'a Yaml) -> &'a Yaml {
    match schema.get("$ref").and_then(Yaml::as_str) {
        Some(r) => {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("unsupported $ref {r}"));
            let def = &spec["definitions"][name];
            assert!(!def.is_null(), "$ref {r} names no definition");
            resolve(spec, def)
        }
        None => schema,
    }
}

pub fn enum_has(values: &Yaml, v: &Json) -> bool {
    values.as_sequence().is_some_and(|vals| {
        vals.iter().any(|e| match (e, v) {
            (Yaml::String(a), Json::String(b)) => a == b,
            (Yaml::Number(a), Json::Number(b)) => a.to_string() == b.to_string(),
            (Yaml::Bool(a), Json::Bool(b)) => a == b,
            _ => false,
        })
    })
}

/// Appends to `errs` every way `v` violates `schema`: wrong type, missing
/// required field, a field the schema lacks, value outside an enum or range.
pub fn check(spec: &Yaml, schema: &Yaml, v: &Json, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(values) = schema.get("enum") {
        if !enum_has(values, v) {
            errs.push(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    let ty = schema
        .get("type")
        .and_then(Yaml::as_str)
        .or_else(|| schema.get("properties").is_some().then_some("object"));
    match ty {
        Some("object") => {
            let Some(obj) = v.as_object() else {
                errs.push(format!("{at}: expected an object, got {v}"));
                return;
            };
            for req in schema
                .get("required")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap();
                if !obj.contains_key(req) {
                    errs.push(format!("{at}: required field `{req}` missing"));
                }
            }
            let props = schema.get("properties");
            for (k, val) in obj {
                match props.and_then(|p| p.get(k.as_str())) {
                    Some(s) => check(spec, s, val, &format!("{at}.{k}"), errs),
                    None => errs.push(format!("{at}: field `{k}` is not in the schema")),
                }
            }
        }
        Some("string") if !v.is_string() => errs.push(format!("{at}: expected a string, got {v}")),
        Some("string") => {}
        Some("boolean") if !v.is_boolean() => {
            errs.push(format!("{at}: expected a boolean, got {v}"))
        }
        Some("boolean") => {}
        Some("integer") => match v.as_i64() {
            None => errs.push(format!("{at}: expected an integer, got {v}")),
            Some(n) => {
                if let Some(min) = schema.get("minimum").and_then(Yaml::as_i64) {
                    if n < min {
                        errs.push(format!("{at}: {n} is below the minimum {min}"));
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Yaml::as_i64) {
                    if n > max {
                        errs.push(format!("{at}: {n} is above the maximum {max}"));
                    }
                }
            }
        },
        Some("number") if !v.is_number() => errs.push(format!("{at}: expected a number, got {v}")),
        Some("number") => {}
        Some("array") => match v.as_array() {
            None => errs.push(format!("{at}: expected an array, got {v}")),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(spec, &schema["items"], item, &format!("{at}[{i}]"), errs);
                }
            }
        },
        Some(other) => errs.push(format!(
            "{at}: schema type {other} not handled by the checker"
        )),
        None => {}
    }
}

/// The operation for `method` on a concrete `path`, matching templated
/// segments like `{drive_id}`: (template, operation).
pub fn operation<'a>(spec: &'a Yaml, method: &str, path: &str) -> Option<(String, &'a Yaml)> {
    let want: Vec<&str> = path.split('/').collect();
    spec["paths"].as_mapping()?.iter().find_map(|(tmpl, ops)| {
        let tmpl = tmpl.as_str()?;
        let segs: Vec<&str> = tmpl.split('/').collect();
        let matches = segs.len() == want.len()
            && segs
                .iter()
                .zip(&want)
                .all(|(s, w)| s == w || (s.starts_with('{') && s.ends_with('}') && !w.is_empty()));
        let op = ops.get(method.to_ascii_lowercase().as_str())?;
        matches.then(|| (tmpl.to_string(), op))
    })
}

/// Every violation of the spec by a request: unknown path or method, a
/// missing required body, a body that does not fit its schema.
pub fn check_request(spec: &Yaml, method: &str, path: &str, body: Option<&Json>) -> Vec<String> {
    let Some((tmpl, op)) = operation(spec, method, path) else {
        return vec![format!(
            "{method} {path}: no such operation in the API description"
        )];
    };
    let mut errs = Vec::new();
    let body_param = op["parameters"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["in"].as_str() == Some("body"));
    match (body_param, body) {
        (Some(p), Some(b)) => check(
            spec,
            &p["schema"],
            b,
            &format!("{method} {tmpl}"),
            &mut errs,
        ),
        (Some(p), None) if p["required"].as_bool() == Some(true) => {
            errs.push(format!("{method} {tmpl}: the required body is missing"))
        }
        (None, Some(b)) => errs.push(format!("{method} {tmpl}: takes no body, got {b}")),
        _ => {}
    }
    errs
}

pub fn definition_errors(spec: &Yaml, name: &str, value: &Json) -> Vec<String> {
    let mut errs = Vec::new();
    let def = &spec["definitions"][name];
    assert!(!def.is_null(), "no definition {name}");
    check(spec, def, value, name, &mut errs);
    errs
}

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

/// A temporary directory (short: socket paths are limited to 107 bytes).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let mut b = [0u8; 4];
        getrandom::getrandom(&mut b).unwrap();
        let p = PathBuf::from(format!("/tmp/{prefix}-{}", hex::encode(b)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints past the test harness's capture (it captures the print macros
/// only): a skipped or weakened check must be visible in every run.
pub fn visible(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

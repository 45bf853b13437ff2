//! The Connect protocol (connectrpc.com/docs/protocol) as envd speaks it to
//! the E2B SDKs: the JSON codec only, no compression, HTTP/1.1.
//!
//! - **Unary**: `POST /<package.Service>/<Method>` with `application/json`;
//!   the answer is the JSON message with 200, or an error: a non-2xx status
//!   with `{"code": "not_found", "message": …}`.
//! - **Server streaming**: the request is one *envelope* (a flag byte, a
//!   big-endian u32 length, the JSON message) with `application/connect+json`;
//!   the answer is 200 `application/connect+json`, a stream of envelopes
//!   with flag 0, ended by one with flag 2 (end of stream) carrying `{}` or
//!   `{"error": {"code", "message"}}`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::service::error::{ErrorCode, ServiceError};

/// The largest request message (stdin chunks are the large ones).
const MAX_REQUEST_BYTES: usize = 32 << 20;
const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END_STREAM: u8 = 0x02;
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// A Connect error: a code of the protocol and a message.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: &'static str,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ConnectError {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ConnectError {
        ConnectError::new("invalid_argument", message)
    }

    pub fn not_found(message: impl Into<String>) -> ConnectError {
        ConnectError::new("not_found", message)
    }

    /// What IronClaw does not implement: the message says what.
    pub fn unsupported(what: &str) -> ConnectError {
        ConnectError::new(
            "unimplemented",
            format!("{what} is not supported by IronClaw's E2B-compatible API (see docs/e2b.md)"),
        )
    }

    /// The HTTP status of a unary error (the protocol's table).
    pub fn http_status(&self) -> StatusCode {
        let code = match self.code {
            "canceled" => 499,
            "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" => 404,
            "already_exists" | "aborted" => 409,
            "resource_exhausted" => 429,
            "unimplemented" => 501,
            "unavailable" => 503,
            "deadline_exceeded" => 504,
            _ => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn body(&self) -> serde_json::Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl From<ServiceError> for ConnectError {
    fn from(e: ServiceError) -> ConnectError {
        let code = match e.code {
            ErrorCode::BadRequest => "invalid_argument",
            ErrorCode::Unauthorized => "unauthenticated",
            ErrorCode::NotFound | ErrorCode::SandboxExpired => "not_found",
            ErrorCode::Conflict | ErrorCode::SandboxPaused | ErrorCode::SnapshotInvalid => {
                "failed_precondition"
            }
            ErrorCode::StorageFull => "resource_exhausted",
            ErrorCode::LimitReached => "resource_exhausted",
            ErrorCode::Unavailable | ErrorCode::SandboxFailed => "unavailable",
            ErrorCode::Internal => "internal",
        };
        ConnectError::new(code, e.message)
    }
}

impl IntoResponse for ConnectError {
    /// A unary RPC's error.
    fn into_response(self) -> Response {
        (self.http_status(), axum::Json(self.body())).into_response()
    }
}

/// `T` from JSON; an empty body is the empty message.
fn parse<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ConnectError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ConnectError::invalid(format!("invalid JSON message: {e}")))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

fn refuse_compression(headers: &HeaderMap, name: &str) -> Result<(), ConnectError> {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok(()),
        Some(other) => Err(ConnectError::unsupported(&format!("{name} {other}"))),
    }
}

async fn read_body(body: Body) -> Result<Bytes, ConnectError> {
    axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|e| ConnectError::new("resource_exhausted", format!("reading the request: {e}")))
}

/// The message of a unary call.
pub async fn unary_request<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ConnectError> {
    match content_type(headers) {
        "application/json" | "" => {}
        other => {
            return Err(ConnectError::unsupported(&format!(
                "the codec {other:?} (only JSON, application/json)"
            )))
        }
    }
    refuse_compression(headers, "content-encoding")?;
    parse(&read_body(body).await?)
}

/// A unary call's answer.
pub fn unary_reply<T: Serialize>(message: &T) -> Response {
    (StatusCode::OK, axum::Json(message)).into_response()
}

/// The one message of a server-streaming call (an envelope).
pub async fn stream_request<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ConnectError> {
    match content_type(headers) {
        STREAM_CONTENT_TYPE | "" => {}
        other => {
            return Err(ConnectError::unsupported(&format!(
                "the codec {other:?} (only JSON, {STREAM_CONTENT_TYPE})"
            )))
        }
    }
    refuse_compression(headers, "connect-content-encoding")?;
    let bytes = read_body(body).await?;
    if bytes.len() < 5 {
        return Err(ConnectError::invalid(
            "the request is not an enveloped message",
        ));
    }
    if bytes[0] & FLAG_COMPRESSED != 0 {
        return Err(ConnectError::unsupported("a compressed message"));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != 5 + len {
        return Err(ConnectError::invalid(format!(
            "the envelope says {len} bytes, the body has {}",
            bytes.len() - 5
        )));
    }
    parse(&bytes[5..])
}

fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + json.len());
    b.put_u8(flags);
    b.put_u32(json.len() as u32);
    b.put_slice(json);
    b.freeze()
}

/// One message of a stream.
pub fn message<T: Serialize>(message: &T) -> Bytes {
    envelope(0, &serde_json::to_vec(message).expect("messages serialize"))
}

/// The end of a stream, with its error if it failed.
pub fn end_of_stream(error: Option<&ConnectError>) -> Bytes {
    let body = match error {
        None => json!({}),
        Some(e) => json!({"error": e.body()}),
    };
    envelope(FLAG_END_STREAM, body.to_string().as_bytes())
}

/// A streaming answer: 200 with the envelopes `body` yields.
pub fn stream_reply(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    response
}

/// A streaming call that failed before its first message.
pub fn stream_error(error: ConnectError) -> Response {
    stream_reply(Body::from(end_of_stream(Some(&error))))
}

/// The client's deadline (`Connect-Timeout-Ms`), if it set one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_flag_length_and_json() {
        let b = message(&json!({"a": 1}));
        assert_eq!(&b[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&b[5..], br#"{"a":1}"#);
        let end = end_of_stream(Some(&ConnectError::not_found("gone")));
        assert_eq!(end[0], FLAG_END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "not_found", "message": "gone"}})
        );
        assert_eq!(&end_of_stream(None)[5..], b"{}");
    }

    #[tokio::test]
    async fn a_streamed_request_is_one_envelope() {
        #[derive(Debug, Default, serde::Deserialize)]
        struct M {
            pid: u32,
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(STREAM_CONTENT_TYPE),
        );
        let body = Body::from(message(&json!({"pid": 7, "extra": true})));
        let m: M = stream_request(&headers, body).await.unwrap();
        assert_eq!(m.pid, 7);
        let short = Body::from(Bytes::from_static(&[0, 0, 0, 0, 9, b'{']));
        let e = stream_request::<M>(&headers, short).await.unwrap_err();
        assert_eq!(e.code, "invalid_argument");
    }
}

//! Request bodies as JSON, refused with a 400 that names the field (unknown
//! fields too) instead of axum's plain-text 422.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::service::error::ServiceError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServiceError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ServiceError::bad_request(format!("reading the body: {e}")))?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T`; the error names the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServiceError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ServiceError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ServiceError::bad_request(format!("invalid JSON body: field {path}: {inner}"))
        }
    })
}

/// Query parameters, refused with a 400 that says what is wrong.
pub struct Params<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Params<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ServiceError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| ServiceError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

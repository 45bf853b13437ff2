//! The service's errors: a stable machine-readable code, an HTTP status and
//! a message that says what to change. REST and MCP report the same ones.

use std::time::Duration;

use serde::Serialize;

/// Stable error codes of the sandbox API (documented in `docs/api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range; the message names the field.
    BadRequest,
    /// No credentials, or wrong ones.
    Unauthorized,
    /// No sandbox, command or path by that name (for this caller).
    NotFound,
    /// The sandbox existed and was destroyed because its lifetime or idle
    /// timeout passed.
    SandboxExpired,
    /// The request conflicts with the resource's state (a finished command,
    /// an existing path).
    Conflict,
    /// A service-wide limit (sandboxes, memory, commands) is reached; retry later.
    LimitReached,
    /// The service is starting or stopping, or a VM could not be made.
    Unavailable,
    /// The sandbox is paused: resume it before running commands or moving files.
    SandboxPaused,
    /// The snapshot cannot be restored: damaged, truncated, or made with
    /// another kernel, image or VMM than the service runs now.
    SnapshotInvalid,
    /// The snapshot storage limit (`--max-snapshot-storage`) would be passed;
    /// remove snapshots or paused sandboxes.
    StorageFull,
    /// The guest stopped answering or broke the protocol; the sandbox is destroyed.
    SandboxFailed,
    /// A bug or an unexpected host failure.
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::SandboxExpired => 410,
            ErrorCode::Conflict => 409,
            ErrorCode::LimitReached => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::SandboxPaused => 409,
            ErrorCode::SnapshotInvalid => 422,
            ErrorCode::StorageFull => 507,
            ErrorCode::SandboxFailed => 502,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::SandboxExpired => "sandbox_expired",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SandboxPaused => "sandbox_paused",
            ErrorCode::SnapshotInvalid => "snapshot_invalid",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::SandboxFailed => "sandbox_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error of the sandbox service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// For [`ErrorCode::LimitReached`] and [`ErrorCode::Unavailable`]: when to retry.
    pub retry_after: Option<Duration>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Internal, message)
    }

    pub fn limit(message: impl Into<String>) -> ServiceError {
        ServiceError {
            retry_after: Some(Duration::from_secs(1)),
            ..ServiceError::new(ErrorCode::LimitReached, message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ServiceError {
        ServiceError {
            retry_after: Some(Duration::from_secs(1)),
            ..ServiceError::new(ErrorCode::Unavailable, message)
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable code; see `docs/api.md`.
    pub code: ErrorCode,
    /// What went wrong and what to change.
    pub message: String,
}

impl From<&ServiceError> for ErrorBody {
    fn from(e: &ServiceError) -> ErrorBody {
        ErrorBody {
            code: e.code,
            message: e.message.clone(),
        }
    }
}

impl From<crate::agent::FileError> for ServiceError {
    fn from(e: crate::agent::FileError) -> ServiceError {
        use crate::agent::FileError;
        match e {
            FileError::Agent(a) => a.into(),
            FileError::Remote(m) if m.contains("No such file") || m.contains("not found") => {
                ServiceError::not_found(format!("in the sandbox: {m}"))
            }
            FileError::Remote(m) if m.contains("exists") => {
                ServiceError::conflict(format!("in the sandbox: {m}"))
            }
            FileError::Remote(m) => ServiceError::bad_request(format!("in the sandbox: {m}")),
            other @ (FileError::TooManyEntries { .. }
            | FileError::ListingTooLarge { .. }
            | FileError::TooLarge { .. }) => ServiceError::limit(other.to_string()),
            other => ServiceError::new(ErrorCode::SandboxFailed, other.to_string()),
        }
    }
}

impl From<crate::agent::AgentError> for ServiceError {
    /// The guest refusing a request is the caller's error; a broken or
    /// silent channel is the sandbox's failure (it is then destroyed).
    fn from(e: crate::agent::AgentError) -> ServiceError {
        use crate::agent::AgentError;
        match e {
            AgentError::Remote(m) => ServiceError::bad_request(format!("in the sandbox: {m}")),
            AgentError::StreamEnded => ServiceError::conflict(
                "the sandbox ended the request before all its input was sent",
            ),
            other => ServiceError::new(ErrorCode::SandboxFailed, other.to_string()),
        }
    }
}

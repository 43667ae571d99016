//! [`AppError`]: every HTTP error of the relay, as JSON with a stable code.
//!
//! The body is always `{"error": {"code": "<stable_snake_case>", "message": "<sentence>"}}`.
//! Clients branch on `code`; `message` is for people and may change.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use coalition_core::resolve::ResolveError;
use coalition_core::EditError;

use crate::auth::AuthError;

/// An HTTP error of the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The request is malformed (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// No or an unknown credential (401 `unauthorized`).
    #[error(
        "a valid device credential is required (Authorization: Bearer <credential>, or ?token=)"
    )]
    Unauthorized,
    /// The device was revoked (403 `device_revoked`).
    #[error("this device was revoked; ask a coordinator for a new invite")]
    DeviceRevoked,
    /// Nothing here, or nothing this device may see (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The invite code is unknown (404 `invalid_invite`).
    #[error("this invite code is not valid; check it or ask for a new one")]
    InvalidInvite,
    /// The invite was already used (409 `invite_used`).
    #[error("this invite was already used; each invite enrolls one device")]
    InviteUsed,
    /// The invite expired (410 `invite_expired`).
    #[error("this invite expired; ask for a new one")]
    InviteExpired,
    /// The actor id is already registered to another device (409 `actor_taken`).
    #[error("this actor id is already registered to another device; generate a new one")]
    ActorTaken,
    /// The credential's role may not do this (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The field is not in conflict, or not with that value (409 `not_in_conflict`): someone
    /// decided first.
    #[error("{0}")]
    NotInConflict(String),
    /// The request conflicts with the state of what it names (409 `conflict`), e.g. a
    /// quarantined change already decided.
    #[error("{0}")]
    Conflict(String),
    /// The relay failed (500 `internal`); details are in the relay's log only.
    #[error("the relay failed to handle this request")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized => "unauthorized",
            AppError::DeviceRevoked => "device_revoked",
            AppError::NotFound(_) => "not_found",
            AppError::InvalidInvite => "invalid_invite",
            AppError::InviteUsed => "invite_used",
            AppError::InviteExpired => "invite_expired",
            AppError::ActorTaken => "actor_taken",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotInConflict(_) => "not_in_conflict",
            AppError::Conflict(_) => "conflict",
            AppError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::DeviceRevoked | AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) | AppError::InvalidInvite => StatusCode::NOT_FOUND,
            AppError::InviteUsed
            | AppError::ActorTaken
            | AppError::NotInConflict(_)
            | AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::InviteExpired => StatusCode::GONE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Wrap an unexpected failure.
    pub fn internal(error: impl Into<anyhow::Error>) -> AppError {
        AppError::Internal(error.into())
    }
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidInvite => AppError::InvalidInvite,
            AuthError::InviteUsed => AppError::InviteUsed,
            AuthError::InviteExpired => AppError::InviteExpired,
            AuthError::Unauthorized => AppError::Unauthorized,
            AuthError::DeviceRevoked => AppError::DeviceRevoked,
            AuthError::ActorTaken(_) => AppError::ActorTaken,
            AuthError::BadRequest(m) => AppError::BadRequest(m),
            e @ AuthError::NotFound { .. } => AppError::NotFound(e.to_string()),
            other => AppError::internal(other),
        }
    }
}

impl From<ResolveError> for AppError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Edit(e @ EditError::NotAllowed { .. }) => {
                AppError::Forbidden(e.to_string())
            }
            e @ (ResolveError::NotAConflict { .. } | ResolveError::NoSuchValue { .. }) => {
                AppError::NotInConflict(e.to_string())
            }
            e @ ResolveError::NotResolvable { .. } => AppError::BadRequest(e.to_string()),
            other => AppError::internal(other),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self {
            tracing::error!(error = ?e, "request failed");
        }
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        (self.status(), Json(body)).into_response()
    }
}

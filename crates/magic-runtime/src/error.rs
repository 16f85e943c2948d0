//! The public error envelope: `{"request_id", "error": {"code", "message", "details"?}}`.
//!
//! Owns: turning every failure the API reports into one envelope with a stable code and a
//! fitting HTTP status. Must never: put an internal error chain, a stack trace or a secret in
//! `message` or `details` — those go to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use magic_contract::ErrorCode;
use serde::Serialize;

/// An error the API answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Public code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Structured details (violations, the refused target, …).
    pub details: Option<serde_json::Value>,
    /// HTTP status when it differs from the code's usual one (413, 409, 405, …).
    pub status: Option<u16>,
}

impl ApiError {
    /// An error with the code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            status: None,
        }
    }

    /// Attach details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Answer with `status` instead of the code's usual one.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status.unwrap_or_else(|| self.code.http_status()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The envelope for `request_id`.
    pub fn into_envelope(self, request_id: &str) -> Response {
        let status = self.status();
        let body = Envelope {
            request_id,
            error: ErrorBody {
                code: self.code.as_str(),
                message: &self.message,
                details: self.details.as_ref(),
            },
        };
        let mut response = (status, axum::Json(&body)).into_response();
        if let Ok(value) = http::HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The error envelope as serialized.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<'a> {
    /// The request ID (also in the `X-Request-ID` header).
    pub request_id: &'a str,
    /// The error.
    #[schema(inline)]
    pub error: ErrorBody<'a>,
}

/// The `error` object of the envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Public error code, `E1001` … `E5003`.
    pub code: &'a str,
    /// Human-readable message.
    pub message: &'a str,
    /// Structured details.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<&'a serde_json::Value>,
}

/// An [`ApiError`] bound to its request ID, returned from handlers.
#[derive(Debug)]
pub struct Failure {
    /// The request ID.
    pub request_id: String,
    /// The error.
    pub error: ApiError,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.error.into_envelope(&self.request_id)
    }
}

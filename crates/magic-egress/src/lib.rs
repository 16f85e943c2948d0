//! Outbound HTTP for controllers (`http:egress`).
//!
//! Owns: deciding whether a URL may be fetched under a contract's [`EgressGrant`]
//! (allowlist matching, literal-IP parsing, address classification), resolving and pinning
//! the address that was checked, and performing the request with bounded time and size.
//!
//! Must never: connect to an address it did not check, follow a redirect without re-checking
//! it, or let a controller set hop-by-hop or `Host` headers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use magic_contract::{EgressGrant, ErrorCode};

/// One outbound request as a controller asked for it.
#[derive(Debug, Clone)]
pub struct EgressRequest {
    /// `GET`, `POST`, `PUT`, `DELETE`, …
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Request headers (sanitized before sending).
    pub headers: BTreeMap<String, String>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Propagated as `X-Request-ID`.
    pub request_id: String,
    /// The execution's deadline; the request never outlives it.
    pub deadline: Instant,
}

/// The answer, with what the audit record needs.
#[derive(Debug, Clone)]
pub struct EgressResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
    /// Response body (capped).
    pub body: Vec<u8>,
    /// Host that was contacted (of the final hop).
    pub host: String,
    /// Address that was connected to (of the final hop).
    pub resolved_ip: Option<IpAddr>,
    /// Time taken.
    pub latency: Duration,
}

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Destination not in the allow list (E2002).
    #[error("egress to {host} is not allowed: {reason}")]
    NotAllowed {
        /// Host as parsed.
        host: String,
        /// Why.
        reason: String,
    },
    /// Destination resolved to a private or reserved address (E2008).
    #[error("egress to {host} resolved to {ip}, a {class} address")]
    PrivateAddress {
        /// Host as parsed.
        host: String,
        /// Offending address.
        ip: IpAddr,
        /// Its class (`loopback`, `private`, …).
        class: String,
    },
    /// The URL could not be parsed.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// Deadline passed (E3001).
    #[error("egress request timed out")]
    Timeout,
    /// Connection, TLS or protocol failure.
    #[error("egress request failed: {0}")]
    Failed(String),
}

impl EgressError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            EgressError::NotAllowed { .. } | EgressError::InvalidUrl(_) => {
                ErrorCode::EgressNotAllowed
            }
            EgressError::PrivateAddress { .. } => ErrorCode::EgressPrivateAddress,
            EgressError::Timeout => ErrorCode::Timeout,
            EgressError::Failed(_) => ErrorCode::ControllerFailed,
        }
    }
}

/// The egress client (one per runtime; cheap to share).
#[derive(Debug, Clone, Default)]
pub struct Egress {}

impl Egress {
    /// Perform `request` under `grant`.
    pub async fn send(
        &self,
        _grant: &EgressGrant,
        request: EgressRequest,
    ) -> Result<EgressResponse, EgressError> {
        Err(EgressError::NotAllowed {
            host: request.url,
            reason: "egress is not implemented yet".into(),
        })
    }
}

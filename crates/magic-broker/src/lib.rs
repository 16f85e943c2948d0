//! The capability broker.
//!
//! Owns: every access a controller makes to the world outside its sandbox. Each call is
//! checked against the contract (default deny), performed with the runtime's credentials,
//! audited (capability, target, outcome, request ID) and answered.
//!
//! Must never: perform a call the contract does not grant, build SQL from strings a
//! controller supplied, or put a secret value in a log, audit record, error or metric.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use magic_audit::AuditSink;
use magic_contract::{Contract, ErrorCode};

/// What the broker knows about the execution a call belongs to.
#[derive(Debug, Clone)]
pub struct ExecutionContext {
    /// Request ID of the execution.
    pub request_id: String,
    /// Controller name.
    pub controller: String,
    /// Controller version.
    pub version: String,
    /// The contract of that version.
    pub contract: Arc<Contract>,
    /// When the execution will be killed; calls never outlive it.
    pub deadline: Instant,
    /// The execution's private temp dir, when `fs:temp` is declared.
    pub temp_dir: Option<PathBuf>,
}

/// One capability call as it arrives from the worker (`docs/protocol.md`, `call` frame).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct CapabilityCall {
    /// `db`, `http`, `secrets`, `queue`, `cache`, `fs`.
    pub capability: String,
    /// Operation within it: `query`, `query_one`, `insert`, `get`, `set`, `publish`, …
    pub op: String,
    /// Operation arguments (object).
    #[serde(default)]
    pub args: serde_json::Value,
}

/// A refused or failed call, as the controller will see it.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize)]
#[error("{code}: {message}")]
pub struct BrokerError {
    /// Public error code.
    pub code: ErrorCode,
    /// What happened, without secret values.
    pub message: String,
    /// Capability, refused target and the contract entry that would allow it, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The broker's answer to one call.
#[derive(Debug, Clone)]
pub struct BrokerReply {
    /// The capability the call exercised (`db:read`, …), for metrics; `None` if it named none.
    pub capability: Option<&'static str>,
    /// The value or the error.
    pub result: Result<serde_json::Value, BrokerError>,
}

/// The capability broker (one per runtime).
pub struct CapabilityBroker {
    audit: Arc<dyn AuditSink>,
}

impl CapabilityBroker {
    /// A broker that audits to `audit`.
    pub fn new(audit: Arc<dyn AuditSink>) -> Self {
        CapabilityBroker { audit }
    }

    /// Check, perform, audit and answer one call.
    pub async fn call(&self, ctx: &ExecutionContext, call: CapabilityCall) -> BrokerReply {
        let _ = (&self.audit, ctx);
        BrokerReply {
            capability: None,
            result: Err(BrokerError {
                code: ErrorCode::CapabilityNotDeclared,
                message: format!(
                    "capability {}.{} is not available",
                    call.capability, call.op
                ),
                details: None,
            }),
        }
    }
}

//! The audit log.
//!
//! Owns: turning security-relevant events into records of one totally ordered, SHA-256
//! hash-chained log; making each record durable before the request that caused it is
//! answered; verifying the chain; forwarding records to sinks.
//!
//! Must never: drop a record silently, rewrite a stored record, or store a secret value.
//!
//! The pieces: [`AuditChain`] (the durable chain in the runtime's store, group commit,
//! signed checkpoints; [`chain`]), [`record`] (the record and its canonical hash, defined
//! precisely there for external tools), [`verify`] (what tampering is detected and how it
//! is named), [`checkpoint`] (Ed25519 checkpoints and the key), [`read`] (streaming ranges),
//! [`sink`] (file, syslog and webhook copies; `AUDIT_LOG_SINK` syntax), [`retention`]
//! (removing old records behind signed seals), [`config`] (the `AUDIT_*` variables).
//!
//! ```no_run
//! # async fn serve(data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use futures::TryStreamExt;
//! use magic_audit::{AuditChain, AuditConfig, AuditEvent, ReadRange};
//!
//! let store = magic_store::Store::open(std::env::var("DATABASE_URL").ok().as_deref(), data_dir)
//!     .await?;
//! let chain = AuditChain::open(store, AuditConfig::from_env(data_dir)?).await?;
//! println!("{}", chain.describe()); // durability mode, key, sinks
//! let receipt = chain
//!     .append_event(AuditEvent { event: "admin_action".into(), ..AuditEvent::default() })
//!     .await?; // committed (and, with AUDIT_DURABILITY=sync, fsynced)
//! let report = chain.verify().await?; // `magic audit verify`
//! assert!(report.first_bad.is_none());
//! let last_ten: Vec<_> = chain.read(ReadRange::last(10)).try_collect().await?; // tail
//! # let _ = (receipt, last_ten);
//! chain.shutdown().await?; // final checkpoint, fsync, sinks flushed
//! # Ok(()) }
//! ```

use std::sync::Mutex;

pub mod chain;
pub mod checkpoint;
pub mod config;
mod db;
mod local;
pub mod read;
pub mod record;
pub mod retention;
pub mod search;
pub mod sink;
pub mod verify;

pub use chain::{verify_store, AuditChain, AuditStats, Receipt};
pub use checkpoint::{Checkpoint, KeySource};
pub use config::{AuditConfig, Durability};
pub use read::{Position, ReadRange};
pub use record::{AuditRecord, GENESIS_HASH};
pub use retention::{RetentionPolicy, RetentionReport, Seal};
pub use search::SearchFilter;
pub use sink::{SinkSpec, SinkStats, SyslogTarget};
pub use verify::{BadRecord, ChainVerifier, VerifyReport};

/// Apply the audit log's migrations to `store`: what [`AuditChain::open`] does first, and what
/// `magic migrate` runs.
pub async fn migrate(store: &magic_store::Store) -> Result<(), magic_store::StoreError> {
    store.migrate(db::COMPONENT, db::MIGRATIONS).await
}

/// A security-relevant event, before it is chained. Fields that do not apply stay `None`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// Event type: `execution_start`, `execution_complete`, `execution_error`,
    /// `execution_timeout`, `capability_use`, `capability_violation`, `resource_limit`,
    /// `admin_action`, …
    pub event: String,
    /// Request ID of the execution or admin request that caused it.
    pub request_id: Option<String>,
    /// Controller name.
    pub controller: Option<String>,
    /// Controller version.
    pub version: Option<String>,
    /// Authenticated identity, for admin actions and executions.
    pub actor: Option<String>,
    /// Capability (`db:read`, `http:egress`, …) for capability events.
    pub capability: Option<String>,
    /// Target: table, host, secret key, queue, cache key, or the admin action's object.
    pub target: Option<String>,
    /// `allowed`, `denied`, `ok`, `error`, an error code, …
    pub outcome: Option<String>,
    /// Anything else worth keeping (never a secret value).
    pub details: serde_json::Value,
}

/// Audit failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store refused or could not be reached.
    #[error("audit store error: {0}")]
    Store(String),
    /// The log is shut down.
    #[error("audit log is closed")]
    Closed,
    /// A setting (`AUDIT_*`) or the signing key is invalid.
    #[error("audit configuration: {0}")]
    Config(String),
    /// A sink could not be set up.
    #[error("audit sink: {0}")]
    Sink(String),
    /// Reading with verification found the chain tampered with.
    #[error("audit chain tampered: {0}")]
    Tampered(verify::BadRecord),
}

/// Where audit events go. Appending returns once the record is safe as the log's durability
/// mode promises (handed to the OS, or fsynced).
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Append one event.
    async fn append(&self, event: AuditEvent) -> Result<(), AuditError>;

    /// Append `events` in order, as one commit where the sink can (the default appends them
    /// one by one). Either all are stored or the error says the batch failed.
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        for e in events {
            self.append(e).await?;
        }
        Ok(())
    }
}

/// An in-memory sink that keeps every event (tests and tools).
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditSink {
    /// A copy of every event appended so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl AuditSink for MemoryAuditSink {
    async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.events
            .lock()
            .map_err(|_| AuditError::Closed)?
            .push(event);
        Ok(())
    }
}

//! The capability broker.
//!
//! Owns: every access a controller makes to the world outside its sandbox. Each call is
//! checked against the contract (default deny), performed with the runtime's credentials,
//! audited (capability, target, outcome, request ID) and answered. One module per capability
//! (`db`, `secrets`, `cache`, `queue`, `fs`, `http`), each implementing the one
//! `capability::CapabilityModule` trait; the modules never import each other. Backends sit
//! behind small traits (`KvBackend`, [`QueueBackend`]) with an embedded and a production impl.
//!
//! Must never: perform a call the contract does not grant, build SQL from strings a
//! controller supplied, or put a secret value in a log, audit record, error or metric.

mod cache;
mod capability;
mod config;
mod db;
mod denial;
mod fs;
mod http;
mod queue;
pub mod redis_conn;
mod secrets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use magic_audit::{AuditError, AuditEvent, AuditSink};
use magic_contract::{Contract, ErrorCode};
use magic_store::Store;

pub use config::{BrokerConfig, BrokerLimits, MasterKeySource};
pub use db::JSON_MAPPING;
pub use fs::ExecutionTempDir;
pub use queue::{receive_wait, Delivery, QueueBackend, QueueError};
pub use secrets::SecretInfo;

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
    /// W3C `traceparent` to propagate on egress (the execution's span in the caller's trace).
    pub traceparent: Option<String>,
    /// The execution's `execution_start` record, written before its first capability call
    /// (`None`: written already, or no such record — tools and tests).
    pub start: Option<Arc<ExecutionStart>>,
}

/// An execution's `execution_start` audit record, written lazily: before the execution's
/// first capability call, so every effect outside the sandbox follows it in the chain, or —
/// when the execution made no call — in one commit together with its final record, before
/// the caller gets any answer. A crash in between loses only the trace of a computation that
/// touched nothing outside its sandbox; it saves an execution one commit of two.
pub struct ExecutionStart {
    sink: Arc<dyn AuditSink>,
    event: std::sync::Mutex<Option<AuditEvent>>,
    written: tokio::sync::OnceCell<Result<(), String>>,
}

impl std::fmt::Debug for ExecutionStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionStart")
            .field("written", &self.written.get())
            .finish()
    }
}

impl ExecutionStart {
    /// The start record `event`, to be written to `sink`.
    pub fn new(sink: Arc<dyn AuditSink>, event: AuditEvent) -> ExecutionStart {
        ExecutionStart {
            sink,
            event: std::sync::Mutex::new(Some(event)),
            written: tokio::sync::OnceCell::new(),
        }
    }

    fn take(&self) -> Result<AuditEvent, String> {
        self.event
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or_else(|| "the execution_start record was taken twice".to_string())
    }

    /// Write the start record now unless it is written; an error (now or from the first
    /// attempt) means it is not in the chain and nothing may follow it.
    pub async fn ensure(&self) -> Result<(), AuditError> {
        self.written
            .get_or_init(|| async {
                let event = self.take()?;
                self.sink.append(event).await.map_err(|e| e.to_string())
            })
            .await
            .clone()
            .map_err(AuditError::Store)
    }

    /// Write `end`, the execution's last record: together with the start record in one
    /// commit when that is not written yet, after it otherwise.
    pub async fn finish(&self, end: AuditEvent) -> Result<(), AuditError> {
        let mut end = Some(end);
        let slot = &mut end;
        self.written
            .get_or_init(|| async move {
                let start = self.take()?;
                let Some(end) = slot.take() else {
                    return Err("no final record".to_string());
                };
                self.sink
                    .append_all(vec![start, end])
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .clone()
            .map_err(AuditError::Store)?;
        match end {
            Some(end) => self.sink.append(end).await,
            None => Ok(()),
        }
    }
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

impl BrokerError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BrokerError {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The controller called with arguments the broker cannot accept (surfaces as `E5001`).
    pub fn invalid(message: impl Into<String>) -> Self {
        BrokerError::new(ErrorCode::ControllerFailed, message)
    }

    /// A backing service (database, cache, queue) is unavailable (`E5003`).
    pub fn unavailable(service: &str) -> Self {
        BrokerError::new(
            ErrorCode::BackendUnavailable,
            format!("{service} is unavailable; retry later"),
        )
    }
}

/// The broker's answer to one call. Its `Debug` never shows the value (it may be a secret).
#[derive(Clone)]
pub struct BrokerReply {
    /// The capability the call exercised (`db:read`, …), for metrics; `None` if it named none.
    pub capability: Option<&'static str>,
    /// The value or the error.
    pub result: Result<serde_json::Value, BrokerError>,
}

impl std::fmt::Debug for BrokerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let result = match &self.result {
            Ok(_) => "Ok(<value redacted>)".to_string(),
            Err(e) => format!("Err({e:?})"),
        };
        f.debug_struct("BrokerReply")
            .field("capability", &self.capability)
            .field("result", &format_args!("{result}"))
            .finish()
    }
}

/// Failures while building the broker (startup, never per call).
#[derive(Debug, thiserror::Error)]
pub enum BrokerInitError {
    /// The runtime store refused the broker's migrations.
    #[error("broker migrations failed: {0}")]
    Store(#[from] magic_store::StoreError),
    /// The application database URL is not usable.
    #[error("application database: {0}")]
    AppDatabase(String),
    /// The Redis URL is not usable.
    #[error("redis: {0}")]
    Redis(String),
    /// The master key could not be loaded or created.
    #[error("master key: {0}")]
    MasterKey(String),
}

/// Failures of admin functions (secrets, rawsql approvals).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad argument (empty name, unknown controller name syntax, …).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The runtime store could not be reached.
    #[error("store unavailable: {0}")]
    Store(String),
    /// The audit log refused the record; the change was not made.
    #[error("audit log unavailable: {0}")]
    Audit(String),
    /// Encryption failed.
    #[error("encryption failed")]
    Crypto,
}

impl AdminError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AdminError::Invalid(_) => ErrorCode::InputInvalid,
            AdminError::Store(_) | AdminError::Audit(_) | AdminError::Crypto => {
                ErrorCode::BackendUnavailable
            }
        }
    }
}

/// A standing approval of `db:rawsql` for one controller.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RawSqlApproval {
    /// Controller name (every version).
    pub controller: String,
    /// Admin who approved.
    pub approved_by: String,
    /// When (RFC 3339).
    pub approved_at: String,
}

/// Readiness of the broker's backing services.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerReadiness {
    /// The application database answered.
    pub app_database: bool,
    /// Redis answered (`None` when not configured).
    pub redis: Option<bool>,
}

impl BrokerReadiness {
    /// True when every configured backing service answered.
    pub fn is_ready(&self) -> bool {
        self.app_database && self.redis != Some(false)
    }
}

/// The capability broker (one per runtime).
pub struct CapabilityBroker {
    audit: Arc<dyn AuditSink>,
    db: db::DbModule,
    secrets: secrets::SecretsModule,
    cache: cache::CacheModule,
    queue: queue::QueueModule,
    http: http::HttpModule,
    fs: fs::FsModule,
    redis: Option<redis_conn::RedisConn>,
}

impl std::fmt::Debug for CapabilityBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityBroker").finish_non_exhaustive()
    }
}

/// Apply the broker's migrations (secrets, rawsql approvals, queue) to `store`: what
/// [`CapabilityBroker::connect`] does first, and what `magic migrate` runs.
pub async fn migrate(store: &Store) -> Result<(), magic_store::StoreError> {
    store
        .migrate("broker_secrets", &secrets::MIGRATIONS)
        .await?;
    store.migrate("broker_rawsql", &db::MIGRATIONS).await?;
    store.migrate("broker_queue", &queue::MIGRATIONS).await?;
    Ok(())
}

impl CapabilityBroker {
    /// Build the broker: apply its migrations to `store`, load (or create) the master key,
    /// open the application database (lazily for PostgreSQL, so a database that is down at
    /// startup recovers without a restart) and pick the cache and queue backends (Redis when
    /// `config.redis_url` is set, else in-process cache and a queue in `store`).
    pub async fn connect(
        config: BrokerConfig,
        audit: Arc<dyn AuditSink>,
        store: Store,
    ) -> Result<Self, BrokerInitError> {
        migrate(&store).await?;
        let key = secrets::MasterKey::load(&config.master_key, &config.data_dir)
            .map_err(BrokerInitError::MasterKey)?;
        let app = db::AppDb::connect(&config).await?;
        let redis = match &config.redis_url {
            Some(url) => Some(
                redis_conn::RedisConn::new(url, &config.redis_key_prefix)
                    .map_err(BrokerInitError::Redis)?,
            ),
            None => None,
        };
        let kv: Arc<dyn cache::KvBackend> = match &redis {
            Some(r) => Arc::new(cache::RedisKv::new(r.clone())),
            None => Arc::new(cache::InProcessKv::new(
                config.limits.cache_max_entries,
                config.limits.cache_max_bytes,
            )),
        };
        let queue_backend: Arc<dyn QueueBackend> = match &redis {
            Some(r) => Arc::new(queue::RedisQueue::new(r.clone(), config.limits.clone())),
            None => Arc::new(queue::SqlQueue::new(store.clone(), config.limits.clone())),
        };
        Ok(CapabilityBroker {
            audit,
            db: db::DbModule::new(app, store.clone(), config.limits.clone()),
            secrets: secrets::SecretsModule::new(store, key),
            cache: cache::CacheModule::new(kv, config.limits.clone()),
            queue: queue::QueueModule::new(queue_backend, config.limits.clone()),
            http: http::HttpModule::new(magic_egress::Egress::new(config.egress.clone())),
            fs: fs::FsModule::new(config.data_dir.join("tmp")),
            redis,
        })
    }

    /// Check, perform, audit and answer one call.
    pub async fn call(&self, ctx: &ExecutionContext, call: CapabilityCall) -> BrokerReply {
        let CapabilityCall {
            capability,
            op,
            args,
        } = call;
        if let Some(start) = &ctx.start {
            if let Err(e) = start.ensure().await {
                tracing::error!(
                    error = %e,
                    request_id = %ctx.request_id,
                    controller = %ctx.controller,
                    "error.type" = "audit_unavailable",
                    "capability call refused: the execution's start record could not be written"
                );
                return BrokerReply {
                    capability: None,
                    result: Err(BrokerError::unavailable("the audit log")),
                };
            }
        }
        let sink = &*self.audit;
        match capability.as_str() {
            "db" => capability::run(&self.db, sink, ctx, &op, args).await,
            "secrets" => capability::run(&self.secrets, sink, ctx, &op, args).await,
            "cache" => capability::run(&self.cache, sink, ctx, &op, args).await,
            "queue" => capability::run(&self.queue, sink, ctx, &op, args).await,
            "http" => capability::run(&self.http, sink, ctx, &op, args).await,
            other => capability::unknown(sink, ctx, other, &op).await,
        }
    }

    /// The shared Redis connection (`None` without `REDIS_URL`): the runtime's cross-node
    /// concurrency slots use it too, under the same key prefix.
    pub fn redis(&self) -> Option<redis_conn::RedisConn> {
        self.redis.clone()
    }

    /// Is every backing service reachable (`/api/readyz`)?
    pub async fn readiness(&self) -> BrokerReadiness {
        let redis = match &self.redis {
            Some(r) => Some(r.ping().await.is_ok()),
            None => None,
        };
        BrokerReadiness {
            app_database: self.db.ping().await,
            redis,
        }
    }

    // ---- admin: secrets -------------------------------------------------------------

    /// Store (or replace) secret `name` of `controller`, encrypted; audited with `actor`.
    pub async fn set_secret(
        &self,
        actor: &str,
        controller: &str,
        name: &str,
        value: &str,
    ) -> Result<(), AdminError> {
        let target = format!("{controller}/{name}");
        let work = self.secrets.set(actor, controller, name, value);
        self.admin(actor, "secret_set", &target, work).await
    }

    /// Names (never values) of the secrets of `controller`, or of every controller.
    pub async fn list_secrets(
        &self,
        actor: &str,
        controller: Option<&str>,
    ) -> Result<Vec<SecretInfo>, AdminError> {
        let work = self.secrets.list(controller);
        self.admin(actor, "secret_list", controller.unwrap_or("*"), work)
            .await
    }

    /// Delete secret `name` of `controller`; true when it existed. Audited with `actor`.
    pub async fn delete_secret(
        &self,
        actor: &str,
        controller: &str,
        name: &str,
    ) -> Result<bool, AdminError> {
        let target = format!("{controller}/{name}");
        let work = self.secrets.delete(controller, name);
        self.admin(actor, "secret_delete", &target, work).await
    }

    // ---- admin: db:rawsql approvals ----------------------------------------------------

    /// Approve `db:rawsql` for every version of `controller` that declares it. Audited.
    pub async fn approve_rawsql(&self, actor: &str, controller: &str) -> Result<(), AdminError> {
        let work = self.db.approve_rawsql(actor, controller);
        self.admin(actor, "rawsql_approve", controller, work).await
    }

    /// Withdraw the `db:rawsql` approval of `controller`; true when there was one. Audited.
    pub async fn revoke_rawsql(&self, actor: &str, controller: &str) -> Result<bool, AdminError> {
        let work = self.db.revoke_rawsql(controller);
        self.admin(actor, "rawsql_revoke", controller, work).await
    }

    /// Every standing `db:rawsql` approval.
    pub async fn rawsql_approvals(&self) -> Result<Vec<RawSqlApproval>, AdminError> {
        self.db.approvals().await
    }

    // ---- runtime primitives -------------------------------------------------------------

    /// The queue backend, for queue-triggered controllers: `receive` a message, run the
    /// controller, `ack` on success; a message not acked is redelivered after the visibility
    /// timeout, and after `limits.queue_max_attempts` deliveries moved to the dead letters.
    pub fn queue(&self) -> Arc<dyn QueueBackend> {
        self.queue.backend()
    }

    /// Create the private temp dir of one execution (`fs:temp`), `size` bytes budget. It is
    /// removed when the returned guard is dropped or [`ExecutionTempDir::remove`] is called.
    pub fn create_temp_dir(
        &self,
        request_id: &str,
        size: u64,
    ) -> std::io::Result<ExecutionTempDir> {
        self.fs.create(request_id, size)
    }

    /// Run one admin action by `actor` and audit it with its outcome (never a secret value).
    async fn admin<T>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        work: impl std::future::Future<Output = Result<T, AdminError>>,
    ) -> Result<T, AdminError> {
        if actor.trim().is_empty() {
            return Err(AdminError::Invalid("actor is required".into()));
        }
        let result = work.await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code().as_str().to_string(),
        };
        self.audit
            .append(AuditEvent {
                event: "admin_action".into(),
                actor: Some(actor.to_string()),
                target: Some(target.to_string()),
                outcome: Some(outcome),
                details: serde_json::json!({ "action": action }),
                ..AuditEvent::default()
            })
            .await
            .map_err(|e| AdminError::Audit(e.to_string()))?;
        result
    }
}

#[cfg(test)]
mod execution_start_tests {
    use super::*;
    use magic_audit::MemoryAuditSink;

    fn ev(name: &str) -> AuditEvent {
        AuditEvent {
            event: name.into(),
            ..AuditEvent::default()
        }
    }

    fn names(sink: &MemoryAuditSink) -> Vec<String> {
        sink.events().into_iter().map(|e| e.event).collect()
    }

    /// Counts `append_all` calls; fails every append once `fail` is set.
    #[derive(Default)]
    struct Recording {
        inner: MemoryAuditSink,
        batches: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl AuditSink for Recording {
        async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(AuditError::Store("down".into()));
            }
            self.inner.append(event).await
        }
        async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(AuditError::Store("down".into()));
            }
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for e in events {
                self.inner.append(e).await?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn without_calls_start_and_end_are_one_batch() {
        let sink = Arc::new(Recording::default());
        let start = ExecutionStart::new(sink.clone(), ev("execution_start"));
        start
            .finish(ev("execution_complete"))
            .await
            .expect("finish");
        assert_eq!(
            names(&sink.inner),
            ["execution_start", "execution_complete"]
        );
        assert_eq!(sink.batches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_writes_the_start_first_and_only_once() {
        let sink = Arc::new(Recording::default());
        let start = ExecutionStart::new(sink.clone(), ev("execution_start"));
        start.ensure().await.expect("ensure");
        start.ensure().await.expect("ensure again");
        sink.append(ev("capability_use"))
            .await
            .expect("call record");
        start
            .finish(ev("execution_complete"))
            .await
            .expect("finish");
        assert_eq!(
            names(&sink.inner),
            ["execution_start", "capability_use", "execution_complete"]
        );
        assert_eq!(sink.batches.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_start_that_failed_refuses_everything_after_it() {
        let sink = Arc::new(Recording::default());
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let start = ExecutionStart::new(sink.clone(), ev("execution_start"));
        assert!(start.ensure().await.is_err());
        // The store is back, but the start record is not in the chain: nothing may follow.
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(start.ensure().await.is_err());
        assert!(start.finish(ev("execution_complete")).await.is_err());
        assert!(names(&sink.inner).is_empty());
    }
}

//! The Magic Runtime server library.
//!
//! Owns: assembling the runtime from its parts (store, registry, keys, broker, audit,
//! metrics, executor) and serving the HTTP API. The request path is
//! [`api`] → [`registry`] (pick the version) → contract validation → [`executor`] (worker +
//! broker) → output validation → response; nothing on it only forwards.
//!
//! Must never: start serving before migrations are applied, or run in a mode that isolates
//! less than it says.

pub mod api;
pub mod approvals;
pub mod auth;
pub mod checklist;
pub mod config;
pub mod console;
pub mod error;
pub mod executor;
pub mod hardening;
pub mod jwks;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod rbac;
pub mod registry;
pub mod sandboxed;
#[cfg(test)]
mod scratch_pg;
pub mod slots;
mod spawn;
pub mod tls;
pub mod trace;
pub mod triggers;
pub mod wasm;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use magic_audit::{AuditChain, AuditEvent, AuditSink};
use magic_broker::CapabilityBroker;
use magic_contract::ErrorCode;
use magic_store::Store;

use crate::auth::KeyStore;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::registry::{DeployedVersion, Registry};

mod sdk {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] magic_store::StoreError),
    /// The key store could not be prepared.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A registry failure.
    #[error("registry: {0}")]
    Registry(ApiError),
    /// Python could not be found or is too old.
    #[error("python: {0}")]
    Python(String),
    /// Process mode cannot isolate executions on this host.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// Files in the data dir could not be written.
    #[error("data dir: {0}")]
    DataDir(std::io::Error),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[from] magic_audit::AuditError),
    /// The capability broker could not start.
    #[error("capability broker: {0}")]
    Broker(#[from] magic_broker::BrokerInitError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The assembled runtime, shared by every request.
pub struct Runtime {
    /// Settings it runs with.
    pub config: ServeConfig,
    /// The state store.
    pub store: Store,
    /// Controllers and versions.
    pub registry: Registry,
    /// API keys.
    pub keys: KeyStore,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Runs executions.
    pub executor: Executor,
    /// The capability broker (also used for secrets and approvals by the admin API).
    pub broker: Arc<CapabilityBroker>,
    /// Where audit events go (the chain, as the broker sees it).
    pub audit: Arc<dyn AuditSink>,
    /// The audit chain itself (verify, read, shutdown).
    pub audit_chain: AuditChain,
    /// Queue triggers and their consumers.
    pub triggers: triggers::Triggers,
    /// Cross-node execution slots (`REDIS_URL` set): `CONTROLLER_MAX_CONCURRENT` holds across
    /// every node sharing the Redis.
    pub cluster_slots: Option<slots::ClusterSlots>,
    /// Deploys waiting for a second person's approval.
    pub approvals: approvals::Approvals,
    /// Per-identity request-rate limit (`MAGIC_RATE_LIMIT`).
    pub limiter: Option<hardening::RateLimiter>,
    /// The OIDC provider's signing keys (`JWT_JWKS_URL` / `OIDC_ISSUER`).
    pub jwks: Option<Arc<jwks::JwksCache>>,
    /// Failed authentications per client address (`MAGIC_AUTH_FAILURE_LIMIT`).
    pub auth_failures: Option<hardening::FailureLimiter>,
    /// Where the bootstrap admin key was written, when it was generated.
    pub admin_key_file: Option<PathBuf>,
    /// This node's name (`MAGIC_NODE_ID`, else `HOSTNAME:PORT`), set once listening; sent as
    /// `X-Magic-Node` on every response.
    pub node_id: std::sync::OnceLock<String>,
}

/// This node's name: `MAGIC_NODE_ID` when set, else the host name and the bound port.
pub fn node_name(configured: Option<&str>, addr: SocketAddr) -> String {
    if let Some(id) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", addr.port())
}

/// Build an audit event for the request `request_id`.
pub fn audit_event(
    event: &str,
    request_id: &str,
    version: Option<&DeployedVersion>,
    actor: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        event: event.to_string(),
        request_id: Some(request_id.to_string()),
        controller: version.map(|v| v.name.clone()),
        version: version.map(|v| v.version_text.clone()),
        actor: actor.map(str::to_string),
        details: serde_json::json!({}),
        ..AuditEvent::default()
    }
}

/// Write the embedded SDK under `dir` (replacing an older copy).
fn install_sdk(dir: &Path) -> std::io::Result<()> {
    for (rel, contents) in sdk::SDK_FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*contents) {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, contents)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(())
}

impl Runtime {
    /// Open everything the runtime needs, in order: config check, store + migrations, keys,
    /// registry (loads every deployed version), SDK, executor.
    pub async fn start(mut config: ServeConfig) -> Result<Arc<Runtime>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(StartError::DataDir)?;
        // Workers run with another working directory: every path handed to them is absolute.
        config.data_dir = std::fs::canonicalize(&config.data_dir).map_err(StartError::DataDir)?;
        let store = Store::open(config.database_url.as_deref(), &config.data_dir).await?;
        let (keys, admin_key_file) = KeyStore::open(
            store.clone(),
            &config.data_dir,
            config.admin_api_key.as_deref(),
        )
        .await?;
        let registry = Registry::open(store.clone(), &config.data_dir, config.max_concurrent)
            .await
            .map_err(StartError::Registry)?;
        if let Some(names) = &config.controller_allowlist {
            registry.set_allowlist(names.clone());
        }
        if let Some(policy) = &config.policy {
            registry.set_policy(policy.clone());
        }
        let triggers = triggers::Triggers::open(store.clone()).await?;
        let approvals = approvals::Approvals::open(store.clone()).await?;
        let limiter = match &config.rate_limit {
            Some(limit) => Some(
                hardening::RateLimiter::new(
                    limit.clone(),
                    config.redis_url.as_deref(),
                    &config.broker.redis_key_prefix,
                )
                .map_err(|reason| config::ConfigError::Invalid {
                    setting: "REDIS_URL",
                    reason,
                })?,
            ),
            None => None,
        };
        let jwks = match config
            .jwt
            .as_ref()
            .and_then(|j| j.jwks.clone().map(|s| (s, j.min_refresh)))
        {
            Some((source, min_refresh)) => {
                let cache =
                    Arc::new(jwks::JwksCache::new(source, min_refresh).map_err(|reason| {
                        config::ConfigError::Invalid {
                            setting: "JWT_JWKS_URL",
                            reason,
                        }
                    })?);
                // Not fatal: bearer requests answer E5003 until the keys can be fetched.
                let _ = cache.refresh(true).await;
                cache.spawn_refresher();
                Some(cache)
            }
            None => None,
        };
        let auth_failures = config
            .auth_failure_limit
            .map(hardening::FailureLimiter::new);
        let runtime_dir = config.data_dir.join("runtime");
        let sdk_dir = runtime_dir.join("sdk");
        install_sdk(&sdk_dir).map_err(StartError::DataDir)?;
        let python = executor::find_python(config.python.as_deref()).map_err(StartError::Python)?;
        let metrics = Arc::new(Metrics::new()?);
        let audit_chain = AuditChain::open(store.clone(), config.audit.clone()).await?;
        tracing::info!(event = "audit_log", "{}", audit_chain.describe());
        let audit: Arc<dyn AuditSink> = Arc::new(audit_chain.clone());
        let mut broker_config = config.broker.clone();
        broker_config.data_dir = config.data_dir.clone();
        let broker =
            Arc::new(CapabilityBroker::connect(broker_config, audit.clone(), store.clone()).await?);
        let sandbox = sandboxed::start_sandbox(&config, &python, &sdk_dir, &runtime_dir)
            .map_err(StartError::Sandbox)?;
        let executor = Executor::new(python, sdk_dir, broker.clone(), metrics.clone())
            .with_sandbox(sandbox, config.max_concurrent)
            .with_wasm(runtime_dir.join("wasm-cache"), config.wasm_max_instances);
        if let Some(hook) = executor.warm_hook() {
            registry.set_warm_hook(hook);
        }
        let cluster_slots = broker
            .redis()
            .map(|r| slots::ClusterSlots::new(r, config.slot_lease));
        let rt = Arc::new(Runtime {
            cluster_slots,
            config,
            store,
            registry,
            keys,
            metrics,
            executor,
            broker,
            audit,
            audit_chain,
            triggers,
            approvals,
            limiter,
            jwks,
            auth_failures,
            admin_key_file,
            node_id: std::sync::OnceLock::new(),
        });
        // Stored active versions were loaded before the executor existed: prepare them now,
        // in the background, so the first requests after a restart find them ready.
        let warming = rt.clone();
        tokio::spawn(async move { warming.registry.warm_active().await });
        Ok(rt)
    }

    /// Append an audit event; the caller answers only after this returns.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), ApiError> {
        self.audit.append(event).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            ApiError::new(
                ErrorCode::BackendUnavailable,
                "the audit log is unavailable",
            )
        })
    }

    /// Readiness checks: `(ready, {check: "ok" | reason})`.
    pub async fn readiness(&self) -> (bool, serde_json::Value) {
        let mut ready = true;
        let mut checks = serde_json::Map::new();
        match self.store.ping().await {
            Ok(()) => {
                checks.insert("database".into(), "ok".into());
            }
            Err(e) => {
                ready = false;
                checks.insert("database".into(), format!("unreachable: {e}").into());
            }
        }
        let mut migrated = true;
        for (component, latest) in [
            ("registry", registry::MIGRATIONS.len() as i64),
            ("auth", auth::MIGRATIONS.len() as i64),
            ("triggers", triggers::MIGRATIONS.len() as i64),
            ("approvals", approvals::MIGRATIONS.len() as i64),
        ] {
            if !matches!(self.store.is_migrated(component, latest).await, Ok(true)) {
                migrated = false;
            }
        }
        checks.insert(
            "migrations".into(),
            if migrated { "ok" } else { "pending" }.into(),
        );
        ready &= migrated;
        let broker = self.broker.readiness().await;
        checks.insert(
            "app_database".into(),
            if broker.app_database {
                "ok"
            } else {
                "unreachable"
            }
            .into(),
        );
        if let Some(redis) = broker.redis {
            checks.insert(
                "redis".into(),
                if redis { "ok" } else { "unreachable" }.into(),
            );
        }
        ready &= broker.is_ready();
        (ready, serde_json::Value::Object(checks))
    }
}

/// The components whose migrations `magic serve` applies at start, in order.
pub const MIGRATED_COMPONENTS: &[&str] = &[
    "registry",
    "auth",
    "triggers",
    "audit",
    "broker_secrets",
    "broker_rawsql",
    "broker_queue",
];

/// Apply every migration `magic serve` applies at start to the store `database_url` names
/// (SQLite in `data_dir` when `None`) and return: `magic migrate` and `scripts/init_db.sh`,
/// so that a production database is prepared before any node starts.
pub async fn migrate(database_url: Option<&str>, data_dir: &Path) -> Result<(), StartError> {
    let store = Store::open(database_url, data_dir).await?;
    store.migrate("registry", registry::MIGRATIONS).await?;
    store.migrate("auth", auth::MIGRATIONS).await?;
    store.migrate("triggers", triggers::MIGRATIONS).await?;
    magic_audit::migrate(&store).await?;
    magic_broker::migrate(&store).await?;
    store.pool().close().await;
    Ok(())
}

/// Online backup of one SQLite database file into a new file (`magic backup`).
pub async fn backup_sqlite(src: &Path, dest: &Path) -> Result<(), StartError> {
    Ok(Store::sqlite_backup(src, dest).await?)
}

/// Poll the store for deploys and rollbacks made by other nodes (holds the runtime weakly).
fn spawn_registry_sync(runtime: &Arc<Runtime>) {
    let weak = Arc::downgrade(runtime);
    let every = runtime.config.registry_sync;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(rt) = weak.upgrade() else { return };
            match rt.registry.sync().await {
                Ok(true) => tracing::info!(
                    event = "registry_synced",
                    "picked up a deploy or rollback made by another node"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(event = "registry_sync_failed", error = %e.message),
            }
        }
    });
}

/// On PostgreSQL, listen for the `NOTIFY` a deploy or rollback on any node sends and sync at
/// once (polling stays as the fallback; the listener reconnects after a lost connection).
fn spawn_registry_listener(runtime: &Arc<Runtime>) {
    let Some(url) = runtime
        .config
        .database_url
        .clone()
        .filter(|_| runtime.store.dialect() == magic_store::Dialect::Postgres)
    else {
        return;
    };
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(event = "registry_listen_failed", error = %e, "cannot listen for registry changes; polling only until it reconnects");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    if weak.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = listener.listen(registry::NOTIFY_CHANNEL).await {
                tracing::warn!(event = "registry_listen_failed", error = %e);
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
            loop {
                let next =
                    tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await;
                let Some(rt) = weak.upgrade() else { return };
                match next {
                    Err(_) => continue, // no news; check the runtime is still alive
                    Ok(Err(e)) => {
                        tracing::warn!(event = "registry_listen_failed", error = %e, "registry notifications lost; reconnecting");
                        break;
                    }
                    Ok(Ok(_)) => match rt.registry.sync().await {
                        Ok(true) => tracing::info!(
                            event = "registry_synced",
                            via = "notify",
                            "picked up a deploy or rollback made by another node"
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(event = "registry_sync_failed", error = %e.message)
                        }
                    },
                }
            }
        }
    });
}

/// Start the runtime and serve until `shutdown` resolves. Returns the bound address through
/// `on_listening` before serving (useful with port 0).
pub async fn serve(
    config: ServeConfig,
    on_listening: impl FnOnce(SocketAddr, &Runtime),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listen = config.listen;
    let runtime = Runtime::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    runtime
        .triggers
        .start_all(&runtime)
        .await
        .map_err(StartError::Registry)?;
    spawn_registry_sync(&runtime);
    spawn_registry_listener(&runtime);
    let _ = runtime
        .node_id
        .set(node_name(runtime.config.node_id.as_deref(), addr));
    let tls = match &runtime.config.tls_settings {
        Some(settings) => Some(tls::server_config(settings).map_err(|reason| {
            StartError::Config(config::ConfigError::Invalid {
                setting: "MAGIC_TLS_CERT",
                reason,
            })
        })?),
        None => None,
    };
    on_listening(addr, &runtime);
    let app = api::router(runtime.clone());
    // SIGTERM: stop accepting (the listener closes), let in-flight requests finish for up to
    // the grace period, then stop the executions still running (answered E5002, audited).
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(());
    };
    let mut server: std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
    > = match tls {
        Some(tls_config) => Box::pin(tls::serve(listener, tls_config, app, shutdown)),
        None => Box::pin(
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .into_future(),
        ),
    };
    let grace = runtime.config.shutdown_grace;
    let served = tokio::select! {
        r = &mut server => r,
        () = async {
            if on_signal.await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!(event = "draining", grace_ms = grace.as_millis() as u64,
                "no longer accepting connections; waiting for in-flight executions");
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(event = "grace_expired", "MAGIC_SHUTDOWN_GRACE passed: stopping executions still running");
            runtime.executor.abort_in_flight();
            // The stopped executions are answered and audited; then the connections close.
            match tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(event = "shutdown_forced", "connections still open 5s after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    let served = served.map_err(|source| StartError::Listen { addr, source });
    runtime.triggers.stop_all();
    // Zygotes and their children stopped, the sandbox's cgroups removed.
    runtime.executor.shutdown().await;
    // Every answered request's records are committed; seal the tail with a final checkpoint.
    if let Err(e) = runtime.audit_chain.shutdown().await {
        tracing::error!(error = %e, "audit log shutdown failed");
    }
    tracing::info!(event = "stopped", "runtime stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8081));
        assert_eq!(node_name(Some("n1"), addr), "n1");
        assert_eq!(node_name(Some(" n2 "), addr), "n2");
        for unset in [None, Some(""), Some("  ")] {
            let name = node_name(unset, addr);
            assert!(name.ends_with(":8081") && name.len() > 5, "{name}");
        }
    }
}

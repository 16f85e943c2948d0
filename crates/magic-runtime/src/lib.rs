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
pub mod auth;
pub mod config;
pub mod error;
pub mod executor;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod rbac;
pub mod registry;
pub mod sandboxed;
mod spawn;
pub mod trace;
pub mod triggers;
pub mod wasm;

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
    /// Where the bootstrap admin key was written, when it was generated.
    pub admin_key_file: Option<PathBuf>,
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
        version: version.map(|v| v.version.to_string()),
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
        let triggers = triggers::Triggers::open(store.clone()).await?;
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
            .with_wasm(runtime_dir.join("wasm-cache"));
        if let Some(hook) = executor.warm_hook() {
            registry.set_warm_hook(hook);
        }
        Ok(Arc::new(Runtime {
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
            admin_key_file,
        }))
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
    on_listening(addr, &runtime);
    let app = api::router(runtime.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| StartError::Listen { addr, source });
    runtime.triggers.stop_all();
    // Every answered request's records are committed; seal the tail with a final checkpoint.
    if let Err(e) = runtime.audit_chain.shutdown().await {
        tracing::error!(error = %e, "audit log shutdown failed");
    }
    served
}

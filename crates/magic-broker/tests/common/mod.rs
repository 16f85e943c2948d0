//! Test environments: the embedded backends (SQLite + in-process) and the production ones
//! (the machine's PostgreSQL in a private schema + Redis under a private key prefix).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use magic_audit::{AuditEvent, MemoryAuditSink};
use magic_broker::{
    BrokerConfig, BrokerError, BrokerLimits, CapabilityBroker, CapabilityCall, ExecutionContext,
};
use magic_contract::{Capability, Contract};
use magic_store::Store;
use serde_json::Value;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Production,
}

pub struct Env {
    pub kind: Kind,
    pub broker: CapabilityBroker,
    pub audit: Arc<MemoryAuditSink>,
    pub app_url: String,
    pub schema: Option<String>,
    pub redis_prefix: Option<String>,
    pub dir: tempfile::TempDir,
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl Env {
    pub async fn new(kind: Kind) -> Env {
        Env::with_limits(kind, BrokerLimits::default()).await
    }

    pub async fn with_limits(kind: Kind, limits: BrokerLimits) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BrokerConfig::new(dir.path());
        config.limits = limits;
        let (store, app_url, schema, redis_prefix) = match kind {
            Kind::Embedded => {
                let store = Store::open(None, dir.path()).await.expect("store");
                let url = format!("sqlite://{}", dir.path().join("app.db").display());
                (store, url, None, None)
            }
            Kind::Production => {
                let schema = unique("brk");
                sqlx::any::install_default_drivers();
                let admin = sqlx::AnyPool::connect(PG).await.expect("pg");
                sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .expect("schema");
                admin.close().await;
                let url = format!("{PG}?options[search_path]={schema}");
                let store = Store::open(Some(&url), dir.path()).await.expect("store");
                let prefix = format!("{}:", unique("magic_test"));
                config.app_database_url = Some(url.clone());
                config.redis_url = Some(REDIS.into());
                config.redis_key_prefix = prefix.clone();
                (store, url, Some(schema), Some(prefix))
            }
        };
        let audit = Arc::new(MemoryAuditSink::default());
        let broker = CapabilityBroker::connect(config, audit.clone(), store)
            .await
            .expect("broker");
        Env {
            kind,
            broker,
            audit,
            app_url,
            schema,
            redis_prefix,
            dir,
        }
    }

    /// Run DDL/DML directly on the application database (SQLite text, PostgreSQL text).
    pub async fn exec(&self, sqlite: &str, postgres: &str) {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.app_url).await.expect("app db");
        let sql = match self.kind {
            Kind::Embedded => sqlite,
            Kind::Production => postgres,
        };
        sqlx::raw_sql(sql).execute(&pool).await.expect("exec");
        pool.close().await;
    }

    pub fn ctx(&self, controller: &str, caps: Vec<Capability>) -> ExecutionContext {
        ExecutionContext {
            request_id: unique("req"),
            controller: controller.into(),
            version: "1.0.0".into(),
            contract: Arc::new(Contract {
                name: controller.into(),
                version: semver::Version::new(1, 0, 0),
                input: serde_json::json!({}),
                output: serde_json::json!({}),
                capabilities: caps,
                resources: Default::default(),
            }),
            deadline: Instant::now() + Duration::from_secs(30),
            temp_dir: None,
            traceparent: None,
            start: None,
        }
    }

    pub async fn call(
        &self,
        ctx: &ExecutionContext,
        capability: &str,
        op: &str,
        args: Value,
    ) -> Result<Value, BrokerError> {
        self.broker
            .call(
                ctx,
                CapabilityCall {
                    capability: capability.into(),
                    op: op.into(),
                    args,
                },
            )
            .await
            .result
    }

    pub fn events_for(&self, ctx: &ExecutionContext) -> Vec<AuditEvent> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.request_id.as_deref() == Some(ctx.request_id.as_str()))
            .collect()
    }

    /// Drop the per-controller roles nothing depends on any more (those of dropped schemas;
    /// the roles of tests still running hold grants and stay).
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema {
            if let Ok(admin) = sqlx::AnyPool::connect(PG).await {
                let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&admin)
                    .await;
                let _ = sqlx::raw_sql(DROP_UNUSED_CONTROLLER_ROLES)
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
        if let Some(prefix) = &self.redis_prefix {
            if let Ok(client) = redis::Client::open(REDIS) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    for k in keys {
                        let _: redis::RedisResult<i64> =
                            redis::cmd("DEL").arg(k).query_async(&mut c).await;
                    }
                }
            }
        }
    }
}

/// Generate one test per backend from `async fn NAME(env: &Env)`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let env = Env::new(Kind::Embedded).await;
                super::$name(&env).await;
                env.cleanup().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn production() {
                let env = Env::new(Kind::Production).await;
                super::$name(&env).await;
                env.cleanup().await;
            }
        }
    };
}

/// Assert a denial: code, and the three details.
pub fn assert_denied(
    r: &Result<Value, BrokerError>,
    code: &str,
    capability: &str,
    target: &str,
    allow_with: &str,
) {
    let e = match r {
        Ok(v) => panic!("expected {code}, got value {v}"),
        Err(e) => e,
    };
    assert_eq!(e.code.as_str(), code, "{e:?}");
    let d = e.details.clone().unwrap_or_default();
    assert_eq!(d["capability"], capability, "{e:?}");
    assert_eq!(d["target"], target, "{e:?}");
    assert_eq!(d["allow_with"], allow_with, "{e:?}");
}

pub fn code(r: &Result<Value, BrokerError>) -> String {
    match r {
        Ok(v) => format!("ok: {v}"),
        Err(e) => e.code.as_str().to_string(),
    }
}

/// A TCP proxy to `target` that can be stopped (every connection dropped) and restarted on
/// the same port: a backing service going down and coming back, without touching it.
pub struct Proxy {
    pub port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut p = Proxy {
            port,
            target: target.into(),
            task: None,
        };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Drop the listener and every connection.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind");
        self.serve(listener);
    }
}

/// A port nothing listens on.
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Drop every `magic_ctl_*` role that holds no privilege any more (roles are cluster-wide:
/// those of a dropped schema would otherwise pile up).
pub const DROP_UNUSED_CONTROLLER_ROLES: &str = "DO $$ DECLARE r text; BEGIN \
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'magic\\_ctl\\_%' LOOP \
      BEGIN EXECUTE format('DROP ROLE %I', r); \
      EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END; \
    END LOOP; END $$";

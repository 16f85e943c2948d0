//! Backing services down: E5003 for the calls that need them, recovery without a restart.
//! Nothing shared is stopped: the broker talks through a local proxy that these tests stop
//! and restart, or to a port nothing listens on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use magic_audit::MemoryAuditSink;
use magic_broker::{BrokerConfig, BrokerLimits, CapabilityBroker};
use magic_contract::Capability;
use magic_store::Store;
use serde_json::json;

fn caps(t: &str) -> Vec<Capability> {
    vec![
        Capability::DbRead {
            tables: vec![t.into()],
        },
        Capability::DbWrite {
            tables: vec![t.into()],
        },
        Capability::CacheRead {
            prefix: "k:".into(),
        },
        Capability::CacheWrite {
            prefix: "k:".into(),
            max_ttl: Duration::from_secs(60),
        },
        Capability::QueuePublish {
            queues: vec!["q".into()],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_ports_answer_e5003() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(None, dir.path()).await.expect("store");
    let mut config = BrokerConfig::new(dir.path());
    config.app_database_url = Some(format!(
        "postgres://postgres@127.0.0.1:{}/test",
        closed_port().await
    ));
    config.redis_url = Some(format!("redis://127.0.0.1:{}/", closed_port().await));
    config.limits = BrokerLimits {
        db_acquire_timeout: Duration::from_millis(500),
        ..BrokerLimits::default()
    };
    let audit = Arc::new(MemoryAuditSink::default());
    // Starting with both down works: they are connected lazily.
    let broker = CapabilityBroker::connect(config, audit.clone(), store)
        .await
        .expect("broker starts");
    let env_ctx = |t: &str| magic_broker::ExecutionContext {
        request_id: unique("req"),
        controller: "C".into(),
        version: "1.0.0".into(),
        contract: Arc::new(magic_contract::Contract {
            name: "C".into(),
            version: semver::Version::new(1, 0, 0),
            input: json!({}),
            output: json!({}),
            capabilities: caps(t),
            resources: Default::default(),
        }),
        deadline: std::time::Instant::now() + Duration::from_secs(30),
        temp_dir: None,
        traceparent: None,
        start: None,
    };
    let ctx = env_ctx("t");
    let call = |cap: &str, op: &str, args: serde_json::Value| magic_broker::CapabilityCall {
        capability: cap.into(),
        op: op.into(),
        args,
    };
    let started = std::time::Instant::now();
    for c in [
        call("db", "query", json!({"table": "t"})),
        call("cache", "get", json!({"key": "k:1"})),
        call("cache", "set", json!({"key": "k:1", "value": 1})),
        call("queue", "publish", json!({"queue": "q", "message": 1})),
    ] {
        let what = format!("{}.{}", c.capability, c.op);
        let r = broker.call(&ctx, c).await.result;
        assert_eq!(code(&r), "E5003", "{what}: {r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "fails fast: {:?}",
        started.elapsed()
    );
    let ready = broker.readiness().await;
    assert!(!ready.is_ready());
    assert_eq!(ready.redis, Some(false));
    // Each failure audited with its outcome.
    let outcomes: Vec<_> = audit
        .events()
        .into_iter()
        .filter_map(|e| e.outcome)
        .collect();
    assert_eq!(outcomes, ["E5003", "E5003", "E5003", "E5003"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_recover_without_restart() {
    let mut pg = Proxy::start("127.0.0.1:5432").await;
    let mut redis = Proxy::start("127.0.0.1:6379").await;
    let schema = unique("brk_outage");
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(PG).await.expect("pg");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (id BIGSERIAL PRIMARY KEY, name TEXT)"
    ))
    .execute(&admin)
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(None, dir.path()).await.expect("store");
    let mut config = BrokerConfig::new(dir.path());
    config.app_database_url = Some(format!(
        "postgres://postgres@127.0.0.1:{}/test?options[search_path]={schema}",
        pg.port
    ));
    config.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port));
    let prefix = format!("{}:", unique("magic_outage"));
    config.redis_key_prefix = prefix.clone();
    config.limits = BrokerLimits {
        db_acquire_timeout: Duration::from_millis(500),
        ..BrokerLimits::default()
    };
    let broker = CapabilityBroker::connect(config, Arc::new(MemoryAuditSink::default()), store)
        .await
        .expect("broker");
    let env = |_: ()| magic_broker::ExecutionContext {
        request_id: unique("req"),
        controller: "C".into(),
        version: "1.0.0".into(),
        contract: Arc::new(magic_contract::Contract {
            name: "C".into(),
            version: semver::Version::new(1, 0, 0),
            input: json!({}),
            output: json!({}),
            capabilities: caps("t"),
            resources: Default::default(),
        }),
        deadline: std::time::Instant::now() + Duration::from_secs(60),
        temp_dir: None,
        traceparent: None,
        start: None,
    };
    let ctx = env(());
    let run = |cap: &'static str, op: &'static str, args: serde_json::Value| {
        let ctx = ctx.clone();
        let broker = &broker;
        async move {
            broker
                .call(
                    &ctx,
                    magic_broker::CapabilityCall {
                        capability: cap.into(),
                        op: op.into(),
                        args,
                    },
                )
                .await
                .result
        }
    };
    assert_eq!(
        code(
            &run(
                "db",
                "insert",
                json!({"table": "t", "values": {"name": "a"}})
            )
            .await
        ),
        "ok: {\"last_insert_id\":1,\"rows_affected\":1}"
    );
    assert_eq!(
        code(&run("cache", "set", json!({"key": "k:1", "value": 1})).await),
        "ok: null"
    );

    pg.stop().await;
    redis.stop().await;
    assert_eq!(
        code(
            &run(
                "db",
                "insert",
                json!({"table": "t", "values": {"name": "b"}})
            )
            .await
        ),
        "E5003"
    );
    assert_eq!(
        code(&run("cache", "get", json!({"key": "k:1"})).await),
        "E5003"
    );

    pg.restart().await;
    redis.restart().await;
    // Pools and the connection manager reconnect on their own.
    let mut db_ok = false;
    let mut cache_ok = false;
    for _ in 0..40 {
        if !db_ok {
            db_ok = run("db", "query", json!({"table": "t", "columns": ["name"]})).await
                == Ok(json!([{"name": "a"}]));
        }
        if !cache_ok {
            cache_ok = run("cache", "get", json!({"key": "k:1"})).await == Ok(json!(1));
        }
        if db_ok && cache_ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(db_ok, "postgres recovered");
    assert!(cache_ok, "redis recovered");
    assert!(broker.readiness().await.is_ready());

    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .ok();
    if let Ok(client) = redis::Client::open(REDIS) {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(format!("{prefix}cache:C:k:1"))
                .query_async(&mut c)
                .await;
        }
    }
}

//! secrets, cache, queue, fs and http glue against the embedded and production backends.

mod common;

use std::time::Duration;

use common::*;
use magic_broker::BrokerLimits;
use magic_contract::{Capability, EgressGrant};
use serde_json::{json, Value};

async fn secrets_are_scoped_and_never_leak(env: &Env) {
    let secret = format!("sk_live_{}", uuid::Uuid::new_v4().simple());
    env.broker
        .set_secret("admin@x", "Billing", "STRIPE_KEY", &secret)
        .await
        .expect("set");
    env.broker
        .set_secret("admin@x", "Billing", "OTHER", "v2")
        .await
        .expect("set");
    env.broker
        .set_secret("admin@x", "Mailer", "STRIPE_KEY", "mailer-value")
        .await
        .expect("set");
    let ctx = env.ctx(
        "Billing",
        vec![Capability::SecretsRead {
            keys: vec!["STRIPE_KEY".into()],
        }],
    );
    let reply = env
        .broker
        .call(
            &ctx,
            magic_broker::CapabilityCall {
                capability: "secrets".into(),
                op: "get".into(),
                args: json!({"key": "STRIPE_KEY"}),
            },
        )
        .await;
    assert!(
        !format!("{reply:?}").contains(&secret),
        "Debug of the reply hides the value"
    );
    assert_eq!(reply.result, Ok(Value::String(secret.clone())));
    assert_eq!(reply.capability, Some("secrets:read"));
    let r = env
        .call(&ctx, "secrets", "get", json!({"key": "OTHER"}))
        .await;
    assert_denied(
        &r,
        "E2003",
        "secrets:read",
        "OTHER",
        "secrets:read: { keys: [STRIPE_KEY, OTHER] }",
    );
    // Scoped per controller: Mailer's STRIPE_KEY is Mailer's own.
    let mailer = env.ctx(
        "Mailer",
        vec![Capability::SecretsRead {
            keys: vec!["STRIPE_KEY".into()],
        }],
    );
    assert_eq!(
        env.call(&mailer, "secrets", "get", json!({"key": "STRIPE_KEY"}))
            .await,
        Ok(json!("mailer-value"))
    );
    let nobody = env.ctx(
        "Nobody",
        vec![Capability::SecretsRead {
            keys: vec!["STRIPE_KEY".into()],
        }],
    );
    let r = env
        .call(&nobody, "secrets", "get", json!({"key": "STRIPE_KEY"}))
        .await;
    assert_eq!(code(&r), "E5001");
    assert!(!format!("{r:?}").contains(&secret));
    let undeclared = env.ctx("Billing", vec![]);
    let r = env
        .call(&undeclared, "secrets", "get", json!({"key": "STRIPE_KEY"}))
        .await;
    assert_denied(
        &r,
        "E2001",
        "secrets:read",
        "STRIPE_KEY",
        "secrets:read: { keys: [STRIPE_KEY] }",
    );
    // List shows names only.
    let list = env
        .broker
        .list_secrets("admin@x", Some("Billing"))
        .await
        .expect("list");
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["OTHER", "STRIPE_KEY"]);
    assert!(!format!("{list:?}").contains(&secret));
    assert_eq!(
        env.broker
            .list_secrets("admin@x", None)
            .await
            .expect("all")
            .len(),
        3
    );
    // Not in any audit record; admin actions audited with the actor.
    let all = serde_json::to_string(&env.audit.events()).unwrap_or_default();
    assert!(!all.contains(&secret), "audit holds the secret");
    assert!(all.contains("secret_set") && all.contains("admin@x"));
    // Not stored in clear text either.
    assert!(env
        .broker
        .delete_secret("admin@x", "Billing", "STRIPE_KEY")
        .await
        .expect("delete"));
    assert!(!env
        .broker
        .delete_secret("admin@x", "Billing", "STRIPE_KEY")
        .await
        .expect("delete"));
    assert_eq!(
        code(
            &env.call(&ctx, "secrets", "get", json!({"key": "STRIPE_KEY"}))
                .await
        ),
        "E5001"
    );
    assert!(env
        .broker
        .set_secret("admin@x", "bad name", "K", "v")
        .await
        .is_err());
}
both!(secrets_are_scoped_and_never_leak);

async fn secrets_are_encrypted_at_rest(env: &Env) {
    env.broker
        .set_secret("a", "Billing", "K", "plaintext-marker-123")
        .await
        .expect("set");
    // The stored row holds only the sealed value.
    let store_url = match env.kind {
        Kind::Embedded => format!("sqlite://{}", env.dir.path().join("magic.db").display()),
        Kind::Production => env.app_url.clone(),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&store_url).await.expect("store");
    let (sealed,): (String,) = sqlx::query_as(
        "SELECT sealed FROM magic_broker_secrets WHERE controller = $1 AND name = $2",
    )
    .bind("Billing")
    .bind("K")
    .fetch_one(&pool)
    .await
    .expect("row");
    pool.close().await;
    assert!(sealed.len() > 20);
    assert!(!sealed.contains("plaintext-marker"));
    if env.kind == Kind::Embedded {
        let db = std::fs::read(env.dir.path().join("magic.db")).unwrap_or_default();
        let wal = std::fs::read(env.dir.path().join("magic.db-wal")).unwrap_or_default();
        let hay = [db, wal].concat();
        assert!(
            hay.windows(7).any(|w| w == b"Billing"),
            "the files were read"
        );
        assert!(
            !hay.windows(20).any(|w| w == b"plaintext-marker-123"),
            "secret in clear text on disk"
        );
    }
}
both!(secrets_are_encrypted_at_rest);

async fn cache_prefix_ttl_namespace(env: &Env) {
    let caps = vec![
        Capability::CacheRead {
            prefix: "inv:".into(),
        },
        Capability::CacheWrite {
            prefix: "inv:".into(),
            max_ttl: Duration::from_secs(3600),
        },
    ];
    let a = env.ctx("CtrlA", caps.clone());
    let b = env.ctx("CtrlB", caps);
    assert_eq!(
        env.call(
            &a,
            "cache",
            "set",
            json!({"key": "inv:1", "value": {"total": 5}})
        )
        .await,
        Ok(Value::Null)
    );
    assert_eq!(
        env.call(&a, "cache", "get", json!({"key": "inv:1"})).await,
        Ok(json!({"total": 5}))
    );
    assert_eq!(
        env.call(&b, "cache", "get", json!({"key": "inv:1"})).await,
        Ok(Value::Null),
        "namespaces are per controller"
    );
    let r = env.call(&a, "cache", "get", json!({"key": "user:1"})).await;
    assert_denied(
        &r,
        "E2006",
        "cache:read",
        "user:1",
        "cache:read: { prefix: \"user:\" }",
    );
    let r = env
        .call(
            &a,
            "cache",
            "set",
            json!({"key": "inv:2", "value": 1, "ttl_s": 7200}),
        )
        .await;
    assert_denied(
        &r,
        "E2006",
        "cache:write",
        "inv:2",
        "cache:write: { prefix: \"inv:\", max_ttl: 2h }",
    );
    let r = env
        .call(&a, "cache", "set", json!({"key": "other", "value": 1}))
        .await;
    assert_eq!(code(&r), "E2006");
    let ro = env.ctx(
        "CtrlA",
        vec![Capability::CacheRead {
            prefix: "inv:".into(),
        }],
    );
    let r = env
        .call(&ro, "cache", "set", json!({"key": "inv:1", "value": 2}))
        .await;
    assert_denied(
        &r,
        "E2001",
        "cache:write",
        "inv:1",
        "cache:write: { prefix: \"inv:\", max_ttl: 1h }",
    );
    assert_eq!(
        env.call(
            &a,
            "cache",
            "set",
            json!({"key": "inv:short", "value": "x", "ttl_s": 1})
        )
        .await,
        Ok(Value::Null)
    );
    assert_eq!(
        env.call(&a, "cache", "get", json!({"key": "inv:short"}))
            .await,
        Ok(json!("x"))
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        env.call(&a, "cache", "get", json!({"key": "inv:short"}))
            .await,
        Ok(Value::Null),
        "expired"
    );
    assert_eq!(
        env.call(&a, "cache", "delete", json!({"key": "inv:1"}))
            .await,
        Ok(Value::Null)
    );
    assert_eq!(
        env.call(&a, "cache", "get", json!({"key": "inv:1"})).await,
        Ok(Value::Null)
    );
    let big = "x".repeat(2 * 1024 * 1024);
    assert_eq!(
        code(
            &env.call(&a, "cache", "set", json!({"key": "inv:big", "value": big}))
                .await
        ),
        "E5001"
    );
    let ev = env.events_for(&a);
    assert!(ev
        .iter()
        .any(|e| e.event == "capability_violation" && e.outcome.as_deref() == Some("E2006")));
    assert!(
        !serde_json::to_string(&ev)
            .unwrap_or_default()
            .contains("total"),
        "values are not audited"
    );
}
both!(cache_prefix_ttl_namespace);

async fn queue_at_least_once(kind: Kind) {
    let limits = BrokerLimits {
        queue_visibility: Duration::from_millis(300),
        queue_max_attempts: 2,
        ..BrokerLimits::default()
    };
    let env = Env::with_limits(kind, limits).await;
    let q = unique("jobs");
    let caps = vec![
        Capability::QueuePublish {
            queues: vec![q.clone()],
        },
        Capability::QueueSubscribe {
            queues: vec![q.clone()],
        },
    ];
    let ctx = env.ctx("Worker", caps);
    let r = env
        .call(
            &ctx,
            "queue",
            "publish",
            json!({"queue": "elsewhere", "message": 1}),
        )
        .await;
    assert_denied(
        &r,
        "E2005",
        "queue:publish",
        "elsewhere",
        &format!("queue:publish: {{ queues: [{q}, elsewhere] }}"),
    );
    let sub_only = env.ctx(
        "Worker",
        vec![Capability::QueuePublish {
            queues: vec![q.clone()],
        }],
    );
    let r = env
        .call(&sub_only, "queue", "receive", json!({"queue": q}))
        .await;
    assert_denied(
        &r,
        "E2001",
        "queue:subscribe",
        &q,
        &format!("queue:subscribe: {{ queues: [{q}] }}"),
    );

    for n in 1..=2 {
        let r = env
            .call(
                &ctx,
                "queue",
                "publish",
                json!({"queue": q, "message": {"n": n}}),
            )
            .await;
        assert!(
            r.as_ref().map(|v| v["id"].is_string()).unwrap_or(false),
            "{r:?}"
        );
    }
    let got = env
        .call(
            &ctx,
            "queue",
            "receive",
            json!({"queue": q, "max": 10, "wait_ms": 1000}),
        )
        .await
        .expect("receive");
    let got = got.as_array().cloned().unwrap_or_default();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["message"], json!({"n": 1}));
    assert_eq!(got[0]["attempt"], 1);
    // ack the first; the second is redelivered after the visibility timeout.
    assert_eq!(
        env.call(
            &ctx,
            "queue",
            "ack",
            json!({"queue": q, "id": got[0]["id"]})
        )
        .await,
        Ok(Value::Null)
    );
    let none = env
        .call(&ctx, "queue", "receive", json!({"queue": q, "max": 10}))
        .await
        .expect("receive");
    assert_eq!(none, json!([]), "invisible while being processed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = env
        .call(&ctx, "queue", "receive", json!({"queue": q, "max": 10}))
        .await
        .expect("receive");
    assert_eq!(again.as_array().map(Vec::len), Some(1), "{again}");
    assert_eq!(again[0]["message"], json!({"n": 2}));
    assert_eq!(again[0]["attempt"], 2);
    // After max attempts it moves to the dead letters.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gone = env
        .call(&ctx, "queue", "receive", json!({"queue": q, "max": 10}))
        .await
        .expect("receive");
    assert_eq!(gone, json!([]));
    let dead = env.broker.queue().dead_letters(&q, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, json!({"n": 2}));
    assert_eq!(dead[0].attempt, 2);
    // receive waits for a message published meanwhile.
    let backend = env.broker.queue();
    let q2 = q.clone();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        backend.publish(&q2, &json!("late")).await
    });
    let started = std::time::Instant::now();
    let got = env
        .call(
            &ctx,
            "queue",
            "receive",
            json!({"queue": q, "wait_ms": 3000}),
        )
        .await
        .expect("receive");
    assert_eq!(got[0]["message"], json!("late"));
    assert!(started.elapsed() < Duration::from_millis(2500));
    publisher.await.ok();
    // release makes a message visible again at once (runtime retry primitive).
    let backend = env.broker.queue();
    let id = backend.publish(&q, &json!("r")).await.expect("publish");
    let first = backend.receive(&q, 5).await.expect("receive");
    assert!(first.iter().any(|d| d.id == id));
    assert!(backend.release(&q, &id).await.expect("release"));
    let second = backend.receive(&q, 5).await.expect("receive");
    assert!(
        second.iter().any(|d| d.id == id && d.attempt == 2),
        "{second:?}"
    );
    assert!(backend.ack(&q, &id).await.expect("ack"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_embedded() {
    queue_at_least_once(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_production() {
    queue_at_least_once(Kind::Production).await;
}

async fn http_glue(env: &Env) {
    let none = env.ctx("Fetcher", vec![]);
    let r = env
        .call(
            &none,
            "http",
            "request",
            json!({"method": "GET", "url": "https://api.stripe.com/v1/x"}),
        )
        .await;
    assert_denied(
        &r,
        "E2001",
        "http:egress",
        "api.stripe.com",
        "http:egress: { allow: [api.stripe.com] }",
    );
    let ctx = env.ctx(
        "Fetcher",
        vec![Capability::HttpEgress(EgressGrant {
            allow: vec!["api.stripe.com".into()],
            ..Default::default()
        })],
    );
    let r = env
        .call(
            &ctx,
            "http",
            "request",
            json!({"method": "GET", "url": "https://evil.example/x"}),
        )
        .await;
    // The egress crate decides; whatever it answers is audited with the host.
    assert!(r.is_err());
    let ev = env.events_for(&ctx);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].target.as_deref(), Some("evil.example"));
    assert_eq!(ev[0].details["method"], "GET");
    let r = env
        .call(
            &ctx,
            "http",
            "request",
            json!({"url": "https://api.stripe.com"}),
        )
        .await;
    assert_eq!(code(&r), "E5001", "method is required");
}
both!(http_glue);

#[tokio::test]
async fn temp_dirs() {
    let env = Env::new(Kind::Embedded).await;
    let dir = env.broker.create_temp_dir("req_1", 10).expect("create");
    std::fs::write(dir.path().join("f"), b"0123456789ab").expect("write");
    assert_eq!(dir.check().err().map(|e| e.code.as_str()), Some("E3003"));
    let p = dir.path().to_path_buf();
    drop(dir);
    assert!(!p.exists());
}

/// Concurrent receivers never get the same message twice while it is invisible, and
/// together they get every message.
async fn concurrent_receivers_split_the_queue(env: &Env) {
    let q = unique("split");
    let backend = env.broker.queue();
    for n in 0..40 {
        backend.publish(&q, &json!(n)).await.expect("publish");
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let backend = env.broker.queue();
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = backend.receive(&q, 3).await.expect("receive");
                if batch.is_empty() {
                    break;
                }
                for d in batch {
                    got.push(d.message.as_i64().unwrap_or(-1));
                    backend.ack(&q, &d.id).await.expect("ack");
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<i64>>());
}
both!(concurrent_receivers_split_the_queue);

struct FailingSink;

#[async_trait::async_trait]
impl magic_audit::AuditSink for FailingSink {
    async fn append(&self, _event: magic_audit::AuditEvent) -> Result<(), magic_audit::AuditError> {
        Err(magic_audit::AuditError::Closed)
    }
}

/// A call whose audit record cannot be written is not answered with its value.
#[tokio::test]
async fn unaudited_calls_fail_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let store = magic_store::Store::open(None, dir.path())
        .await
        .expect("store");
    let broker = magic_broker::CapabilityBroker::connect(
        magic_broker::BrokerConfig::new(dir.path()),
        std::sync::Arc::new(FailingSink),
        store,
    )
    .await
    .expect("broker");
    assert!(
        broker.set_secret("admin", "C", "K", "v").await.is_err(),
        "an admin action reports its missing audit record"
    );
    let env = Env::new(Kind::Embedded).await;
    let ctx = env.ctx("C", vec![Capability::CacheRead { prefix: "k".into() }]);
    let r = broker
        .call(
            &ctx,
            magic_broker::CapabilityCall {
                capability: "cache".into(),
                op: "get".into(),
                args: json!({"key": "k1"}),
            },
        )
        .await
        .result;
    assert_eq!(code(&r), "E5003");
    let r = broker
        .call(
            &ctx,
            magic_broker::CapabilityCall {
                capability: "cache".into(),
                op: "get".into(),
                args: json!({"key": "x"}),
            },
        )
        .await
        .result;
    assert_eq!(code(&r), "E5003", "denials too");
}

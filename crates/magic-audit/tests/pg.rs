//! One chain on the real PostgreSQL shared by two appending "nodes".
//!
//! Each test works in its own schema (`search_path` in the URL options) and drops it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::FutureExt;
use magic_audit::{verify_store, AuditChain, AuditConfig, Durability, KeySource};
use magic_store::Store;
use sqlx::Connection;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn admin() -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(PG)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432")
}

/// Run `body` with a fresh schema's URL, then drop the schema whatever happened.
async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let schema = format!("audit_test_{}", uuid_like());
    let mut conn = admin().await;
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let url = format!("{PG}?options[search_path]={schema}");
    let result = std::panic::AssertUnwindSafe(body(url)).catch_unwind().await;
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .expect("drop schema");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

fn seed_hex() -> String {
    use rand::RngCore;
    let mut b = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn node_config(
    dir: &std::path::Path,
    own: &str,
    other_public: ed25519_dalek::VerifyingKey,
) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.key = KeySource::Inline(own.to_string());
    c.trusted_keys = vec![other_public];
    c.checkpoint_every = 150;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_append_to_one_verifiable_chain() {
    with_schema(|url| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seed_a, seed_b) = (seed_hex(), seed_hex());
        let pub_a = KeySource::Inline(seed_a.clone())
            .load()
            .expect("key")
            .verifying_key();
        let pub_b = KeySource::Inline(seed_b.clone())
            .load()
            .expect("key")
            .verifying_key();
        let store_a = Store::open(Some(&url), dir.path())
            .await
            .expect("node a store");
        let store_b = Store::open(Some(&url), dir.path())
            .await
            .expect("node b store");
        let a = AuditChain::open(store_a.clone(), node_config(dir.path(), &seed_a, pub_b))
            .await
            .expect("node a");
        let mut cfg_b = node_config(dir.path(), &seed_b, pub_a);
        cfg_b.durability = Durability::Sync;
        let b = AuditChain::open(store_b, cfg_b).await.expect("node b");
        assert!(a.describe().contains("postgres"));
        let mut tasks = Vec::new();
        for t in 0..24_u64 {
            let node = if t % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    seqs.push(
                        node.append_event(common::event(t * 100 + i))
                            .await
                            .expect("append")
                            .seq,
                    );
                }
                seqs
            }));
        }
        let mut all = BTreeSet::new();
        for t in tasks {
            for s in t.await.expect("task") {
                assert!(all.insert(s), "seq {s} handed out twice");
            }
        }
        assert_eq!(all.len(), 1200);
        assert_eq!(all.iter().next_back(), Some(&1200));
        a.shutdown().await.expect("shutdown a");
        b.shutdown().await.expect("shutdown b");
        let report = verify_store(&store_a, &[pub_a, pub_b], &[])
            .await
            .expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.records_checked, 1200);
        assert!(report.checkpoints_checked >= 2, "{report:?}");
        // Both nodes signed checkpoints: trusting only one key flags the other's.
        let keys: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT public_key FROM magic_audit_checkpoints")
                .fetch_all(store_a.pool())
                .await
                .expect("keys");
        assert_eq!(keys.len(), 2, "both nodes checkpointed");
        let only_a = verify_store(&store_a, &[pub_a], &[]).await.expect("verify");
        assert!(only_a
            .first_bad
            .as_ref()
            .is_some_and(|b| b.reason.contains("untrusted")));
        // Tampering is seen on PostgreSQL too.
        sqlx::query("UPDATE magic_audit_log SET actor = 'mallory' WHERE seq = 600")
            .execute(store_a.pool())
            .await
            .expect("tamper");
        let report = verify_store(&store_a, &[pub_a, pub_b], &[])
            .await
            .expect("verify");
        assert_eq!(report.first_bad.map(|b| b.seq), Some(600));
    })
    .await;
}

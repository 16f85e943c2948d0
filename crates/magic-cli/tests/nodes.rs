//! Several runtime nodes on one PostgreSQL store are one runtime: a deploy or rollback made
//! through any node is served by every node within a second, and the audit chain stays one
//! verifiable chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{code, contract, write_controller, Server};

/// Execute on `node` until it answers with `version` (or panic after `within`).
async fn wait_for_version(node: &Server, version: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, body) = node.post("/api/execute/Shared", "{}").await;
        if status == 200 && body["version"] == version {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "node {} still answers {status} {body}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_and_rollbacks_reach_every_node_within_a_second() {
    let schema = format!("nodes_{}", uuid::Uuid::new_v4().simple());
    let admin_url = "postgres://postgres@127.0.0.1:5432/test";
    let pool = sqlx::PgPool::connect(admin_url)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("{admin_url}?options[search_path]={schema}");

    let a = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("MAGIC_REGISTRY_SYNC_MS", "200"),
    ]);
    // Nodes share the secrets master key and the audit signing key (as in production).
    let master = a.data_dir.join("master.key");
    let signing = a.data_dir.join("audit_signing.key");
    let b = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("MAGIC_REGISTRY_SYNC_MS", "200"),
        ("MAGIC_MASTER_KEY_FILE", master.to_str().unwrap()),
        ("AUDIT_SIGNING_KEY_FILE", signing.to_str().unwrap()),
    ]);

    let tmp = tempfile::tempdir().unwrap();
    let deploy = |node: &Server, version: &str| {
        let dir = tmp.path().join(version);
        write_controller(
            &dir,
            &contract("Shared", version, "greeting", ""),
            &code("Shared", "        return {\"greeting\": \"hi\"}"),
        );
        let out = node.cli(&["deploy", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    deploy(&a, "1.0.0");
    let took = wait_for_version(&b, "1.0.0", Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "node b served the deploy after {took:?}"
    );

    deploy(&b, "2.0.0");
    let took = wait_for_version(&a, "2.0.0", Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "node a served the deploy after {took:?}"
    );

    let out = a.cli(&["rollback", "Shared", "--to", "1.0.0"]);
    assert!(out.status.success());
    let took = wait_for_version(&b, "1.0.0", Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "node b served the rollback after {took:?}"
    );

    for node in [&a, &b] {
        let out = node.cli(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    a.stop();
    b.stop();
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
}

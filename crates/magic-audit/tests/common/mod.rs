//! Shared helpers of the integration tests.
#![allow(dead_code, missing_docs)]

use std::path::Path;
use std::time::Duration;

use magic_audit::{AuditChain, AuditConfig, AuditEvent};
use magic_store::Store;

pub async fn sqlite(dir: &Path) -> Store {
    Store::open(None, dir).await.expect("store opens")
}

/// A config with no automatic checkpoints (tests take them explicitly).
pub fn config(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir);
    c.checkpoint_every = u64::MAX / 4;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

pub fn event(i: u64) -> AuditEvent {
    AuditEvent {
        event: "capability_use".into(),
        request_id: Some(format!("req-{i}")),
        controller: Some("InvoiceSync".into()),
        version: Some("1.0.0".into()),
        actor: None,
        capability: Some("db:read".into()),
        target: Some("invoices".into()),
        outcome: Some("allowed".into()),
        details: serde_json::json!({ "i": i, "rows": 3 }),
    }
}

pub async fn append_n(chain: &AuditChain, from: u64, n: u64) {
    for i in from..from + n {
        chain.append_event(event(i)).await.expect("append");
    }
}

pub async fn exec(store: &Store, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

//! Audit append throughput: many concurrent appenders on one chain.
//!
//! `cargo run --release -p magic-audit --example append_bench -- [--mode group|sync]
//! [--appenders N] [--records N] [--database-url URL]`
//!
//! With `--database-url`, point it at a throwaway schema (`?options[search_path]=…`).
//!
//! Each appender task appends its share of records one after another, awaiting each
//! acknowledgement (the way the broker does). Reports acknowledged records per second,
//! per-append latency percentiles, batch sizes, and the time to verify the whole chain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use magic_audit::{AuditChain, AuditConfig, AuditEvent, Durability};
use magic_store::Store;

struct Args {
    mode: Durability,
    appenders: u64,
    records: u64,
    database_url: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        mode: Durability::Group,
        appenders: 256,
        records: 200_000,
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--mode" => a.mode = Durability::parse(&value).expect("--mode group|sync"),
            "--appenders" => a.appenders = value.parse().expect("--appenders N"),
            "--records" => a.records = value.parse().expect("--records N"),
            "--database-url" => a.database_url = Some(value),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        event: "capability_use".into(),
        request_id: Some(format!("req-{i:012}")),
        controller: Some("InvoiceSync".into()),
        version: Some("1.2.0".into()),
        actor: Some("svc-billing".into()),
        capability: Some("db:read".into()),
        target: Some("invoices".into()),
        outcome: Some("allowed".into()),
        details: serde_json::json!({ "rows": 3, "duration_us": 412 }),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(a.database_url.as_deref(), dir.path())
        .await
        .expect("store");
    let mut cfg = AuditConfig::new(dir.path());
    cfg.durability = a.mode;
    let chain = AuditChain::open(store.clone(), cfg).await.expect("chain");
    println!("{}", chain.describe());

    // Warm up (statement caches, WAL file).
    for i in 0..2000 {
        chain.append_event(event(i)).await.expect("append");
    }
    let before = chain.stats();

    let per_task = a.records / a.appenders;
    let total = per_task * a.appenders;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..a.appenders {
        let c = chain.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task as usize);
            for i in 0..per_task {
                let t0 = Instant::now();
                c.append_event(event(t * per_task + i))
                    .await
                    .expect("append");
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(total as usize);
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    let after = chain.stats();
    let batches = after.batches - before.batches;
    println!(
        "mode={:?} appenders={} records={} elapsed={:.3}s rate={:.0} records/s \
         latency p50={:?} p99={:?} max={:?} batches={} avg_batch={:.1} fsyncs={}",
        a.mode,
        a.appenders,
        total,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        batches,
        total as f64 / batches.max(1) as f64,
        after.fsyncs - before.fsyncs,
    );

    let t0 = Instant::now();
    let report = chain.verify().await.expect("verify");
    let v = t0.elapsed();
    assert!(report.is_ok(), "{report:?}");
    println!(
        "verify: {} records, {} checkpoints in {:.3}s ({:.0} records/s)",
        report.records_checked,
        report.checkpoints_checked,
        v.as_secs_f64(),
        report.records_checked as f64 / v.as_secs_f64()
    );
    chain.shutdown().await.expect("shutdown");
}

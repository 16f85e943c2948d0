//! The chain on a real SQLite store: appends, concurrency, tampering, reads, restarts.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{append_n, config, event, exec, sqlite};
use futures::TryStreamExt;
use magic_audit::{
    verify_store, AuditChain, AuditError, AuditRecord, AuditSink, Durability, Position, ReadRange,
    VerifyReport,
};

fn bad_seq(r: &VerifyReport) -> Option<u64> {
    r.first_bad.as_ref().map(|b| b.seq)
}

#[tokio::test]
async fn appends_are_chained_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    for i in 1..=50 {
        let r = chain.append_event(event(i)).await.expect("append");
        assert_eq!(r.seq, i);
        assert_eq!(r.hash.len(), 64);
    }
    // Through the trait the broker uses.
    let sink: Arc<dyn AuditSink> = Arc::new(chain.clone());
    sink.append(event(51)).await.expect("append via trait");
    let report = chain.verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_checked, 51);
    assert_eq!(report.head_seq, 51);
    let records: Vec<AuditRecord> = chain
        .read(ReadRange::all())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(records.len(), 51);
    assert_eq!(records[0].prev_hash, magic_audit::GENESIS_HASH);
    assert_eq!(records[50].hash, report.head_hash);
    assert_eq!(records[6].to_event(), event(7));
    assert!(records[0].timestamp.ends_with('Z') && records[0].timestamp.len() == 27);
    assert!(records.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    chain.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_give_one_gap_free_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    let mut tasks = Vec::new();
    for t in 0..64_u64 {
        let c = chain.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                seqs.push(
                    c.append_event(event(t * 1000 + i))
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
            assert!(all.insert(s), "seq {s} given twice");
        }
    }
    assert_eq!(all.len(), 6400);
    assert_eq!(all.iter().next_back(), Some(&6400));
    let report = chain.verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_checked, 6400);
    let stats = chain.stats();
    assert_eq!(stats.appended, 6400);
    assert!(
        stats.batches < 6400,
        "group commit batches appends: {stats:?}"
    );
    chain.shutdown().await.expect("shutdown");
}

/// `append_events` stores its events next to each other, in order, in one commit, even
/// while other appenders run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_events_append_together_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    let noise: Vec<_> = (0..8_u64)
        .map(|t| {
            let c = chain.clone();
            tokio::spawn(async move { append_n(&c, 10_000 * (t + 1), 50).await })
        })
        .collect();
    let mut receipts = Vec::new();
    for i in 0..20_u64 {
        let r = chain
            .append_events(vec![event(3 * i), event(3 * i + 1), event(3 * i + 2)])
            .await
            .expect("append_events");
        receipts.push(r);
    }
    for t in noise {
        t.await.expect("task");
    }
    let records: Vec<AuditRecord> = chain
        .read(ReadRange::all())
        .try_collect()
        .await
        .expect("read");
    for (i, r) in receipts.iter().enumerate() {
        let at = usize::try_from(r.seq).expect("seq") - 1;
        let ids: Vec<_> = records[at - 2..=at]
            .iter()
            .map(|r| r.request_id.clone().unwrap_or_default())
            .collect();
        let want: Vec<_> = (0..3).map(|k| format!("req-{}", 3 * i + k)).collect();
        assert_eq!(ids, want, "the three events are adjacent and in order");
        assert_eq!(records[at].hash, r.hash);
    }
    assert!(chain.append_events(vec![]).await.is_err());
    assert!(chain.verify().await.expect("verify").is_ok());
    chain.shutdown().await.expect("shutdown");
}

/// Two writers on one SQLite file (as two processes would be): each reads the head inside
/// its own transaction, so their records interleave into one chain without a gap or a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_sqlite_file_share_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens a");
    let b = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens b");
    let mut tasks = Vec::new();
    for (w, chain) in [(0_u64, a.clone()), (1, b.clone())] {
        for t in 0..8_u64 {
            let c = chain.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let e = event(w * 100_000 + t * 1000 + i);
                    seqs.push(c.append_event(e).await.expect("append").seq);
                }
                seqs
            }));
        }
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.expect("task") {
            assert!(all.insert(s), "seq {s} given twice");
        }
    }
    assert_eq!(all.len(), 800);
    assert_eq!(all.iter().next_back(), Some(&800));
    assert!(a.stats().appended > 0 && b.stats().appended > 0);
    let report = b.verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_checked, 800);
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test]
async fn a_full_queue_makes_appends_wait_not_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.queue_capacity = 1;
    cfg.batch_max = 2;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = chain.clone();
            tokio::spawn(async move { c.append_event(event(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("every append succeeds");
    }
    let report = chain.verify().await.expect("verify");
    assert_eq!(report.records_checked, 200);
    assert!(chain.stats().batches >= 100, "batches of at most 2");
}

/// Each tamper case of the issue, done with SQL on the stored chain, named at the right seq.
#[tokio::test]
async fn tampering_with_the_store_is_detected_at_the_first_bad_record() {
    type Case = (&'static str, &'static str, Option<u64>);
    let cases: &[Case] = &[
        (
            "edit a field",
            "UPDATE magic_audit_log SET target = 'payroll' WHERE seq = 7",
            Some(7),
        ),
        (
            "edit details",
            "UPDATE magic_audit_log SET details = '{\"i\":0}' WHERE seq = 3",
            Some(3),
        ),
        (
            "edit the hash",
            "UPDATE magic_audit_log SET hash = prev_hash WHERE seq = 12",
            Some(12),
        ),
        (
            "delete a record",
            "DELETE FROM magic_audit_log WHERE seq = 9",
            Some(9),
        ),
        (
            "delete and renumber",
            "DELETE FROM magic_audit_log WHERE seq = 9; \
             UPDATE magic_audit_log SET seq = seq + 1000 WHERE seq > 9; \
             UPDATE magic_audit_log SET seq = seq - 1001 WHERE seq > 1000;",
            Some(9),
        ),
        (
            "insert a record",
            "UPDATE magic_audit_log SET seq = seq + 1000 WHERE seq > 5; \
             UPDATE magic_audit_log SET seq = seq - 999 WHERE seq > 1000; \
             INSERT INTO magic_audit_log SELECT 6, ts, 'admin_action', request_id, controller, \
               version, 'mallory', capability, target, outcome, details, hash, hash \
               FROM magic_audit_log WHERE seq = 5;",
            Some(6),
        ),
        (
            "swap two records",
            "UPDATE magic_audit_log SET seq = 1000 WHERE seq = 4; \
             UPDATE magic_audit_log SET seq = 4 WHERE seq = 5; \
             UPDATE magic_audit_log SET seq = 5 WHERE seq = 1000;",
            Some(4),
        ),
        (
            "truncate the tail (no checkpoint covers it)",
            "DELETE FROM magic_audit_log WHERE seq > 15",
            None,
        ),
    ];
    for (name, sql, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite(dir.path()).await;
        let chain = AuditChain::open(store.clone(), config(dir.path()))
            .await
            .expect("opens");
        append_n(&chain, 1, 20).await;
        assert!(chain.verify().await.expect("verify").is_ok());
        exec(&store, sql).await;
        let report = chain.verify().await.expect("verify");
        assert_eq!(bad_seq(&report), *want, "{name}: {report:?}");
        if want.is_none() {
            assert_eq!(report.records_checked, 15, "{name}");
        }
    }
}

#[tokio::test]
async fn truncation_past_a_checkpoint_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let chain = AuditChain::open(store.clone(), config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 20).await;
    let cp = chain
        .checkpoint_now()
        .await
        .expect("checkpoint")
        .expect("new head");
    assert_eq!(cp.seq, 20);
    assert!(chain.checkpoint_now().await.expect("no-op").is_none());
    append_n(&chain, 21, 5).await;
    // Cut 3 records after the checkpoint: undetectable.
    exec(&store, "DELETE FROM magic_audit_log WHERE seq > 22").await;
    let r = chain.verify().await.expect("verify");
    assert!(r.is_ok(), "{r:?}");
    // Cut into the checkpointed part: detected at the first missing record.
    exec(&store, "DELETE FROM magic_audit_log WHERE seq > 17").await;
    let r = chain.verify().await.expect("verify");
    assert_eq!(bad_seq(&r), Some(18), "{r:?}");
    assert_eq!(r.records_checked, 17);
    // Rewriting the tail and re-hashing it (attacker without the key) is caught by the
    // checkpoint's head hash.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = sqlite(dir2.path()).await;
    let chain2 = AuditChain::open(store2.clone(), config(dir2.path()))
        .await
        .expect("opens");
    append_n(&chain2, 1, 10).await;
    chain2.checkpoint_now().await.expect("checkpoint");
    rewrite_from(&chain2, &store2, 6).await;
    let r = chain2.verify().await.expect("verify");
    assert_eq!(bad_seq(&r), Some(10), "{r:?}");
}

/// Edit record `from` and re-hash it and everything after it, as an attacker who knows the
/// format but not the key would.
async fn rewrite_from(chain: &AuditChain, store: &magic_store::Store, from: u64) {
    let mut records: Vec<AuditRecord> = chain
        .read_with(ReadRange::all(), false)
        .try_collect()
        .await
        .expect("read");
    let mut prev = records[(from - 2) as usize].hash.clone();
    for r in records.iter_mut().skip((from - 1) as usize) {
        if r.seq == from {
            r.actor = Some("mallory".into());
        }
        r.prev_hash = prev;
        r.hash = r.compute_hash();
        prev = r.hash.clone();
        sqlx::query(
            "UPDATE magic_audit_log SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
        )
        .bind(r.actor.as_deref())
        .bind(r.prev_hash.as_str())
        .bind(r.hash.as_str())
        .bind(r.seq as i64)
        .execute(store.pool())
        .await
        .expect("update");
    }
}

#[tokio::test]
async fn external_checkpoints_detect_a_rollback_of_store_and_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let chain = AuditChain::open(store.clone(), config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    let kept_elsewhere = chain.checkpoint_now().await.expect("cp").expect("new");
    exec(
        &store,
        "DELETE FROM magic_audit_log WHERE seq > 6; DELETE FROM magic_audit_checkpoints;",
    )
    .await;
    assert!(
        chain.verify().await.expect("verify").is_ok(),
        "the store alone can't tell"
    );
    let r = chain.verify_with(&[kept_elsewhere]).await.expect("verify");
    assert_eq!(bad_seq(&r), Some(7), "{r:?}");
}

#[tokio::test]
async fn forged_and_foreign_checkpoints_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let chain = AuditChain::open(store.clone(), config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    chain.checkpoint_now().await.expect("cp");
    exec(
        &store,
        "UPDATE magic_audit_checkpoints SET seq = 4 WHERE seq = 10",
    )
    .await;
    let r = chain.verify().await.expect("verify");
    assert_eq!(bad_seq(&r), Some(4), "{r:?}");
    // Another key's checkpoint verifies only when that key is trusted.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let foreign_key = magic_audit::KeySource::DataDir(other_dir.path().to_path_buf())
        .load()
        .expect("key");
    exec(&store, "DELETE FROM magic_audit_checkpoints").await;
    let head = chain.verify().await.expect("verify");
    let cp = magic_audit::Checkpoint::sign(&foreign_key, 10, &head.head_hash, "t".into());
    sqlx::query("INSERT INTO magic_audit_checkpoints VALUES ($1, $2, $3, $4, $5)")
        .bind(10_i64)
        .bind(cp.head_hash.as_str())
        .bind(cp.timestamp.as_str())
        .bind(cp.public_key.as_str())
        .bind(cp.signature.as_str())
        .execute(store.pool())
        .await
        .expect("insert");
    let r = chain.verify().await.expect("verify");
    assert_eq!(bad_seq(&r), Some(10), "{r:?}");
    let r = verify_store(
        &store,
        &[chain.public_key(), foreign_key.verifying_key()],
        &[],
    )
    .await
    .expect("verify");
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn ranges_by_seq_time_and_from_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.checkpoint_every = 7;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    let t_mid = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    append_n(&chain, 11, 10).await;
    let seqs = |rs: Vec<AuditRecord>| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    for verify in [false, true] {
        let got: Vec<AuditRecord> = chain
            .read_with(ReadRange::seqs(5, 8), verify)
            .try_collect()
            .await
            .expect("read");
        assert_eq!(seqs(got), vec![5, 6, 7, 8]);
        let got: Vec<AuditRecord> = chain
            .read_with(ReadRange::last(3), verify)
            .try_collect()
            .await
            .expect("read");
        assert_eq!(seqs(got), vec![18, 19, 20]);
        let after: Vec<AuditRecord> = chain
            .read_with(
                ReadRange {
                    from: Some(Position::Time(t_mid)),
                    to: None,
                },
                verify,
            )
            .try_collect()
            .await
            .expect("read");
        assert_eq!(seqs(after), (11..=20).collect::<Vec<_>>());
        let before: Vec<AuditRecord> = chain
            .read_with(
                ReadRange {
                    from: None,
                    to: Some(Position::Time(t_mid)),
                },
                verify,
            )
            .try_collect()
            .await
            .expect("read");
        assert_eq!(seqs(before), (1..=10).collect::<Vec<_>>());
        let none: Vec<AuditRecord> = chain
            .read_with(ReadRange::seqs(30, 40), verify)
            .try_collect()
            .await
            .expect("read");
        assert!(none.is_empty());
    }
}

#[tokio::test]
async fn verify_on_read_stops_at_the_first_bad_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let mut cfg = config(dir.path());
    cfg.verify_on_read = true;
    cfg.checkpoint_every = 5;
    let chain = AuditChain::open(store.clone(), cfg).await.expect("opens");
    append_n(&chain, 1, 20).await;
    exec(
        &store,
        "UPDATE magic_audit_log SET outcome = 'denied' WHERE seq = 13",
    )
    .await;
    let mut stream = chain.read(ReadRange::seqs(12, 20));
    let first = stream.try_next().await.expect("12 is fine");
    assert_eq!(first.map(|r| r.seq), Some(12));
    match stream.try_next().await {
        Err(AuditError::Tampered(bad)) => assert_eq!(bad.seq, 13),
        other => panic!("expected tampering at 13, got {other:?}"),
    }
    // Without verification the edited record is returned as stored.
    let plain: Vec<AuditRecord> = chain
        .read_with(ReadRange::seqs(13, 13), false)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(plain[0].outcome.as_deref(), Some("denied"));
    // A range that ends before the damage reads fine.
    let early: Vec<AuditRecord> = chain
        .read(ReadRange::seqs(1, 12))
        .try_collect()
        .await
        .expect("read");
    assert_eq!(early.len(), 12);
    // Truncation past a checkpoint is reported at the end of a read to the end.
    exec(
        &store,
        "UPDATE magic_audit_log SET outcome = 'allowed' WHERE seq = 13",
    )
    .await;
    exec(&store, "DELETE FROM magic_audit_log WHERE seq > 17").await;
    let result: Result<Vec<AuditRecord>, AuditError> =
        chain.read(ReadRange::last(5)).try_collect().await;
    match result {
        Err(AuditError::Tampered(bad)) => assert_eq!(bad.seq, 18),
        other => panic!("expected truncation at 18, got {other:?}"),
    }
}

#[tokio::test]
async fn reopening_continues_the_chain_with_the_same_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 5).await;
    let key = chain.public_key_hex();
    chain.shutdown().await.expect("shutdown");
    assert!(matches!(
        chain.append_event(event(99)).await,
        Err(AuditError::Closed)
    ));
    drop(chain);
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("reopens");
    assert_eq!(chain.public_key_hex(), key);
    let r = chain.append_event(event(6)).await.expect("append");
    assert_eq!(r.seq, 6);
    let report = chain.verify().await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    // The shutdown signed a final checkpoint of seq 5.
    assert_eq!(report.checkpoints_checked, 1);
    assert!(chain.describe().contains(&key));
}

#[tokio::test]
async fn sync_mode_fsyncs_before_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Sync;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = chain.clone();
            tokio::spawn(async move { c.append_event(event(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let stats = chain.stats();
    assert!(
        stats.fsyncs >= 1 && stats.fsyncs == stats.batches,
        "{stats:?}"
    );
    assert!(chain.describe().contains("durability=sync"));
    assert!(chain.verify().await.expect("verify").is_ok());
}

/// Under continuous appends the WAL is still checkpointed and restarted (SQLite's automatic
/// checkpoint on the writer's connection), in both durability modes, so it stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_and_stays_bounded() {
    for durability in [Durability::Group, Durability::Sync] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.durability = durability;
        cfg.fsync_interval = std::time::Duration::from_millis(1);
        let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
            .await
            .expect("opens");
        let wal = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".db-wal"))
            .expect("the store's WAL file");
        let padding = "x".repeat(2048);
        let mut biggest = 0;
        // About 8 MiB of records (an unbounded WAL would pass 30 MiB), 16 appends at a time.
        for round in 0..250_u64 {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let c = chain.clone();
                    let mut e = event(round * 16 + i);
                    e.details = serde_json::json!({ "pad": padding });
                    tokio::spawn(async move { c.append_event(e).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("append");
            }
            biggest = biggest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        assert!(
            biggest < 16 << 20,
            "{durability:?}: the WAL grew to {biggest} bytes for ~8 MiB of records"
        );
        let report = chain.verify().await.expect("verify");
        assert!(
            report.is_ok() && report.records_checked == 4_000,
            "{report:?}"
        );
        chain.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn group_mode_fsyncs_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.fsync_interval = std::time::Duration::from_secs(2);
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    append_n(&chain, 1, 3).await;
    assert_eq!(
        chain.stats().fsyncs,
        0,
        "group mode answers before the fsync"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while chain.stats().fsyncs == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(chain.stats().fsyncs >= 1);
    assert!(chain.describe().contains("durability=group"));
}

#[tokio::test]
async fn subscribers_see_committed_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    let mut live = chain.subscribe();
    let receipt = chain.append_event(event(1)).await.expect("append");
    let got = live.recv().await.expect("live record");
    assert_eq!(got.seq, receipt.seq);
    assert_eq!(got.hash, receipt.hash);
}

#[tokio::test]
async fn time_based_checkpoints_cover_idle_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let mut cfg = config(dir.path());
    cfg.checkpoint_interval = std::time::Duration::from_millis(50);
    let chain = AuditChain::open(store.clone(), cfg).await.expect("opens");
    append_n(&chain, 1, 3).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = None;
    while n != Some(3) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let row: (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM magic_audit_checkpoints")
            .fetch_one(store.pool())
            .await
            .expect("query");
        n = row.0;
    }
    assert_eq!(n, Some(3), "an idle head gets its checkpoint");
}

#[tokio::test]
async fn an_in_memory_store_works_but_says_it_is_not_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = magic_store::Store::open_in_memory().await.expect("store");
    let chain = AuditChain::open(store, config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    assert!(chain.verify().await.expect("verify").is_ok());
    assert!(
        chain.describe().contains("not durable"),
        "{}",
        chain.describe()
    );
    chain.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_existing_then_new_records_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.checkpoint_every = 4;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    let mut follow = chain.follow(Some(Position::Last(2)), true);
    let writer = chain.clone();
    let appender = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        append_n(&writer, 11, 5).await;
    });
    let mut seqs = Vec::new();
    while seqs.len() < 7 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), follow.try_next())
            .await
            .expect("a record in time")
            .expect("verified")
            .expect("stream goes on");
        seqs.push(r.seq);
    }
    assert_eq!(seqs, (9..=15).collect::<Vec<_>>());
    appender.await.expect("appender");
}

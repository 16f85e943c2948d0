//! Retention: old records leave behind a signed seal and the chain still verifies.

mod common;

use std::time::Duration;

use common::{append_n, config, exec, sqlite};
use futures::TryStreamExt;
use magic_audit::retention::verify_archive;
use magic_audit::{AuditChain, AuditError, AuditRecord, ReadRange, RetentionPolicy};

fn by_count(n: u64, archive: Option<&std::path::Path>) -> RetentionPolicy {
    RetentionPolicy {
        max_records: Some(n),
        archive_dir: archive.map(Into::into),
        check_interval: Duration::from_secs(3600),
        ..RetentionPolicy::default()
    }
}

#[tokio::test]
async fn sealing_old_records_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive_dir = dir.path().join("archive");
    let mut cfg = config(dir.path());
    cfg.checkpoint_every = 25;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    append_n(&chain, 1, 100).await;
    let report = chain
        .enforce_retention_with(&by_count(30, Some(&archive_dir)))
        .await
        .expect("retention");
    assert_eq!(report.removed, 70);
    let seal = report.seal.expect("sealed");
    assert_eq!((seal.first_seq, seal.last_seq), (1, 70));
    let v = chain.verify().await.expect("verify");
    assert!(v.is_ok(), "{v:?}");
    assert_eq!((v.records_checked, v.head_seq), (30, 100));
    // Nothing more is due; the chain goes on from its head.
    let again = chain
        .enforce_retention_with(&by_count(30, Some(&archive_dir)))
        .await
        .expect("retention");
    assert_eq!(again.removed, 0);
    assert_eq!(
        chain
            .append_event(common::event(101))
            .await
            .expect("append")
            .seq,
        101
    );
    for verify in [false, true] {
        let rs: Vec<AuditRecord> = chain
            .read_with(ReadRange::all(), verify)
            .try_collect()
            .await
            .expect("read");
        assert_eq!(rs.first().map(|r| r.seq), Some(71));
        assert_eq!(rs.len(), 31);
    }
    // The archive verifies on its own and links to the chain.
    let path = report.archive.expect("archived");
    let a = verify_archive(&path, &[chain.public_key()], None).expect("archive");
    assert!(a.is_ok(), "{a:?}");
    assert_eq!((a.records_checked, a.head_seq), (70, 70));
    let first_kept: Vec<AuditRecord> = chain
        .read_with(ReadRange::seqs(71, 71), false)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(first_kept[0].prev_hash, a.head_hash);
    // A second segment links to the first.
    let r2 = chain
        .enforce_retention_with(&by_count(10, Some(&archive_dir)))
        .await
        .expect("retention");
    assert_eq!(
        r2.seal.as_ref().map(|s| (s.first_seq, s.last_seq)),
        Some((71, 91))
    );
    let a2 = verify_archive(
        &r2.archive.expect("archived"),
        &[chain.public_key()],
        Some(&a.head_hash),
    )
    .expect("archive");
    assert!(a2.is_ok(), "{a2:?}");
    assert!(chain.verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn retention_by_age_never_removes_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    append_n(&chain, 11, 5).await;
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_millis(1000)),
        ..RetentionPolicy::default()
    };
    let r = chain
        .enforce_retention_with(&policy)
        .await
        .expect("retention");
    assert_eq!(r.removed, 10);
    assert!(r.archive.is_none());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = chain
        .enforce_retention_with(&policy)
        .await
        .expect("retention");
    assert_eq!(r.removed, 4, "everything is old, the head stays");
    let v = chain.verify().await.expect("verify");
    assert!(v.is_ok(), "{v:?}");
    assert_eq!((v.records_checked, v.head_seq), (1, 15));
}

#[tokio::test]
async fn deletions_and_forged_seals_are_still_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let chain = AuditChain::open(store.clone(), config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 50).await;
    chain
        .enforce_retention_with(&by_count(20, None))
        .await
        .expect("retention");
    // Deleting the oldest kept record is not retention: it is missing.
    exec(&store, "DELETE FROM magic_audit_log WHERE seq = 31").await;
    let v = chain.verify().await.expect("verify");
    assert_eq!(v.first_bad.map(|b| b.seq), Some(31));
    // Moving the seal forward to hide that fails its signature.
    exec(&store, "UPDATE magic_audit_segments SET last_seq = 31").await;
    let v = chain.verify().await.expect("verify");
    let bad = v.first_bad.expect("bad seal");
    assert_eq!(bad.seq, 31);
    assert!(bad.reason.contains("seal"), "{bad:?}");
    // And a read with verification refuses to start.
    let r: Result<Vec<AuditRecord>, AuditError> =
        chain.read_with(ReadRange::all(), true).try_collect().await;
    assert!(matches!(r, Err(AuditError::Tampered(_))), "{r:?}");
}

#[tokio::test]
async fn retention_refuses_to_seal_tampered_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite(dir.path()).await;
    let chain = AuditChain::open(store.clone(), config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 20).await;
    exec(
        &store,
        "UPDATE magic_audit_log SET actor = 'x' WHERE seq = 5",
    )
    .await;
    match chain.enforce_retention_with(&by_count(5, None)).await {
        Err(AuditError::Tampered(bad)) => assert_eq!(bad.seq, 5),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM magic_audit_log")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(n, 20, "nothing removed");
}

#[tokio::test]
async fn an_edited_archive_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = AuditChain::open(sqlite(dir.path()).await, config(dir.path()))
        .await
        .expect("opens");
    append_n(&chain, 1, 20).await;
    let r = chain
        .enforce_retention_with(&by_count(5, Some(&dir.path().join("a"))))
        .await
        .expect("retention");
    let path = r.archive.expect("archive");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replacen("\"req-3\"", "\"req-x\"", 1)).expect("write");
    let v = verify_archive(&path, &[chain.public_key()], None).expect("verify");
    assert!(v.first_bad.is_some(), "{v:?}");
    // Dropping the last record line (the seal line kept) is detected too.
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines[..lines.len() - 2].join("\n");
    cut.push('\n');
    cut.push_str(lines[lines.len() - 1]);
    cut.push('\n');
    std::fs::write(&path, cut).expect("write");
    let v = verify_archive(&path, &[chain.public_key()], None).expect("verify");
    assert!(v.first_bad.is_some(), "{v:?}");
}

//! Retention: removing old records by age or count while the chain stays verifiable.
//!
//! Owns: choosing how many of the oldest records go, verifying them first, optionally
//! writing them to a sealed archive file, and replacing them in the store by a signed
//! *seal* `(first_seq, last_seq, last_hash, …)` that later verification starts from.
//!
//! Must never: remove the head record (the chain continues from it); seal records that do
//! not verify; remove records without a seal signed by the node's key (so a deletion that
//! is not retention still shows up as missing records); overwrite an archive file.
//!
//! # Seal statement
//!
//! The Ed25519 signature covers the ASCII text
//! `magic-audit seal v1\n<first_seq>\n<last_seq>\n<last_hash>\n<last_timestamp>\n<sealed_at>\n<archive_sha256 or ->\n`.
//!
//! # Archive file
//!
//! `ARCHIVE_DIR/audit-<first_seq>-<last_seq>-<sig>.jsonl` (seqs zero-padded to 20 digits,
//! `<sig>` the first 16 hex digits of the seal's signature, so a retried run never
//! collides with a file left by an interrupted one): the
//! removed records as JSON lines (the sink format), then one `{"seal":{…}}` line.
//! `archive_sha256` is the SHA-256 of the bytes before the seal line. [`verify_archive`]
//! checks a file on its own; consecutive archives link through `prev_hash`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::checkpoint::parse_public_key;
use crate::db::{self, db_err, to_i64};
use crate::record::{format_timestamp, now_timestamp, AuditRecord, GENESIS_HASH};
use crate::verify::{ChainVerifier, VerifyReport};
use crate::AuditError;

/// How much of the chain to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove records older than this (`AUDIT_RETENTION_DAYS`).
    pub max_age: Option<Duration>,
    /// Keep at most this many newest records (`AUDIT_RETENTION_MAX_RECORDS`).
    pub max_records: Option<u64>,
    /// Write removed records to sealed archive files here (`AUDIT_RETENTION_ARCHIVE_DIR`).
    pub archive_dir: Option<PathBuf>,
    /// How often the background task applies the policy (`AUDIT_RETENTION_CHECK_SECS`).
    pub check_interval: Duration,
}

impl RetentionPolicy {
    /// True when the policy removes anything at all.
    pub fn is_active(&self) -> bool {
        self.max_age.is_some() || self.max_records.is_some()
    }
}

/// A signed statement that records `first_seq..=last_seq` were removed by retention and
/// that record `last_seq` had hash `last_hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seal {
    /// First removed record.
    pub first_seq: u64,
    /// Last removed record (the chain continues at `last_seq + 1`).
    pub last_seq: u64,
    /// Hash of record `last_seq`.
    pub last_hash: String,
    /// Timestamp of record `last_seq`.
    pub last_timestamp: String,
    /// When the segment was sealed.
    pub sealed_at: String,
    /// SHA-256 (hex) of the archive file's record lines, when archived.
    pub archive_sha256: Option<String>,
    /// Signing key (hex).
    pub public_key: String,
    /// Signature over [`Seal::statement`] (hex).
    pub signature: String,
}

impl Seal {
    /// The signed text.
    pub fn statement(&self) -> String {
        format!(
            "magic-audit seal v1\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.first_seq,
            self.last_seq,
            self.last_hash,
            self.last_timestamp,
            self.sealed_at,
            self.archive_sha256.as_deref().unwrap_or("-")
        )
    }

    fn sign(mut self, key: &SigningKey) -> Seal {
        self.public_key = hex::encode(key.verifying_key().to_bytes());
        self.signature = hex::encode(key.sign(self.statement().as_bytes()).to_bytes());
        self
    }

    /// Check the signature against `trusted` keys; the reason on failure.
    pub fn check(&self, trusted: &[VerifyingKey]) -> Result<(), String> {
        let key = parse_public_key(&self.public_key)
            .map_err(|_| format!("seal {} has a malformed public key", self.last_seq))?;
        if !trusted.contains(&key) {
            return Err(format!(
                "seal {} is signed by untrusted key {}",
                self.last_seq, self.public_key
            ));
        }
        let mut sig = [0_u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig)
            .map_err(|_| format!("seal {} has a malformed signature", self.last_seq))?;
        key.verify_strict(self.statement().as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| format!("seal {} has an invalid signature", self.last_seq))
    }
}

/// What one application of the policy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Records removed from the store.
    pub removed: u64,
    /// The seal that replaced them (`None` when nothing was due).
    pub seal: Option<Seal>,
    /// The archive file written, if any.
    pub archive: Option<PathBuf>,
}

/// The last seq to remove, if any: the larger of what the count and the age limits ask
/// for, never the head, never before `first`. Pure.
pub fn cutoff(
    first: u64,
    head: u64,
    max_records: Option<u64>,
    last_too_old: Option<u64>,
) -> Option<u64> {
    if head == 0 || first > head {
        return None;
    }
    let by_count = max_records.map_or(0, |n| head.saturating_sub(n.max(1)));
    let by_age = last_too_old.unwrap_or(0);
    let c = by_count.max(by_age).min(head - 1);
    (c >= first).then_some(c)
}

/// The newest seal in the store.
pub(crate) async fn newest_seal(pool: &sqlx::AnyPool) -> Result<Option<Seal>, AuditError> {
    let row: Option<SealRow> = sqlx::query_as(&format!(
        "SELECT {SEAL_COLUMNS} FROM magic_audit_segments ORDER BY last_seq DESC LIMIT 1"
    ))
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    Ok(row.map(seal_from_row))
}

const SEAL_COLUMNS: &str = "first_seq, last_seq, last_hash, last_ts, sealed_at, \
                            archive_sha256, public_key, signature";

type SealRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
);

fn seal_from_row(r: SealRow) -> Seal {
    Seal {
        first_seq: u64::try_from(r.0).unwrap_or(0),
        last_seq: u64::try_from(r.1).unwrap_or(0),
        last_hash: r.2,
        last_timestamp: r.3,
        sealed_at: r.4,
        archive_sha256: r.5,
        public_key: r.6,
        signature: r.7,
    }
}

/// Where verification of the stored chain starts: after the newest seal (which must be
/// valid) or at the beginning. `Err` names a bad seal.
pub(crate) async fn anchor(
    pool: &sqlx::AnyPool,
    trusted: &[VerifyingKey],
) -> Result<Result<(u64, String), crate::BadRecord>, AuditError> {
    match newest_seal(pool).await? {
        None => Ok(Ok((0, GENESIS_HASH.to_string()))),
        Some(seal) => Ok(match seal.check(trusted) {
            Ok(()) => Ok((seal.last_seq, seal.last_hash)),
            Err(reason) => Err(crate::BadRecord {
                seq: seal.last_seq,
                reason,
            }),
        }),
    }
}

/// Apply `policy` once to the chain in `store` (see the module doc).
pub(crate) async fn enforce(
    store: &magic_store::Store,
    key: &SigningKey,
    trusted: &[VerifyingKey],
    policy: &RetentionPolicy,
) -> Result<RetentionReport, AuditError> {
    let nothing = RetentionReport {
        removed: 0,
        seal: None,
        archive: None,
    };
    let pool = store.pool();
    let head = db::max_seq(pool).await?;
    let (anchor_seq, anchor_hash) = anchor(pool, trusted).await?.map_err(AuditError::Tampered)?;
    let first = anchor_seq + 1;
    let last_too_old = match policy.max_age {
        None => None,
        Some(age) => {
            // An age beyond the calendar means nothing is that old.
            let limit = chrono::Duration::from_std(age)
                .ok()
                .and_then(|a| chrono::Utc::now().checked_sub_signed(a));
            match limit {
                None => None,
                Some(limit) => {
                    let ts = format_timestamp(limit);
                    let first_young = crate::read::first_seq_at_or_after(store, &ts, head).await?;
                    Some(first_young.map_or(head, |s| s.saturating_sub(1)))
                }
            }
        }
    };
    let Some(last) = cutoff(first, head, policy.max_records, last_too_old) else {
        return Ok(nothing);
    };
    // Verify what is about to go, and collect it for the archive.
    let mut v = ChainVerifier::anchored(anchor_seq, anchor_hash, trusted, Vec::new());
    let mut archive = policy
        .archive_dir
        .as_ref()
        .map(|dir| Archive::create(dir, first, last))
        .transpose()?;
    let mut after = anchor_seq;
    let mut last_record: Option<AuditRecord> = None;
    while after < last {
        let end = after.saturating_add(crate::chain::PAGE).min(last);
        v.add_checkpoints(db::checkpoints_between(pool, after, end).await?);
        for r in db::records_page(pool, after, end, crate::chain::PAGE).await? {
            v.push(&r).map_err(AuditError::Tampered)?;
            if let Some(a) = archive.as_mut() {
                a.write(&r)?;
            }
            last_record = Some(r);
        }
        after = end;
    }
    let Some(last_record) = last_record.filter(|r| r.seq == last) else {
        return Err(AuditError::Tampered(crate::BadRecord {
            seq: v.head_seq().saturating_add(1),
            reason: "record missing in the part retention would seal".into(),
        }));
    };
    let archive_sha256 = archive.as_ref().map(Archive::digest);
    let seal = Seal {
        first_seq: first,
        last_seq: last,
        last_hash: last_record.hash.clone(),
        last_timestamp: last_record.timestamp.clone(),
        sealed_at: now_timestamp(),
        archive_sha256,
        public_key: String::new(),
        signature: String::new(),
    }
    .sign(key);
    let archive_path = match archive {
        Some(a) => Some(a.finish(&seal)?),
        None => None,
    };
    // Replace the records by the seal, atomically. Another node may have sealed meanwhile:
    // then the newest seal moved and this run gives up.
    let mut tx = match store.dialect() {
        magic_store::Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        magic_store::Dialect::Postgres => pool.begin().await,
    }
    .map_err(db_err)?;
    if store.dialect() == magic_store::Dialect::Postgres {
        sqlx::query(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock(\
             hashtext(current_schema() || '.magic_audit_log'))) AS l",
        )
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    let newest: Option<(i64,)> =
        sqlx::query_as("SELECT last_seq FROM magic_audit_segments ORDER BY last_seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
    if newest.map_or(0, |(s,)| u64::try_from(s).unwrap_or(0)) != anchor_seq {
        if let Some(p) = &archive_path {
            let _ = std::fs::remove_file(p);
        }
        return Ok(nothing);
    }
    sqlx::query(&format!(
        "INSERT INTO magic_audit_segments ({SEAL_COLUMNS}, records, archive) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(to_i64(seal.first_seq))
    .bind(to_i64(seal.last_seq))
    .bind(seal.last_hash.as_str())
    .bind(seal.last_timestamp.as_str())
    .bind(seal.sealed_at.as_str())
    .bind(seal.archive_sha256.as_deref())
    .bind(seal.public_key.as_str())
    .bind(seal.signature.as_str())
    .bind(to_i64(last - anchor_seq))
    .bind(archive_path.as_ref().map(|p| p.display().to_string()))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let removed = sqlx::query("DELETE FROM magic_audit_log WHERE seq <= $1")
        .bind(to_i64(last))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
    sqlx::query("DELETE FROM magic_audit_checkpoints WHERE seq <= $1")
        .bind(to_i64(last))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    tracing::info!(
        first = seal.first_seq,
        last = seal.last_seq,
        removed,
        archive = ?archive_path,
        "audit retention sealed a segment"
    );
    Ok(RetentionReport {
        removed,
        seal: Some(seal),
        archive: archive_path,
    })
}

/// An archive file being written: a temporary name until sealed.
struct Archive {
    tmp: PathBuf,
    dir: PathBuf,
    first: u64,
    last: u64,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
}

fn io(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Sink(format!("audit archive {}: {e}", path.display()))
}

impl Archive {
    fn create(dir: &Path, first: u64, last: u64) -> Result<Archive, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = dir.join(format!(
            ".audit-{first:020}-{last:020}.{}.tmp",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        Ok(Archive {
            tmp,
            dir: dir.to_path_buf(),
            first,
            last,
            file: std::io::BufWriter::new(file),
            hasher: Sha256::new(),
        })
    }

    fn write(&mut self, r: &AuditRecord) -> Result<(), AuditError> {
        let mut line = r.to_json_line();
        line.push('\n');
        self.hasher.update(line.as_bytes());
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io(&self.tmp, e))
    }

    fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Append the seal line, fsync, and move into place (never over an existing file).
    fn finish(mut self, seal: &Seal) -> Result<PathBuf, AuditError> {
        let line = serde_json::json!({ "seal": seal }).to_string();
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.write_all(b"\n"))
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.get_ref().sync_all())
            .map_err(|e| io(&self.tmp, e))?;
        let sig: String = seal.signature.chars().take(16).collect();
        let path = self.dir.join(format!(
            "audit-{:020}-{:020}-{sig}.jsonl",
            self.first, self.last
        ));
        // A link fails rather than replace an existing file.
        std::fs::hard_link(&self.tmp, &path).map_err(|e| io(&path, e))?;
        std::fs::remove_file(&self.tmp).map_err(|e| io(&self.tmp, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))?;
        Ok(path)
    }
}

/// Verify an archive file on its own: its records chain (from `prev_hash`, the previous
/// segment's last hash, when known), its seal is signed by a trusted key, names the last
/// record and the SHA-256 of the record lines.
pub fn verify_archive(
    path: &Path,
    trusted: &[VerifyingKey],
    prev_hash: Option<&str>,
) -> Result<VerifyReport, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let bad = |seq: u64, reason: &str| VerifyReport {
        records_checked: 0,
        head_seq: seq.saturating_sub(1),
        head_hash: String::new(),
        checkpoints_checked: 0,
        first_bad: Some(crate::BadRecord {
            seq,
            reason: reason.to_string(),
        }),
    };
    let body_len = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let (body, seal_line) = text.split_at(body_len);
    let seal: Seal = match serde_json::from_str::<serde_json::Value>(seal_line.trim())
        .ok()
        .and_then(|v| serde_json::from_value(v.get("seal")?.clone()).ok())
    {
        Some(s) => s,
        None => return Ok(bad(1, "archive has no seal line")),
    };
    if let Err(reason) = seal.check(trusted) {
        return Ok(bad(seal.last_seq, &reason));
    }
    if seal.archive_sha256.as_deref() != Some(&hex::encode(Sha256::digest(body.as_bytes()))) {
        return Ok(bad(
            seal.first_seq,
            "archive content differs from its seal's digest",
        ));
    }
    let mut records = Vec::new();
    for (i, line) in body.lines().enumerate() {
        match AuditRecord::from_json_line(line) {
            Some(r) => records.push(r),
            None => {
                return Ok(bad(
                    seal.first_seq.saturating_add(i as u64),
                    "unreadable archive line",
                ))
            }
        }
    }
    let start_hash = match (prev_hash, records.first()) {
        (Some(h), _) => h.to_string(),
        (None, Some(r)) => r.prev_hash.clone(),
        (None, None) => GENESIS_HASH.to_string(),
    };
    let mut v = ChainVerifier::anchored(
        seal.first_seq.saturating_sub(1),
        start_hash,
        trusted,
        Vec::new(),
    );
    for r in &records {
        if v.push(r).is_err() {
            break;
        }
    }
    let mut report = v.finish(false);
    if report.first_bad.is_none()
        && (report.head_seq != seal.last_seq || report.head_hash != seal.last_hash)
    {
        report.first_bad = Some(crate::BadRecord {
            seq: report.head_seq.saturating_add(1),
            reason: format!(
                "archive ends at {} but its seal covers up to {}",
                report.head_seq, seal.last_seq
            ),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_table() {
        // (first, head, max_records, last_too_old) -> cutoff
        type Case = (u64, u64, Option<u64>, Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            (1, 0, Some(10), None, None),
            (1, 100, None, None, None),
            (1, 100, Some(10), None, Some(90)),
            (1, 100, Some(100), None, None),
            (1, 100, Some(0), None, Some(99)),
            (1, 100, None, Some(40), Some(40)),
            (1, 100, Some(10), Some(95), Some(95)),
            (1, 100, None, Some(100), Some(99)), // never the head
            (91, 100, Some(10), None, None),     // already trimmed
            (50, 100, None, Some(30), None),
        ];
        for &(first, head, max, old, want) in cases {
            assert_eq!(
                cutoff(first, head, max, old),
                want,
                "{first} {head} {max:?} {old:?}"
            );
        }
    }

    #[test]
    fn seals_check_their_signature() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let seal = Seal {
            first_seq: 1,
            last_seq: 10,
            last_hash: "ab".repeat(32),
            last_timestamp: "t".into(),
            sealed_at: "u".into(),
            archive_sha256: None,
            public_key: String::new(),
            signature: String::new(),
        }
        .sign(&key);
        assert_eq!(seal.check(&[key.verifying_key()]), Ok(()));
        let mut forged = seal.clone();
        forged.last_seq = 20;
        assert!(forged.check(&[key.verifying_key()]).is_err());
        let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
        assert!(seal.check(&[other]).is_err());
    }
}

//! Chain verification.
//!
//! Owns: deciding, record by record in seq order, whether a sequence of records is an
//! intact chain, and checking it against signed checkpoints; naming the first bad record.
//!
//! Must never: trust a stored hash without recomputing it, accept a checkpoint that does not
//! verify against a trusted key, or go on accepting records after the first bad one.
//!
//! What is detected (with `seq` named in [`BadRecord`]):
//!
//! | change to the stored chain | reported at |
//! | --- | --- |
//! | a field of record k edited | k (hash mismatch) |
//! | record k edited and its hash recomputed | k+1 (link broken) |
//! | record k deleted | k (missing) |
//! | a record inserted after k (renumbering the rest) | k+1 or k+2, the first whose link or hash breaks |
//! | records k and k+1 swapped | k |
//! | tail after k removed | k+1, only if a trusted checkpoint covers more than k records |
//! | records rewritten and re-hashed up to a checkpoint | that checkpoint's seq |
//! | a checkpoint edited or forged | that checkpoint's seq |
//!
//! Without a checkpoint covering it, removing the tail is undetectable by any hash chain;
//! checkpoints are what make it detectable (and, stored off-host by a sink, also a rollback
//! of the store together with its checkpoints).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::checkpoint::Checkpoint;
use crate::record::{AuditRecord, GENESIS_HASH};

/// The first record found bad, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadRecord {
    /// Seq of the first bad (or missing) record.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {}: {}", self.seq, self.reason)
    }
}

/// The outcome of verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// Records found good, in order, before the first bad one (all of them when intact).
    pub records_checked: u64,
    /// Seq of the last good record (0 for an empty chain).
    pub head_seq: u64,
    /// Hash of the last good record ([`GENESIS_HASH`] for an empty chain).
    pub head_hash: String,
    /// Trusted, valid checkpoints the records were compared with.
    pub checkpoints_checked: u64,
    /// The first bad record, `None` when the chain is intact.
    pub first_bad: Option<BadRecord>,
}

impl VerifyReport {
    /// True when the chain is intact.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Incremental verifier: feed records in seq order with [`ChainVerifier::push`], then call
/// [`ChainVerifier::finish`].
#[derive(Debug)]
pub struct ChainVerifier {
    start_seq: u64,
    trusted: Vec<VerifyingKey>,
    next_seq: u64,
    prev_hash: String,
    checked: u64,
    checkpoints: BTreeMap<u64, Checkpoint>,
    checkpoints_checked: u64,
    checkpoint_error: Option<BadRecord>,
    first_bad: Option<BadRecord>,
}

impl ChainVerifier {
    /// A verifier for a chain from its first record, with the checkpoints found for it.
    /// Checkpoints not signed by one of `trusted` are themselves reported bad.
    pub fn new(
        trusted: &[VerifyingKey],
        checkpoints: impl IntoIterator<Item = Checkpoint>,
    ) -> ChainVerifier {
        ChainVerifier::anchored(0, GENESIS_HASH.to_string(), trusted, checkpoints)
    }

    /// A verifier that starts after record `seq` whose hash is known to be `hash` (from a
    /// trusted checkpoint); checkpoints at or before `seq` are ignored.
    pub fn anchored(
        seq: u64,
        hash: String,
        trusted: &[VerifyingKey],
        checkpoints: impl IntoIterator<Item = Checkpoint>,
    ) -> ChainVerifier {
        let mut v = ChainVerifier {
            start_seq: seq.saturating_add(1),
            trusted: trusted.to_vec(),
            next_seq: seq.saturating_add(1),
            prev_hash: hash,
            checked: 0,
            checkpoints: BTreeMap::new(),
            checkpoints_checked: 0,
            checkpoint_error: None,
            first_bad: None,
        };
        v.add_checkpoints(checkpoints);
        v
    }

    /// Add checkpoints to compare with (any time before the records they cover are
    /// pushed). Ones at or before the start are ignored; ones not signed by a trusted key,
    /// or contradicting another valid one, are reported bad.
    pub fn add_checkpoints(&mut self, checkpoints: impl IntoIterator<Item = Checkpoint>) {
        for cp in checkpoints {
            if cp.seq < self.start_seq {
                continue;
            }
            let problem = match cp.check(&self.trusted) {
                Err(reason) => Some(reason),
                Ok(()) => match self.checkpoints.get(&cp.seq) {
                    Some(other) if other.head_hash != cp.head_hash => Some(format!(
                        "two valid checkpoints at {} name different head hashes (forked chain)",
                        cp.seq
                    )),
                    _ => None,
                },
            };
            match problem {
                Some(reason) => {
                    let bad = BadRecord {
                        seq: cp.seq,
                        reason,
                    };
                    if self
                        .checkpoint_error
                        .as_ref()
                        .is_none_or(|e| bad.seq < e.seq)
                    {
                        self.checkpoint_error = Some(bad);
                    }
                }
                None => {
                    self.checkpoints.insert(cp.seq, cp);
                }
            }
        }
    }

    /// Check the next record. After the first bad record every call returns that error.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), BadRecord> {
        if let Some(bad) = &self.first_bad {
            return Err(bad.clone());
        }
        match check_record(self.next_seq, &self.prev_hash, r) {
            Err(bad) => Err(self.fail(bad)),
            Ok(()) => {
                if let Some(cp) = self.checkpoints.get(&r.seq) {
                    if cp.head_hash != r.hash {
                        let bad = BadRecord {
                            seq: r.seq,
                            reason: format!(
                                "hash differs from the signed checkpoint at {} (records up to \
                                 here were rewritten after it was signed)",
                                r.seq
                            ),
                        };
                        return Err(self.fail(bad));
                    }
                    self.checkpoints_checked += 1;
                }
                self.next_seq = r.seq.saturating_add(1);
                self.prev_hash.clone_from(&r.hash);
                self.checked += 1;
                Ok(())
            }
        }
    }

    fn fail(&mut self, bad: BadRecord) -> BadRecord {
        self.first_bad = Some(bad.clone());
        bad
    }

    /// Seq of the last good record so far.
    pub fn head_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The verdict. `at_end` says the records fed were the whole rest of the chain, so a
    /// checkpoint beyond the last record means the tail was removed.
    pub fn finish(self, at_end: bool) -> VerifyReport {
        let head_seq = self.head_seq();
        let mut first_bad = self.first_bad;
        if first_bad.is_none() && at_end {
            if let Some((&cp_seq, _)) = self.checkpoints.range(self.next_seq..).next_back() {
                first_bad = Some(BadRecord {
                    seq: self.next_seq,
                    reason: format!(
                        "chain ends at {head_seq} but a signed checkpoint covers {cp_seq} \
                         records: records {}..={cp_seq} were removed",
                        self.next_seq
                    ),
                });
            }
        }
        if let Some(cp_bad) = self.checkpoint_error {
            if first_bad.as_ref().is_none_or(|b| cp_bad.seq < b.seq) {
                first_bad = Some(cp_bad);
            }
        }
        VerifyReport {
            records_checked: self.checked,
            head_seq,
            head_hash: self.prev_hash,
            checkpoints_checked: self.checkpoints_checked,
            first_bad,
        }
    }
}

/// Is `r` a good successor of the record `expected_seq - 1` whose hash is `prev_hash`?
/// Pure: the whole per-record decision.
pub fn check_record(expected_seq: u64, prev_hash: &str, r: &AuditRecord) -> Result<(), BadRecord> {
    if r.seq > expected_seq {
        return Err(BadRecord {
            seq: expected_seq,
            reason: format!(
                "record {expected_seq} is missing (the next record has seq {})",
                r.seq
            ),
        });
    }
    if r.seq < expected_seq {
        return Err(BadRecord {
            seq: r.seq,
            reason: format!(
                "record {} appears again or out of order after record {}",
                r.seq,
                expected_seq.saturating_sub(1)
            ),
        });
    }
    if r.prev_hash != prev_hash {
        let reason = if r.seq == 1 {
            "prev_hash of the first record is not the genesis hash".to_string()
        } else {
            format!(
                "prev_hash does not match the hash of record {} (record {} or {} was altered, \
                 or a record was inserted)",
                r.seq - 1,
                r.seq - 1,
                r.seq
            )
        };
        return Err(BadRecord { seq: r.seq, reason });
    }
    if r.compute_hash() != r.hash {
        return Err(BadRecord {
            seq: r.seq,
            reason: "content does not match its hash (record altered)".to_string(),
        });
    }
    Ok(())
}

/// Verify a whole chain held in memory (tools and tests).
pub fn verify_records<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    checkpoints: impl IntoIterator<Item = Checkpoint>,
    trusted: &[VerifyingKey],
) -> VerifyReport {
    let mut v = ChainVerifier::new(trusted, checkpoints);
    for r in records {
        if v.push(r).is_err() {
            break;
        }
    }
    v.finish(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::now_timestamp;
    use crate::AuditEvent;
    use ed25519_dalek::SigningKey;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut prev = GENESIS_HASH.to_string();
        for seq in 1..=n {
            let e = AuditEvent {
                event: "capability_use".into(),
                target: Some(format!("t{seq}")),
                ..AuditEvent::default()
            };
            let r = AuditRecord::new(seq, now_timestamp(), &e, prev.clone());
            prev.clone_from(&r.hash);
            out.push(r);
        }
        out
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn cp(records: &[AuditRecord], seq: u64) -> Checkpoint {
        let r = &records[(seq - 1) as usize];
        Checkpoint::sign(&key(), seq, &r.hash, now_timestamp())
    }

    fn verify(records: &[AuditRecord], cps: Vec<Checkpoint>) -> VerifyReport {
        verify_records(records, cps, &[key().verifying_key()])
    }

    fn bad_seq(report: &VerifyReport) -> Option<u64> {
        report.first_bad.as_ref().map(|b| b.seq)
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(10);
        let r = verify(&c, vec![cp(&c, 5), cp(&c, 10)]);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.records_checked, 10);
        assert_eq!(r.head_seq, 10);
        assert_eq!(r.head_hash, c[9].hash);
        assert_eq!(r.checkpoints_checked, 2);
        let empty = verify(&[], vec![]);
        assert!(empty.is_ok());
        assert_eq!(empty.head_hash, GENESIS_HASH);
    }

    /// The detection table of the module doc, case by case.
    #[test]
    fn tamper_cases_name_the_first_bad_record() {
        let c = chain(10);
        type Mutation = fn(&mut Vec<AuditRecord>);
        let cases: Vec<(&str, Mutation, Option<u64>)> = vec![
            ("edit field", |c| c[3].target = Some("x".into()), Some(4)),
            ("edit details", |c| c[3].details = "{}".into(), Some(4)),
            ("edit timestamp", |c| c[0].timestamp.push('1'), Some(1)),
            ("edit stored hash", |c| c[6].hash = "00".repeat(32), Some(7)),
            (
                "edit and rehash",
                |c| {
                    c[3].outcome = Some("ok".into());
                    c[3].hash = c[3].compute_hash();
                },
                Some(5),
            ),
            (
                "delete",
                |c| {
                    c.remove(4);
                },
                Some(5),
            ),
            (
                "delete and renumber",
                |c| {
                    c.remove(4);
                    for r in c.iter_mut().skip(4) {
                        r.seq -= 1;
                    }
                },
                Some(5),
            ),
            (
                "insert forged, renumbered",
                |c| {
                    let e = AuditEvent {
                        event: "forged".into(),
                        ..AuditEvent::default()
                    };
                    let forged = AuditRecord::new(5, now_timestamp(), &e, c[3].hash.clone());
                    c.insert(4, forged);
                    for r in c.iter_mut().skip(5) {
                        r.seq += 1;
                    }
                },
                Some(6),
            ),
            (
                "swap",
                |c| {
                    c.swap(2, 3);
                    c[2].seq = 3;
                    c[3].seq = 4;
                },
                Some(3),
            ),
            (
                "swap keeping seqs",
                |c| {
                    c.swap(2, 3);
                },
                Some(3),
            ),
            (
                "first prev_hash",
                |c| c[0].prev_hash = "11".repeat(32),
                Some(1),
            ),
            (
                "duplicate",
                |c| {
                    let d = c[2].clone();
                    c.insert(3, d);
                },
                Some(3),
            ),
            (
                "truncate without checkpoint",
                |c| {
                    c.truncate(7);
                },
                None,
            ),
        ];
        for (name, mutate, want) in cases {
            let mut m = c.clone();
            mutate(&mut m);
            let r = verify(&m, vec![]);
            assert_eq!(bad_seq(&r), want, "{name}: {r:?}");
        }
    }

    #[test]
    fn checkpoints_detect_truncation_and_rewrites() {
        let c = chain(10);
        // Truncate past a checkpoint: detected at the first missing seq.
        let r = verify(&c[..7], vec![cp(&c, 9)]);
        assert_eq!(bad_seq(&r), Some(8), "{r:?}");
        // Truncate after the last checkpoint: undetectable, reported intact.
        let r = verify(&c[..7], vec![cp(&c, 5)]);
        assert!(r.is_ok(), "{r:?}");
        // Rewrite the tail from 4 on and re-hash everything: the checkpoint at 6 catches it.
        let mut m = c.clone();
        m[3].target = Some("rewritten".into());
        let mut prev = m[2].hash.clone();
        for r in m.iter_mut().skip(3) {
            r.prev_hash = prev;
            r.hash = r.compute_hash();
            prev = r.hash.clone();
        }
        assert!(verify(&m, vec![]).is_ok(), "a chain alone cannot see this");
        let r = verify(&m, vec![cp(&c, 2), cp(&c, 6)]);
        assert_eq!(bad_seq(&r), Some(6), "{r:?}");
    }

    #[test]
    fn bad_checkpoints_are_reported() {
        let c = chain(10);
        let mut forged = cp(&c, 4);
        forged.head_hash = "22".repeat(32);
        let r = verify(&c, vec![forged]);
        assert_eq!(bad_seq(&r), Some(4), "{r:?}");
        assert!(r
            .first_bad
            .as_ref()
            .is_some_and(|b| b.reason.contains("invalid signature")));
        let stranger = SigningKey::from_bytes(&[3; 32]);
        let foreign = Checkpoint::sign(&stranger, 8, &c[7].hash, now_timestamp());
        let r = verify(&c, vec![cp(&c, 5), foreign.clone()]);
        assert_eq!(bad_seq(&r), Some(8), "{r:?}");
        // Trusting the stranger's key too makes it fine.
        let r = verify_records(
            &c,
            vec![foreign],
            &[key().verifying_key(), stranger.verifying_key()],
        );
        assert!(r.is_ok(), "{r:?}");
        // A record error before a bad checkpoint is the first bad one.
        let mut m = c.clone();
        m[1].target = None;
        let mut forged = cp(&c, 9);
        forged.signature = "00".repeat(64);
        let r = verify(&m, vec![forged]);
        assert_eq!(bad_seq(&r), Some(2), "{r:?}");
    }

    #[test]
    fn anchored_verification_starts_after_the_anchor() {
        let c = chain(10);
        let mut v = ChainVerifier::anchored(
            4,
            c[3].hash.clone(),
            &[key().verifying_key()],
            vec![cp(&c, 2), cp(&c, 8)],
        );
        for r in &c[4..] {
            assert!(v.push(r).is_ok());
        }
        let rep = v.finish(true);
        assert!(rep.is_ok(), "{rep:?}");
        assert_eq!(rep.records_checked, 6);
        assert_eq!(rep.checkpoints_checked, 1);
        // A wrong anchor hash is caught at the first record.
        let mut v = ChainVerifier::anchored(4, c[2].hash.clone(), &[], vec![]);
        assert_eq!(v.push(&c[4]).map_err(|b| b.seq), Err(5));
        // And the error sticks.
        assert_eq!(v.push(&c[5]).map_err(|b| b.seq), Err(5));
    }
}

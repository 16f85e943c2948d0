//! Reading the chain: ranges by seq or time, streamed in pages, optionally verified.
//!
//! Owns: resolving a [`ReadRange`] to seqs and streaming the records (for `magic audit
//! tail` and `magic audit export --from --to`), and following the chain as it grows
//! (`magic audit tail -f`). With verification on
//! (`AUDIT_CHAIN_VERIFY=true`), a record is yielded only after it verified: the stream starts
//! checking at the newest trusted checkpoint before the range (or at the first record) and
//! ends with [`AuditError::Tampered`] naming the first bad record.
//!
//! Must never: yield a record that failed verification when verifying; hold the whole
//! chain in memory (pages of [`crate::chain::PAGE`] records).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use magic_store::Store;

use crate::chain::{AuditChain, PAGE};
use crate::db;
use crate::record::{format_timestamp, AuditRecord};
use crate::verify::ChainVerifier;
use crate::AuditError;

/// One end of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A record seq.
    Seq(u64),
    /// A time: `from` is the first record at or after it, `to` the last at or before it.
    Time(chrono::DateTime<chrono::Utc>),
    /// Counted from the end: `from: Last(10)` starts at the 10th newest record.
    Last(u64),
}

/// Which records to read; both ends inclusive, `None` meaning the first / the last record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// First record.
    pub from: Option<Position>,
    /// Last record.
    pub to: Option<Position>,
}

impl ReadRange {
    /// The whole chain.
    pub fn all() -> ReadRange {
        ReadRange::default()
    }

    /// The `n` newest records (`magic audit tail -n N`).
    pub fn last(n: u64) -> ReadRange {
        ReadRange {
            from: Some(Position::Last(n)),
            to: None,
        }
    }

    /// Records with `from <= seq <= to`.
    pub fn seqs(from: u64, to: u64) -> ReadRange {
        ReadRange {
            from: Some(Position::Seq(from)),
            to: Some(Position::Seq(to)),
        }
    }
}

impl AuditChain {
    /// Stream the records of `range` in seq order, verifying them when `AUDIT_CHAIN_VERIFY`
    /// is on.
    pub fn read(&self, range: ReadRange) -> BoxStream<'static, Result<AuditRecord, AuditError>> {
        self.read_with(range, self.inner.config.verify_on_read)
    }

    /// Stream the records of `range`, verifying them when `verify` is true.
    pub fn read_with(
        &self,
        range: ReadRange,
        verify: bool,
    ) -> BoxStream<'static, Result<AuditRecord, AuditError>> {
        let state = ReadState {
            store: self.inner.store.clone(),
            trusted: verify.then(|| self.inner.trusted.clone()),
            range: Some(range),
            from: 0,
            after: 0,
            upto: 0,
            to_end: false,
            buf: VecDeque::new(),
            verifier: None,
        };
        futures::stream::try_unfold(state, step).boxed()
    }
}

/// How long `follow` waits for news before looking at the store anyway (records appended by
/// other nodes are only seen in the store).
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// At most one store round per this long while following (each verifying round re-checks
/// from the nearest checkpoint).
const FOLLOW_MIN_ROUND: Duration = Duration::from_millis(200);

impl AuditChain {
    /// Stream the records from `from` on and keep streaming new ones as they are committed,
    /// by this node or any other sharing the store (`magic audit tail -f`). With `verify`,
    /// every record is verified before it is yielded, and the stream ends with
    /// [`AuditError::Tampered`] at the first bad one. Never ends otherwise.
    pub fn follow(
        &self,
        from: Option<Position>,
        verify: bool,
    ) -> BoxStream<'static, Result<AuditRecord, AuditError>> {
        let st = FollowState {
            live: self.subscribe(),
            inner: Some(self.read_with(
                ReadRange {
                    from: from.clone(),
                    to: None,
                },
                verify,
            )),
            chain: self.clone(),
            next_from: from,
            verify,
            last_round: None,
            failed: false,
        };
        futures::stream::unfold(st, follow_step).boxed()
    }
}

struct FollowState {
    chain: AuditChain,
    next_from: Option<Position>,
    inner: Option<BoxStream<'static, Result<AuditRecord, AuditError>>>,
    live: tokio::sync::broadcast::Receiver<std::sync::Arc<AuditRecord>>,
    verify: bool,
    last_round: Option<Instant>,
    failed: bool,
}

async fn follow_step(
    mut st: FollowState,
) -> Option<(Result<AuditRecord, AuditError>, FollowState)> {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        if st.failed {
            return None;
        }
        if let Some(inner) = st.inner.as_mut() {
            match inner.next().await {
                Some(Ok(r)) => {
                    st.next_from = Some(Position::Seq(r.seq.saturating_add(1)));
                    return Some((Ok(r), st));
                }
                Some(Err(e)) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
                None => st.inner = None,
            }
            continue;
        }
        if let Some(t) = st.last_round {
            tokio::time::sleep_until((t + FOLLOW_MIN_ROUND).into()).await;
        }
        // Wake on a live record or after the poll interval; the store is the source either
        // way, so what the live channel carries (or drops when lagging) does not matter.
        let _ = tokio::time::timeout(FOLLOW_POLL, st.live.recv()).await;
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = st.live.try_recv() {}
        st.last_round = Some(Instant::now());
        st.inner = Some(st.chain.read_with(
            ReadRange {
                from: st.next_from.clone(),
                to: None,
            },
            st.verify,
        ));
    }
}

struct ReadState {
    store: Store,
    trusted: Option<Vec<ed25519_dalek::VerifyingKey>>,
    /// Still to resolve (first poll).
    range: Option<ReadRange>,
    from: u64,
    after: u64,
    upto: u64,
    to_end: bool,
    buf: VecDeque<AuditRecord>,
    verifier: Option<ChainVerifier>,
}

async fn step(mut st: ReadState) -> Result<Option<(AuditRecord, ReadState)>, AuditError> {
    if let Some(range) = st.range.take() {
        resolve(&mut st, range).await?;
    }
    let pool = st.store.pool().clone();
    loop {
        if let Some(r) = st.buf.pop_front() {
            if let Some(v) = st.verifier.as_mut() {
                v.push(&r).map_err(AuditError::Tampered)?;
            }
            if r.seq < st.from {
                continue; // verified prefix between the anchor and the range
            }
            return Ok(Some((r, st)));
        }
        if st.after >= st.upto {
            if let Some(mut v) = st.verifier.take() {
                if st.to_end {
                    let beyond = db::checkpoints_between(&pool, st.upto, i64::MAX as u64).await?;
                    let at_end = db::max_seq(&pool).await? == st.upto;
                    if at_end {
                        v.add_checkpoints(beyond);
                    }
                    if let Some(bad) = v.finish(at_end).first_bad {
                        return Err(AuditError::Tampered(bad));
                    }
                } else if let Some(bad) = v.finish(false).first_bad {
                    return Err(AuditError::Tampered(bad));
                }
            }
            return Ok(None);
        }
        let end = st.after.saturating_add(PAGE).min(st.upto);
        if let Some(v) = st.verifier.as_mut() {
            v.add_checkpoints(db::checkpoints_between(&pool, st.after, end).await?);
        }
        st.buf = db::records_page(&pool, st.after, end, PAGE).await?.into();
        st.after = end;
    }
}

async fn resolve(st: &mut ReadState, range: ReadRange) -> Result<(), AuditError> {
    let pool = st.store.pool().clone();
    let head = db::max_seq(&pool).await?;
    st.from = match range.from {
        None => 1,
        Some(Position::Seq(s)) => s.max(1),
        Some(Position::Last(n)) => head.saturating_sub(n).saturating_add(1),
        Some(Position::Time(t)) => first_seq_at_or_after(&st.store, &format_timestamp(t), head)
            .await?
            .unwrap_or(head.saturating_add(1)),
    };
    let to = match range.to {
        None => head,
        Some(Position::Seq(s)) => s.min(head),
        Some(Position::Last(n)) => head.saturating_sub(n.saturating_sub(1)),
        Some(Position::Time(t)) => {
            // Last record at or before t = first record after t, minus one.
            match t.checked_add_signed(chrono::Duration::microseconds(1)) {
                None => head,
                Some(after) => {
                    match first_seq_at_or_after(&st.store, &format_timestamp(after), head).await? {
                        Some(s) => s.saturating_sub(1),
                        None => head,
                    }
                }
            }
        }
    };
    st.to_end = to >= head;
    st.upto = to;
    st.after = st.from.saturating_sub(1);
    if let Some(trusted) = &st.trusted {
        // Start verifying at the newest trusted checkpoint before the range.
        let mut anchor = None;
        if st.after > 0 {
            for cp in db::checkpoints_before(&pool, st.after, 32).await? {
                if cp.check(trusted).is_ok() {
                    anchor = Some(cp);
                    break;
                }
            }
        }
        // Records before the newest seal are gone; it is the earliest possible start.
        let (seal_seq, seal_hash) = crate::retention::anchor(&pool, trusted)
            .await?
            .map_err(AuditError::Tampered)?;
        let v = match anchor.filter(|cp| cp.seq > seal_seq) {
            Some(cp) => {
                st.after = cp.seq;
                ChainVerifier::anchored(cp.seq, cp.head_hash, trusted, Vec::new())
            }
            None => {
                st.after = seal_seq;
                ChainVerifier::anchored(seal_seq, seal_hash, trusted, Vec::new())
            }
        };
        st.verifier = Some(v);
    }
    Ok(())
}

/// Smallest seq whose timestamp is `>= ts` (timestamps never decrease along the chain, so
/// a binary search over seqs works; gaps are stepped over).
pub(crate) async fn first_seq_at_or_after(
    store: &Store,
    ts: &str,
    head: u64,
) -> Result<Option<u64>, AuditError> {
    let pool = store.pool();
    let (mut lo, mut hi) = (1_u64, head.saturating_add(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match db::seq_ts_at_or_after(pool, mid).await? {
            None => hi = mid,
            Some((_, t)) if t.as_str() >= ts => hi = mid,
            Some((s, _)) => lo = s.saturating_add(1),
        }
    }
    Ok((lo <= head).then_some(lo))
}

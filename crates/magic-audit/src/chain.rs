//! The audit chain: durable, totally ordered, hash-chained appends with group commit.
//!
//! Owns: the single writer task per process that turns queued events into records, commits
//! them to the store in batches (one transaction per batch), signs checkpoints, answers the
//! appenders, and then hands the batch to live subscribers and sinks.
//!
//! Must never: answer an append before its record is committed (and, in `sync` mode,
//! fsynced); drop an append (a full queue makes `append` wait); feed a sink or subscriber a
//! record that is not committed; trust its own memory of the head (the head is read inside
//! each transaction, under an advisory lock on PostgreSQL, so several processes can append
//! to one chain).
//!
//! Durability, SQLite: commits run with the store's `synchronous=NORMAL` in WAL mode, so a
//! committed batch is in the OS and survives `kill -9`. In `group` mode a background task
//! fsyncs the WAL file at most `fsync_interval` after a commit (power-loss window); in
//! `sync` mode the writer fsyncs the WAL after each commit before answering — the effect of
//! `synchronous=FULL`, done by the writer so the pool's other connections keep `NORMAL`.
//! PostgreSQL: each batch is one transaction; `sync` forces `synchronous_commit=on` for it,
//! `group` uses the server's setting.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use magic_store::{Dialect, Store};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use crate::checkpoint::Checkpoint;
use crate::config::{AuditConfig, Durability};
use crate::db::{self, db_err};
use crate::record::{now_timestamp, AuditRecord, GENESIS_HASH};
use crate::sink::{last_seq_in_file, SinkSet, SinkSpec, SinkStats};
use crate::verify::{ChainVerifier, VerifyReport};
use crate::{AuditError, AuditEvent, AuditSink};

/// Records per page when reading the chain.
pub(crate) const PAGE: u64 = 2000;
/// Live subscribers lag (and must re-read from the store) past this many records.
const LIVE_CAPACITY: usize = 8192;

/// What an append returns once the record is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The record's seq.
    pub seq: u64,
    /// The record's hash.
    pub hash: String,
}

/// Counters for the metrics layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditStats {
    /// Records committed by this process.
    pub appended: u64,
    /// Commits (batches) by this process.
    pub batches: u64,
    /// Checkpoints signed by this process.
    pub checkpoints: u64,
    /// WAL fsyncs done by this process (SQLite).
    pub fsyncs: u64,
    /// Appends that failed (store error).
    pub failed: u64,
    /// Per-sink delivery counters.
    pub sinks: Vec<SinkStats>,
    /// Sum of `dropped` over all sinks.
    pub sink_dropped_total: u64,
}

#[derive(Debug, Default)]
struct Counters {
    appended: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    fsyncs: AtomicU64,
    failed: AtomicU64,
}

// Appends are nearly every command: boxing the large variant would add an allocation to
// each of them to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    Append(AuditEvent, oneshot::Sender<Result<Receipt, AuditError>>),
    /// Several events, committed in one transaction, answered with the last receipt.
    AppendAll(
        Vec<AuditEvent>,
        oneshot::Sender<Result<Receipt, AuditError>>,
    ),
    Checkpoint(oneshot::Sender<Result<Option<Checkpoint>, AuditError>>),
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Inner {
    tx: mpsc::Sender<Cmd>,
    closed: AtomicBool,
    pub(crate) store: Store,
    pub(crate) config: AuditConfig,
    public_key: VerifyingKey,
    /// Signs retention seals (the writer has its own copy for checkpoints).
    seal_key: SigningKey,
    pub(crate) trusted: Vec<VerifyingKey>,
    sinks: Arc<SinkSet>,
    live: broadcast::Sender<Arc<AuditRecord>>,
    counters: Arc<Counters>,
    wal: Option<PathBuf>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The durable, hash-chained audit log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct AuditChain {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditChain")
            .field("describe", &self.describe())
            .finish()
    }
}

impl AuditChain {
    /// Open the chain in `store`: apply the audit migrations, load or generate the signing
    /// key, catch file sinks up with the chain, start the sinks and the writer task. Must be
    /// called inside a Tokio runtime.
    pub async fn open(store: Store, config: AuditConfig) -> Result<AuditChain, AuditError> {
        crate::migrate(&store)
            .await
            .map_err(|e| AuditError::Store(e.to_string()))?;
        let key = config.key.load()?;
        let public_key = key.verifying_key();
        let mut trusted = vec![public_key];
        trusted.extend(config.trusted_keys.iter().copied());
        let pool = store.pool();
        let wal = match store.dialect() {
            Dialect::Sqlite => db::sqlite_file(pool).await?.map(|p| {
                let mut s = p.into_os_string();
                s.push("-wal");
                PathBuf::from(s)
            }),
            Dialect::Postgres => None,
        };
        let head = db::max_seq(pool).await?;
        if store.dialect() == Dialect::Sqlite {
            catch_up_file_sinks(&store, &config, head).await?;
        }
        let sinks = Arc::new(SinkSet::start(&config)?);
        let last_cp_seq = db::last_checkpoint_seq(pool).await?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let syncer = match (&wal, config.durability) {
            (Some(path), Durability::Group) => Some(spawn_syncer(
                path.clone(),
                config.fsync_interval,
                counters.clone(),
            )),
            _ => None,
        };
        let seal_key = key.clone();
        let local = match &wal {
            Some(wal) => {
                let db = wal.to_string_lossy();
                let db = PathBuf::from(db.strip_suffix("-wal").unwrap_or(&db));
                Some(Mutex::new(crate::local::LocalSqlite::open(&db)?))
            }
            None => None,
        };
        let writer = Writer {
            store: store.clone(),
            local,
            durability: config.durability,
            batch_max: config.batch_max.max(1),
            checkpoint_every: config.checkpoint_every.max(1),
            checkpoint_interval: config.checkpoint_interval,
            key,
            sinks: sinks.clone(),
            live: live.clone(),
            counters: counters.clone(),
            wal: wal.clone(),
            syncer,
            head_seen: head,
            last_cp_seq,
            last_cp_at: Instant::now(),
        };
        let handle = tokio::spawn(writer.run(rx));
        let chain = AuditChain {
            inner: Arc::new(Inner {
                tx,
                closed: AtomicBool::new(false),
                store,
                config,
                public_key,
                seal_key,
                trusted,
                sinks,
                live,
                counters,
                wal,
                writer: Mutex::new(Some(handle)),
            }),
        };
        if chain.inner.config.retention.is_active() {
            spawn_retention(Arc::downgrade(&chain.inner));
        }
        Ok(chain)
    }

    /// Apply the retention policy now: verify the records it removes, archive them if
    /// configured, and replace them by a signed seal (see [`crate::retention`]). Runs on
    /// its own every `AUDIT_RETENTION_CHECK_SECS` when a policy is set.
    pub async fn enforce_retention(&self) -> Result<crate::retention::RetentionReport, AuditError> {
        self.enforce_retention_with(&self.inner.config.retention)
            .await
    }

    /// Apply `policy` now (instead of the configured one).
    pub async fn enforce_retention_with(
        &self,
        policy: &crate::retention::RetentionPolicy,
    ) -> Result<crate::retention::RetentionReport, AuditError> {
        crate::retention::enforce(
            &self.inner.store,
            &self.inner.seal_key,
            &self.inner.trusted,
            policy,
        )
        .await
    }

    /// Append one event; returns once its record is committed (see [`Durability`]). Waits
    /// while the writer's queue is full. Errors: [`AuditError::Closed`] after shutdown,
    /// [`AuditError::Store`] when the commit failed (nothing of the batch was stored).
    pub async fn append_event(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        let (ack, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append(event, ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Append `events` in order in one commit; returns the last record's receipt once all are
    /// committed. Errors as [`Self::append_event`]; an empty list is refused as a misuse.
    pub async fn append_events(&self, events: Vec<AuditEvent>) -> Result<Receipt, AuditError> {
        if events.is_empty() {
            return Err(AuditError::Store("no events to append".into()));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        let (ack, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::AppendAll(events, ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Sign a checkpoint of the current head now (if it is not covered yet) and return it.
    pub async fn checkpoint_now(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (ack, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Checkpoint(ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Verify the whole stored chain against its checkpoints (signed by our key or a key
    /// of `AUDIT_TRUSTED_KEYS`).
    pub async fn verify(&self) -> Result<VerifyReport, AuditError> {
        verify_store(&self.inner.store, &self.inner.trusted, &[]).await
    }

    /// Like [`Self::verify`], also comparing with checkpoints kept elsewhere (e.g. read back
    /// from a sink), which detects a rollback of the store together with its checkpoints.
    pub async fn verify_with(&self, external: &[Checkpoint]) -> Result<VerifyReport, AuditError> {
        verify_store(&self.inner.store, &self.inner.trusted, external).await
    }

    /// The Ed25519 public key that signs this node's checkpoints.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.public_key
    }

    /// The public key in hex (what operators record and pass as `AUDIT_TRUSTED_KEYS`).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.inner.public_key.to_bytes())
    }

    /// Records committed from now on, as they are committed (for `magic audit tail -f`).
    /// A receiver that falls behind by more than 8192 records gets `Lagged` and should
    /// re-read from the store with [`Self::read`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.inner.live.subscribe()
    }

    /// Counters for the metrics layer.
    pub fn stats(&self) -> AuditStats {
        let c = &self.inner.counters;
        let sinks = self.inner.sinks.stats();
        AuditStats {
            appended: c.appended.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            sink_dropped_total: sinks.iter().map(|s| s.dropped).sum(),
            sinks,
        }
    }

    /// One line saying where the chain is, which durability mode runs, how checkpoints are
    /// signed and where records are copied (the server prints it at start).
    pub fn describe(&self) -> String {
        let c = &self.inner.config;
        let store = match (self.inner.store.dialect(), &self.inner.wal) {
            (Dialect::Sqlite, Some(wal)) => {
                let db = wal.to_string_lossy();
                format!("sqlite {}", db.strip_suffix("-wal").unwrap_or(&db))
            }
            (Dialect::Sqlite, None) => "sqlite in-memory (not durable)".to_string(),
            (Dialect::Postgres, _) => "postgres (one chain shared by all nodes)".to_string(),
        };
        let durability = match (c.durability, self.inner.store.dialect()) {
            (Durability::Group, Dialect::Sqlite) => format!(
                "group (answered once committed to the OS: survives a process crash; WAL \
                 fsynced within {} ms)",
                c.fsync_interval.as_millis()
            ),
            (Durability::Sync, Dialect::Sqlite) => {
                "sync (answered after the commit is fsynced: survives power loss)".to_string()
            }
            (Durability::Group, Dialect::Postgres) => {
                "group (answered once committed; synchronous_commit as the server sets it)"
                    .to_string()
            }
            (Durability::Sync, Dialect::Postgres) => {
                "sync (answered after commit with synchronous_commit=on)".to_string()
            }
        };
        let sinks = self.inner.sinks.names();
        let r = &c.retention;
        let retention = match (r.max_age, r.max_records) {
            (None, None) => "keep all".to_string(),
            (age, max) => format!(
                "{}{}{}",
                age.map(|a| format!("max age {} days ", a.as_secs() / 86_400))
                    .unwrap_or_default(),
                max.map(|m| format!("max {m} records ")).unwrap_or_default(),
                r.archive_dir
                    .as_ref()
                    .map(|d| format!("archived to {}", d.display()))
                    .unwrap_or_else(|| "not archived".to_string())
            ),
        };
        format!(
            "audit: chain in {store}; durability={durability}; checkpoints every {} records \
             or {} s signed by ed25519:{}; verify-on-read={}; retention: {retention}; sinks: {}",
            c.checkpoint_every,
            c.checkpoint_interval.as_secs(),
            self.public_key_hex(),
            if c.verify_on_read { "on" } else { "off" },
            if sinks.is_empty() {
                "none".to_string()
            } else {
                sinks.join(", ")
            }
        )
    }

    /// Stop accepting appends, commit everything queued, sign a final checkpoint, fsync,
    /// and wait until the sinks have delivered (or given up on) everything. Idempotent.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        self.inner.closed.store(true, Ordering::Release);
        let (ack, answer) = oneshot::channel();
        if self.inner.tx.send(Cmd::Shutdown(ack)).await.is_ok() {
            let _ = answer.await;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .map_err(|_| AuditError::Closed)?
            .take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl AuditSink for AuditChain {
    async fn append(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.append_event(event).await.map(drop)
    }

    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        self.append_events(events).await.map(drop)
    }
}

/// Verify the chain stored in `store` (e.g. offline, by `magic audit verify`), trusting
/// checkpoints signed by one of `trusted`, and also comparing with `external` checkpoints.
pub async fn verify_store(
    store: &Store,
    trusted: &[VerifyingKey],
    external: &[Checkpoint],
) -> Result<VerifyReport, AuditError> {
    let pool = store.pool();
    let upto = db::max_seq(pool).await?;
    // Records sealed away by retention are replaced by the newest seal, which must verify.
    let (mut after, start_hash) = match crate::retention::anchor(pool, trusted).await? {
        Ok(a) => a,
        Err(bad) => {
            return Ok(VerifyReport {
                records_checked: 0,
                head_seq: 0,
                head_hash: GENESIS_HASH.to_string(),
                checkpoints_checked: 0,
                first_bad: Some(bad),
            })
        }
    };
    let mut v = ChainVerifier::anchored(after, start_hash, trusted, Vec::new());
    while after < upto {
        let end = after.saturating_add(PAGE).min(upto);
        v.add_checkpoints(db::checkpoints_between(pool, after, end).await?);
        v.add_checkpoints(
            external
                .iter()
                .filter(|c| c.seq > after && c.seq <= end)
                .cloned(),
        );
        for r in db::records_page(pool, after, end, PAGE).await? {
            if v.push(&r).is_err() {
                return Ok(v.finish(false));
            }
        }
        after = end;
    }
    // Checkpoints beyond the last record mean a removed tail, unless records were appended
    // meanwhile (then the tail is simply newer than this verification).
    let beyond = db::checkpoints_between(pool, upto, i64::MAX as u64).await?;
    let at_end = db::max_seq(pool).await? == upto;
    if at_end {
        v.add_checkpoints(beyond);
        v.add_checkpoints(external.iter().filter(|c| c.seq > upto).cloned());
    }
    Ok(v.finish(at_end))
}

/// Apply retention periodically while the chain is alive.
fn spawn_retention(inner: std::sync::Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            let interval = match inner.upgrade() {
                Some(i) => i.config.retention.check_interval,
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(inner) = inner.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let chain = AuditChain { inner };
            if let Err(e) = chain.enforce_retention().await {
                tracing::error!(error = %e, "audit retention failed");
            }
        }
    });
}

async fn catch_up_file_sinks(
    store: &Store,
    config: &AuditConfig,
    head: u64,
) -> Result<(), AuditError> {
    for spec in &config.sinks {
        let SinkSpec::File(path) = spec else { continue };
        let mut after = last_seq_in_file(path)?;
        if after > head {
            tracing::warn!(
                path = %path.display(),
                file_seq = after,
                chain_seq = head,
                "audit file sink is ahead of the chain (a different or restored store?)"
            );
            continue;
        }
        while after < head {
            let end = after.saturating_add(PAGE).min(head);
            let records = db::records_page(store.pool(), after, end, PAGE).await?;
            crate::sink::append_to_file(path, &records)?;
            after = end;
        }
    }
    Ok(())
}

/// Background fsync of the SQLite WAL in group mode: after a commit is signalled, wait the
/// interval (collecting more commits), then fsync once.
fn spawn_syncer(wal: PathBuf, interval: Duration, counters: Arc<Counters>) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    let n = notify.clone();
    tokio::spawn(async move {
        loop {
            n.notified().await;
            tokio::time::sleep(interval).await;
            if let Err(e) = fsync_file(wal.clone()).await {
                tracing::error!(error = %e, "audit WAL fsync failed");
            } else {
                counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            if Arc::strong_count(&n) == 1 {
                return;
            }
        }
    });
    notify
}

/// fsync a file by path (a missing WAL has been checkpointed into the database, which
/// SQLite synced itself).
async fn fsync_file(path: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Run a synchronous commit off the async worker (`block_in_place`: other tasks keep
/// running while SQLite writes, and while a commit that crosses SQLite's automatic
/// checkpoint threshold fsyncs); inline on a current-thread runtime (tests).
fn commit_blocking<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// What chaining a batch after the head needs to know (no I/O: shared by both commit paths).
struct ChainPlan<'a> {
    key: &'a SigningKey,
    last_cp_seq: u64,
    checkpoint_every: u64,
    checkpoint_due_by_time: bool,
}

impl ChainPlan<'_> {
    /// Records for `events` chained after `head`, a checkpoint of the new head when one is
    /// due, and the new head's seq.
    fn chain(
        &self,
        head: Option<(u64, String, String)>,
        events: Vec<AuditEvent>,
    ) -> Result<(Vec<AuditRecord>, Option<Checkpoint>, u64), AuditError> {
        let (mut seq, mut prev, head_ts) =
            head.unwrap_or((0, GENESIS_HASH.to_string(), String::new()));
        // Timestamps never go backwards along the chain (nodes' clocks may differ).
        let now = now_timestamp();
        let ts = if now < head_ts { head_ts } else { now };
        let mut records = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let r = AuditRecord::from_event(seq, ts.clone(), e, prev);
            prev = r.hash.clone();
            records.push(r);
        }
        let due = seq.saturating_sub(self.last_cp_seq) >= self.checkpoint_every
            || self.checkpoint_due_by_time;
        let cp = due.then(|| Checkpoint::sign(self.key, seq, &prev, ts));
        Ok((records, cp, seq))
    }
}

struct Writer {
    store: Store,
    /// The writer's own connection to a file SQLite database (`None`: the sqlx pool).
    local: Option<Mutex<crate::local::LocalSqlite>>,
    durability: Durability,
    batch_max: usize,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    key: SigningKey,
    sinks: Arc<SinkSet>,
    live: broadcast::Sender<Arc<AuditRecord>>,
    counters: Arc<Counters>,
    wal: Option<PathBuf>,
    syncer: Option<Arc<Notify>>,
    /// Highest seq this writer has seen committed (its own or read from the store).
    head_seen: u64,
    /// Highest seq covered by a checkpoint this writer knows of.
    last_cp_seq: u64,
    last_cp_at: Instant,
}

enum Flow {
    Continue,
    Stop,
}

impl Cmd {
    /// Records this command appends.
    fn appends(&self) -> usize {
        match self {
            Cmd::Append(..) => 1,
            Cmd::AppendAll(es, _) => es.len(),
            Cmd::Checkpoint(_) | Cmd::Shutdown(_) => 0,
        }
    }
}

/// An append's answer channel and how many of the batch's records are its own.
type Ack = (usize, oneshot::Sender<Result<Receipt, AuditError>>);

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let cmd = match self.checkpoint_deadline() {
                Some(at) => match tokio::time::timeout_at(at.into(), rx.recv()).await {
                    Ok(cmd) => cmd,
                    Err(_) => {
                        if let Err(e) = self.checkpoint().await {
                            tracing::error!(error = %e, "audit checkpoint failed");
                            // Retry later rather than spinning.
                            self.last_cp_at = Instant::now();
                        }
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(first) = cmd else {
                // Every handle is gone: finish as a shutdown would.
                self.finish().await;
                return;
            };
            let mut cmds = vec![first];
            let mut appends = cmds[0].appends();
            while appends < self.batch_max {
                match rx.try_recv() {
                    Ok(cmd) => {
                        appends += cmd.appends();
                        cmds.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            if let Flow::Stop = self.handle(cmds).await {
                rx.close();
                // Anything still queued is answered `Closed` by dropping its sender.
                while rx.try_recv().is_ok() {}
                return;
            }
        }
    }

    fn checkpoint_deadline(&self) -> Option<Instant> {
        (self.head_seen > self.last_cp_seq).then(|| self.last_cp_at + self.checkpoint_interval)
    }

    async fn handle(&mut self, cmds: Vec<Cmd>) -> Flow {
        let mut events = Vec::new();
        let mut acks = Vec::new();
        for cmd in cmds {
            match cmd {
                Cmd::Append(e, ack) => {
                    events.push(e);
                    acks.push((1, ack));
                }
                Cmd::AppendAll(es, ack) => {
                    acks.push((es.len(), ack));
                    events.extend(es);
                }
                Cmd::Checkpoint(ack) => {
                    if let Flow::Stop = self.commit_and_answer(&mut events, &mut acks).await {
                        return Flow::Stop;
                    }
                    let _ = ack.send(self.checkpoint().await);
                }
                Cmd::Shutdown(ack) => {
                    let _ = self.commit_and_answer(&mut events, &mut acks).await;
                    self.finish().await;
                    let _ = ack.send(());
                    return Flow::Stop;
                }
            }
        }
        self.commit_and_answer(&mut events, &mut acks).await
    }

    /// Final checkpoint, fsync and sink flush; lets the WAL syncer task end.
    async fn finish(&mut self) {
        if let Some(s) = self.syncer.take() {
            s.notify_one();
        }
        if let Err(e) = self.checkpoint().await {
            tracing::error!(error = %e, "audit: final checkpoint failed");
        }
        if let Some(wal) = &self.wal {
            if let Err(e) = fsync_file(wal.clone()).await {
                tracing::error!(error = %e, "audit: final WAL fsync failed");
            }
        }
        self.sinks.flush().await;
    }

    async fn commit_and_answer(
        &mut self,
        events: &mut Vec<AuditEvent>,
        acks: &mut Vec<Ack>,
    ) -> Flow {
        if events.is_empty() {
            return Flow::Continue;
        }
        let events = std::mem::take(events);
        let acks = std::mem::take(acks);
        let n = events.len() as u64;
        let committed = self.commit(events).await;
        let committed = match committed {
            Ok(c) => match self.make_durable().await {
                Ok(()) => Ok(c),
                Err(e) => {
                    // A failed fsync cannot be retried meaningfully (the kernel may have
                    // dropped the dirty pages): stop the log rather than pretend.
                    tracing::error!(error = %e, "audit: fsync failed; closing the audit log");
                    for (_, ack) in acks {
                        let _ = ack.send(Err(AuditError::Store(format!("fsync failed: {e}"))));
                    }
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    return Flow::Stop;
                }
            },
            Err(e) => Err(e),
        };
        match committed {
            Err(e) => {
                tracing::error!(error = %e, records = n, "audit commit failed");
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                let msg = e.to_string();
                for (_, ack) in acks {
                    let _ = ack.send(Err(AuditError::Store(msg.clone())));
                }
                Flow::Continue
            }
            Ok((records, cp)) => {
                self.counters
                    .appended
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                // Each append is answered with its last record's receipt.
                let mut end = 0;
                for (n, ack) in acks {
                    end += n;
                    if let Some(r) = records.get(end.saturating_sub(1)) {
                        let _ = ack.send(Ok(Receipt {
                            seq: r.seq,
                            hash: r.hash.clone(),
                        }));
                    }
                }
                if self.live.receiver_count() > 0 {
                    for r in &records {
                        let _ = self.live.send(Arc::new(r.clone()));
                    }
                }
                if !self.sinks.is_empty() {
                    self.sinks.publish(&Arc::new(records)).await;
                    if let Some(cp) = cp {
                        self.sinks.publish_checkpoint(&Arc::new(cp)).await;
                    }
                }
                Flow::Continue
            }
        }
    }

    /// After a commit: fsync now (sync mode) or schedule it (group mode).
    async fn make_durable(&self) -> std::io::Result<()> {
        match (&self.wal, self.durability) {
            (Some(wal), Durability::Sync) => {
                fsync_file(wal.clone()).await?;
                self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            (Some(_), Durability::Group) => {
                if let Some(s) = &self.syncer {
                    s.notify_one();
                }
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, AuditError> {
        let pool = self.store.pool();
        match self.store.dialect() {
            Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err),
            Dialect::Postgres => {
                let mut tx = pool.begin().await.map_err(db_err)?;
                // One appender at a time across every process sharing this chain; the lock
                // is released by COMMIT/ROLLBACK.
                sqlx::query(
                    "SELECT 1 FROM (SELECT pg_advisory_xact_lock(\
                     hashtext(current_schema() || '.magic_audit_log'))) AS l",
                )
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                if self.durability == Durability::Sync {
                    sqlx::query("SET LOCAL synchronous_commit TO on")
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                }
                Ok(tx)
            }
        }
    }

    /// One transaction: read the head, chain the events after it, insert, maybe sign a
    /// checkpoint of the new head, commit.
    async fn commit(
        &mut self,
        events: Vec<AuditEvent>,
    ) -> Result<(Vec<AuditRecord>, Option<Checkpoint>), AuditError> {
        let (records, cp, seq) = match &self.local {
            Some(local) => {
                let plan = self.plan();
                // Only the writer uses the connection: the lock is never contended.
                let mut local = local
                    .lock()
                    .map_err(|_| AuditError::Store("audit writer connection poisoned".into()))?;
                commit_blocking(|| local.append(|head| plan.chain(head, events)))?
            }
            None => {
                let mut tx = self.begin().await?;
                let head = db::head(&mut tx).await?;
                let (records, cp, seq) = self.plan().chain(head, events)?;
                db::insert_records(&mut tx, self.store.dialect(), &records).await?;
                if let Some(cp) = &cp {
                    db::insert_checkpoint(&mut tx, cp).await?;
                }
                tx.commit().await.map_err(db_err)?;
                (records, cp, seq)
            }
        };
        self.head_seen = seq;
        if cp.is_some() {
            self.last_cp_seq = seq;
            self.last_cp_at = Instant::now();
            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Ok((records, cp))
    }

    fn plan(&self) -> ChainPlan<'_> {
        ChainPlan {
            key: &self.key,
            last_cp_seq: self.last_cp_seq,
            checkpoint_every: self.checkpoint_every,
            checkpoint_due_by_time: self.last_cp_at.elapsed() >= self.checkpoint_interval,
        }
    }

    /// Sign a checkpoint of the stored head if no checkpoint covers it yet.
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>, AuditError> {
        let mut tx = self.begin().await?;
        let head = db::head(&mut tx).await?;
        let last: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM magic_audit_checkpoints ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let last = last.map_or(0, |(s,)| u64::try_from(s).unwrap_or(0));
        let cp = match head {
            Some((seq, hash, _)) if seq > last => {
                let cp = Checkpoint::sign(&self.key, seq, &hash, now_timestamp());
                db::insert_checkpoint(&mut tx, &cp).await?;
                Some(cp)
            }
            _ => None,
        };
        tx.commit().await.map_err(db_err)?;
        self.make_durable()
            .await
            .map_err(|e| AuditError::Store(format!("fsync failed: {e}")))?;
        self.last_cp_at = Instant::now();
        if let Some(cp) = &cp {
            self.head_seen = self.head_seen.max(cp.seq);
            self.last_cp_seq = cp.seq;
            self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.sinks.publish_checkpoint(&Arc::new(cp.clone())).await;
        } else {
            self.last_cp_seq = self.last_cp_seq.max(last);
        }
        Ok(cp)
    }
}

//! Sinks: copies of the committed chain sent elsewhere (`AUDIT_LOG_SINK`).
//!
//! Owns: parsing sink specifications, running one task per sink, buffering between the
//! chain writer and each sink, and counting what each sink delivered and dropped.
//!
//! Must never: see a record before it is committed to the chain (the writer hands batches
//! over only after the commit); block appends on a network sink (syslog and webhook drop
//! with a count when their buffer is full); drop a record bound for the file sink (it is
//! local and lossless: when it falls behind, appends wait).
//!
//! # `AUDIT_LOG_SINK` syntax
//!
//! A comma-separated list (empty entries ignored; an entry cannot contain a comma):
//!
//! | entry | sink |
//! | --- | --- |
//! | `file:/var/log/magic/audit.jsonl` (or `file:///…`) | JSON lines appended to the file, fsynced per batch; on start, records missing from the file's end are copied from the chain |
//! | `syslog+udp://HOST[:PORT]` (also `syslog://`) | RFC 5424 message per record, one datagram each (port 514) |
//! | `syslog+tcp://HOST[:PORT]` | RFC 5424 over TCP with octet-counting framing (RFC 6587; port 514) |
//! | `syslog+unix:///dev/log` | RFC 5424 datagrams to a local socket |
//! | `webhook+http://HOST[:PORT]/PATH` or `webhook+https://…` | batched `POST` of a JSON array of record objects, retried with exponential backoff |
//!
//! Every sink also receives the signed checkpoints (`{"checkpoint":{…}}` objects), so a
//! copy kept off-host lets a later verification detect a rollback of the store.

mod file;
mod syslog;
mod webhook;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::checkpoint::Checkpoint;
use crate::config::AuditConfig;
use crate::record::AuditRecord;
use crate::AuditError;

pub(crate) use file::{append_records as append_to_file, last_seq_in_file};

/// Where a syslog sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// UDP datagrams to `host:port`.
    Udp(String),
    /// TCP stream to `host:port`, octet-counting framing.
    Tcp(String),
    /// Datagrams to a Unix socket path.
    Unix(PathBuf),
}

/// One parsed `AUDIT_LOG_SINK` entry. Its `Debug` form is [`SinkSpec::name`], which leaves
/// out webhook credentials and query strings.
#[derive(Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// JSON-lines file.
    File(PathBuf),
    /// RFC 5424 syslog.
    Syslog(SyslogTarget),
    /// Webhook URL (`http://` or `https://`).
    Webhook(String),
}

impl SinkSpec {
    /// Parse one entry (see the module doc).
    pub fn parse(entry: &str) -> Result<SinkSpec, AuditError> {
        let e = entry.trim();
        let bad = |why: &str| AuditError::Config(format!("AUDIT_LOG_SINK entry {e:?}: {why}"));
        if let Some(rest) = e.strip_prefix("file:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("missing file path"));
            }
            return Ok(SinkSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = e.strip_prefix("syslog+unix://") {
            if !rest.starts_with('/') {
                return Err(bad("syslog+unix needs an absolute socket path"));
            }
            return Ok(SinkSpec::Syslog(SyslogTarget::Unix(PathBuf::from(rest))));
        }
        for (prefix, tcp) in [
            ("syslog+udp://", false),
            ("syslog://", false),
            ("syslog+tcp://", true),
        ] {
            if let Some(rest) = e.strip_prefix(prefix) {
                let addr = host_port(rest, 514).map_err(|why| bad(&why))?;
                return Ok(SinkSpec::Syslog(if tcp {
                    SyslogTarget::Tcp(addr)
                } else {
                    SyslogTarget::Udp(addr)
                }));
            }
        }
        if let Some(url) = e.strip_prefix("webhook+") {
            let parsed = reqwest::Url::parse(url).map_err(|err| bad(&err.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(bad("webhook needs an http:// or https:// URL with a host"));
            }
            return Ok(SinkSpec::Webhook(url.to_string()));
        }
        Err(bad(
            "use file:PATH, syslog+udp://, syslog+tcp://, syslog+unix://PATH or webhook+http(s)://",
        ))
    }

    /// Parse a comma-separated list.
    pub fn parse_list(list: &str) -> Result<Vec<SinkSpec>, AuditError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(SinkSpec::parse)
            .collect()
    }

    /// A printable name (webhook URLs lose user info and query, which may hold tokens).
    pub fn name(&self) -> String {
        match self {
            SinkSpec::File(p) => format!("file:{}", p.display()),
            SinkSpec::Syslog(SyslogTarget::Udp(a)) => format!("syslog+udp://{a}"),
            SinkSpec::Syslog(SyslogTarget::Tcp(a)) => format!("syslog+tcp://{a}"),
            SinkSpec::Syslog(SyslogTarget::Unix(p)) => format!("syslog+unix://{}", p.display()),
            SinkSpec::Webhook(url) => match reqwest::Url::parse(url) {
                Ok(u) => format!(
                    "webhook+{}://{}{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                ),
                Err(_) => "webhook".to_string(),
            },
        }
    }
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// `host[:port]` (no path, no user info), with a default port.
fn host_port(rest: &str, default_port: u16) -> Result<String, String> {
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err("expected HOST[:PORT]".into());
    }
    // Bracketed IPv6 or host:port.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, "")) => (format!("[{h}]"), None),
            Some((h, p)) => (
                format!("[{h}]"),
                Some(p.strip_prefix(':').ok_or("bad port")?),
            ),
            None => return Err("unclosed [".into()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("missing host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("bad port {p:?}")),
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Delivery counters of one sink (for the metrics layer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// The sink's printable name.
    pub sink: String,
    /// Records (and checkpoints) delivered.
    pub delivered: u64,
    /// Records (and checkpoints) dropped: buffer full, or given up after retries.
    pub dropped: u64,
    /// Failed delivery attempts (each retry counts).
    pub errors: u64,
    /// Items waiting in the sink's buffer now.
    pub queued: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// Buffer space held by an item until it is delivered or given up.
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
}

/// What the writer hands to a sink.
pub(crate) enum SinkItem {
    /// Committed records, in seq order, with their share of the sink's buffer (released
    /// when the item is dropped after delivery).
    Records {
        /// The records.
        records: Arc<Vec<AuditRecord>>,
        /// Buffer space.
        _held: Held,
    },
    /// A committed checkpoint.
    Checkpoint {
        /// The checkpoint.
        cp: Arc<Checkpoint>,
        /// Buffer space.
        _held: Held,
    },
    /// Answer once everything before has been delivered (or given up).
    Flush(oneshot::Sender<()>),
}

impl SinkItem {
    fn len(&self) -> u64 {
        match self {
            SinkItem::Records { records: r, .. } => r.len() as u64,
            SinkItem::Checkpoint { .. } => 1,
            SinkItem::Flush(_) => 0,
        }
    }
}

struct SinkHandle {
    name: String,
    lossless: bool,
    capacity: usize,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<SinkItem>,
    counters: Arc<Counters>,
}

/// All configured sinks.
pub(crate) struct SinkSet {
    sinks: Vec<SinkHandle>,
}

impl SinkSet {
    /// Start a task per sink. File sinks are opened here (errors surface at start).
    pub(crate) fn start(config: &AuditConfig) -> Result<SinkSet, AuditError> {
        let mut sinks = Vec::new();
        for spec in &config.sinks {
            let (tx, rx) = mpsc::unbounded_channel();
            let counters = Arc::new(Counters::default());
            let lossless = matches!(spec, SinkSpec::File(_));
            let capacity = config.sink_buffer.clamp(1, Semaphore::MAX_PERMITS);
            match spec {
                SinkSpec::File(path) => file::spawn(path, rx, counters.clone())?,
                SinkSpec::Syslog(target) => {
                    syslog::spawn(target.clone(), config, rx, counters.clone())
                }
                SinkSpec::Webhook(url) => webhook::spawn(url, config, rx, counters.clone())?,
            }
            sinks.push(SinkHandle {
                name: spec.name(),
                lossless,
                capacity,
                permits: Arc::new(Semaphore::new(capacity)),
                tx,
                counters,
            });
        }
        Ok(SinkSet { sinks })
    }

    /// True when no sink is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hand committed records to every sink: waits on the file sink when it is behind,
    /// drops (counted) on a full network sink.
    pub(crate) async fn publish(&self, records: &Arc<Vec<AuditRecord>>) {
        for s in &self.sinks {
            let n = u32::try_from(records.len().clamp(1, s.capacity)).unwrap_or(u32::MAX);
            if let Some(permit) = s.permit(n).await {
                let _ = s.tx.send(SinkItem::Records {
                    records: records.clone(),
                    _held: Held { _permit: permit },
                });
            } else {
                s.counters
                    .dropped
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Hand a committed checkpoint to every sink.
    pub(crate) async fn publish_checkpoint(&self, cp: &Arc<Checkpoint>) {
        for s in &self.sinks {
            if let Some(permit) = s.permit(1).await {
                let _ = s.tx.send(SinkItem::Checkpoint {
                    cp: cp.clone(),
                    _held: Held { _permit: permit },
                });
            } else {
                s.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait until every sink has delivered (or given up on) everything handed to it.
    pub(crate) async fn flush(&self) {
        let mut waits = Vec::new();
        for s in &self.sinks {
            let (tx, rx) = oneshot::channel();
            if s.tx.send(SinkItem::Flush(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Counters of every sink.
    pub(crate) fn stats(&self) -> Vec<SinkStats> {
        self.sinks
            .iter()
            .map(|s| SinkStats {
                sink: s.name.clone(),
                delivered: s.counters.delivered.load(Ordering::Relaxed),
                dropped: s.counters.dropped.load(Ordering::Relaxed),
                errors: s.counters.errors.load(Ordering::Relaxed),
                queued: (s.capacity - s.permits.available_permits().min(s.capacity)) as u64,
            })
            .collect()
    }

    /// Printable names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name.clone()).collect()
    }
}

impl SinkHandle {
    async fn permit(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        if self.lossless {
            self.permits.clone().acquire_many_owned(n).await.ok()
        } else {
            self.permits.clone().try_acquire_many_owned(n).ok()
        }
    }
}

/// Receive the next item and everything already queued behind it (up to `max` records).
pub(crate) async fn recv_batch(
    rx: &mut mpsc::UnboundedReceiver<SinkItem>,
    max: u64,
) -> Option<Vec<SinkItem>> {
    let first = rx.recv().await?;
    let mut n = first.len();
    let mut items = vec![first];
    while n < max {
        match rx.try_recv() {
            Ok(item) => {
                n += item.len();
                items.push(item);
            }
            Err(_) => break,
        }
    }
    Some(items)
}

/// The JSON-line form of an item (`None` for a flush).
pub(crate) fn item_lines(item: &SinkItem) -> Vec<String> {
    match item {
        SinkItem::Records { records: rs, .. } => rs.iter().map(AuditRecord::to_json_line).collect(),
        SinkItem::Checkpoint { cp, .. } => vec![cp.to_json_line()],
        SinkItem::Flush(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_entries_parse() {
        let cases: &[(&str, SinkSpec)] = &[
            (
                "file:/var/log/a.jsonl",
                SinkSpec::File("/var/log/a.jsonl".into()),
            ),
            (
                "file:///var/log/a.jsonl",
                SinkSpec::File("/var/log/a.jsonl".into()),
            ),
            (
                "syslog+udp://127.0.0.1:5514",
                SinkSpec::Syslog(SyslogTarget::Udp("127.0.0.1:5514".into())),
            ),
            (
                "syslog://localhost",
                SinkSpec::Syslog(SyslogTarget::Udp("localhost:514".into())),
            ),
            (
                "syslog+tcp://[::1]:601",
                SinkSpec::Syslog(SyslogTarget::Tcp("[::1]:601".into())),
            ),
            (
                "syslog+unix:///dev/log",
                SinkSpec::Syslog(SyslogTarget::Unix("/dev/log".into())),
            ),
            (
                "webhook+http://127.0.0.1:9000/audit",
                SinkSpec::Webhook("http://127.0.0.1:9000/audit".into()),
            ),
            (
                "webhook+https://siem.example/x?token=1",
                SinkSpec::Webhook("https://siem.example/x?token=1".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SinkSpec::parse(text).ok().as_ref(), Some(want), "{text}");
        }
    }

    #[test]
    fn bad_sink_entries_are_refused() {
        for bad in [
            "file:",
            "syslog+udp://",
            "syslog+udp://host:0",
            "syslog+udp://host:99999",
            "syslog+tcp://user@host:1",
            "syslog+tcp://host:1/path",
            "syslog+unix://relative",
            "webhook+ftp://x",
            "webhook+http://",
            "s3://bucket",
            "http://x",
        ] {
            assert!(SinkSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_split_on_commas() {
        let l = SinkSpec::parse_list("file:/a, syslog+udp://h:1,,webhook+http://h/x").expect("ok");
        assert_eq!(l.len(), 3);
        assert!(SinkSpec::parse_list("file:/a,nope").is_err());
        assert!(SinkSpec::parse_list(" ").expect("empty").is_empty());
    }

    #[test]
    fn webhook_names_hide_credentials() {
        let s = SinkSpec::parse("webhook+https://user:pw@h.example:8443/p?token=secret")
            .expect("valid");
        let name = s.name();
        assert_eq!(name, "webhook+https://h.example:8443/p");
        assert_eq!(format!("{s:?}"), name);
    }
}

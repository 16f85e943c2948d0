//! The syslog sink: RFC 5424 messages over UDP, TCP (RFC 6587 octet counting) or a Unix
//! datagram socket.
//!
//! Owns: formatting a record as an RFC 5424 message and sending it.
//!
//! Must never: block the chain writer (it runs as its own task behind a bounded buffer);
//! put unescaped `"`, `\` or `]` in structured data.
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [audit@32473 seq="…" hash="…"]
//! MSG` with facility 13 ("log audit"), severity warning (4) for denials, violations, errors,
//! timeouts and limits and notice (5) otherwise, MSGID the event type, and MSG the record's
//! JSON line. (32473 is the documentation enterprise number of RFC 5612.) Over UDP and the
//! Unix socket each message is one datagram: a record too large for one (huge `details`) is
//! dropped and counted; use TCP for such records.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use tokio::sync::mpsc;

use super::{recv_batch, Counters, SinkItem, SyslogTarget};
use crate::checkpoint::Checkpoint;
use crate::config::AuditConfig;
use crate::record::AuditRecord;

const FACILITY_LOG_AUDIT: u8 = 13;
/// After a failed connect, messages are dropped without retrying for this long.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn spawn(
    target: SyslogTarget,
    config: &AuditConfig,
    rx: mpsc::UnboundedReceiver<SinkItem>,
    counters: Arc<Counters>,
) {
    let header = Header {
        host: printable(&hostname(), 255),
        app: printable(&config.syslog_app_name, 48),
        pid: std::process::id(),
    };
    tokio::spawn(run(target, header, rx, counters));
}

/// The fixed parts of every message.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub(crate) host: String,
    pub(crate) app: String,
    pub(crate) pid: u32,
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Unix(UnixDatagram),
}

async fn connect(target: &SyslogTarget) -> std::io::Result<Conn> {
    match target {
        SyslogTarget::Udp(addr) => {
            let remote = tokio::net::lookup_host(addr.as_str())
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let local = if remote.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(local).await?;
            s.connect(remote).await?;
            Ok(Conn::Udp(s))
        }
        SyslogTarget::Tcp(addr) => {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| std::io::Error::other("connect timed out"))??;
            s.set_nodelay(true)?;
            Ok(Conn::Tcp(s))
        }
        SyslogTarget::Unix(path) => {
            let s = UnixDatagram::unbound()?;
            s.connect(path)?;
            Ok(Conn::Unix(s))
        }
    }
}

async fn send(conn: &mut Conn, msg: &str) -> std::io::Result<()> {
    match conn {
        Conn::Udp(s) => s.send(msg.as_bytes()).await.map(drop),
        Conn::Unix(s) => s.send(msg.as_bytes()).await.map(drop),
        Conn::Tcp(s) => s.write_all(frame_octet_counted(msg).as_bytes()).await,
    }
}

async fn run(
    target: SyslogTarget,
    header: Header,
    mut rx: mpsc::UnboundedReceiver<SinkItem>,
    counters: Arc<Counters>,
) {
    let mut conn: Option<Conn> = None;
    let mut failed_at: Option<Instant> = None;
    while let Some(items) = recv_batch(&mut rx, 4096).await {
        for item in items {
            let messages = match &item {
                SinkItem::Records { records: rs, .. } => {
                    rs.iter().map(|r| format_record(r, &header)).collect()
                }
                SinkItem::Checkpoint { cp, .. } => vec![format_checkpoint(cp, &header)],
                SinkItem::Flush(_) => Vec::new(),
            };
            for msg in messages {
                let mut sent = false;
                // One reconnect per message, unless a connect failed very recently.
                for _ in 0..2 {
                    if conn.is_none() {
                        if failed_at.is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF) {
                            break;
                        }
                        match connect(&target).await {
                            Ok(c) => {
                                conn = Some(c);
                                failed_at = None;
                            }
                            Err(e) => {
                                failed_at = Some(Instant::now());
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, "audit syslog sink cannot connect");
                                break;
                            }
                        }
                    }
                    if let Some(c) = conn.as_mut() {
                        match send(c, &msg).await {
                            Ok(()) => {
                                sent = true;
                                break;
                            }
                            Err(e) => {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, "audit syslog sink send failed");
                                conn = None;
                            }
                        }
                    }
                }
                let counter = if sent {
                    &counters.delivered
                } else {
                    &counters.dropped
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if let SinkItem::Flush(done) = item {
                if let Some(Conn::Tcp(s)) = conn.as_mut() {
                    let _ = s.flush().await;
                }
                let _ = done.send(());
            }
        }
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub(crate) fn frame_octet_counted(msg: &str) -> String {
    format!("{} {msg}", msg.len())
}

/// Severity of a record: warning (4) for denials, violations, errors, timeouts and
/// resource limits; notice (5) otherwise.
pub(crate) fn severity(r: &AuditRecord) -> u8 {
    let e = r.event.as_str();
    let warn_event = e.contains("violation")
        || e.contains("error")
        || e.contains("timeout")
        || e.contains("limit")
        || e.contains("denied");
    let warn_outcome = matches!(r.outcome.as_deref(), Some("denied" | "error"));
    if warn_event || warn_outcome {
        4
    } else {
        5
    }
}

/// One RFC 5424 message for a record.
pub(crate) fn format_record(r: &AuditRecord, h: &Header) -> String {
    format!(
        "<{}>1 {} {} {} {} {} [audit@32473 seq=\"{}\" hash=\"{}\"] {}",
        FACILITY_LOG_AUDIT * 8 + severity(r),
        r.timestamp,
        h.host,
        h.app,
        h.pid,
        printable(&r.event, 32),
        r.seq,
        sd_escape(&r.hash),
        r.to_json_line()
    )
}

/// One RFC 5424 message for a checkpoint (severity notice, MSGID `checkpoint`).
pub(crate) fn format_checkpoint(cp: &Checkpoint, h: &Header) -> String {
    format!(
        "<{}>1 {} {} {} {} checkpoint [audit@32473 checkpoint=\"{}\" head=\"{}\"] {}",
        FACILITY_LOG_AUDIT * 8 + 5,
        cp.timestamp,
        h.host,
        h.app,
        h.pid,
        cp.seq,
        sd_escape(&cp.head_hash),
        cp.to_json_line()
    )
}

/// Escape an SD-PARAM value (RFC 5424 §6.3.3).
pub(crate) fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII (33..=126) only, at most `max` bytes, `-` when empty.
pub(crate) fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if out.is_empty() {
        "-".to_string()
    } else {
        out
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::GENESIS_HASH;
    use crate::AuditEvent;

    fn header() -> Header {
        Header {
            host: "node1".into(),
            app: "magic".into(),
            pid: 42,
        }
    }

    #[test]
    fn record_message_is_rfc5424() {
        let e = AuditEvent {
            event: "capability_use".into(),
            outcome: Some("allowed".into()),
            ..AuditEvent::default()
        };
        let r = AuditRecord::new(
            7,
            "2026-01-01T00:00:00.000001Z".into(),
            &e,
            GENESIS_HASH.into(),
        );
        let m = format_record(&r, &header());
        let want_prefix = format!(
            "<109>1 2026-01-01T00:00:00.000001Z node1 magic 42 capability_use \
             [audit@32473 seq=\"7\" hash=\"{}\"] {{",
            r.hash
        );
        assert!(m.starts_with(&want_prefix), "{m}");
        let json = &m[m.find("] ").map_or(0, |i| i + 2)..];
        assert_eq!(AuditRecord::from_json_line(json).as_ref(), Some(&r));
    }

    #[test]
    fn severities() {
        let cases = [
            ("capability_use", Some("allowed"), 5),
            ("capability_use", Some("denied"), 4),
            ("capability_violation", None, 4),
            ("execution_error", None, 4),
            ("execution_timeout", None, 4),
            ("resource_limit", None, 4),
            ("admin_action", Some("ok"), 5),
            ("execution_complete", Some("error"), 4),
        ];
        for (event, outcome, want) in cases {
            let e = AuditEvent {
                event: event.into(),
                outcome: outcome.map(Into::into),
                ..AuditEvent::default()
            };
            let r = AuditRecord::new(1, "t".into(), &e, GENESIS_HASH.into());
            assert_eq!(severity(&r), want, "{event} {outcome:?}");
        }
    }

    #[test]
    fn header_fields_are_sanitized() {
        assert_eq!(printable("a b\tc\u{e9}", 32), "abc");
        assert_eq!(printable("", 32), "-");
        assert_eq!(printable(" ", 32), "-");
        assert_eq!(printable(&"x".repeat(40), 32).len(), 32);
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        let e = AuditEvent {
            event: "evil event] [x".into(),
            ..AuditEvent::default()
        };
        let r = AuditRecord::new(1, "t".into(), &e, GENESIS_HASH.into());
        assert!(format_record(&r, &header()).contains(" 42 evilevent][x [audit@32473"));
    }

    #[test]
    fn octet_counting_uses_byte_length() {
        assert_eq!(frame_octet_counted("h\u{e9}"), "3 h\u{e9}");
    }
}

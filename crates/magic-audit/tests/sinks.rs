//! Sinks against real listeners on 127.0.0.1: file, syslog (UDP, TCP, Unix), webhook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{append_n, config, event, sqlite};
use magic_audit::sink::SyslogTarget;
use magic_audit::verify::verify_records;
use magic_audit::{AuditChain, AuditRecord, Checkpoint, SinkSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Parse a JSON-lines sink file into records and checkpoints.
fn parse_lines(text: &str) -> (Vec<AuditRecord>, Vec<Checkpoint>) {
    let mut records = Vec::new();
    let mut cps = Vec::new();
    for line in text.lines() {
        if let Some(r) = AuditRecord::from_json_line(line) {
            records.push(r);
        } else {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            cps.push(serde_json::from_value(v["checkpoint"].clone()).expect("checkpoint line"));
        }
    }
    (records, cps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_holds_a_verifiable_copy_and_catches_up_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("logs/audit.jsonl");
    let mut cfg = config(dir.path());
    cfg.sinks = vec![SinkSpec::File(path.clone())];
    cfg.checkpoint_every = 40;
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg.clone())
        .await
        .expect("opens");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = chain.clone();
            tokio::spawn(async move { c.append_event(event(i)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    chain.shutdown().await.expect("shutdown");
    let text = std::fs::read_to_string(&path).expect("sink file");
    let (records, cps) = parse_lines(&text);
    assert_eq!(records.len(), 100);
    assert!(!cps.is_empty());
    // The copy verifies on its own, checkpoints included.
    let report = verify_records(&records, cps, &[chain.public_key()]);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_checked, 100);
    assert_eq!(chain.stats().sinks[0].dropped, 0);
    drop(chain);

    // Simulate a crash that lost the file's tail and tore its last line.
    let keep: String = text.lines().take(30).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, format!("{keep}{{\"seq\":31,\"times")).expect("rewrite");
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("reopens");
    append_n(&chain, 100, 10).await;
    chain.shutdown().await.expect("shutdown");
    let (records, cps) = parse_lines(&std::fs::read_to_string(&path).expect("sink file"));
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=110).collect::<Vec<_>>());
    assert!(verify_records(&records, cps, &[chain.public_key()]).is_ok());
}

fn syslog_config(dir: &std::path::Path, target: SyslogTarget) -> magic_audit::AuditConfig {
    let mut cfg = config(dir);
    cfg.sinks = vec![SinkSpec::Syslog(target)];
    cfg
}

/// Check an RFC 5424 message carries the record with this seq and hash.
fn check_syslog(msg: &str, seq: u64, hash: &str) {
    assert!(msg.starts_with("<109>1 "), "{msg}");
    assert!(
        msg.contains(&format!("[audit@32473 seq=\"{seq}\" hash=\"{hash}\"] ")),
        "{msg}"
    );
    let json = &msg[msg.find("] {").expect("msg") + 2..];
    let r = AuditRecord::from_json_line(json).expect("record json");
    assert_eq!((r.seq, r.hash.as_str()), (seq, hash));
}

#[tokio::test]
async fn syslog_udp_gets_one_datagram_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr").to_string();
    let chain = AuditChain::open(
        sqlite(dir.path()).await,
        syslog_config(dir.path(), SyslogTarget::Udp(addr)),
    )
    .await
    .expect("opens");
    let mut receipts = Vec::new();
    for i in 1..=5 {
        receipts.push(chain.append_event(event(i)).await.expect("append"));
    }
    let mut buf = vec![0_u8; 65536];
    for r in &receipts {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("datagram in time")
            .expect("recv");
        check_syslog(
            std::str::from_utf8(&buf[..n]).expect("utf8"),
            r.seq,
            &r.hash,
        );
    }
    assert_eq!(chain.stats().sinks[0].delivered, 5);
}

#[tokio::test]
async fn syslog_tcp_uses_octet_counting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let chain = AuditChain::open(
        sqlite(dir.path()).await,
        syslog_config(dir.path(), SyslogTarget::Tcp(addr)),
    )
    .await
    .expect("opens");
    let mut receipts = Vec::new();
    for i in 1..=5 {
        receipts.push(chain.append_event(event(i)).await.expect("append"));
    }
    let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("connect in time")
        .expect("accept");
    let mut reader = BufReader::new(stream);
    for r in &receipts {
        let mut len = Vec::new();
        reader.read_until(b' ', &mut len).await.expect("length");
        let len: usize = std::str::from_utf8(&len[..len.len() - 1])
            .expect("ascii")
            .parse()
            .expect("number");
        let mut msg = vec![0_u8; len];
        reader.read_exact(&mut msg).await.expect("frame");
        check_syslog(std::str::from_utf8(&msg).expect("utf8"), r.seq, &r.hash);
    }
}

#[tokio::test]
async fn syslog_unix_datagrams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).expect("bind");
    let chain = AuditChain::open(
        sqlite(dir.path()).await,
        syslog_config(dir.path(), SyslogTarget::Unix(path)),
    )
    .await
    .expect("opens");
    let r = chain.append_event(event(1)).await.expect("append");
    let mut buf = vec![0_u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("datagram in time")
        .expect("recv");
    check_syslog(
        std::str::from_utf8(&buf[..n]).expect("utf8"),
        r.seq,
        &r.hash,
    );
}

#[tokio::test]
async fn syslog_sink_down_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on (bound then closed).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let chain = AuditChain::open(
        sqlite(dir.path()).await,
        syslog_config(dir.path(), SyslogTarget::Tcp(addr)),
    )
    .await
    .expect("opens");
    append_n(&chain, 1, 20).await;
    chain.shutdown().await.expect("shutdown flushes");
    let s = &chain.stats().sinks[0];
    assert_eq!(s.delivered, 0);
    assert!(s.dropped >= 20, "{s:?}");
    assert!(s.errors >= 1, "{s:?}");
}

/// A tiny HTTP/1.1 server: answers 500 to the first `fail_first` requests, then 200, and
/// keeps the bodies it accepted. With `hang`, it never answers.
async fn http_server(fail_first: usize, hang: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/audit", listener.local_addr().expect("addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(0_usize));
    let b = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (bodies, seen) = (b.clone(), seen.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut len = 0_usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0_u8; len];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let n = {
                        let mut s = seen.lock().expect("lock");
                        *s += 1;
                        *s
                    };
                    let status = if n <= fail_first {
                        "500 Internal Server Error"
                    } else {
                        bodies
                            .lock()
                            .expect("lock")
                            .push(String::from_utf8_lossy(&body).into_owned());
                        "200 OK"
                    };
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batches_and_retries_until_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, bodies) = http_server(2, false).await;
    let mut cfg = config(dir.path());
    cfg.sinks = vec![SinkSpec::parse(&format!("webhook+{url}")).expect("spec")];
    cfg.webhook_backoff = Duration::from_millis(20);
    cfg.webhook_linger = Duration::from_millis(50);
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    append_n(&chain, 1, 30).await;
    chain.shutdown().await.expect("shutdown flushes");
    let bodies = bodies.lock().expect("lock").clone();
    let mut seqs = Vec::new();
    let mut checkpoints = 0;
    for body in &bodies {
        let items: Vec<serde_json::Value> = serde_json::from_str(body).expect("json array");
        for item in items {
            if item.get("checkpoint").is_some() {
                checkpoints += 1;
            } else {
                seqs.push(item["seq"].as_u64().expect("seq"));
            }
        }
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    assert!(bodies.len() < 30, "batched: {} posts", bodies.len());
    assert_eq!(checkpoints, 1, "the shutdown checkpoint");
    let s = &chain.stats().sinks[0];
    assert_eq!((s.delivered, s.dropped), (31, 0), "{s:?}");
    assert_eq!(s.errors, 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_webhook_never_blocks_appends_and_counts_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _) = http_server(0, true).await;
    let mut cfg = config(dir.path());
    cfg.sinks = vec![SinkSpec::parse(&format!("webhook+{url}")).expect("spec")];
    cfg.sink_buffer = 10;
    cfg.webhook_timeout = Duration::from_millis(300);
    cfg.webhook_attempts = 2;
    cfg.webhook_backoff = Duration::from_millis(10);
    cfg.webhook_linger = Duration::from_millis(1);
    let chain = AuditChain::open(sqlite(dir.path()).await, cfg)
        .await
        .expect("opens");
    let started = Instant::now();
    append_n(&chain, 1, 200).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "appends were held up"
    );
    let s = chain.stats();
    assert!(s.sinks[0].dropped >= 150, "{s:?}");
    assert_eq!(s.sink_dropped_total, s.sinks[0].dropped);
    assert_eq!(s.appended, 200);
    assert!(chain.verify().await.expect("verify").is_ok());
}

#[tokio::test]
async fn a_failed_commit_is_reported_and_reaches_no_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let store = sqlite(dir.path()).await;
    let mut cfg = config(dir.path());
    cfg.sinks = vec![SinkSpec::File(path.clone())];
    let chain = AuditChain::open(store.clone(), cfg).await.expect("opens");
    append_n(&chain, 1, 3).await;
    common::exec(&store, "ALTER TABLE magic_audit_log RENAME TO moved_away").await;
    let err = chain.append_event(event(4)).await;
    assert!(
        matches!(err, Err(magic_audit::AuditError::Store(_))),
        "{err:?}"
    );
    common::exec(&store, "ALTER TABLE moved_away RENAME TO magic_audit_log").await;
    let r = chain.append_event(event(5)).await.expect("append");
    assert_eq!(r.seq, 4, "the failed append took no seq");
    assert_eq!(chain.stats().failed, 1);
    chain.shutdown().await.expect("shutdown");
    let (records, _) = parse_lines(&std::fs::read_to_string(&path).expect("sink file"));
    let ids: Vec<Option<String>> = records.iter().map(|r| r.request_id.clone()).collect();
    let want: Vec<Option<String>> = [1, 2, 3, 5]
        .iter()
        .map(|i| Some(format!("req-{i}")))
        .collect();
    assert_eq!(ids, want, "only committed records reach the sink");
    assert!(chain.verify().await.expect("verify").is_ok());
}

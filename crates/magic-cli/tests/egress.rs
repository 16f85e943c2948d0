//! `http:egress` end to end: a table of allowed and refused destinations, each fetched by a
//! real controller through the real runtime, each attempt in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use common::{code, contract, write_controller, Server};

/// HTTP server on 127.0.0.1: `/ok` answers 200 JSON; `/redirect?to=URL` answers 302 to URL.
/// Counts the requests it serves so a test can prove a refused call never arrived.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (port, hits, _) = server_seeing_traceparents();
    (port, hits)
}

/// The same server, also keeping every `traceparent` header it received.
fn server_seeing_traceparents() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen: Seen = Default::default();
    let counter = hits.clone();
    let seen_by_server = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen_by_server.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("traceparent:") {
                        seen.lock().unwrap().push(v.trim().to_string());
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let mut stream = stream;
                if let Some(to) = path.strip_prefix("/redirect?to=") {
                    let _ = write!(stream, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                } else {
                    let body = "{\"ok\":true}";
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    (port, hits, seen)
}

const FETCH: &str = "        r = await self.http.get(input[\"url\"], timeout=5)\n        return {\"greeting\": str(r.status)}";

#[tokio::test(flavor = "multi_thread")]
async fn allowed_and_refused_destinations_through_a_controller() {
    let (port, hits) = server();
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let allow = format!(
        "capabilities:\n  - http:egress: {{ allow: [\"http://localhost:{port}\"], allow_ips: [\"127.0.0.1\", \"::1\"] }}\n"
    );
    let dir = tmp.path().join("fetch");
    write_controller(
        &dir,
        &contract("Fetch", "1.0.0", "greeting", &allow),
        &code("Fetch", FETCH),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());
    // Same allow entry without allow_ips: localhost resolves to loopback and is refused.
    let strict =
        format!("capabilities:\n  - http:egress: {{ allow: [\"http://localhost:{port}\"] }}\n");
    let dir = tmp.path().join("strict");
    write_controller(
        &dir,
        &contract("StrictFetch", "1.0.0", "greeting", &strict),
        &code("StrictFetch", FETCH),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());

    let p = port;
    let table: Vec<(&str, String, &str)> = vec![
        ("Fetch", format!("http://localhost:{p}/ok"), "200"),
        ("Fetch", format!("http://LOCALHOST.:{p}/ok"), "200"),
        (
            "Fetch",
            format!("http://localhost:{p}/redirect?to=http://localhost:{p}/ok"),
            "200",
        ),
        ("Fetch", format!("http://127.0.0.1:{p}/ok"), "E2002"),
        ("Fetch", format!("http://2130706433:{p}/ok"), "E2002"),
        ("Fetch", format!("http://0x7f.1:{p}/ok"), "E2002"),
        ("Fetch", format!("http://0177.0.0.1:{p}/ok"), "E2002"),
        ("Fetch", format!("http://127.1:{p}/ok"), "E2002"),
        (
            "Fetch",
            format!("http://[::ffff:127.0.0.1]:{p}/ok"),
            "E2002",
        ),
        (
            "Fetch",
            format!("http://localhost:{p}@evil.example/ok"),
            "E2002",
        ),
        (
            "Fetch",
            format!("http://evil.example#@localhost:{p}/ok"),
            "E2002",
        ),
        (
            "Fetch",
            format!("http://localhost.evil.example:{p}/ok"),
            "E2002",
        ),
        ("Fetch", format!("https://localhost:{p}/ok"), "E2002"),
        ("Fetch", "http://localhost:1/ok".to_string(), "E2002"),
        ("Fetch", "http://localhost/ok".to_string(), "E2002"),
        (
            "Fetch",
            format!("http://localhost:{p}/redirect?to=http://169.254.169.254/latest/meta-data/"),
            "E2002",
        ),
        (
            "Fetch",
            format!("http://localhost:{p}/redirect?to=http://127.0.0.1:{p}/ok"),
            "E2002",
        ),
        // Refused by the SDK before a call is made (a bad argument, E5001): never audited as egress.
        ("Fetch", "file:///etc/passwd".to_string(), "E5001"),
        // Refused by the broker as unparseable; no allow entry is suggested for it.
        ("Fetch", format!("http://local host:{p}/ok"), "E2002"),
        ("StrictFetch", format!("http://localhost:{p}/ok"), "E2008"),
    ];
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut allowed_hits = 0;
    for (controller, url, want) in &table {
        let input = serde_json::json!({ "url": url }).to_string();
        let (status, _, body) = server
            .post(&format!("/api/execute/{controller}"), &input)
            .await;
        if *want == "200" {
            assert_eq!(status, 200, "{controller} {url}: {body}");
            assert_eq!(
                body["output"]["greeting"], "200",
                "{controller} {url}: {body}"
            );
            allowed_hits += if url.contains("redirect") { 2 } else { 1 };
        } else {
            assert_eq!(
                body["error"]["code"].as_str(),
                Some(*want),
                "{controller} {url}: {body}"
            );
            assert_eq!(
                status,
                if *want == "E5001" { 500 } else { 403 },
                "{controller} {url}"
            );
        }
    }
    // Refused requests never reached the server (redirect sources do, their targets do not).
    let redirect_sources = table
        .iter()
        .filter(|(_, u, w)| u.contains("/redirect?") && *w != "200")
        .count();
    let served = hits.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(
        served,
        allowed_hits + redirect_sources,
        "requests that reached the server"
    );

    // Every attempt is in the audit log, refused ones as violations.
    let out = server.cli(&["audit", "tail", "--last", "2000"]);
    let tail = String::from_utf8_lossy(&out.stdout);
    let egress_records: Vec<serde_json::Value> = tail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["capability"] == "http:egress")
        .collect();
    let brokered = table.iter().filter(|(_, _, w)| *w != "E5001").count();
    assert!(
        egress_records.len() >= brokered,
        "{} egress records for {brokered} attempts",
        egress_records.len()
    );
    let violations = egress_records
        .iter()
        .filter(|r| r["event"] == "capability_violation")
        .count();
    let refused = table.iter().filter(|(_, _, w)| w.starts_with("E2")).count();
    assert_eq!(
        violations, refused,
        "one violation record per refused attempt"
    );
    assert!(egress_records.iter().any(|r| r["outcome"] == "E2008"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_trace_is_continued_on_egress_logs_and_audit() {
    let (port, _, seen) = server_seeing_traceparents();
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let allow = format!("capabilities:\n  - http:egress: {{ allow: [\"http://localhost:{port}\"], allow_ips: [\"127.0.0.1\", \"::1\"] }}\n");
    let dir = tmp.path().join("fetch");
    write_controller(
        &dir,
        &contract("Traced", "1.0.0", "greeting", &allow),
        &code("Traced", FETCH),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let input = serde_json::json!({ "url": format!("http://localhost:{port}/ok") }).to_string();
    let (status, _, body) = server
        .post_with(
            "/api/execute/Traced",
            &input,
            &[
                ("x-api-key", common::ADMIN_KEY),
                ("traceparent", &caller),
                ("x-request-id", "req_traced"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let parts: Vec<&str> = received[0].split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id, "01"),
        "{received:?}"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "egress carries the execution's own span"
    );
    let line = server
        .wait_log(&["execution_completed", "req_traced"])
        .expect("log line");
    assert_eq!(line["trace_id"], trace_id);
    let tail = String::from_utf8_lossy(&server.cli(&["audit", "tail", "--last", "50"]).stdout)
        .into_owned();
    assert!(tail.contains(trace_id), "audit records lack the trace id");

    // A malformed traceparent is replaced by a fresh trace, never forwarded.
    let (status, _, _) = server
        .post_with(
            "/api/execute/Traced",
            &input,
            &[
                ("x-api-key", common::ADMIN_KEY),
                ("traceparent", "00-zz-bad-01"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert!(
        !received[1].contains("zz") && received[1].split('-').nth(1).unwrap().len() == 32,
        "{received:?}"
    );
}

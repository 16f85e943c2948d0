//! The capability broker end to end: the "every capability" example controller through the
//! real binary, on the embedded backends and on PostgreSQL + Redis, with identical outputs;
//! denials surfacing with their codes and details; the audit chain recording it all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{code, contract, write_controller, Server, ADMIN_KEY};
use serde_json::json;

/// A tiny HTTP server on 127.0.0.1 that answers every request with JSON echoing the body.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                let mut example = String::new();
                let mut request_id = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-example:") {
                        example = line[10..].trim().to_string();
                    }
                    if lower.starts_with("x-request-id:") {
                        request_id = line[13..].trim().to_string();
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let received: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let answer = json!({
                    "echo": received, "x_example": example, "saw_request_id": !request_id.is_empty()
                })
                .to_string();
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    port
}

fn example_dir() -> PathBuf {
    common::repo_root().join("examples/controllers/every_capability")
}

/// Copy the example, pointing its egress allow entry at `port`.
fn example_for_port(tmp: &Path, port: u16) -> PathBuf {
    let dir = tmp.join("every_capability");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["controller.py", "input.json"] {
        std::fs::copy(example_dir().join(f), dir.join(f)).unwrap();
    }
    let contract = std::fs::read_to_string(example_dir().join("contract.yaml")).unwrap();
    assert!(
        contract.contains("http://127.0.0.1:8787"),
        "example contract changed"
    );
    std::fs::write(
        dir.join("contract.yaml"),
        contract.replace("http://127.0.0.1:8787", &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    dir
}

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "magic {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_secret(server: &Server, controller: &str, name: &str, value: &str) {
    let mut child = std::process::Command::new(common::magic_bin())
        .args(["secrets", "set", controller, name])
        .env("MAGIC_URL", &server.url)
        .env("MAGIC_API_KEY", ADMIN_KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Run the example on `server` (table already created) and return its output.
async fn run_every_capability(server: &Server, tmp: &Path, port: u16) -> serde_json::Value {
    let dir = example_for_port(tmp, port);
    cli_ok(server, &["deploy", dir.to_str().unwrap()]);
    set_secret(server, "EveryCapability", "EXAMPLE_SECRET", "s3cret-value");
    let listed = cli_ok(server, &["secrets", "list", "EveryCapability"]);
    assert!(
        listed.contains("EXAMPLE_SECRET") && !listed.contains("s3cret"),
        "{listed}"
    );

    let input =
        json!({ "item_id": "item-1", "url": format!("http://127.0.0.1:{port}/echo") }).to_string();
    // Without the policy approval, db:rawsql is refused (E2007) and the refusal escapes.
    let (status, _, body) = server.post("/api/execute/EveryCapability", &input).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("E2007")),
        "{body}"
    );

    cli_ok(server, &["rawsql", "approve", "EveryCapability"]);
    let (status, _, body) = server.post("/api/execute/EveryCapability", &input).await;
    assert_eq!(status, 200, "{body}");
    let used: Vec<&str> = body["metrics"]["capabilities_used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in [
        "cache:read",
        "cache:write",
        "db:rawsql",
        "db:read",
        "db:write",
        "http:egress",
        "queue:publish",
        "queue:subscribe",
        "secrets:read",
    ] {
        assert!(
            used.contains(&cap),
            "{cap} not in capabilities_used {used:?}"
        );
    }
    let mut output = body["output"].clone();
    assert_eq!(output["request_id"], body["request_id"]);
    output.as_object_mut().unwrap().remove("request_id");
    output
}

fn expected_output(port: u16) -> serde_json::Value {
    let _ = port;
    json!({
        "db": {
            "inserted": 1, "updated": 1,
            "row": {"id": "item-1", "name": "widget", "qty": 3},
            "rows": [{"id": "item-1", "qty": 3}],
            "raw_count_at_least_one": true, "deleted": 1
        },
        "http": {"status": 200, "json": {"echo": {"item_id": "item-1"}, "x_example": "every_capability", "saw_request_id": true}},
        "secrets": {"length": 12},
        "queue": {"published": true, "received": {"item_id": "item-1", "event": "created"}, "attempt": 1},
        "cache": {"stored": {"qty": 3}, "after_delete": null},
        "fs": {"bytes_written": 18, "read_back": "hello from item-1\n"},
        "metrics": {"emitted": ["counter", "gauge", "histogram"]},
        "log": {"emitted": ["debug", "info", "warning", "error", "print"]}
    })
}

fn create_sqlite_table(data_dir: &Path) {
    let db = data_dir.join("app.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE example_items (id TEXT PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL)'); \
             c.commit()",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_capability_runs_identically_on_embedded_and_postgres_redis_backends() {
    let port = echo_server();
    let tmp = tempfile::tempdir().unwrap();

    // Embedded: SQLite state and app.db, in-process cache, SQLite queue.
    let embedded = Server::start(&[]);
    create_sqlite_table(&embedded.data_dir);
    let embedded_output = run_every_capability(&embedded, &tmp.path().join("a"), port).await;
    assert_eq!(embedded_output, expected_output(port), "embedded output");

    // The chain recorded each capability use with the request ID, and it verifies.
    let out = cli_ok(&embedded, &["audit", "verify"]);
    assert!(out.contains("audit chain intact"), "{out}");
    let tail = cli_ok(&embedded, &["audit", "tail", "--last", "200"]);
    for needle in [
        "\"capability_use\"",
        "\"db:read\"",
        "\"http:egress\"",
        "\"secrets:read\"",
        "\"admin_action\"",
    ] {
        assert!(tail.contains(needle), "audit tail lacks {needle}");
    }
    assert!(
        !tail.contains("s3cret-value"),
        "a secret value reached the audit log"
    );
    let (_, metrics) = embedded.get("/metrics", None).await;
    assert!(
        metrics.contains(
            "magic_capability_usage_total{capability=\"db:read\",controller=\"EveryCapability\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("magic_custom_everycapability_every_capability_runs_total"),
        "{metrics}"
    );
    embedded.stop();

    // Production backends: PostgreSQL (runtime state and business data) and Redis.
    let schema = format!("mt_{}", uuid::Uuid::new_v4().simple());
    let admin_url = "postgres://postgres@127.0.0.1:5432/test";
    let pool = sqlx::PgPool::connect(admin_url)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.example_items (id TEXT PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let url = format!("{admin_url}?options[search_path]={schema}");
    let prefix = format!("{schema}:");
    let production = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("MAGIC_REDIS_PREFIX", prefix.as_str()),
    ]);
    let (_, ready) = production.get("/api/readyz", None).await;
    assert!(ready.contains("\"redis\":\"ok\""), "{ready}");
    let production_output = run_every_capability(&production, &tmp.path().join("b"), port).await;
    let out = cli_ok(&production, &["audit", "verify"]);
    assert!(out.contains("audit chain intact"), "{out}");
    production.stop();
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await;
    let _ = sqlx::raw_sql(common::DROP_UNUSED_CONTROLLER_ROLES)
        .execute(&pool)
        .await;

    assert_eq!(embedded_output, production_output, "backends disagree");
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_explain_themselves_and_are_audited() {
    let server = Server::start(&[]);
    create_sqlite_table(&server.data_dir);
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // (controller, capabilities, body, expected code, text expected in allow_with)
        ("ReadsOrders", "capabilities:\n  - db:read: { tables: [example_items] }\n",
         "        await self.db.query(\"orders\")\n        return {\"greeting\": \"x\"}", "E2004", "orders"),
        ("WrongSecret", "capabilities:\n  - secrets:read: { keys: [A] }\n",
         "        await self.secrets.get(\"B\")\n        return {\"greeting\": \"x\"}", "E2003", "B"),
        ("WrongQueue", "capabilities:\n  - queue:publish: { queues: [a] }\n",
         "        await self.queue.publish(\"b\", {})\n        return {\"greeting\": \"x\"}", "E2005", "b"),
        ("WrongPrefix", "capabilities:\n  - cache:write: { prefix: \"a:\", max_ttl: 1m }\n",
         "        await self.cache.set(\"b:1\", 1)\n        return {\"greeting\": \"x\"}", "E2006", "b:"),
        ("LongTtl", "capabilities:\n  - cache:write: { prefix: \"a:\", max_ttl: 1m }\n",
         "        await self.cache.set(\"a:1\", 1, ttl=3600)\n        return {\"greeting\": \"x\"}", "E2006", ""),
        ("NoEgress", "",
         "        await self.http.get(\"https://example.com/\")\n        return {\"greeting\": \"x\"}", "E2001", "http:egress"),
        ("OtherHost", "capabilities:\n  - http:egress: { allow: [api.example.com] }\n",
         "        await self.http.get(\"https://evil.example.net/\")\n        return {\"greeting\": \"x\"}", "E2002", ""),
        ("Loopback", "capabilities:\n  - http:egress: { allow: [\"http://localhost\"] }\n",
         "        await self.http.get(\"http://localhost/admin\")\n        return {\"greeting\": \"x\"}", "E2008", ""),
        ("Injection", "capabilities:\n  - db:read: { tables: [example_items] }\n",
         "        await self.db.query(\"example_items\", order_by=\"qty; DROP TABLE example_items\")\n        return {\"greeting\": \"x\"}", "E5001", ""),
    ];
    for (name, caps, body, _, _) in cases {
        let dir = tmp.path().join(name);
        write_controller(
            &dir,
            &contract(name, "1.0.0", "greeting", caps),
            &code(name, body),
        );
        let out = server.cli(&["deploy", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, _, _, want, allow_hint) in cases {
        let (status, _, body) = server.post(&format!("/api/execute/{name}"), "{}").await;
        assert_eq!(
            body["error"]["code"].as_str(),
            Some(*want),
            "{name}: {body}"
        );
        assert!(status == 403 || *want == "E5001", "{name}: status {status}");
        if !allow_hint.is_empty() {
            let details = body["error"]["details"].to_string();
            assert!(
                details.contains(allow_hint),
                "{name}: details should name {allow_hint}: {details}"
            );
        }
    }
    // localhost is allowlisted by name, but it resolves to loopback: refused at resolution.
    let tail = cli_ok(&server, &["audit", "tail", "--last", "500"]);
    assert!(tail.contains("capability_violation"), "{tail}");
    for name in [
        "ReadsOrders",
        "WrongSecret",
        "WrongQueue",
        "WrongPrefix",
        "OtherHost",
        "Loopback",
    ] {
        assert!(
            tail.contains(&format!("\"controller\":\"{name}\"")),
            "no audit record for {name}"
        );
    }
    // The table survived the injection attempt.
    let (status, _, _) = server.post("/api/execute/ReadsOrders", "{}").await;
    assert_eq!(status, 403);
    let out = cli_ok(&server, &["audit", "verify"]);
    assert!(out.contains("intact"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_audit_chain_is_named_by_magic_audit_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Audited", "1.0.0", "greeting", ""),
        &code("Audited", "        return {\"greeting\": \"x\"}"),
    );
    cli_ok(&server, &["deploy", dir.to_str().unwrap()]);
    for _ in 0..3 {
        let (status, _, _) = server.post("/api/execute/Audited", "{}").await;
        assert_eq!(status, 200);
    }
    assert!(cli_ok(&server, &["audit", "verify"]).contains("intact"));
    let range = cli_ok(&server, &["audit", "export", "--from", "2", "--to", "3"]);
    let seqs: Vec<u64> = range
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    let since = cli_ok(
        &server,
        &["audit", "export", "--from", "2000-01-01T00:00:00Z"],
    );
    assert!(since.lines().count() >= 7, "{since}");
    let out = server.cli(&["audit", "export", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    server.stop();

    // Edit one record's outcome behind the runtime's back.
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             n = c.execute(\"UPDATE magic_audit_log SET outcome = 'forged' WHERE seq = 3\").rowcount; \
             c.commit(); sys.exit(0 if n == 1 else 1)",
        ])
        .arg(data.join("magic.db"))
        .status()
        .unwrap();
    assert!(status.success(), "could not tamper with record 3");
    let server = Server::start_in(&data, &[]);
    let out = server.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken at record 3"), "{err}");
}

/// A TCP proxy to `upstream` that the test can cut and restore (a backing service going away).
struct Outage {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Outage {
    async fn start(upstream: &'static str) -> Outage {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, l) = (down.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link);
            }
        });
        Outage { port, down, links }
    }

    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_answers_e5003_turns_readyz_red_and_recovers_without_restart() {
    let proxy = Outage::start("127.0.0.1:6379").await;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = format!("outage{}:", uuid::Uuid::new_v4().simple());
    let server = Server::start(&[
        ("REDIS_URL", redis_url.as_str()),
        ("MAGIC_REDIS_PREFIX", prefix.as_str()),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    write_controller(
        &dir,
        &contract("Cached", "1.0.0", "greeting", "capabilities:\n  - cache:read: { prefix: \"c:\" }\n  - cache:write: { prefix: \"c:\", max_ttl: 1m }\n"),
        &code("Cached", "        await self.cache.set(\"c:k\", \"v\")\n        return {\"greeting\": await self.cache.get(\"c:k\")}"),
    );
    cli_ok(&server, &["deploy", dir.to_str().unwrap()]);
    let (status, _, body) = server.post("/api/execute/Cached", "{}").await;
    assert_eq!(
        (status, body["output"]["greeting"].as_str()),
        (200, Some("v")),
        "{body}"
    );

    proxy.cut();
    let (status, _, body) = server.post("/api/execute/Cached", "{}").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("E5003")),
        "{body}"
    );
    let (status, ready) = server.get("/api/readyz", None).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("\"redis\":\"unreachable\""), "{ready}");
    let (status, _) = server.get("/api/health", None).await;
    assert_eq!(status, 200, "liveness does not depend on Redis");

    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, _, body) = server.post("/api/execute/Cached", "{}").await;
        if status == 200 {
            assert_eq!(body["output"]["greeting"], "v");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, _) = server.get("/api/readyz", None).await;
    assert_eq!(status, 200);
}

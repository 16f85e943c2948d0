//! The production stack on one machine: three `magic serve` nodes on one PostgreSQL schema and
//! one Redis prefix, behind a real nginx configured from `deploy/nginx.conf`, scraped by a real
//! Prometheus configured from `deploy/prometheus.yml` (the same files the compose stack uses;
//! only their marked placeholders are substituted).
//!
//! Scenario: deploy through nginx, execute through nginx and see all three nodes answer,
//! measure how fast a deploy and a rollback made on one node reach the others (LISTEN/NOTIFY;
//! polling is slowed to 30 s so it cannot be what delivers them), `kill -9` one node under load:
//! every 2xx is in the audit chain and its queue message in the stream, the chain verifies,
//! and requests keep succeeding through nginx. A second test holds `CONTROLLER_MAX_CONCURRENT`
//! across nodes through Redis, and gets a dead node's slots back after their lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{code, contract, repo_root, write_controller, Server, ADMIN_KEY};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379";

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Substitute `${NAME}` placeholders; every `${MAGIC_…}` must be given.
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    if let Some(at) = out.find("${MAGIC_") {
        panic!(
            "unsubstituted placeholder: {}",
            &out[at..(at + 40).min(out.len())]
        );
    }
    out
}

/// One PostgreSQL schema and one Redis prefix for a test, removed on drop.
struct Shared {
    schema: String,
    prefix: String,
    url: String,
}

impl Shared {
    async fn new(tag: &str) -> Shared {
        let schema = format!("{tag}_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(PG)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .unwrap();
        Shared {
            url: format!("{PG}?options[search_path]={schema}"),
            prefix: format!("{schema}:"),
            schema,
        }
    }

    async fn cleanup(&self) {
        if let Ok(pool) = sqlx::PgPool::connect(PG).await {
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&pool)
                .await;
        }
        if let Ok(client) = redis::Client::open(REDIS) {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                for k in keys {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(k).query_async(&mut c).await;
                }
            }
        }
    }

    /// Start a node on the shared store and Redis; `first` provides the shared keys.
    fn node(&self, id: &str, first: Option<&Server>, extra: &[(&str, &str)]) -> Server {
        // Nodes share the secrets master key and the audit signing key (as in production).
        let keys = first.map(|f| {
            (
                f.data_dir.join("master.key").display().to_string(),
                f.data_dir.join("audit_signing.key").display().to_string(),
            )
        });
        let mut env: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", self.url.as_str()),
            ("REDIS_URL", REDIS),
            ("MAGIC_REDIS_PREFIX", self.prefix.as_str()),
            ("MAGIC_NODE_ID", id),
            // nginx runs on 127.0.0.1: its X-Forwarded-For names the client (as in deploy/).
            ("MAGIC_TRUSTED_PROXIES", "127.0.0.1"),
        ];
        if let Some((master, signing)) = &keys {
            env.push(("MAGIC_MASTER_KEY_FILE", master));
            env.push(("AUDIT_SIGNING_KEY_FILE", signing));
        }
        env.extend_from_slice(extra);
        Server::start(&env)
    }
}

fn package(contract_yaml: &str, controller: &str) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut files = BTreeMap::new();
    files.insert("contract.yaml", b64(contract_yaml));
    files.insert("controller.py", b64(controller));
    serde_json::json!({ "files": files })
}

fn shared_package(version: &str) -> serde_json::Value {
    package(
        &contract("Shared", version, "greeting", ""),
        &code("Shared", "        return {\"greeting\": \"hi\"}"),
    )
}

/// Execute `Shared` on `node` until it answers `version`; how long that took.
async fn until_version(client: &reqwest::Client, node: &str, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        let resp = client
            .post(format!("{node}/api/execute/Shared"))
            .header("x-api-key", ADMIN_KEY)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await;
        if let Ok(resp) = resp {
            if let Ok(body) = resp.json::<serde_json::Value>().await {
                if body["version"] == version {
                    return started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{node} never served {version}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The slowest of `nodes` to serve `version`.
async fn propagation(client: &reqwest::Client, nodes: &[&str], version: &str) -> Duration {
    let waits = nodes.iter().map(|n| until_version(client, n, version));
    futures::future::join_all(waits)
        .await
        .into_iter()
        .max()
        .unwrap_or_default()
}

struct Nginx {
    _proc: Proc,
    https: String,
    http_port: u16,
}

/// nginx from deploy/nginx.conf in front of `nodes` (addresses `127.0.0.1:PORT`).
fn start_nginx(dir: &Path, nodes: &[&str], rate: (&str, &str)) -> Nginx {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    // Workers run as nobody: they need to reach the temp dirs.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A throwaway CA (the client trusts it) and a server certificate for 127.0.0.1 it signs.
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=magic test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    // The upstream file: one line per node, as deploy/nginx-upstream.conf writes them.
    let upstream = dir.join("upstream.conf");
    let lines: String = nodes
        .iter()
        .map(|n| format!("server {n} max_fails=2 fail_timeout=10s;\n"))
        .collect();
    std::fs::write(&upstream, lines).unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let template = std::fs::read_to_string(repo_root().join("deploy/nginx.conf")).unwrap();
    let conf = render(
        &template,
        &[
            ("MAGIC_HTTP_PORT", format!("127.0.0.1:{http_port}")),
            ("MAGIC_HTTPS_PORT", format!("127.0.0.1:{https_port}")),
            ("MAGIC_PUBLIC_HTTPS_PORT", https_port.to_string()),
            ("MAGIC_TLS_CERT", cert.display().to_string()),
            ("MAGIC_TLS_KEY", key.display().to_string()),
            ("MAGIC_UPSTREAM_FILE", upstream.display().to_string()),
            ("MAGIC_NGINX_RUNTIME_DIR", run.display().to_string()),
            ("MAGIC_NGINX_RATE_LIMIT", rate.0.into()),
            ("MAGIC_NGINX_RATE_BURST", rate.1.into()),
        ],
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .args(["-e", "stderr", "-t", "-c"])
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .args(["-e", "stderr", "-c"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        _proc: proc,
        https: format!("https://127.0.0.1:{https_port}"),
        http_port,
    }
}

struct Prometheus {
    _proc: Proc,
    url: String,
}

/// Prometheus from deploy/prometheus.yml scraping `nodes`.
fn start_prometheus(dir: &Path, nodes: &[&str]) -> Prometheus {
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    let targets = serde_json::json!([{ "targets": nodes, "labels": { "cluster": "test" } }]);
    std::fs::write(
        dir.join("targets/nodes.json"),
        serde_json::to_vec(&targets).unwrap(),
    )
    .unwrap();
    let template = std::fs::read_to_string(repo_root().join("deploy/prometheus.yml")).unwrap();
    let marked = template
        .lines()
        .filter(|l| l.contains("# MAGIC_TARGETS"))
        .count();
    assert_eq!(marked, 1, "deploy/prometheus.yml marks one targets line");
    let conf: String = template
        .lines()
        .map(|l| {
            if l.contains("# MAGIC_TARGETS") {
                format!("          - {}/targets/*.json", dir.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf_path = dir.join("prometheus.yml");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", conf_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus {
        _proc: Proc(child),
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn https_client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_behind_nginx_and_prometheus() {
    for tool in ["nginx", "prometheus", "promtool", "openssl"] {
        if !have(tool) {
            eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it)");
            return;
        }
    }
    let shared = Shared::new("cluster").await;
    // Polling every 30 s: only LISTEN/NOTIFY can make a change visible within a second.
    let slow_poll = [("MAGIC_REGISTRY_SYNC_MS", "30000")];
    let a = shared.node("n1", None, &slow_poll);
    let b = shared.node("n2", Some(&a), &slow_poll);
    let c = shared.node("n3", Some(&a), &slow_poll);
    let addrs: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| n.url.trim_start_matches("http://").to_string())
        .collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();

    let tmp = tempfile::tempdir().unwrap();
    // A generous rate: this test is about routing (the next one is about rate limits).
    let nginx = start_nginx(&tmp.path().join("nginx"), &addr_refs, ("2000r/s", "2000"));
    let prom = start_prometheus(&tmp.path().join("prometheus"), &addr_refs);
    let client = https_client(&tmp.path().join("nginx/ca.pem"));
    let lb = nginx.https.clone();

    // HTTP is redirected to HTTPS.
    let resp = client
        .get(format!("http://127.0.0.1:{}/api/health", nginx.http_port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 301);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://127.0.0.1:") && location.ends_with("/api/health"),
        "{location}"
    );
    // /metrics is not exposed through nginx.
    let resp = client.get(format!("{lb}/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Deploy through nginx.
    let post = |path: &str, body: String, rid: Option<String>| {
        let mut req = client
            .post(format!("{lb}{path}"))
            .header("x-api-key", ADMIN_KEY)
            .header("content-type", "application/json")
            .body(body);
        if let Some(rid) = rid {
            req = req.header("x-request-id", rid);
        }
        req.send()
    };
    let resp = post(
        "/api/admin/controllers",
        shared_package("1.0.0").to_string(),
        None,
    )
    .await
    .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let pub_contract = format!(
        "{}capabilities:\n  - queue:publish: {{ queues: [jobs] }}\n",
        contract("Pub", "1.0.0", "greeting", "")
    );
    let pub_code = code(
        "Pub",
        "        await self.queue.publish(\"jobs\", {\"tag\": input[\"name\"]})\n        return {\"greeting\": \"hi\"}",
    );
    let resp = post(
        "/api/admin/controllers",
        package(&pub_contract, &pub_code).to_string(),
        None,
    )
    .await
    .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let nodes: Vec<&str> = [&a, &b, &c].iter().map(|n| n.url.as_str()).collect();
    propagation(&reqwest::Client::new(), &nodes, "1.0.0").await;

    // Execute through nginx: every node serves; X-Request-ID passes through both ways.
    let mut served = HashSet::new();
    for i in 0..30 {
        let rid = (i % 2 == 0).then(|| format!("spread-{i}"));
        let resp = post("/api/execute/Shared", "{}".into(), rid.clone())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        match rid {
            Some(rid) => assert_eq!(echoed, rid),
            // nginx's $request_id: 32 hex digits, accepted by the runtime as it is.
            None => assert!(
                echoed.len() == 32 && echoed.bytes().all(|b| b.is_ascii_hexdigit()),
                "{echoed}"
            ),
        }
        served.insert(resp.headers()["x-magic-node"].to_str().unwrap().to_string());
    }
    assert_eq!(
        served,
        HashSet::from(["n1".to_string(), "n2".into(), "n3".into()]),
        "nginx spreads requests over every node"
    );
    // An execute body over the runtime's limit is refused by nginx with the envelope.
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let resp = post("/api/execute/Shared", big, None).await.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "E1002");

    // Prometheus scrapes every node, and sees their executions.
    let prom_client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = |path: String| {
            let req = prom_client.get(format!("{}{path}", prom.url));
            async move {
                match req.send().await {
                    Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null, // still starting
                }
            }
        };
        let targets = get("/api/v1/targets".into()).await;
        let up: HashSet<String> = targets["data"]["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| t["health"] == "up")
                    .map(|t| t["labels"]["instance"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let query = get(
            "/api/v1/query?query=sum%20by%20(instance)%20(magic_controller_executions_total%7Bcontroller%3D%22Shared%22%7D)"
                .into(),
        )
        .await;
        let with_executions: HashSet<String> = query["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| {
                        r["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|v| v > 0.0)
                    })
                    .map(|r| r["metric"]["instance"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let all: HashSet<String> = addrs.iter().cloned().collect();
        if up == all && with_executions == all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus: up {up:?}, with executions {with_executions:?}, want {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Propagation: a deploy on node 1, a rollback on node 2, each served by every node.
    let direct = reqwest::Client::new();
    let mut deploy_ms = Vec::new();
    let mut rollback_ms = Vec::new();
    for (i, version) in ["2.0.0", "3.0.0", "4.0.0"].iter().enumerate() {
        let resp = direct
            .post(format!("{}/api/admin/controllers", a.url))
            .header("x-api-key", ADMIN_KEY)
            .json(&shared_package(version))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let took = propagation(&direct, &[&b.url, &c.url], version).await;
        deploy_ms.push(took.as_secs_f64() * 1000.0);
        let back = if i == 0 { "1.0.0" } else { "2.0.0" };
        let out = b.cli(&["rollback", "Shared", "--to", back]);
        assert!(out.status.success());
        let took = propagation(&direct, &[&a.url, &c.url], back).await;
        rollback_ms.push(took.as_secs_f64() * 1000.0);
    }
    eprintln!(
        "PROPAGATION (LISTEN/NOTIFY, 3 nodes, polling 30 s): deploy {deploy_ms:.0?} ms, rollback {rollback_ms:.0?} ms"
    );
    for ms in deploy_ms.iter().chain(&rollback_ms) {
        assert!(*ms < 1000.0, "a change took {ms} ms to reach every node");
    }

    // kill -9 one node under load through nginx.
    let results: Arc<Mutex<Vec<(String, u16, Duration)>>> = Arc::default();
    let started = Instant::now();
    let mut c = c;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let client = client.clone();
        let lb = lb.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(5) {
                let tag = format!("load-{worker}-{i}");
                i += 1;
                let at = started.elapsed();
                let status = client
                    .post(format!("{lb}/api/execute/Pub"))
                    .header("x-api-key", ADMIN_KEY)
                    .header("x-request-id", &tag)
                    .json(&serde_json::json!({ "name": tag }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                results.lock().unwrap().push((tag, status, at));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.child.kill().unwrap();
    let _ = c.child.wait();
    // The node is gone (reaped: its sockets are closed). Requests it had accepted until then,
    // including ones still in its listen backlog, were sent to it and may fail: nginx never
    // resends a POST another node could run twice.
    let gone_at = started.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    let results = results.lock().unwrap().clone();
    let ok: Vec<&String> = results
        .iter()
        .filter(|r| (200..300).contains(&r.1))
        .map(|r| &r.0)
        .collect();
    let failed: Vec<&(String, u16, Duration)> = results
        .iter()
        .filter(|r| !(200..300).contains(&r.1))
        .collect();
    eprintln!(
        "LOAD: {} requests, {} ok, {} failed (in flight on the killed node): {failed:?}",
        results.len(),
        ok.len(),
        failed.len()
    );
    // Only requests the dying node had taken fail; everything sent once it is gone succeeds
    // (nginx skips the dead node: connection refused is retried on the next one).
    let grace = Duration::from_millis(100);
    assert!(
        failed.iter().all(|f| f.2 <= gone_at + grace),
        "a request sent after the node was gone failed: {failed:?} (gone at {gone_at:?})"
    );
    assert!(failed.len() <= 8, "{failed:?}");
    let after_kill = results.iter().filter(|r| r.2 > gone_at + grace).count();
    assert!(after_kill > 10, "load continued after the kill");

    // Every answered request is in the one audit chain, and its queue message in the stream.
    let pool = sqlx::PgPool::connect(&shared.url).await.unwrap();
    let audited: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT request_id FROM magic_audit_log WHERE controller = 'Pub'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let audited: HashSet<String> = audited.into_iter().filter_map(|r| r.0).collect();
    let missing: Vec<&&String> = ok.iter().filter(|t| !audited.contains(**t)).collect();
    assert!(missing.is_empty(), "answered but not audited: {missing:?}");
    let redis_client = redis::Client::open(REDIS).unwrap();
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{}queue:jobs", shared.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let queued: HashSet<String> = entries
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .filter(|(k, _)| k == "m")
        .filter_map(|(_, m)| serde_json::from_str::<serde_json::Value>(m).ok())
        .filter_map(|m| m["tag"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&&String> = ok.iter().filter(|t| !queued.contains(**t)).collect();
    assert!(lost.is_empty(), "acknowledged but not queued: {lost:?}");
    for node in [&a, &b] {
        let out = node.cli(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    drop(pool);
    drop(nginx);
    drop(prom);
    a.stop();
    b.stop();
    drop(c);
    shared.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_rate_limits_per_client_with_the_envelope() {
    for tool in ["nginx", "openssl"] {
        if !have(tool) {
            eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it)");
            return;
        }
    }
    let node = Server::start(&[("CONTROLLER_EXECUTION_MODE", "inline")]);
    let tmp = tempfile::tempdir().unwrap();
    let addr = node.url.trim_start_matches("http://").to_string();
    // One request a minute, a burst of two more.
    let nginx = start_nginx(&tmp.path().join("nginx"), &[&addr], ("1r/m", "2"));
    let client = https_client(&tmp.path().join("nginx/ca.pem"));
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let resp = client
            .get(format!("{}/api/health", nginx.https))
            .header("x-request-id", "rate-1")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
            refused = Some((rid, resp.json::<serde_json::Value>().await.unwrap()));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let (rid, body) = refused.unwrap();
    assert_eq!(rid, "rate-1");
    assert_eq!(body["request_id"], "rate-1");
    assert_eq!(body["error"]["code"], "E4003");
    drop(nginx);
    node.stop();
}

/// Behind nginx, with the nodes trusting its `X-Forwarded-For` (as `deploy/` sets them up), one
/// client's failed authentications use up only that client's budget: another client through the
/// same nginx still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_counted_per_client_behind_nginx() {
    for tool in ["nginx", "openssl"] {
        if !have(tool) {
            eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it)");
            return;
        }
    }
    let node = Server::start(&[
        ("CONTROLLER_EXECUTION_MODE", "inline"),
        ("MAGIC_TRUSTED_PROXIES", "127.0.0.1"),
        ("MAGIC_AUTH_FAILURE_LIMIT", "3/min"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let addr = node.url.trim_start_matches("http://").to_string();
    let nginx = start_nginx(&tmp.path().join("nginx"), &[&addr], ("100r/s", "100"));
    // Two clients on different loopback addresses, both through nginx on 127.0.0.1.
    let from = |ip: [u8; 4]| {
        let pem = std::fs::read(tmp.path().join("nginx/ca.pem")).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let (attacker, other) = (from([127, 0, 0, 2]), from([127, 0, 0, 3]));
    let list = |c: &reqwest::Client, key: &str| {
        c.get(format!("{}/api/admin/controllers", nginx.https))
            .header("x-api-key", key)
            .send()
    };
    let mut statuses = Vec::new();
    for i in 0..5 {
        let resp = list(&attacker, &format!("wrong-key-{i}")).await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429], "the attacker's budget");
    let locked = list(&attacker, ADMIN_KEY).await.unwrap();
    assert_eq!(locked.status(), 429, "even the right key, from that client");
    assert!(locked.headers().contains_key("retry-after"));
    let body: serde_json::Value = locked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "E4003");
    let ok = list(&other, ADMIN_KEY).await.unwrap();
    assert_eq!(
        ok.status(),
        200,
        "another client behind the same nginx is not locked out"
    );
    drop(nginx);
    node.stop();
}

/// Execute `Slow` (sleeping `secs`) on `node`: (status, error code).
async fn slow(client: &reqwest::Client, node: &str, secs: u64) -> (u16, String) {
    let resp = client
        .post(format!("{node}/api/execute/Slow"))
        .header("x-api-key", ADMIN_KEY)
        .json(&serde_json::json!({ "n": secs }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_holds_across_nodes_and_a_dead_nodes_slots_come_back() {
    let shared = Shared::new("slots").await;
    let env = [
        ("CONTROLLER_MAX_CONCURRENT", "2"),
        ("MAGIC_SLOT_LEASE_MS", "1500"),
    ];
    let a = shared.node("a", None, &env);
    let mut b = shared.node("b", Some(&a), &env);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("slow");
    write_controller(
        &dir,
        &contract("Slow", "1.0.0", "greeting", ""),
        &code(
            "Slow",
            "        await asyncio.sleep(input.get(\"n\", 0))\n        return {\"greeting\": \"done\"}",
        ),
    );
    let out = a.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = reqwest::Client::new();
    // Wait until both nodes serve it.
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while slow(&client, &node.url, 0).await.0 != 200 {
            assert!(Instant::now() < deadline, "{} never served Slow", node.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Six at once, three per node: each node alone would admit two (four in all); together
    // they admit exactly two.
    let calls = (0..6).map(|i| {
        let node = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let client = client.clone();
        async move { slow(&client, &node, 2).await }
    });
    let outcomes = futures::future::join_all(calls).await;
    let admitted = outcomes.iter().filter(|o| o.0 == 200).count();
    let refused = outcomes
        .iter()
        .filter(|o| o.0 == 429 && o.1 == "E3004")
        .count();
    assert_eq!((admitted, refused), (2, 4), "{outcomes:?}");

    // Node b takes both slots and dies holding them: they come back once their leases end.
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            let url = b.url.clone();
            tokio::spawn(async move {
                let _ = client
                    .post(format!("{url}/api/execute/Slow"))
                    .header("x-api-key", ADMIN_KEY)
                    .json(&serde_json::json!({ "n": 30 }))
                    .send()
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(slow(&client, &a.url, 0).await, (429, "E3004".to_string()));
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let killed = Instant::now();
    let back = loop {
        let (status, _) = slow(&client, &a.url, 0).await;
        if status == 200 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the dead node's slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("SLOTS: a dead node's slots came back {back:?} after kill -9 (lease 1.5 s)");
    for h in holders {
        let _ = h.await;
    }
    a.stop();
    drop(b);
    shared.cleanup().await;
}

/// Every environment variable the server's code reads is documented in `.env.example`, and the
/// systemd unit is valid.
#[test]
fn deployment_files_document_every_setting_and_verify() {
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    // Read by workers, tests, fuzzers or the OS, not settings of `magic serve`.
    const NOT_SETTINGS: &[&str] = &[
        "MAGIC_SOCKET_FD",
        "MAGIC_PACKAGE_DIR",
        "HOSTNAME",
        "MAGIKRUN_FUZZ_SEED",
        "TEST_REDIS_URL",
    ];
    let root = repo_root();
    let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let documented = |name: &str| {
        example.lines().any(|l| {
            l.trim_start_matches('#')
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
        })
    };
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map_while(Result::ok)
    {
        let src = krate.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut missing = std::collections::BTreeSet::new();
    let mut seen = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for marker in ["env = \"", "var(\"", "get(\""] {
            for (at, _) in text.match_indices(marker) {
                let name: String = text[at + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let closed = text[at + marker.len() + name.len()..].starts_with('"');
                if name.len() < 4 || !closed || !name.contains('_') {
                    continue;
                }
                if NOT_SETTINGS.contains(&name.as_str()) {
                    continue;
                }
                seen += 1;
                if !documented(&name) {
                    missing.insert(name);
                }
            }
        }
    }
    assert!(seen > 30, "found only {seen} settings: the scan is broken");
    assert!(missing.is_empty(), "not in .env.example: {missing:?}");

    if have("systemd-analyze") {
        let tmp = tempfile::tempdir().unwrap();
        let unit = std::fs::read_to_string(root.join("deploy/magic.service"))
            .unwrap()
            .replace("/usr/local/bin/magic", common::magic_bin());
        let path = tmp.path().join("magic.service");
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
    }
}

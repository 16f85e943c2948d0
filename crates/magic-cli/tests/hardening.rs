//! HTTP hardening against the real server: security headers on every response, CORS only for
//! `ALLOWED_ORIGINS`, the per-identity rate limit in process and across two nodes on one Redis,
//! and error bodies without stack traces or secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{code, write_controller, Server, ADMIN_KEY};

async fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = server.client().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", server.url),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_cors_rate_limit_and_clean_errors() {
    let server = Server::start(&[
        ("CONTROLLER_EXECUTION_MODE", "inline"),
        (
            "ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        ),
        ("MAGIC_RATE_LIMIT", "1000/s,auditor=3/h"),
    ]);
    let key = &[("x-api-key", ADMIN_KEY)];
    // Security headers on open, protected, refused and unknown routes.
    for (path, k) in [
        ("/api/health", &key[..]),
        ("/api/admin/controllers", &key[..]),
        ("/api/admin/controllers", &[][..]),
        ("/nope", &key[..]),
    ] {
        let (_, h, _) = request(&server, "GET", path, k).await;
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(h.get("strict-transport-security").is_none(), "plain HTTP");
    }

    // CORS: a listed origin gets a preflight answer, another gets no CORS headers.
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-api-key,content-type"),
        ]
    };
    let (s, h, _) = request(
        &server,
        "OPTIONS",
        "/api/execute/X",
        &preflight("https://app.example.com"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("x-api-key"));
    let (_, h, _) = request(
        &server,
        "OPTIONS",
        "/api/execute/X",
        &preflight("https://evil.example.com"),
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    let (_, h, _) = request(
        &server,
        "GET",
        "/api/admin/controllers",
        &[
            ("x-api-key", ADMIN_KEY),
            ("origin", "http://localhost:3000"),
        ],
    )
    .await;
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");

    // Rate limit per identity and role: the auditor gets 3 per hour, the admin is not slowed.
    let out = server.cli(&["keys", "create", "--role", "auditor", "--name", "aud"]);
    let aud = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for _ in 0..3 {
        let (s, _, b) = request(
            &server,
            "GET",
            "/api/admin/controllers",
            &[("x-api-key", &aud)],
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, h, b) = request(
        &server,
        "GET",
        "/api/admin/controllers",
        &[("x-api-key", &aud)],
    )
    .await;
    assert_eq!(s, 429, "{b}");
    let body: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(body["error"]["code"], "E4003");
    assert!(body["request_id"].is_string());
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(h["x-frame-options"], "DENY");
    for _ in 0..20 {
        let (s, _, _) = request(&server, "GET", "/api/admin/controllers", key).await;
        assert_eq!(s, 200);
    }

    // Errors carry no stack trace, no internal paths, no secrets.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("boom");
    write_controller(
        &dir,
        "name: Boom\nversion: 1.0.0\ninput: { type: object }\noutput: { type: object }\ncapabilities:\n  - secrets:read: { keys: [TOKEN] }\n",
        &code(
            "Boom",
            "        token = await self.secrets.get(\"TOKEN\")\n        raise RuntimeError(\"failed\")",
        ),
    );
    assert!(server
        .cli(&["deploy", dir.to_str().unwrap()])
        .status
        .success());
    let secret = "s3cret-value-that-must-not-leak";
    let out = server.cli(&["secrets", "set", "Boom", "TOKEN", "--value", secret]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bodies = Vec::new();
    for (path, body, headers) in [
        ("/api/execute/Boom", "{}", key.to_vec()),
        ("/api/execute/Boom", "{not json", key.to_vec()),
        ("/api/admin/controllers", "{\"files\": 5}", key.to_vec()),
        (
            "/api/admin/controllers",
            "[]",
            vec![("x-api-key", "mk_wrong")],
        ),
        (
            "/api/admin/keys",
            "{\"name\": \"x y\", \"role\": \"admin\"}",
            key.to_vec(),
        ),
    ] {
        let (s, _, b) = server.post_with(path, body, &headers).await;
        assert!(s >= 400, "{path}: {s}");
        assert!(b["error"]["code"].is_string(), "{b}");
        bodies.push(b.to_string());
    }
    for b in &bodies {
        for leak in [
            "Traceback",
            "panicked",
            "backtrace",
            ".rs:",
            "File \"",
            secret,
            ADMIN_KEY,
            server.data_dir.to_str().unwrap(),
        ] {
            assert!(!b.contains(leak), "{leak:?} leaked in {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_holds_across_two_nodes_on_one_redis() {
    let prefix = format!("rl_{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("MAGIC_REDIS_PREFIX", prefix.as_str()),
        ("MAGIC_RATE_LIMIT", "4/h"),
        ("CONTROLLER_EXECUTION_MODE", "inline"),
    ];
    let a = Server::start(&env);
    let b = Server::start(&env);
    let key = &[("x-api-key", ADMIN_KEY)];
    let mut statuses = Vec::new();
    for node in [&a, &b, &a, &b, &a, &b] {
        let (s, _, _) = request(node, "GET", "/api/admin/controllers", key).await;
        statuses.push(s);
    }
    // Both nodes count one identity together: 4 pass, the rest are refused on either node.
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli --scan --pattern '{prefix}*' | xargs -r redis-cli del"
        ))
        .status();
}

/// Every bad security or lifecycle setting stops `serve` before it listens, with a reason that
/// names the setting (and nothing is created but the data dir).
#[test]
fn bad_security_settings_refuse_to_start_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let pem = tmp.path().join("missing.pem");
    let pem = pem.to_str().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MAGIC_RATE_LIMIT", "lots")], "MAGIC_RATE_LIMIT"),
        (
            &[("MAGIC_RATE_LIMIT", "10/s,wizard=5/s")],
            "MAGIC_RATE_LIMIT",
        ),
        (&[("ALLOWED_ORIGINS", "not a url")], "ALLOWED_ORIGINS"),
        (&[("MAGIC_TLS_CERT", pem)], "MAGIC_TLS_KEY"),
        (&[("MAGIC_TLS_CLIENT_CA", pem)], "MAGIC_TLS_CLIENT_CA"),
        (
            &[("MAGIC_TLS_CERT", pem), ("MAGIC_TLS_KEY", pem)],
            "MAGIC_TLS_CERT",
        ),
        (
            &[
                ("MAGIC_TLS_CERT", pem),
                ("MAGIC_TLS_KEY", pem),
                ("MAGIC_MTLS_ROLES", "ci"),
            ],
            "MAGIC_MTLS_ROLES",
        ),
        (&[("MAGIC_SHUTDOWN_GRACE", "soon")], "MAGIC_SHUTDOWN_GRACE"),
        (
            &[("MAGIC_AUTH_FAILURE_LIMIT", "lots")],
            "MAGIC_AUTH_FAILURE_LIMIT",
        ),
        (
            &[("MAGIC_TRUSTED_PROXIES", "nginx.local")],
            "MAGIC_TRUSTED_PROXIES",
        ),
        (
            &[
                ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks"),
                ("OIDC_ISSUER", "http://127.0.0.1:9"),
                ("JWT_AUDIENCE", "magic"),
            ],
            "JWT_JWKS_URL",
        ),
        (
            &[
                ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks"),
                ("JWT_AUDIENCE", "magic"),
                ("JWT_ROLE_MAP", "ops-team=wizard"),
            ],
            "JWT_ROLE_MAP",
        ),
        (
            &[
                ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks"),
                ("JWT_AUDIENCE", "magic"),
                ("JWT_JWKS_MIN_REFRESH", "often"),
            ],
            "JWT_JWKS_MIN_REFRESH",
        ),
        (&[("AUDIT_LOG_ENABLED", "false")], "AUDIT_LOG_ENABLED"),
        (
            &[("MAGIC_WASM_MAX_INSTANCES", "5000")],
            "MAGIC_WASM_MAX_INSTANCES",
        ),
    ];
    for (i, (env, needle)) in cases.iter().enumerate() {
        let mut cmd = std::process::Command::new(common::magic_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join(format!("data{i}")))
            .env("MAGIC_ADMIN_API_KEY", common::ADMIN_KEY)
            .env("CONTROLLER_EXECUTION_MODE", "inline");
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{env:?} started: {err}");
        assert!(err.contains(needle), "{env:?}: {needle} not in {err}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{env:?} listened"
        );
    }
}

//! The security plane end to end against the real server: API keys of every role created with
//! the CLI, then every endpoint × every credential (none, wrong, expired, revoked, each role by
//! key and by JWT) with the status the RBAC table says; and the JWT refusals (wrong secret,
//! `alg: none`, HS384, expired, future nbf, wrong iss/aud, no role).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use common::{code, write_controller, Server, ADMIN_KEY};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const JWT_SECRET: &str = "auth-test-secret-0123456789abcdef-xyz";
const ISS: &str = "https://idp.test";
const AUD: &str = "magic-runtime";
const ROLES: [&str; 7] = [
    "admin",
    "deployer",
    "secrets-admin",
    "operator",
    "auditor",
    "executor",
    "approver",
];

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, role: Option<&str>) -> serde_json::Value {
    let mut c = json!({"sub": sub, "exp": now() + 600, "iss": ISS, "aud": AUD});
    if let Some(r) = role {
        c["role"] = r.into();
    }
    c
}

fn with(mut c: serde_json::Value, k: &str, v: serde_json::Value) -> serde_json::Value {
    c[k] = v;
    c
}

/// One request: method, path, body.
struct Call {
    method: &'static str,
    path: String,
    body: Option<serde_json::Value>,
    /// Roles that may make it (empty = any authenticated identity).
    roles: &'static [&'static str],
    /// Status when permitted.
    ok: u16,
}

async fn send(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    auth: &[(String, String)],
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = server
        .client()
        .request(method, format!("{}{path}", server.url));
    if let Some(b) = body {
        req = req.json(b);
    }
    for (k, v) in auth {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn cli_as(server: &Server, key: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::magic_bin())
        .args(args)
        .env("MAGIC_URL", &server.url)
        .env("MAGIC_API_KEY", key)
        .env_remove("MAGIC_DATA_DIR")
        .output()
        .unwrap()
}

fn create_key(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("mk_"), "{key}");
    key
}

fn package(dir: &std::path::Path) -> serde_json::Value {
    let files: BTreeMap<String, String> = ["contract.yaml", "controller.py"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                base64::engine::general_purpose::STANDARD
                    .encode(std::fs::read(dir.join(f)).unwrap()),
            )
        })
        .collect();
    json!({ "files": files })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_every_role_every_credential() {
    let server = Server::start(&[
        ("JWT_SECRET", JWT_SECRET),
        ("JWT_ISSUER", ISS),
        ("JWT_AUDIENCE", AUD),
        // The matrix sends hundreds of wrong credentials from one address on purpose; the
        // brute-force limit has its own test (tests/oidc.rs).
        ("MAGIC_AUTH_FAILURE_LIMIT", "off"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let contract = |v: &str| {
        format!("name: Echo\nversion: {v}\ninput: {{ type: object }}\noutput: {{ type: object }}\ncapabilities:\n  - queue:subscribe: {{ queues: [authjobs] }}\n")
    };
    let body = "        return {\"ok\": True}";
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    write_controller(&v1, &contract("1.0.0"), &code("Echo", body));
    write_controller(&v2, &contract("1.0.1"), &code("Echo", body));
    for d in [&v1, &v2] {
        assert!(server
            .cli(&["deploy", d.to_str().unwrap()])
            .status
            .success());
    }

    // Keys of every role, through the CLI.
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    for role in ROLES {
        keys.insert(
            role,
            create_key(&server, &["--role", role, "--name", &format!("{role}-key")]),
        );
    }
    let scoped = create_key(
        &server,
        &[
            "--role",
            "executor",
            "--name",
            "scoped",
            "--controllers",
            "Other,Another",
        ],
    );
    let expired = create_key(
        &server,
        &[
            "--role",
            "admin",
            "--name",
            "shortlived",
            "--expires-in",
            "1s",
        ],
    );
    let revoked = create_key(&server, &["--role", "admin", "--name", "gone"]);
    let out = server.cli(&["keys", "revoke", "gone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second revoke finds no active key.
    assert_eq!(
        server.cli(&["keys", "revoke", "gone"]).status.code(),
        Some(1)
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // `keys list` shows every key, never a key itself.
    let out = server.cli(&["keys", "list"]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    for name in ["admin-key", "executor-key", "scoped", "shortlived", "gone"] {
        assert!(listing.contains(name), "{name} missing from {listing}");
    }
    assert!(listing.contains("Other,Another"));
    for k in keys.values().chain([&scoped, &expired, &revoked]) {
        assert!(!listing.contains(k.as_str()), "a key was listed");
    }
    let out = server.cli(&["keys", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gone = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "gone")
        .unwrap();
    assert!(gone["revoked_at"].is_string());
    assert!(gone.get("key").is_none() && gone.get("key_hash").is_none());

    let pkg = package(&v1);
    let mut n = 0;
    let calls = |n: &mut usize| -> Vec<Call> {
        *n += 1;
        let tmpkey = format!("tmp-{n}");
        vec![
            Call {
                method: "POST",
                path: "/api/execute/Echo".into(),
                body: Some(json!({})),
                roles: &["admin", "executor"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/controllers".into(),
                body: None,
                roles: &["admin", "deployer", "operator", "auditor", "approver"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/controllers/Echo".into(),
                body: None,
                roles: &["admin", "deployer", "operator", "auditor", "approver"],
                ok: 200,
            },
            Call {
                method: "POST",
                path: "/api/admin/controllers".into(),
                body: Some(pkg.clone()),
                roles: &["admin", "deployer"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/controllers/Echo/versions/1.0.0/package".into(),
                body: None,
                roles: &["admin", "deployer"],
                ok: 200,
            },
            Call {
                method: "POST",
                path: "/api/admin/controllers/Echo/rollback".into(),
                body: Some(json!({"version": "1.0.0"})),
                roles: &["admin", "operator"],
                ok: 200,
            },
            Call {
                method: "PUT",
                path: "/api/admin/secrets/Echo/TOKEN".into(),
                body: Some(json!({"value": "s3cret"})),
                roles: &["admin", "secrets-admin"],
                ok: 204,
            },
            Call {
                method: "GET",
                path: "/api/admin/secrets".into(),
                body: None,
                roles: &["admin", "secrets-admin"],
                ok: 200,
            },
            Call {
                method: "DELETE",
                path: "/api/admin/secrets/Echo/TOKEN".into(),
                body: None,
                roles: &["admin", "secrets-admin"],
                ok: 204,
            },
            Call {
                method: "PUT",
                path: "/api/admin/rawsql/Echo".into(),
                body: None,
                roles: &["admin"],
                ok: 204,
            },
            Call {
                method: "GET",
                path: "/api/admin/rawsql".into(),
                body: None,
                roles: &["admin"],
                ok: 200,
            },
            Call {
                method: "DELETE",
                path: "/api/admin/rawsql/Echo".into(),
                body: None,
                roles: &["admin"],
                ok: 204,
            },
            Call {
                method: "PUT",
                path: "/api/admin/triggers/Echo".into(),
                body: Some(json!({"queue": "authjobs"})),
                roles: &["admin", "operator"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/triggers".into(),
                body: None,
                roles: &["admin", "operator"],
                ok: 200,
            },
            Call {
                method: "DELETE",
                path: "/api/admin/triggers/Echo".into(),
                body: None,
                roles: &["admin", "operator"],
                ok: 204,
            },
            Call {
                method: "GET",
                path: "/api/admin/audit/verify".into(),
                body: None,
                roles: &["admin", "auditor"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/audit/records?last=3".into(),
                body: None,
                roles: &["admin", "auditor"],
                ok: 200,
            },
            Call {
                method: "POST",
                path: "/api/admin/keys".into(),
                body: Some(json!({"name": tmpkey, "role": "executor"})),
                roles: &["admin"],
                ok: 201,
            },
            Call {
                method: "GET",
                path: "/api/admin/keys".into(),
                body: None,
                roles: &["admin"],
                ok: 200,
            },
            Call {
                method: "DELETE",
                path: format!("/api/admin/keys/{tmpkey}"),
                body: None,
                roles: &["admin"],
                ok: 200,
            },
            // Approvals are off on this server: the routes answer, with no requests.
            Call {
                method: "GET",
                path: "/api/admin/approvals".into(),
                body: None,
                roles: &["admin", "approver"],
                ok: 200,
            },
            Call {
                method: "GET",
                path: "/api/admin/approvals/apr_none".into(),
                body: None,
                roles: &["admin", "approver"],
                ok: 404,
            },
            Call {
                method: "POST",
                path: "/api/admin/approvals/apr_none/approve".into(),
                body: None,
                roles: &["admin", "approver"],
                ok: 404,
            },
            Call {
                method: "POST",
                path: "/api/admin/approvals/apr_none/reject".into(),
                body: Some(json!({"reason": "no"})),
                roles: &["admin", "approver"],
                ok: 404,
            },
            Call {
                method: "GET",
                path: "/api/openapi.json".into(),
                body: None,
                roles: &[],
                ok: 200,
            },
        ]
    };

    let key = |k: &str| vec![("x-api-key".to_string(), k.to_string())];
    let bearer = |t: String| vec![("authorization".to_string(), format!("Bearer {t}"))];
    let mut failures = Vec::new();
    let mut checked = 0;

    // Refused credentials: 401 E4001 everywhere.
    let refused: Vec<(&str, Vec<(String, String)>)> = vec![
        ("none", vec![]),
        ("wrong key", key("mk_not-a-real-key")),
        ("expired key", key(&expired)),
        ("revoked key", key(&revoked)),
        (
            "basic auth",
            vec![("authorization".into(), "Basic YWRtaW46YWRtaW4=".into())],
        ),
    ];
    for (what, auth) in &refused {
        for call in calls(&mut n) {
            let (status, body) =
                send(&server, call.method, &call.path, call.body.as_ref(), auth).await;
            checked += 1;
            if status != 401 || body["error"]["code"] != "E4001" {
                failures.push(format!(
                    "{what} {} {}: {status} {body}",
                    call.method, call.path
                ));
            }
        }
    }

    // Every role, by key and by token.
    for role in ROLES {
        let creds = [
            (format!("{role} key"), key(&keys[role])),
            (
                format!("{role} jwt"),
                bearer(token(
                    Algorithm::HS256,
                    JWT_SECRET,
                    claims(&format!("{role}-user"), Some(role)),
                )),
            ),
        ];
        for (what, auth) in &creds {
            for call in calls(&mut n) {
                let permitted = call.roles.is_empty() || call.roles.contains(&role);
                let (status, body) =
                    send(&server, call.method, &call.path, call.body.as_ref(), auth).await;
                checked += 1;
                let good = if permitted {
                    status == call.ok
                } else {
                    status == 403 && body["error"]["code"] == "E4002"
                };
                if !good {
                    failures.push(format!(
                        "{what} {} {} (permitted: {permitted}): {status} {body}",
                        call.method, call.path
                    ));
                }
            }
        }
    }

    // Execute scope: the scoped executor key may run Other/Another, not Echo.
    let (status, body) = send(
        &server,
        "POST",
        "/api/execute/Echo",
        Some(&json!({})),
        &key(&scoped),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("E4002")),
        "{body}"
    );
    let (status, _) = send(
        &server,
        "POST",
        "/api/execute/Other",
        Some(&json!({})),
        &key(&scoped),
    )
    .await;
    assert_eq!(status, 404, "in scope, so it gets as far as the registry");

    // JWT refusals (against an endpoint the admin role may use).
    let good = claims("mallory", Some("admin"));
    let none_token = {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b.encode(good.to_string())
        )
    };
    let bad_tokens: Vec<(&str, String)> = vec![
        (
            "wrong secret",
            token(
                Algorithm::HS256,
                "another-secret-another-secret-another",
                good.clone(),
            ),
        ),
        ("alg none", none_token),
        ("HS384", token(Algorithm::HS384, JWT_SECRET, good.clone())),
        (
            "expired",
            token(
                Algorithm::HS256,
                JWT_SECRET,
                with(good.clone(), "exp", json!(now() - 120)),
            ),
        ),
        (
            "future nbf",
            token(
                Algorithm::HS256,
                JWT_SECRET,
                with(good.clone(), "nbf", json!(now() + 600)),
            ),
        ),
        (
            "wrong iss",
            token(
                Algorithm::HS256,
                JWT_SECRET,
                with(good.clone(), "iss", json!("https://evil.test")),
            ),
        ),
        (
            "wrong aud",
            token(
                Algorithm::HS256,
                JWT_SECRET,
                with(good.clone(), "aud", json!("someone-else")),
            ),
        ),
        (
            "missing role",
            token(Algorithm::HS256, JWT_SECRET, claims("mallory", None)),
        ),
        (
            "unknown role",
            token(
                Algorithm::HS256,
                JWT_SECRET,
                claims("mallory", Some("root")),
            ),
        ),
        ("garbage", "x.y.z".into()),
    ];
    for (what, t) in bad_tokens {
        let (status, body) = send(&server, "GET", "/api/admin/controllers", None, &bearer(t)).await;
        checked += 1;
        if status != 401 || body["error"]["code"] != "E4001" {
            failures.push(format!("jwt {what}: {status} {body}"));
        }
    }
    // The open endpoints stay open.
    for path in ["/api/health", "/metrics"] {
        assert_eq!(send(&server, "GET", path, None, &[]).await.0, 200, "{path}");
    }

    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The actors are in the audit log: a JWT subject and the key creator.
    let out = server.cli(&["audit", "tail", "--last", "2000"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("\"jwt:admin-user\""),
        "no jwt actor in the audit log"
    );
    assert!(log.contains("\"key_create\"") && log.contains("\"key_revoke\""));
    assert!(log.contains("apikey:bootstrap-admin"));
    for k in keys.values() {
        assert!(!log.contains(k.as_str()), "a key reached the audit log");
    }

    // Non-admins cannot manage keys through the CLI either.
    let out = cli_as(
        &server,
        &keys["deployer"],
        &["keys", "create", "--role", "admin", "--name", "escalate"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("E4002"));
    let out = cli_as(&server, &keys["deployer"], &["keys", "list"]);
    assert_eq!(out.status.code(), Some(1));
    // Bad key requests are refused with a reason.
    for args in [
        &["--role", "root", "--name", "x"][..],
        &["--role", "admin", "--name", "bad name"][..],
        &["--role", "admin", "--name", "x", "--expires-in", "soon"][..],
        &["--role", "admin", "--name", "admin-key"][..],
    ] {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let out = server.cli(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    let _ = ADMIN_KEY;
    server.stop();
}

#[test]
fn a_short_jwt_secret_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::magic_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("MAGIC_ADMIN_API_KEY", ADMIN_KEY)
        .env("JWT_SECRET", "only-31-bytes-long-secret-12345")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_are_refused_when_jwt_is_not_configured() {
    let server = Server::start(&[]);
    let t = token(Algorithm::HS256, JWT_SECRET, claims("x", Some("admin")));
    let (status, body) = send(
        &server,
        "GET",
        "/api/admin/controllers",
        None,
        &[("authorization".into(), format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("E4001")),
        "{body}"
    );
    server.stop();
}

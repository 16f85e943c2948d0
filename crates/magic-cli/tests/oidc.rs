//! Bearer tokens from an OIDC provider, brute-force limits and the console's login CSRF token,
//! against the real `magic` binary. The provider is a real HTTP server on 127.0.0.1 (discovery
//! and a JWKS it can rotate or take down); its RSA keys are made with the `openssl` CLI and its
//! EC P-256 keys with rcgen at test time (never committed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::response::IntoResponse as _;
use base64::Engine as _;
use common::{Server, ADMIN_KEY};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const AUD: &str = "magic-oidc-test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Key {
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
    public_pem: Vec<u8>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

fn rsa_key(kid: &str) -> Key {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("k.pem");
    let pem = pem.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        pem,
    ]);
    let der = openssl(&["rsa", "-in", pem, "-outform", "DER", "-traditional"]);
    let modulus = String::from_utf8(openssl(&["rsa", "-in", pem, "-noout", "-modulus"])).unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Key {
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(&der),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": "AQAB"}),
        public_pem: openssl(&["rsa", "-in", pem, "-pubout"]),
    }
}

fn ec_key(kid: &str) -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    Key {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        public_pem: kp.public_key_pem().into_bytes(),
    }
}

impl Key {
    fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(self.kid(), claims)
    }

    fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        encode(&h, claims, &self.encoding).unwrap()
    }
}

/// An OIDC provider on 127.0.0.1.
struct Provider {
    issuer: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
}

async fn provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}/realms/test", listener.local_addr().unwrap());
    let keys = Arc::new(Mutex::new(Vec::new()));
    let up = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU64::new(0));
    let (k, u, h, iss) = (keys.clone(), up.clone(), hits.clone(), issuer.clone());
    let app = axum::Router::new()
        .route(
            "/realms/test/.well-known/openid-configuration",
            axum::routing::get(move || {
                let iss = iss.clone();
                async move { axum::Json(json!({"issuer": iss, "jwks_uri": format!("{iss}/certs")})) }
            }),
        )
        .route(
            "/realms/test/certs",
            axum::routing::get(move || {
                let (k, u, h) = (k.clone(), u.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if !u.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::BAD_GATEWAY.into_response();
                    }
                    axum::Json(json!({ "keys": k.lock().unwrap().clone() })).into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Provider {
        issuer,
        keys,
        up,
        hits,
    }
}

fn claims(iss: &str, groups: &[&str]) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": "erin", "groups": groups, "iss": iss, "aud": AUD, "exp": now + 600})
}

fn with(mut c: serde_json::Value, k: &str, v: serde_json::Value) -> serde_json::Value {
    c[k] = v;
    c
}

async fn bearer(server: &Server, path: &str, token: &str) -> (u16, serde_json::Value) {
    let r = server
        .client()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_bearer_tokens_end_to_end() {
    let p = provider().await;
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    p.keys.lock().unwrap().push(rsa.jwk.clone());
    let server = Server::start(&[
        ("OIDC_ISSUER", p.issuer.as_str()),
        ("JWT_AUDIENCE", AUD),
        ("JWT_ROLE_CLAIM", "groups"),
        ("JWT_ROLE_MAP", "ops-team=operator,auditors=auditor"),
        ("JWT_JWKS_MIN_REFRESH", "1s"),
        // This test sends many refused tokens from one address on purpose.
        ("MAGIC_AUTH_FAILURE_LIMIT", "off"),
    ]);
    let iss = p.issuer.as_str();
    let ops = claims(iss, &["ops-team", "staff"]);
    let list = "/api/admin/controllers";

    // (what, token, path, status, code)
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("valid RS256, mapped group", rsa.sign(&ops), list, 200, ""),
        (
            "operator may not manage keys",
            rsa.sign(&ops),
            "/api/admin/keys",
            403,
            "E4002",
        ),
        (
            "auditors map to auditor",
            rsa.sign(&claims(iss, &["auditors"])),
            "/api/admin/audit/verify",
            200,
            "",
        ),
        (
            "unmapped group only",
            rsa.sign(&claims(iss, &["staff"])),
            list,
            401,
            "E4001",
        ),
        (
            "a role name is not a mapped group",
            rsa.sign(&claims(iss, &["admin"])),
            list,
            401,
            "E4001",
        ),
        (
            "wrong iss",
            rsa.sign(&with(ops.clone(), "iss", json!("http://127.0.0.1:1/evil"))),
            list,
            401,
            "E4001",
        ),
        (
            "wrong aud",
            rsa.sign(&with(ops.clone(), "aud", json!("another-app"))),
            list,
            401,
            "E4001",
        ),
        (
            "expired",
            rsa.sign(&with(ops.clone(), "exp", json!(now - 120))),
            list,
            401,
            "E4001",
        ),
        (
            "future nbf",
            rsa.sign(&with(ops.clone(), "nbf", json!(now + 600))),
            list,
            401,
            "E4001",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
                b64(ops.to_string().as_bytes())
            ),
            list,
            401,
            "E4001",
        ),
        (
            "HS/RS confusion",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some("rsa-1".into());
                encode(&h, &ops, &EncodingKey::from_secret(&rsa.public_pem)).unwrap()
            },
            list,
            401,
            "E4001",
        ),
        (
            "ES256 token naming the RSA key",
            ec.sign_as("rsa-1", &ops),
            list,
            401,
            "E4001",
        ),
    ];
    for (what, token, path, status, code) in &cases {
        let (got, body) = bearer(&server, path, token).await;
        assert_eq!(got, *status, "{what}: {body}");
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], *code, "{what}");
        }
    }

    // Rotation: the provider publishes a new EC key; a token naming it makes the runtime fetch
    // the set again and is accepted.
    p.keys.lock().unwrap().push(ec.jwk.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (got, body) = bearer(&server, list, &ec.sign(&ops)).await;
    assert_eq!(got, 200, "rotated key: {body}");

    // A flood of unknown kids: few fetches, however many tokens.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = p.hits.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let flood = (0..100).map(|i| {
        let t = rsa.sign_as(&format!("nope-{i}"), &ops);
        let s = &server;
        async move { bearer(s, list, &t).await.0 }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let fetches = p.hits.load(Ordering::SeqCst) - before;
    assert!(
        fetches >= 1 && fetches <= 1 + started.elapsed().as_secs(),
        "{fetches} key-set fetches for 100 unknown kids in {:?}",
        started.elapsed()
    );

    // The provider goes down: cached keys keep working.
    p.up.store(false, Ordering::SeqCst);
    for t in [rsa.sign(&ops), ec.sign(&ops)] {
        assert_eq!(bearer(&server, list, &t).await.0, 200);
    }
    // API keys are unaffected by all of this.
    assert_eq!(server.get(list, Some(ADMIN_KEY)).await.0, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_keys_from_the_provider_is_503_not_a_crash() {
    let p = provider().await;
    p.up.store(false, Ordering::SeqCst);
    let server = Server::start(&[
        ("OIDC_ISSUER", p.issuer.as_str()),
        ("JWT_AUDIENCE", AUD),
        ("JWT_ROLE_CLAIM", "groups"),
    ]);
    let t = ec_key("k").sign(&claims(&p.issuer, &["operator"]));
    let (status, body) = bearer(&server, "/api/admin/controllers", &t).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "E5003");
    // Back up: the next token after the minimum interval finds the keys.
    let key = ec_key("k");
    p.keys.lock().unwrap().push(key.jwk.clone());
    p.up.store(true, Ordering::SeqCst);
    let t = key.sign(&claims(&p.issuer, &["operator"]));
    let mut status = 0;
    for _ in 0..30 {
        status = bearer(&server, "/api/admin/controllers", &t).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200);
    server.stop();
}

#[test]
fn a_jwks_without_an_audience_refuses_to_start() {
    for (k, v) in [
        ("OIDC_ISSUER", "https://idp.example.com/realms/x"),
        ("JWT_JWKS_URL", "https://idp.example.com/certs"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(common::magic_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("MAGIC_ADMIN_API_KEY", ADMIN_KEY)
            .env(k, v)
            .env_remove("JWT_AUDIENCE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{k}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("JWT_AUDIENCE") && err.contains("required"),
            "{k}: {err}"
        );
    }
}

/// The login page's CSRF cookie and hidden field.
async fn login_token(http: &reqwest::Client, url: &str) -> (String, String) {
    let r = http
        .get(format!("{url}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("magic_login_csrf="))
        .expect("login csrf cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console/login"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    let html = r.text().await.unwrap();
    let field = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("hidden csrf field")
        .to_string();
    assert_eq!(pair, format!("magic_login_csrf={field}"));
    (pair, field)
}

async fn post_login(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    credential: &str,
) -> reqwest::Response {
    let mut form = vec![("credential", credential)];
    if let Some(c) = csrf {
        form.push(("csrf", c));
    }
    let mut req = http.post(format!("{url}/console/login")).form(&form);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn console_login_needs_its_csrf_token() {
    let server = Server::start(&[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = server.url.as_str();
    let (cookie, field) = login_token(&http, url).await;
    let (other_cookie, _) = login_token(&http, url).await;
    // (cookie, field, status)
    let cases: &[(Option<&str>, Option<&str>, u16)] = &[
        (None, None, 403),
        (None, Some(&field), 403),
        (Some(&cookie), None, 403),
        (Some(&cookie), Some(""), 403),
        (Some(&cookie), Some("0000"), 403),
        (Some(&other_cookie), Some(&field), 403),
        (Some(&cookie), Some(&field), 303),
    ];
    for (c, f, want) in cases {
        let r = post_login(&http, url, *c, *f, ADMIN_KEY).await;
        assert_eq!(r.status().as_u16(), *want, "{c:?} {f:?}");
        if *want == 403 {
            assert!(
                r.headers()
                    .get_all("set-cookie")
                    .iter()
                    .all(|v| !v.to_str().unwrap().starts_with("magic_console=")),
                "no session without the token"
            );
        }
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_limited_per_address() {
    let server = Server::start(&[("MAGIC_AUTH_FAILURE_LIMIT", "5/min")]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = server.url.as_str();
    let get = |key: &str, xff: Option<&str>| {
        let mut req = http
            .get(format!("{url}/api/admin/controllers"))
            .header("x-api-key", key);
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        req.send()
    };
    // Successful authentications never count.
    for _ in 0..20 {
        assert_eq!(get(ADMIN_KEY, None).await.unwrap().status(), 200);
    }
    // Nor do requests without credentials.
    for _ in 0..10 {
        assert_eq!(server.get("/api/admin/controllers", None).await.0, 401);
    }
    // Five wrong keys (one of them in a failed console sign-in, one a bad token): 401 …
    for i in 0..3 {
        assert_eq!(
            get(&format!("mk_wrong_{i}"), None).await.unwrap().status(),
            401
        );
    }
    let r = http
        .get(format!("{url}/api/admin/controllers"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (cookie, field) = login_token(&http, url).await;
    let r = post_login(&http, url, Some(&cookie), Some(&field), "mk_wrong_console").await;
    assert_eq!(r.status(), 401);
    // … then 429 E4003 with Retry-After, even for the right key, and a forged
    // X-Forwarded-For from an untrusted peer changes nothing.
    for (key, xff) in [
        ("mk_wrong_again", None),
        (ADMIN_KEY, None),
        (ADMIN_KEY, Some("198.51.100.1")),
    ] {
        let r = get(key, xff).await.unwrap();
        assert_eq!(r.status(), 429, "{key} {xff:?}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "E4003");
    }
    let (cookie, field) = login_token(&http, url).await;
    let r = post_login(&http, url, Some(&cookie), Some(&field), ADMIN_KEY).await;
    assert_eq!(r.status(), 429, "console sign-in is limited too");
    assert!(r.headers().contains_key("retry-after"));
    // Requests without credentials are not refused by it.
    assert_eq!(server.get("/api/health", None).await.0, 200);
    server.stop();

    // Behind a trusted proxy each forwarded client has its own budget.
    let server = Server::start(&[
        ("MAGIC_AUTH_FAILURE_LIMIT", "2/min"),
        ("MAGIC_TRUSTED_PROXIES", "127.0.0.1/32,::1"),
    ]);
    let url = server.url.as_str();
    let get = |key: &str, xff: &str| {
        http.get(format!("{url}/api/admin/controllers"))
            .header("x-api-key", key)
            .header("x-forwarded-for", xff)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(get("mk_wrong", "203.0.113.5").await.unwrap().status(), 401);
    }
    assert_eq!(get(ADMIN_KEY, "203.0.113.5").await.unwrap().status(), 429);
    // The client cannot escape by prepending addresses: the proxy's entry is the last one.
    assert_eq!(
        get(ADMIN_KEY, "192.0.2.77, 203.0.113.5")
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(get(ADMIN_KEY, "203.0.113.6").await.unwrap().status(), 200);
    server.stop();
}

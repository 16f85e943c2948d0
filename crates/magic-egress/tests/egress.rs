//! End-to-end egress tests against real HTTP and HTTPS servers on loopback. Test host names
//! are mapped to 127.0.0.1 (the servers) or 127.0.0.2 (a canary that must never be reached)
//! through the resolver's test hook; grants list 127.0.0.1 in `allow_ips`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use magic_contract::ErrorCode;
use magic_egress::{
    Egress, EgressConfig, EgressError, EgressRequest, HostLookup, MapLookup, ResolveMode,
};

const E2002: ErrorCode = ErrorCode::EgressNotAllowed;
const E2008: ErrorCode = ErrorCode::EgressPrivateAddress;

fn lookup() -> MapLookup {
    MapLookup::new()
        .with("api.test", &[ip("127.0.0.1")])
        .with("a.wild.test", &[ip("127.0.0.1")])
        .with("wild.test", &[ip("127.0.0.1")])
        .with("other.test", &[ip("127.0.0.1")])
        .with("rebind.test", &[ip("127.0.0.2")])
        .with("mixed.test", &[ip("127.0.0.1"), ip("127.0.0.2")])
        .with("v6.test", &[ip("::1")])
}

async fn code(egress: &Egress, g: &magic_contract::EgressGrant, req: EgressRequest) -> ErrorCode {
    match egress.send(g, req).await {
        Ok(r) => panic!(
            "expected a refusal, got status {} from {}",
            r.status, r.host
        ),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn allowed_http_get_returns_json_and_audit_data() {
    let srv = http_server("127.0.0.1").await;
    let egress = Egress::new(config(None, lookup()));
    let g = grant(
        &[&format!("http://api.test:{}", srv.port())],
        &["127.0.0.1"],
    );
    let url = format!("http://api.test:{}/hello", srv.port());
    let resp = egress.send(&g, get(&url)).await.unwrap();
    assert_eq!(resp.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["hello"], "world");
    assert_eq!(resp.host, "api.test");
    assert_eq!(resp.resolved_ip, Some(ip("127.0.0.1")));
    assert!(resp.latency > Duration::ZERO);
    assert_eq!(resp.headers["content-type"], "application/json");
    assert_eq!(srv.hits.get(), 1);
}

#[tokio::test]
async fn https_post_json_sanitizes_headers_and_sets_request_id() {
    let ca = TestCa::new();
    let srv = https_server(&ca, &["api.test"]).await;
    let egress = Egress::new(config(Some(&ca), lookup()));
    let g = grant(&[&format!("api.test:{}", srv.port())], &["127.0.0.1"]);
    let mut req = get(&format!("https://api.test:{}/echo", srv.port()));
    req.method = "post".into();
    req.body = Some(br#"{"amount":42}"#.to_vec());
    req.request_id = "req-abc-123".into();
    req.headers = BTreeMap::from([
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Custom".to_string(), "yes".to_string()),
        ("Host".to_string(), "evil.test".to_string()),
        ("X-Request-ID".to_string(), "spoofed".to_string()),
        ("Content-Length".to_string(), "1".to_string()),
        ("Connection".to_string(), "upgrade".to_string()),
        ("Proxy-Authorization".to_string(), "Basic eA==".to_string()),
    ]);
    let resp = egress.send(&g, req).await.unwrap();
    assert_eq!(resp.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], r#"{"amount":42}"#);
    let h = &echo["headers"];
    assert_eq!(h["x-request-id"], "req-abc-123");
    assert_eq!(h["host"], format!("api.test:{}", srv.port()));
    assert_eq!(h["x-custom"], "yes");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["content-length"], "13");
    assert!(h.get("proxy-authorization").is_none());
    assert_ne!(h["connection"], "upgrade");
    assert_eq!(*srv.sni.lock().unwrap(), vec!["api.test".to_string()]);
    assert_eq!(resp.resolved_ip, Some(ip("127.0.0.1")));
}

#[tokio::test]
async fn wildcard_covers_subdomains_only() {
    let ca = TestCa::new();
    let srv = https_server(&ca, &["*.wild.test", "wild.test"]).await;
    let egress = Egress::new(config(Some(&ca), lookup()));
    let g = grant(&[&format!("*.wild.test:{}", srv.port())], &["127.0.0.1"]);
    let ok = egress
        .send(
            &g,
            get(&format!("https://A.Wild.Test.:{}/hello", srv.port())),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.host, "a.wild.test");
    let refused = code(
        &egress,
        &g,
        get(&format!("https://wild.test:{}/hello", srv.port())),
    )
    .await;
    assert_eq!(refused, E2002);
    // Plain http and other ports are not covered by an https entry.
    let http = code(
        &egress,
        &g,
        get(&format!("http://a.wild.test:{}/hello", srv.port())),
    )
    .await;
    assert_eq!(http, E2002);
    let port = code(&egress, &g, get("https://a.wild.test/hello")).await;
    assert_eq!(port, E2002);
    assert_eq!(srv.hits.get(), 1);
}

#[tokio::test]
async fn loopback_needs_allow_ips() {
    let srv = http_server("127.0.0.1").await;
    let egress = Egress::new(config(None, lookup()));
    let g = grant(&[&format!("http://api.test:{}", srv.port())], &[]);
    let err = egress
        .send(&g, get(&format!("http://api.test:{}/hello", srv.port())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), E2008);
    match err {
        EgressError::PrivateAddress {
            host,
            ip: addr,
            class,
        } => {
            assert_eq!(host, "api.test");
            assert_eq!(addr, ip("127.0.0.1"));
            assert_eq!(class, "loopback");
        }
        other => panic!("unexpected {other:?}"),
    }
    // allow_ips for a different address does not help.
    let g = grant(
        &[&format!("http://api.test:{}", srv.port())],
        &["127.0.0.3", "10.0.0.0/8"],
    );
    let c = code(
        &egress,
        &g,
        get(&format!("http://api.test:{}/hello", srv.port())),
    )
    .await;
    assert_eq!(c, E2008);
    assert_eq!(srv.hits.get(), 0);
}

#[tokio::test]
async fn dns_rebinding_to_private_address_is_refused() {
    let canary = http_server("127.0.0.2").await;
    let egress = Egress::new(config(None, lookup()));
    let p = canary.port();
    let g = grant(
        &[
            &format!("http://rebind.test:{p}"),
            &format!("http://mixed.test:{p}"),
        ],
        &["127.0.0.1"],
    );
    for host in ["rebind.test", "mixed.test"] {
        let c = code(&egress, &g, get(&format!("http://{host}:{p}/"))).await;
        assert_eq!(c, E2008, "{host}");
    }
    assert_eq!(canary.hits.get(), 0);
}

/// Answers alternate between the allowed server and the canary, like a rebinding DNS server
/// with TTL 0. Every connection must go to the address its own lookup checked.
#[derive(Debug)]
struct Flip {
    calls: AtomicUsize,
}

impl HostLookup for Flip {
    fn lookup(&self, _host: String) -> magic_egress::resolve::LookupFuture {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let ip = if n & 1 == 0 { "127.0.0.1" } else { "127.0.0.2" };
        Box::pin(async move { Ok(vec![ip.parse().unwrap()]) })
    }
}

#[tokio::test]
async fn alternating_dns_answers_never_reach_the_canary() {
    let srv = http_server("127.0.0.1").await;
    let canary_listener = std::net::TcpListener::bind(("127.0.0.2", srv.port()));
    let canary = match canary_listener {
        Ok(l) => {
            drop(l);
            http_server_on("127.0.0.2", srv.port()).await
        }
        Err(_) => return, // port taken on 127.0.0.2: nothing to observe
    };
    let flip = Arc::new(Flip {
        calls: AtomicUsize::new(0),
    });
    let egress = Egress::new(EgressConfig {
        lookup: flip.clone(),
        ..config(None, MapLookup::new())
    });
    let g = grant(
        &[&format!("http://flip.test:{}", srv.port())],
        &["127.0.0.1"],
    );
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..8 {
        // `/close` makes the server close the connection, so every request resolves again.
        match egress
            .send(&g, get(&format!("http://flip.test:{}/close", srv.port())))
            .await
        {
            Ok(r) => {
                assert_eq!(r.resolved_ip, Some(ip("127.0.0.1")));
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), E2008);
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok={ok} refused={refused}");
    assert_eq!(canary.hits.get(), 0);
    assert_eq!(srv.hits.get(), ok);
}

async fn http_server_on(host: &str, port: u16) -> Server {
    // Same server as `http_server`, on a chosen port (for the rebinding canary).
    let listener = tokio::net::TcpListener::bind((host, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Hits::default();
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.0.fetch_add(1, Ordering::SeqCst);
            "canary"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        addr,
        hits,
        sni: Arc::default(),
    }
}

#[tokio::test]
async fn ip_literals_need_an_explicit_entry_and_allow_ips() {
    let srv = http_server("127.0.0.1").await;
    let p = srv.port();
    let egress = Egress::new(config(None, lookup()));
    let by_name = grant(&[&format!("http://api.test:{p}")], &["127.0.0.1"]);
    for url in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.1:{p}/hello"),
        format!("http://[::ffff:127.0.0.1]:{p}/hello"),
        format!("http://api.test@127.0.0.1:{p}/hello"),
    ] {
        assert_eq!(code(&egress, &by_name, get(&url)).await, E2002, "{url}");
    }
    let literal_no_ips = grant(&[&format!("http://127.0.0.1:{p}")], &[]);
    for url in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://0177.0.0.1:{p}/hello"),
        format!("http://127.1:{p}/hello"),
    ] {
        assert_eq!(
            code(&egress, &literal_no_ips, get(&url)).await,
            E2008,
            "{url}"
        );
    }
    assert_eq!(srv.hits.get(), 0);
    let literal = grant(&[&format!("http://127.0.0.1:{p}")], &["127.0.0.1"]);
    for url in [
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.0.0.1:{p}/hello"),
    ] {
        let r = egress.send(&literal, get(&url)).await.unwrap();
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.host, "127.0.0.1");
    }
    assert_eq!(srv.hits.get(), 3);
}

#[tokio::test]
async fn redirects_are_rechecked_every_hop() {
    let srv = http_server("127.0.0.1").await;
    let canary = http_server("127.0.0.2").await;
    let (p, c) = (srv.port(), canary.port());
    let egress = Egress::new(config(None, lookup()));
    let g = grant(
        &[
            &format!("http://api.test:{p}"),
            &format!("http://rebind.test:{c}"),
            &format!("http://127.0.0.2:{c}"),
        ],
        &["127.0.0.1"],
    );
    let redirect = |to: &str, status: u16| {
        let mut u = url::Url::parse(&format!("http://api.test:{p}/redirect")).unwrap();
        u.query_pairs_mut()
            .append_pair("to", to)
            .append_pair("status", &status.to_string());
        u.to_string()
    };
    let cases: Vec<(String, ErrorCode)> = vec![
        (
            redirect(&format!("http://other.test:{p}/hello"), 302),
            E2002,
        ),
        (redirect(&format!("http://127.0.0.2:{c}/"), 302), E2008),
        (redirect(&format!("http://2130706434:{c}/"), 307), E2008),
        (redirect(&format!("http://127.0.0.3:{c}/"), 301), E2002),
        (redirect(&format!("http://rebind.test:{c}/"), 308), E2008),
        (redirect(&format!("https://api.test:{p}/hello"), 302), E2002),
        (
            redirect(&format!("http://u:p@api.test:{p}/hello"), 302),
            E2002,
        ),
    ];
    for (url, want) in cases {
        assert_eq!(code(&egress, &g, get(&url)).await, want, "{url}");
    }
    assert_eq!(canary.hits.get(), 0);

    // A Location the client cannot follow (not an http URL) is handed back, not followed.
    let r = egress
        .send(&g, get(&redirect("file:///etc/passwd", 302)))
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "file:///etc/passwd");

    // An allowed chain is followed; 307 keeps method and body.
    let hop2 = redirect(&format!("http://api.test:{p}/echo"), 307);
    let mut req = get(&redirect(&hop2, 307));
    req.method = "POST".into();
    req.body = Some(b"payload".to_vec());
    let r = egress.send(&g, req).await.unwrap();
    assert_eq!(r.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["headers"]["x-request-id"], "req-test-1");
    assert_eq!(r.final_url, format!("http://api.test:{p}/echo"));

    // Five redirects are followed, the sixth is refused.
    let mut url = format!("http://api.test:{p}/hello");
    for _ in 0..5 {
        url = redirect(&url, 302);
    }
    assert_eq!(egress.send(&g, get(&url)).await.unwrap().status, 200);
    let err = egress
        .send(&g, get(&redirect(&url, 302)))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::TooManyRedirects(5)), "{err:?}");
}

#[tokio::test]
async fn response_body_is_capped() {
    let srv = http_server("127.0.0.1").await;
    let p = srv.port();
    let egress = Egress::new(EgressConfig {
        max_body_bytes: 1024,
        ..config(None, lookup())
    });
    let g = grant(&[&format!("http://api.test:{p}")], &["127.0.0.1"]);
    for path in ["big", "bigstream"] {
        let ok = egress
            .send(&g, get(&format!("http://api.test:{p}/{path}?n=1024")))
            .await
            .unwrap();
        assert_eq!(ok.body.len(), 1024, "{path}");
        let err = egress
            .send(&g, get(&format!("http://api.test:{p}/{path}?n=1025")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, EgressError::BodyTooLarge { limit: 1024 }),
            "{path}: {err:?}"
        );
        assert_eq!(err.code(), ErrorCode::ControllerFailed);
    }
}

#[tokio::test]
async fn deadline_bounds_slow_servers() {
    let srv = http_server("127.0.0.1").await;
    let p = srv.port();
    let egress = Egress::new(config(None, lookup()));
    let g = grant(&[&format!("http://api.test:{p}")], &["127.0.0.1"]);
    for path in ["slow?ms=3000", "slowbody"] {
        let mut req = get(&format!("http://api.test:{p}/{path}"));
        req.deadline = Instant::now() + Duration::from_millis(300);
        let started = Instant::now();
        let err = egress.send(&g, req).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Timeout, "{path}: {err:?}");
        assert!(started.elapsed() < Duration::from_millis(1500), "{path}");
    }
    let mut req = get(&format!("http://api.test:{p}/hello"));
    req.deadline = Instant::now();
    assert_eq!(code(&egress, &g, req).await, ErrorCode::Timeout);
    let mut req = get(&format!("http://api.test:{p}/slow?ms=50"));
    req.deadline = Instant::now() + Duration::from_secs(5);
    assert_eq!(egress.send(&g, req).await.unwrap().status, 200);
}

#[tokio::test]
async fn tls_name_mismatch_and_unknown_ca_fail() {
    let ca = TestCa::new();
    let srv = https_server(&ca, &["api.test"]).await;
    let p = srv.port();
    // other.test is allowed and resolves to the server, whose certificate does not name it.
    let egress = Egress::new(config(Some(&ca), lookup()));
    let g = grant(
        &[&format!("other.test:{p}"), &format!("api.test:{p}")],
        &["127.0.0.1"],
    );
    let err = egress
        .send(&g, get(&format!("https://other.test:{p}/hello")))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Failed(_)), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // The client asked for the allowlisted name, and refused the certificate.
    assert_eq!(*srv.sni.lock().unwrap(), vec!["other.test".to_string()]);
    // A CA we do not trust.
    let other_ca = TestCa::new();
    let egress = Egress::new(config(Some(&other_ca), lookup()));
    let err = egress
        .send(&g, get(&format!("https://api.test:{p}/hello")))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Failed(_)), "{err:?}");
    assert_eq!(srv.hits.get(), 0);
}

#[tokio::test]
async fn static_mode_uses_contract_mappings_only() {
    let srv = http_server("127.0.0.1").await;
    let canary = http_server("127.0.0.2").await;
    let p = srv.port();
    // The DNS hook points api.test at the canary; static mode must ignore it.
    let egress = Egress::new(EgressConfig {
        resolve_mode: ResolveMode::Static,
        ..config(None, MapLookup::new().with("api.test", &[ip("127.0.0.2")]))
    });
    let mut g = grant(
        &[
            &format!("http://api.test:{p}"),
            &format!("http://nomap.test:{p}"),
        ],
        &["127.0.0.1"],
    );
    g.resolve.insert("api.test".into(), vec![ip("127.0.0.1")]);
    let r = egress
        .send(&g, get(&format!("http://api.test:{p}/hello")))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        code(&egress, &g, get(&format!("http://nomap.test:{p}/hello"))).await,
        E2002
    );
    // A static mapping to a non-public address still needs allow_ips.
    g.resolve.insert("nomap.test".into(), vec![ip("127.0.0.2")]);
    assert_eq!(
        code(&egress, &g, get(&format!("http://nomap.test:{p}/hello"))).await,
        E2008
    );
    assert_eq!(canary.hits.get(), 0);
}

#[tokio::test]
async fn bad_methods_and_headers_are_refused_before_connecting() {
    let srv = http_server("127.0.0.1").await;
    let p = srv.port();
    let egress = Egress::new(config(None, lookup()));
    let g = grant(&[&format!("http://api.test:{p}")], &["127.0.0.1"]);
    let url = format!("http://api.test:{p}/echo");
    for method in ["TRACE", "CONNECT", "GET /x HTTP/1.1", "FOO"] {
        let mut req = get(&url);
        req.method = method.into();
        assert_eq!(
            code(&egress, &g, req).await,
            ErrorCode::ControllerFailed,
            "{method}"
        );
    }
    for (k, v) in [("X-A", "1\r\nX-Injected: 1"), ("X-A\n", "1"), ("X-A", "\0")] {
        let mut req = get(&url);
        req.headers.insert(k.into(), v.into());
        assert_eq!(
            code(&egress, &g, req).await,
            ErrorCode::ControllerFailed,
            "{k:?}"
        );
    }
    let mut req = get(&url);
    req.request_id = "id\r\nX-Injected: 1".into();
    assert_eq!(code(&egress, &g, req).await, ErrorCode::ControllerFailed);
    assert_eq!(srv.hits.get(), 0);
}

#[tokio::test]
async fn ipv6_loopback_is_refused_by_name() {
    let egress = Egress::new(config(None, lookup()));
    let g = grant(&["http://v6.test:8080"], &["127.0.0.1"]);
    assert_eq!(code(&egress, &g, get("http://v6.test:8080/")).await, E2008);
}

#[tokio::test]
async fn ipv6_loopback_server_with_allow_ips() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        return; // no IPv6 loopback on this machine
    };
    let p = listener.local_addr().unwrap().port();
    drop(listener);
    let srv = http_server_on("::1", p).await;
    let lookup = MapLookup::new().with("v6.test", &[ip("::1")]);
    let egress = Egress::new(config(None, lookup));
    let by_name = grant(&[&format!("http://v6.test:{p}")], &["::1"]);
    let r = egress
        .send(&by_name, get(&format!("http://v6.test:{p}/")))
        .await
        .unwrap();
    assert_eq!(r.resolved_ip, Some(ip("::1")));
    let literal = grant(&[&format!("http://[::1]:{p}")], &["::1/128"]);
    let r = egress
        .send(&literal, get(&format!("http://[0:0::1]:{p}/")))
        .await
        .unwrap();
    assert_eq!(r.host, "[::1]");
    // IPv4 loopback in allow_ips does not cover ::1, and zone IDs never parse.
    let v4_only = grant(&[&format!("http://[::1]:{p}")], &["127.0.0.1"]);
    let c = code(&egress, &v4_only, get(&format!("http://[::1]:{p}/"))).await;
    assert_eq!(c, E2008);
    let c = code(&egress, &literal, get(&format!("http://[::1%25lo]:{p}/"))).await;
    assert_eq!(c, E2002);
    assert_eq!(srv.hits.get(), 2);
}

#[test]
fn check_url_is_the_same_decision_without_io() {
    let egress = Egress::new(config(None, MapLookup::new()));
    let g = grant(&["*.example.com", "http://127.0.0.1:8080"], &[]);
    let t = egress.check_url(&g, "https://A.example.com./x").unwrap();
    assert_eq!(
        t.host,
        magic_egress::TargetHost::Domain("a.example.com".into())
    );
    let code = |u: &str| egress.check_url(&g, u).unwrap_err().code();
    assert_eq!(code("https://example.com/"), E2002);
    assert_eq!(code("http://0x7f.1:8080/"), E2008);
    assert_eq!(code("https://a.example.com /"), E2002);
}

/// Not a pass/fail test: prints request latency over loopback (`--ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn measure_latency() {
    let srv = http_server("127.0.0.1").await;
    let p = srv.port();
    let egress = Egress::new(config(None, lookup()));
    let g = grant(&[&format!("http://api.test:{p}")], &["127.0.0.1"]);
    let url = format!("http://api.test:{p}/hello");
    let t = Instant::now();
    egress.send(&g, get(&url)).await.unwrap();
    println!("first request (client build + connect): {:?}", t.elapsed());
    let mut v = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        egress.send(&g, get(&url)).await.unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    println!(
        "pooled: p50 {:?} p99 {:?}",
        v[v.len() / 2],
        v[v.len() * 99 / 100]
    );
    let t = Instant::now();
    for i in 0..200 {
        let g = grant(
            &[&format!("http://api.test:{p}"), &format!("x{i}.test")],
            &["127.0.0.1"],
        );
        egress.send(&g, get(&url)).await.unwrap();
    }
    println!(
        "new grant each time (client build + connect): {:?} avg",
        t.elapsed() / 200
    );
}

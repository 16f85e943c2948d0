//! Test servers for the egress tests: plain HTTP and HTTPS (test CA made with rcgen) on
//! loopback, with hit counters and the SNI each TLS connection presented.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get as route_get};
use axum::{Json, Router};
use magic_contract::EgressGrant;
use magic_egress::{EgressConfig, EgressRequest, MapLookup};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct Hits(pub Arc<AtomicUsize>);

impl Hits {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn router(hits: Hits) -> Router {
    Router::new()
        .route("/hello", route_get(|| async { Json(serde_json::json!({"hello": "world"})) }))
        .route("/echo", any(echo))
        .route("/redirect", any(redirect))
        .route("/big", route_get(big))
        .route("/bigstream", route_get(bigstream))
        .route("/slow", route_get(slow))
        .route("/slowbody", route_get(slowbody))
        .route("/close", route_get(|| async { ([("connection", "close")], "closed") }))
        .fallback(|| async { "canary" })
        .layer(axum::middleware::from_fn_with_state(
            hits.clone(),
            |State(h): State<Hits>, req: axum::extract::Request, next: axum::middleware::Next| async move {
                h.0.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            },
        ))
}

async fn echo(
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Json<serde_json::Value> {
    let h: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Json(serde_json::json!({
        "method": method.as_str(),
        "headers": h,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn redirect(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let status = q
        .get("status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(302u16);
    let to = q.get("to").cloned().unwrap_or_default();
    (StatusCode::from_u16(status).unwrap(), [("location", to)]).into_response()
}

async fn big(Query(q): Query<BTreeMap<String, usize>>) -> Vec<u8> {
    vec![b'x'; q.get("n").copied().unwrap_or(0)]
}

async fn bigstream(Query(q): Query<BTreeMap<String, usize>>) -> Body {
    let n = q.get("n").copied().unwrap_or(0);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..n.div_ceil(100))
        .map(|i| Ok(Bytes::from(vec![b'y'; (n - i * 100).min(100)])))
        .collect();
    Body::from_stream(futures::stream::iter(chunks))
}

async fn slow(Query(q): Query<BTreeMap<String, u64>>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    "slow"
}

async fn slowbody() -> Body {
    let s = futures::stream::unfold(0u32, |i| async move {
        if i >= 50 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"z")), i + 1))
    });
    Body::from_stream(s)
}

pub struct Server {
    pub addr: SocketAddr,
    pub hits: Hits,
    /// SNI of every TLS handshake (`""` when none was sent).
    pub sni: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Plain HTTP server on `ip:0`.
pub async fn http_server(ip: &str) -> Server {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Hits::default();
    let app = router(hits.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        addr,
        hits,
        sni: Arc::default(),
    }
}

pub struct TestCa {
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "magic egress test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
        }
    }

    /// Leaf certificate and key (DER) for `names`.
    pub fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }
}

/// Serves one certificate whatever the client asks for, recording the SNI of every ClientHello
/// (`""` when none was sent) before the handshake can fail.
#[derive(Debug)]
struct SniLog {
    key: Arc<rustls::sign::CertifiedKey>,
    log: Arc<Mutex<Vec<String>>>,
}

impl rustls::server::ResolvesServerCert for SniLog {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name().unwrap_or("").to_string();
        self.log.lock().unwrap().push(name);
        Some(self.key.clone())
    }
}

/// HTTPS server on 127.0.0.1:0 presenting a certificate for `names` signed by `ca`.
pub async fn https_server(ca: &TestCa, names: &[&str]) -> Server {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (cert, key) = ca.leaf(names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        &provider,
    )
    .unwrap();
    let sni: Arc<Mutex<Vec<String>>> = Arc::default();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniLog {
            key: Arc::new(certified),
            log: sni.clone(),
        }));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Hits::default();
    let app = router(hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Server { addr, hits, sni }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn grant(allow: &[&str], allow_ips: &[&str]) -> EgressGrant {
    EgressGrant {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        allow_ips: allow_ips.iter().map(|s| s.to_string()).collect(),
        resolve: BTreeMap::new(),
    }
}

pub fn get(url: &str) -> EgressRequest {
    EgressRequest {
        method: "GET".into(),
        url: url.into(),
        headers: BTreeMap::new(),
        body: None,
        request_id: "req-test-1".into(),
        traceparent: None,
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

/// Config trusting only `ca`, resolving through `lookup`.
pub fn config(ca: Option<&TestCa>, lookup: MapLookup) -> EgressConfig {
    EgressConfig {
        lookup: Arc::new(lookup),
        extra_root_certs_pem: ca
            .map(|c| c.ca_pem.clone().into_bytes())
            .into_iter()
            .collect(),
        builtin_roots: false,
        ..EgressConfig::default()
    }
}

//! TLS termination and client certificates (mTLS).
//!
//! Owns: building the rustls server configuration from `MAGIC_TLS_CERT` / `MAGIC_TLS_KEY`
//! (optionally requiring client certificates issued by `MAGIC_TLS_CLIENT_CA`), the accept loop
//! that serves the router over TLS, reading the client certificate's subject CN and DNS SANs,
//! and mapping them to an identity (`mtls:NAME`) and a role through `MAGIC_MTLS_ROLES`
//! ([`MtlsRoles`], pure). Must never: accept a client certificate the configured CA did not
//! issue (the handshake fails), grant a role to a name the mapping does not list, or make plain
//! HTTP anything but the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::rbac::Role;

/// The TLS settings of `serve`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `MAGIC_TLS_CERT`: the server's certificate chain (PEM).
    pub cert: PathBuf,
    /// `MAGIC_TLS_KEY`: its private key (PEM).
    pub key: PathBuf,
    /// `MAGIC_TLS_CLIENT_CA`: when set, every client must present a certificate issued by it.
    pub client_ca: Option<PathBuf>,
    /// `MAGIC_MTLS_ROLES`: certificate name → role.
    pub roles: MtlsRoles,
}

/// `MAGIC_MTLS_ROLES` (`ops-bot=operator,ci=deployer`): which certificate names hold which
/// role.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MtlsRoles(pub Vec<(String, Role)>);

impl MtlsRoles {
    /// Parse `NAME=ROLE,…`; every problem is reported.
    pub fn parse(s: &str) -> Result<MtlsRoles, String> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((name, role)) if !name.trim().is_empty() => match Role::parse(role.trim()) {
                    Some(r) => out.push((name.trim().to_string(), r)),
                    None => problems.push(format!("unknown role {:?}", role.trim())),
                },
                _ => problems.push(format!("{part:?} is not NAME=ROLE")),
            }
        }
        if problems.is_empty() {
            Ok(MtlsRoles(out))
        } else {
            Err(problems.join("; "))
        }
    }

    /// The identity of a client whose certificate names are `names` (CN first, then DNS
    /// SANs): the first name the mapping lists. `None`: no listed name (no role).
    pub fn identity(&self, names: &[String]) -> Option<crate::auth::Identity> {
        names.iter().find_map(|n| {
            let roles: Vec<Role> = self
                .0
                .iter()
                .filter(|(name, _)| name == n)
                .map(|(_, r)| *r)
                .collect();
            (!roles.is_empty()).then(|| crate::auth::Identity {
                name: format!("mtls:{n}"),
                roles,
                scope: None,
            })
        })
    }
}

/// The names a verified client certificate presents, CN first, then DNS SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNames(pub Vec<String>);

/// Read one DER TLV at the start of `der`: (tag, content, rest).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The common name(s) in a DER `Name` (the content of its SEQUENCE: SETs of attribute
/// SEQUENCEs).
pub fn common_names(name: &[u8]) -> Vec<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut out = Vec::new();
    let mut rest = name;
    while let Some((0x31, set, next)) = tlv(rest) {
        let mut attrs = set;
        while let Some((0x30, attr, after)) = tlv(attrs) {
            if let Some((0x06, oid, value)) = tlv(attr) {
                if oid == CN {
                    if let Some((tag, v, _)) = tlv(value) {
                        // UTF8String, PrintableString, IA5String
                        if matches!(tag, 0x0c | 0x13 | 0x16) {
                            if let Ok(s) = std::str::from_utf8(v) {
                                out.push(s.to_string());
                            }
                        }
                    }
                }
            }
            attrs = after;
        }
        rest = next;
    }
    out
}

/// The CN(s) and DNS SANs of a (verified) end-entity certificate.
pub fn peer_names(cert: &CertificateDer<'_>) -> PeerNames {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return PeerNames(Vec::new());
    };
    let mut names = common_names(ee.subject());
    names.extend(ee.valid_dns_names().map(str::to_string));
    PeerNames(names)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls server configuration (every problem names the setting).
pub fn server_config(settings: &TlsSettings) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&settings.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("MAGIC_TLS_CERT {}: {e}", settings.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "MAGIC_TLS_CERT {}: no certificate",
            settings.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| format!("MAGIC_TLS_KEY {}: {e}", settings.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("MAGIC_TLS_CLIENT_CA {}: {e}", ca.display()))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| format!("MAGIC_TLS_CLIENT_CA {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "MAGIC_TLS_CLIENT_CA {}: no certificate",
                    ca.display()
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("MAGIC_TLS_CLIENT_CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("MAGIC_TLS_CERT/MAGIC_TLS_KEY: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serve `app` over TLS on `listener` until `shutdown` resolves. Each request carries its
/// peer address (`ConnectInfo<SocketAddr>`) and, when the client presented a certificate, its
/// [`PeerNames`] as extensions.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // On shutdown: stop accepting, ask every open connection to finish its in-flight requests
    // and close (HTTP/1 keep-alive and h2 alike), and return once they have.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(event = "tls_handshake_refused", peer = %peer, error = %e);
                    return;
                }
                Err(_) => return,
            };
            let names = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(peer_names);
            let service = app.map_request(move |req: http::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                if let Some(n) = &names {
                    req.extensions_mut().insert(n.clone());
                }
                req
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "tls connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_mapping_table() {
        let m = MtlsRoles::parse("ops-bot=operator, ci=deployer,ci=executor").unwrap();
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a [Role])>);
        let cases: &[Case] = &[
            (&["ops-bot"], Some(("mtls:ops-bot", &[Role::Operator]))),
            (
                &["ci"],
                Some(("mtls:ci", &[Role::Deployer, Role::Executor])),
            ),
            (
                &["stranger", "ops-bot"],
                Some(("mtls:ops-bot", &[Role::Operator])),
            ),
            (&["stranger"], None),
            (&[], None),
            (&["OPS-BOT"], None),
        ];
        for (names, want) in cases {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let got = m.identity(&names).map(|i| (i.name, i.roles));
            let want = want.map(|(n, r)| (n.to_string(), r.to_vec()));
            assert_eq!(got, want, "{names:?}");
        }
        assert!(MtlsRoles::parse("a=root").is_err());
        assert!(MtlsRoles::parse("justaname").is_err());
        assert!(MtlsRoles::parse("=admin").is_err());
        assert_eq!(MtlsRoles::parse("").unwrap(), MtlsRoles::default());
    }

    #[test]
    fn names_are_read_from_real_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["bot.example.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ops-bot");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = peer_names(cert.der());
        assert_eq!(names.0, ["ops-bot", "bot.example.com"]);
        // Garbage and truncation never panic.
        assert!(peer_names(&CertificateDer::from(vec![0x30, 0x82, 0xff]))
            .0
            .is_empty());
        assert!(common_names(&[0x31, 0x05, 0x30]).is_empty());
        assert!(common_names(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}

//! mTLS end to end: `serve` terminates TLS with rcgen-made certificates and requires client
//! certificates from a CA; a trusted certificate's CN maps to its role, an untrusted one or none
//! at all fails the handshake, and the CLI works against the TLS server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::Server;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// Write a certificate signed by `ca` to DIR/NAME.{crt,key}; returns the two paths.
fn leaf(
    dir: &Path,
    ca: &Ca,
    name: &str,
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.to_str().unwrap().into(), k.to_str().unwrap().into())
}

fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if let Some((c, k)) = identity {
        let mut pem = std::fs::read(c).unwrap();
        pem.push(b'\n');
        pem.extend(std::fs::read(k).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_map_to_roles_and_untrusted_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let trusted = ca("magic test ca");
    let rogue = ca("rogue ca");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, trusted.cert.pem()).unwrap();
    let (srv_crt, srv_key) = leaf(
        dir,
        &trusted,
        "server",
        "magic server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_usage = || ExtendedKeyUsagePurpose::ClientAuth;
    let ops = leaf(dir, &trusted, "ops", "ops-bot", &[], client_usage());
    let ci = leaf(dir, &trusted, "ci", "ci", &[], client_usage());
    let stranger = leaf(dir, &trusted, "stranger", "stranger", &[], client_usage());
    let forged = leaf(dir, &rogue, "forged", "ops-bot", &[], client_usage());

    let server = Server::start(&[
        ("CONTROLLER_EXECUTION_MODE", "inline"),
        ("MAGIC_TLS_CERT", srv_crt.as_str()),
        ("MAGIC_TLS_KEY", srv_key.as_str()),
        ("MAGIC_TLS_CLIENT_CA", ca_file.to_str().unwrap()),
        ("MAGIC_MTLS_ROLES", "ops-bot=operator,ci=deployer"),
    ]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let ca_pem = trusted.cert.pem();
    let get = |c: reqwest::Client, path: &str| {
        let url = format!("{}{path}", server.url);
        async move { c.get(url).send().await }
    };

    // Trusted certificate: its CN's role applies.
    let resp = get(
        client(&ca_pem, Some((&ops.0, &ops.1))),
        "/api/admin/controllers",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("strict-transport-security").is_some());
    let resp = get(client(&ca_pem, Some((&ops.0, &ops.1))), "/api/admin/keys")
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "an operator does not manage keys");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "E4002");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mtls:ops-bot"));

    // Trusted but unmapped: authenticated by nobody.
    let resp = get(
        client(&ca_pem, Some((&stranger.0, &stranger.1))),
        "/api/admin/controllers",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);

    // Untrusted certificate with the same CN, and no certificate: the handshake fails.
    assert!(
        get(client(&ca_pem, Some((&forged.0, &forged.1))), "/api/health")
            .await
            .is_err()
    );
    assert!(get(client(&ca_pem, None), "/api/health").await.is_err());

    // The CLI against the TLS server, with the deployer's certificate and no API key.
    let cli = |cert: &(String, String), args: &[&str]| {
        std::process::Command::new(common::magic_bin())
            .args(args)
            .env("MAGIC_URL", &server.url)
            .env_remove("MAGIC_API_KEY")
            .env_remove("MAGIC_DATA_DIR")
            .env("MAGIC_CA_CERT", &ca_file)
            .env("MAGIC_CLIENT_CERT", &cert.0)
            .env("MAGIC_CLIENT_KEY", &cert.1)
            .output()
            .unwrap()
    };
    let controller = dir.join("hello");
    common::write_controller(
        &controller,
        "name: Hello\nversion: 1.0.0\ninput: { type: object }\noutput: { type: object }\n",
        &common::code("Hello", "        return {}"),
    );
    let out = cli(&ci, &["deploy", controller.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&ci, &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello"));
    let out = cli(&forged, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    // The deploy is audited with the certificate identity.
    let resp = get(
        client(&ca_pem, Some((&ops.0, &ops.1))),
        "/api/admin/controllers/Hello",
    )
    .await
    .unwrap();
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["versions"][0]["deployed_by"], "mtls:ci");
}

#[test]
fn tls_settings_must_come_together() {
    let out = std::process::Command::new(common::magic_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MAGIC_TLS_CERT", "/nonexistent.crt")
        .env_remove("MAGIC_TLS_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be set together"));
}

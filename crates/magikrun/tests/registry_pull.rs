//! Pull from a real registry on 127.0.0.1: Debian's `docker-registry`, started by the test on a
//! free loopback port with storage in a temp dir. Skipped (with a message) when not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use magikrun::layout::{tar_of_files, LayerBlob};
use magikrun::{
    pull_image, pull_image_with, BlobStore, Bundle, BundleBuilder, Digest, Error, PullOptions,
};

const REGISTRY: &str = "/usr/bin/docker-registry";

struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry() -> Option<Registry> {
    if !std::path::Path::new(REGISTRY).exists() {
        eprintln!("skipped: docker-registry not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
        dir.path().join("data").display()
    );
    let cfg_path = dir.path().join("config.yml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let child = Command::new(REGISTRY)
        .args(["serve", cfg_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry {
        child,
        addr,
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("http://{}/v2/", reg.addr)).send().await {
            if r.status().is_success() {
                return Some(reg);
            }
        }
        assert!(Instant::now() < deadline, "registry did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let digest = Digest::of(data).to_string();
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    digest
}

/// Pushes a one-layer image and returns the manifest digest.
async fn push_image(addr: &str, repo: &str, tag: &str, layer: &LayerBlob) -> String {
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    let layer_digest = push_blob(&c, &base, repo, &layer.data).await;
    let config = serde_json::json!({
        "architecture": magikrun::image::oci_arch(std::env::consts::ARCH), "os": "linux",
        "config": {"Cmd": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = push_blob(&c, &base, repo, &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.data.len()}]
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    Digest::of(&manifest).to_string()
}

#[tokio::test]
async fn pull_from_loopback_registry() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let layer = LayerBlob::gzip(
        &tar_of_files(&[("bin/app", 0o755, b"#!app"), ("etc/x", 0o644, b"x")]).unwrap(),
    )
    .unwrap();
    let manifest_digest = push_image(&reg.addr, "test/app", "v1", &layer).await;

    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::with_root(tmp.path().join("blobs")).unwrap();
    let image = pull_image(&format!("{}/test/app:v1", reg.addr), &store)
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, manifest_digest);
    assert!(store
        .has_blob(&Digest::of(&layer.data).to_string())
        .unwrap());
    // By digest too.
    let by_digest = pull_image(&format!("{}/test/app@{manifest_digest}", reg.addr), &store)
        .await
        .unwrap();
    assert_eq!(by_digest.manifest_digest, manifest_digest);

    let bundle = BundleBuilder::new()
        .unwrap()
        .image(&image)
        .storage(&store)
        .bundle_dir(tmp.path().join("b"))
        .build()
        .await
        .unwrap();
    let Bundle::OciRuntime { path } = bundle else {
        panic!("not an OCI bundle")
    };
    assert_eq!(std::fs::read(path.join("rootfs/etc/x")).unwrap(), b"x");

    // Unknown tag and unknown repository are errors.
    assert!(matches!(
        pull_image(&format!("{}/test/app:nope", reg.addr), &store).await,
        Err(Error::Pull(_))
    ));
    assert!(matches!(
        pull_image(&format!("{}/test/none:v1", reg.addr), &store).await,
        Err(Error::Pull(_))
    ));
}

#[tokio::test]
async fn pull_timeout_is_enforced() {
    // A listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let _conns: Vec<_> = listener.incoming().take(4).collect();
    });
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::with_root(tmp.path()).unwrap();
    let opts = PullOptions {
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let started = Instant::now();
    let r = pull_image_with(&format!("{addr}/test/app:v1"), &store, &opts).await;
    assert!(
        matches!(r, Err(Error::Timeout { .. }) | Err(Error::Pull(_))),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A tiny registry that serves fixed bodies per path (HTTP/1.1, one request per connection).
fn fake_registry(routes: Vec<(String, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let resp = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&resp);
        }
    });
    addr
}

fn image_parts(layer: &[u8], layer_size: usize) -> (Vec<u8>, Vec<u8>, String, String) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": magikrun::image::oci_arch(std::env::consts::ARCH), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(layer).to_string()]}
    }))
    .unwrap();
    let config_digest = Digest::of(&config).to_string();
    let layer_digest = Digest::of(layer).to_string();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    }))
    .unwrap();
    (manifest, config, config_digest, layer_digest)
}

#[tokio::test]
async fn registry_blobs_are_verified() {
    let layer = tar_of_files(&[("f", 0o644, b"genuine")]).unwrap();
    let (manifest, config, config_digest, layer_digest) = image_parts(&layer, layer.len());
    let manifest_digest = Digest::of(&manifest).to_string();
    let mut evil = layer.clone();
    evil[600] ^= 0x20;
    let tmp = tempfile::tempdir().unwrap();

    // 1. A layer whose bytes do not match its digest.
    let addr = fake_registry(vec![
        ("/v2/t/app/manifests/v1".into(), manifest.clone()),
        (
            format!("/v2/t/app/manifests/{manifest_digest}"),
            manifest.clone(),
        ),
        (format!("/v2/t/app/blobs/{config_digest}"), config.clone()),
        (format!("/v2/t/app/blobs/{layer_digest}"), evil),
    ]);
    let store = BlobStore::with_root(tmp.path().join("s1")).unwrap();
    let r = pull_image(&format!("{addr}/t/app:v1"), &store).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    assert!(!store.has_blob(&layer_digest).unwrap());

    // 2. A manifest fetched by digest whose bytes are another manifest.
    let other = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": []})).unwrap();
    let addr = fake_registry(vec![(
        format!("/v2/t/app/manifests/{manifest_digest}"),
        other,
    )]);
    let store = BlobStore::with_root(tmp.path().join("s2")).unwrap();
    let r = pull_image(&format!("{addr}/t/app@{manifest_digest}"), &store).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");

    // 3. A layer longer than its descriptor says.
    let (manifest3, config3, config_digest3, layer_digest3) =
        image_parts(&layer, layer.len() - 512);
    let addr = fake_registry(vec![
        ("/v2/t/app/manifests/v1".into(), manifest3.clone()),
        (
            format!("/v2/t/app/manifests/{}", Digest::of(&manifest3)),
            manifest3,
        ),
        (format!("/v2/t/app/blobs/{config_digest3}"), config3),
        (format!("/v2/t/app/blobs/{layer_digest3}"), layer.clone()),
    ]);
    let store = BlobStore::with_root(tmp.path().join("s3")).unwrap();
    let r = pull_image(&format!("{addr}/t/app:v1"), &store).await;
    assert!(
        matches!(
            r,
            Err(Error::SizeLimit { .. }) | Err(Error::SizeMismatch { .. })
        ),
        "{r:?}"
    );

    // 4. The genuine image from the same fake registry pulls fine (the checks are not blanket).
    let addr = fake_registry(vec![
        ("/v2/t/app/manifests/v1".into(), manifest.clone()),
        (format!("/v2/t/app/manifests/{manifest_digest}"), manifest),
        (format!("/v2/t/app/blobs/{config_digest}"), config),
        (format!("/v2/t/app/blobs/{layer_digest}"), layer),
    ]);
    let store = BlobStore::with_root(tmp.path().join("s4")).unwrap();
    let image = pull_image(&format!("{addr}/t/app:v1"), &store)
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, manifest_digest);
}

//! Image pull: OCI image layout directories, `oci-archive` tarballs and registries.
//!
//! Owns: [`pull_image`], reference parsing ([`ImageSource`]) and [`PulledImage`]. Every blob
//! (index, manifest, config, layer) is copied into the [`BlobStore`], which verifies its digest
//! and size before it is stored. Must never: trust a blob that does not match its descriptor,
//! follow a layout path built from an unvalidated digest, or let a pull run longer than
//! [`IMAGE_PULL_TIMEOUT`] or talk to a registry over plain HTTP unless it is on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::constants::{IMAGE_PULL_TIMEOUT, MAX_LAYERS, MAX_LAYER_SIZE, MAX_MANIFEST_SIZE};
use crate::error::{Error, Result};
use crate::storage::{BlobStore, Digest};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An image whose manifest, config and layers are all in the blob store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference it was pulled by.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
}

/// Where an image comes from, parsed from a reference string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `oci:<dir>[:<tag>]`: an OCI image layout directory.
    Layout {
        /// Layout directory.
        dir: PathBuf,
        /// Tag (`org.opencontainers.image.ref.name`), or the only image when absent.
        tag: Option<String>,
    },
    /// `oci-archive:<file>[:<tag>]`: a tar of an OCI image layout.
    Archive {
        /// Archive file.
        file: PathBuf,
        /// Tag, as for layouts.
        tag: Option<String>,
    },
    /// `[registry/]repository[:tag|@digest]`.
    Registry {
        /// Registry host (with port), `docker.io` by default.
        registry: String,
        /// Repository path (`library/` added for single-name Docker Hub images).
        repository: String,
        /// Tag or `sha256:` digest.
        reference: String,
    },
}

fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    // `oci:/path/dir:tag`: the tag is after the last ':' when that part has no '/'.
    match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() && !p.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(rest), None),
    }
}

impl ImageSource {
    /// Parses a reference. Pure.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: reference.chars().take(256).collect(),
            reason: reason.to_string(),
        };
        if reference.is_empty() || reference.len() > 4096 {
            return Err(bad("empty or longer than 4096 bytes"));
        }
        if let Some(rest) = reference.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            return Ok(ImageSource::Layout { dir, tag });
        }
        if let Some(rest) = reference.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            return Ok(ImageSource::Archive { file, tag });
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("contains whitespace or control characters"));
        }
        let (name, tag_or_digest) = if let Some((n, d)) = reference.split_once('@') {
            Digest::parse(d).map_err(|_| bad("digest must be sha256:<64 hex>"))?;
            (n, d.to_string())
        } else {
            match reference.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t.to_string()),
                _ => (reference, "latest".to_string()),
            }
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && c != "."
                    && c != ".."
            });
        if !valid_repo {
            return Err(bad(
                "repository must be lowercase [a-z0-9._-] path components",
            ));
        }
        let valid_tag = tag_or_digest.starts_with("sha256:")
            || (!tag_or_digest.is_empty()
                && tag_or_digest.len() <= 128
                && tag_or_digest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        if !valid_tag {
            return Err(bad("tag must be 1-128 characters of [A-Za-z0-9._-]"));
        }
        Ok(ImageSource::Registry {
            registry,
            repository,
            reference: tag_or_digest,
        })
    }
}

/// Options of [`pull_image_with`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Bound on the whole pull (default [`IMAGE_PULL_TIMEOUT`]).
    pub timeout: Duration,
    /// OS picked from a multi-platform index (default `linux`).
    pub os: String,
    /// Architecture picked from an index (default: this machine's, in OCI spelling).
    pub architecture: String,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            timeout: IMAGE_PULL_TIMEOUT,
            os: "linux".into(),
            architecture: oci_arch(std::env::consts::ARCH).into(),
        }
    }
}

/// Maps a Rust arch name to the OCI (Go) one. Pure.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Pulls `reference` into `storage` with default options. See [`ImageSource`] for the forms.
pub async fn pull_image(reference: &str, storage: &BlobStore) -> Result<PulledImage> {
    pull_image_with(reference, storage, &PullOptions::default()).await
}

/// Pulls `reference` into `storage`, bounded by `options.timeout`.
pub async fn pull_image_with(
    reference: &str,
    storage: &BlobStore,
    options: &PullOptions,
) -> Result<PulledImage> {
    let source = ImageSource::parse(reference)?;
    let store = storage.clone();
    let opts = options.clone();
    let reference_owned = reference.to_string();
    let work = async move {
        match source {
            ImageSource::Layout { dir, tag } => tokio::task::spawn_blocking(move || {
                import_layout(&dir, tag.as_deref(), &store, &opts, &reference_owned)
            })
            .await
            .map_err(|e| Error::Pull(format!("import task failed: {e}")))?,
            ImageSource::Archive { file, tag } => tokio::task::spawn_blocking(move || {
                import_archive(&file, tag.as_deref(), &store, &opts, &reference_owned)
            })
            .await
            .map_err(|e| Error::Pull(format!("import task failed: {e}")))?,
            ImageSource::Registry {
                registry,
                repository,
                reference: r,
            } => registry::pull(&registry, &repository, &r, &store, &opts, &reference_owned).await,
        }
    };
    tokio::time::timeout(options.timeout, work)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("pull of {reference}"),
            after: options.timeout,
        })?
}

/// Checks the manifest's shape: layer count, media types, sizes. Pure.
pub fn check_manifest(manifest: &ImageManifest) -> Result<()> {
    let n = manifest.layers().len();
    if n > MAX_LAYERS {
        return Err(Error::TooManyLayers {
            count: n,
            limit: MAX_LAYERS,
        });
    }
    if manifest.config().size() > MAX_MANIFEST_SIZE {
        return Err(Error::SizeLimit {
            what: "image config".into(),
            limit: MAX_MANIFEST_SIZE,
        });
    }
    for l in manifest.layers() {
        if l.size() > MAX_LAYER_SIZE {
            return Err(Error::SizeLimit {
                what: format!("layer {}", l.digest()),
                limit: MAX_LAYER_SIZE,
            });
        }
        let mt = l.media_type().to_string();
        if mt.contains("zstd") {
            return Err(Error::InvalidImage(format!(
                "layer media type {mt} is not supported"
            )));
        }
    }
    Ok(())
}

fn platform_matches(d: &Descriptor, opts: &PullOptions) -> bool {
    match d.platform() {
        Some(p) => {
            p.os().to_string() == opts.os && p.architecture().to_string() == opts.architecture
        }
        None => true,
    }
}

/// Chooses a manifest from an index: by tag when given, else by platform, else the only one.
fn select_from_index<'a>(
    index: &'a ImageIndex,
    tag: Option<&str>,
    opts: &PullOptions,
) -> Result<&'a Descriptor> {
    let manifests = index.manifests();
    if let Some(tag) = tag {
        return manifests
            .iter()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME_ANNOTATION))
                    .is_some_and(|n| n == tag)
            })
            .ok_or_else(|| Error::InvalidImage(format!("no image tagged {tag:?} in the index")));
    }
    if manifests.len() == 1 {
        return Ok(&manifests[0]);
    }
    manifests
        .iter()
        .find(|d| platform_matches(d, opts) && d.platform().is_some())
        .ok_or_else(|| {
            Error::InvalidImage(format!(
                "index has {} manifests and none for {}/{}; name a tag",
                manifests.len(),
                opts.os,
                opts.architecture
            ))
        })
}

/// Reads a blob from an OCI layout directory into the store (verified) and returns its path.
fn copy_layout_blob(dir: &Path, d: &Descriptor, store: &BlobStore, max: u64) -> Result<PathBuf> {
    let digest = Digest::parse(d.digest().as_ref())?;
    let path = dir.join("blobs").join("sha256").join(digest.hex());
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    store.put_reader(&digest.to_string(), f, Some(d.size()), max)
}

fn read_json_blob<T: serde::de::DeserializeOwned>(store: &BlobStore, digest: &str) -> Result<T> {
    let data = store.get_blob(digest)?;
    serde_json::from_slice(&data).map_err(|e| Error::InvalidImage(format!("{digest}: {e}")))
}

fn import_layout(
    dir: &Path,
    tag: Option<&str>,
    store: &BlobStore,
    opts: &PullOptions,
    reference: &str,
) -> Result<PulledImage> {
    let layout_file = dir.join("oci-layout");
    let layout = std::fs::read(&layout_file).map_err(|e| Error::io(&layout_file, e))?;
    let layout: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| Error::InvalidImage(format!("oci-layout: {e}")))?;
    if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(Error::InvalidImage(
            "oci-layout must declare imageLayoutVersion 1.0.0".into(),
        ));
    }
    let index_path = dir.join("index.json");
    let meta = std::fs::metadata(&index_path).map_err(|e| Error::io(&index_path, e))?;
    if meta.len() > MAX_MANIFEST_SIZE {
        return Err(Error::SizeLimit {
            what: "index.json".into(),
            limit: MAX_MANIFEST_SIZE,
        });
    }
    let index = ImageIndex::from_file(&index_path)
        .map_err(|e| Error::InvalidImage(format!("index.json: {e}")))?;
    let mut desc = select_from_index(&index, tag, opts)?.clone();
    // Nested index (multi-platform image inside the layout): descend once.
    for _ in 0..2 {
        let mt = desc.media_type().to_string();
        if mt == OCI_INDEX || mt == DOCKER_LIST {
            copy_layout_blob(dir, &desc, store, MAX_MANIFEST_SIZE)?;
            let nested: ImageIndex = read_json_blob(store, desc.digest().as_ref())?;
            desc = select_from_index(&nested, None, opts)?.clone();
        } else {
            break;
        }
    }
    copy_layout_blob(dir, &desc, store, MAX_MANIFEST_SIZE)?;
    let manifest_digest = desc.digest().to_string();
    let manifest: ImageManifest = read_json_blob(store, &manifest_digest)?;
    check_manifest(&manifest)?;
    copy_layout_blob(dir, manifest.config(), store, MAX_MANIFEST_SIZE)?;
    let config: ImageConfiguration = read_json_blob(store, manifest.config().digest().as_ref())?;
    for l in manifest.layers() {
        copy_layout_blob(dir, l, store, MAX_LAYER_SIZE)?;
    }
    Ok(PulledImage {
        reference: reference.to_string(),
        manifest_digest,
        manifest,
        config,
    })
}

fn import_archive(
    file: &Path,
    tag: Option<&str>,
    store: &BlobStore,
    opts: &PullOptions,
    reference: &str,
) -> Result<PulledImage> {
    let tmp = tempfile::Builder::new()
        .prefix("magikrun-archive-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    // The archive is untrusted: unpack it with the same hardened extractor as layers.
    let limits = crate::extract::ExtractLimits {
        max_layer_size: crate::constants::MAX_ROOTFS_SIZE,
        ..Default::default()
    };
    let mut used = 0;
    crate::extract::extract_layer(f, tmp.path(), &limits, &mut used)?;
    import_layout(tmp.path(), tag, store, opts, reference)
}

mod registry {
    //! Registry client (OCI distribution spec) on the workspace's reqwest.
    use super::*;

    const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

    /// Whether plain HTTP may be used: loopback registries only.
    pub(super) fn scheme_for(registry: &str) -> &'static str {
        let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        {
            "http"
        } else {
            "https"
        }
    }

    struct Client {
        http: reqwest::Client,
        base: String,
        repository: String,
        token: Option<String>,
    }

    fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
        let rest = h.strip_prefix("Bearer ")?;
        let mut realm = None;
        let mut params = Vec::new();
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            let v = v.trim_matches('"').to_string();
            if k == "realm" {
                realm = Some(v);
            } else {
                params.push((k.to_string(), v));
            }
        }
        Some((realm?, params))
    }

    impl Client {
        async fn get(&mut self, path: &str, accept: Option<&str>) -> Result<reqwest::Response> {
            let url = format!("{}/v2/{}/{}", self.base, self.repository, path);
            for _ in 0..2 {
                let mut req = self.http.get(&url);
                if let Some(a) = accept {
                    req = req.header("Accept", a);
                }
                if let Some(t) = &self.token {
                    req = req.bearer_auth(t);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| Error::Pull(format!("GET {url}: {e}")))?;
                if resp.status() == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_challenge)
                        .ok_or_else(|| {
                            Error::Pull(format!("GET {url}: 401 without a Bearer challenge"))
                        })?;
                    let (realm, params) = challenge;
                    let tok: serde_json::Value = self
                        .http
                        .get(&realm)
                        .query(&params)
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .map_err(|e| Error::Pull(format!("token from {realm}: {e}")))?
                        .json()
                        .await
                        .map_err(|e| Error::Pull(format!("token from {realm}: {e}")))?;
                    let t = tok
                        .get("token")
                        .or_else(|| tok.get("access_token"))
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| Error::Pull("token response without a token".into()))?;
                    self.token = Some(t.to_string());
                    continue;
                }
                if !resp.status().is_success() {
                    return Err(Error::Pull(format!("GET {url}: HTTP {}", resp.status())));
                }
                return Ok(resp);
            }
            Err(Error::Pull(format!("GET {url}: unauthorized")))
        }

        /// Downloads a blob or manifest, verifying digest and size while streaming.
        async fn fetch_into(
            &mut self,
            path: &str,
            accept: Option<&str>,
            digest: &str,
            size: Option<u64>,
            max: u64,
            store: &BlobStore,
        ) -> Result<()> {
            if store.has_blob(digest)? {
                // Already stored, and stored only after verification.
                return Ok(());
            }
            let mut resp = self.get(path, accept).await?;
            let mut buf: Vec<u8> = Vec::new();
            let limit = size.map_or(max, |s| s.min(max));
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| Error::Pull(format!("{digest}: {e}")))?
            {
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Err(Error::SizeLimit {
                        what: format!("blob {digest}"),
                        limit,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            let store = store.clone();
            let digest = digest.to_string();
            tokio::task::spawn_blocking(move || store.put_reader(&digest, &buf[..], size, max))
                .await
                .map_err(|e| Error::Pull(format!("store task: {e}")))??;
            Ok(())
        }
    }

    pub(super) async fn pull(
        registry: &str,
        repository: &str,
        reference: &str,
        store: &BlobStore,
        opts: &PullOptions,
        original: &str,
    ) -> Result<PulledImage> {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| Error::Pull(e.to_string()))?;
        let mut c = Client {
            http,
            base: format!("{}://{}", scheme_for(host), host),
            repository: repository.to_string(),
            token: None,
        };
        // Resolve the reference to a manifest digest.
        let mut digest = if reference.starts_with("sha256:") {
            reference.to_string()
        } else {
            let resp = c
                .get(&format!("manifests/{reference}"), Some(ACCEPT))
                .await?;
            let body = resp
                .bytes()
                .await
                .map_err(|e| Error::Pull(format!("manifest {reference}: {e}")))?;
            if body.len() as u64 > MAX_MANIFEST_SIZE {
                return Err(Error::SizeLimit {
                    what: "manifest".into(),
                    limit: MAX_MANIFEST_SIZE,
                });
            }
            // The digest is computed here, never taken from a header.
            let d = Digest::of(&body).to_string();
            store.put_blob(&d, &body)?;
            d
        };
        for _ in 0..2 {
            c.fetch_into(
                &format!("manifests/{digest}"),
                Some(ACCEPT),
                &digest,
                None,
                MAX_MANIFEST_SIZE,
                store,
            )
            .await?;
            let v: serde_json::Value = read_json_blob(store, &digest)?;
            let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
            let is_index = mt == OCI_INDEX
                || mt == DOCKER_LIST
                || (mt.is_empty() && v.get("manifests").is_some());
            if !is_index {
                break;
            }
            let index: ImageIndex = serde_json::from_value(v)
                .map_err(|e| Error::InvalidImage(format!("index {digest}: {e}")))?;
            digest = select_from_index(&index, None, opts)?.digest().to_string();
        }
        let manifest: ImageManifest = read_json_blob(store, &digest)?;
        let mt = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        if !(mt.is_empty() || mt == OCI_MANIFEST || mt == DOCKER_MANIFEST) {
            return Err(Error::InvalidImage(format!(
                "unsupported manifest media type {mt}"
            )));
        }
        check_manifest(&manifest)?;
        let cfg = manifest.config();
        c.fetch_into(
            &format!("blobs/{}", cfg.digest()),
            None,
            cfg.digest().as_ref(),
            Some(cfg.size()),
            MAX_MANIFEST_SIZE,
            store,
        )
        .await?;
        let config: ImageConfiguration = read_json_blob(store, cfg.digest().as_ref())?;
        for l in manifest.layers() {
            c.fetch_into(
                &format!("blobs/{}", l.digest()),
                None,
                l.digest().as_ref(),
                Some(l.size()),
                MAX_LAYER_SIZE,
                store,
            )
            .await?;
        }
        Ok(PulledImage {
            reference: original.to_string(),
            manifest_digest: digest,
            manifest,
            config,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn plain_http_only_on_loopback() {
            for (r, s) in [
                ("127.0.0.1:5000", "http"),
                ("localhost:5000", "http"),
                ("[::1]:5000", "http"),
                ("registry-1.docker.io", "https"),
                ("10.0.0.1:5000", "https"),
                ("example.com:5000", "https"),
            ] {
                assert_eq!(scheme_for(r), s, "{r}");
            }
        }

        #[test]
        fn bearer_challenge() {
            let (realm, params) = parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#,
            )
            .unwrap();
            assert_eq!(realm, "https://auth.example/token");
            assert_eq!(params.len(), 2);
            assert!(parse_challenge("Basic realm=x").is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parsing() {
        let reg = |r: &str, repo: &str, t: &str| ImageSource::Registry {
            registry: r.into(),
            repository: repo.into(),
            reference: t.into(),
        };
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = vec![
            ("alpine:3.18", reg("docker.io", "library/alpine", "3.18")),
            ("alpine", reg("docker.io", "library/alpine", "latest")),
            ("user/app:v1", reg("docker.io", "user/app", "v1")),
            (
                "127.0.0.1:5000/test/img:t",
                reg("127.0.0.1:5000", "test/img", "t"),
            ),
            ("localhost/img", reg("localhost", "img", "latest")),
            (
                "oci:/tmp/layout:v1",
                ImageSource::Layout {
                    dir: "/tmp/layout".into(),
                    tag: Some("v1".into()),
                },
            ),
            (
                "oci:/tmp/layout",
                ImageSource::Layout {
                    dir: "/tmp/layout".into(),
                    tag: None,
                },
            ),
            (
                "oci-archive:./img.tar:latest",
                ImageSource::Archive {
                    file: "./img.tar".into(),
                    tag: Some("latest".into()),
                },
            ),
        ];
        for (r, want) in cases {
            assert_eq!(ImageSource::parse(r).unwrap(), want, "{r}");
        }
        let by_digest = format!("ghcr.io/o/r@{d}");
        assert_eq!(
            ImageSource::parse(&by_digest).unwrap(),
            reg("ghcr.io", "o/r", &d)
        );
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "img@sha256:xyz",
            "a//b",
            "x/../y:1",
            "img:bad tag",
            "img:t@g",
        ] {
            assert!(
                matches!(ImageSource::parse(bad), Err(Error::InvalidReference { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arch_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("riscv64"), "riscv64");
    }
}

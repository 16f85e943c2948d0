//! Writing OCI image layouts: package layers you already have into a local image.
//!
//! Owns: [`LayerBlob`], [`ImageDraft`], [`write_layout`] and [`write_archive`], used to make
//! images for machines without registry access (and by this crate's tests and examples).
//! Must never: write outside the layout directory it is given (blob names are digests it computes).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};
use crate::storage::Digest;

/// One layer: the blob bytes and the digest of its uncompressed tar (diff id).
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// Blob as stored (tar or tar+gzip).
    pub data: Vec<u8>,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Whether `data` is gzip-compressed.
    pub gzip: bool,
}

impl LayerBlob {
    /// An uncompressed tar layer.
    pub fn plain(tar: Vec<u8>) -> Self {
        let diff_id = Digest::of(&tar).to_string();
        LayerBlob {
            data: tar,
            diff_id,
            gzip: false,
        }
    }

    /// A gzip-compressed layer made from `tar`.
    pub fn gzip(tar: &[u8]) -> Result<Self> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(tar).map_err(|e| Error::io("<gzip>", e))?;
        let data = enc.finish().map_err(|e| Error::io("<gzip>", e))?;
        Ok(LayerBlob {
            data,
            diff_id: Digest::of(tar).to_string(),
            gzip: true,
        })
    }

    fn media_type(&self) -> &'static str {
        if self.gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        }
    }
}

/// An image to write into a layout.
#[derive(Debug, Clone, Default)]
pub struct ImageDraft {
    /// Tag (`org.opencontainers.image.ref.name`).
    pub tag: String,
    /// Layers, lowest first.
    pub layers: Vec<LayerBlob>,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// User (`uid[:gid]` or a name).
    pub user: String,
    /// Working directory.
    pub working_dir: String,
    /// OS (default `linux`).
    pub os: String,
    /// Architecture (default: this machine's, OCI spelling).
    pub architecture: String,
}

fn write_blob(dir: &Path, data: &[u8]) -> Result<String> {
    let d = Digest::of(data);
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let p = blobs.join(d.hex());
    std::fs::write(&p, data).map_err(|e| Error::io(&p, e))?;
    Ok(d.to_string())
}

/// Writes `images` into the OCI image layout at `dir` (created if needed), adding them to an
/// existing `index.json`. Returns the manifest digests.
pub fn write_layout(dir: &Path, images: &[ImageDraft]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Error::io(&layout, e))?;
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)?
            .get("manifests")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut out = Vec::new();
    for img in images {
        let os = if img.os.is_empty() { "linux" } else { &img.os };
        let arch = if img.architecture.is_empty() {
            crate::image::oci_arch(std::env::consts::ARCH)
        } else {
            &img.architecture
        };
        let mut cfg = serde_json::Map::new();
        if !img.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), json!(img.entrypoint));
        }
        if !img.cmd.is_empty() {
            cfg.insert("Cmd".into(), json!(img.cmd));
        }
        if !img.env.is_empty() {
            cfg.insert("Env".into(), json!(img.env));
        }
        if !img.user.is_empty() {
            cfg.insert("User".into(), json!(img.user));
        }
        if !img.working_dir.is_empty() {
            cfg.insert("WorkingDir".into(), json!(img.working_dir));
        }
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": img.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = write_blob(dir, &config_bytes)?;
        let mut layers = Vec::new();
        for l in &img.layers {
            let d = write_blob(dir, &l.data)?;
            layers.push(json!({"mediaType": l.media_type(), "digest": d, "size": l.data.len()}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": layers
        });
        let mbytes = serde_json::to_vec(&manifest)?;
        let mdigest = write_blob(dir, &mbytes)?;
        manifests.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(|v| v.as_str())
                != Some(img.tag.as_str())
        });
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest,
            "size": mbytes.len(),
            "platform": {"os": os, "architecture": arch},
            "annotations": {"org.opencontainers.image.ref.name": img.tag}
        }));
        out.push(mdigest);
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)
        .map_err(|e| Error::io(&index_path, e))?;
    Ok(out)
}

/// Packs the layout directory `dir` into an `oci-archive` tarball at `out`.
pub fn write_archive(dir: &Path, out: &Path) -> Result<()> {
    let f = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).map_err(|e| Error::io(dir, e))?;
    b.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(out, e))
}

/// Builds an uncompressed tar from `(path, mode, contents)` regular files (directories are
/// added for every parent). A small helper for images made in code.
pub fn tar_of_files(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut p = Path::new(path);
        while let Some(parent) = p.parent() {
            if parent.as_os_str().is_empty() {
                break;
            }
            dirs.insert(parent.to_path_buf());
            p = parent;
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, &[][..])
            .map_err(|e| Error::io(d, e))?;
    }
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data)
            .map_err(|e| Error::io(path, e))?;
    }
    b.into_inner().map_err(|e| Error::io("<tar>", e))
}

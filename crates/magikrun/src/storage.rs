//! Content-addressed blob storage.
//!
//! Owns: the on-disk layout `<root>/sha256/<first two hex>/<64 hex>`, digest parsing
//! ([`Digest`]) and verified, atomic writes. Must never: store bytes under a digest they do not
//! hash to, expose a partly written blob under its final name, or build a path from an
//! unvalidated digest string.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`. Any other algorithm, length, case or character is
    /// refused (this string becomes a file name).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| {
            Err(Error::InvalidDigest {
                digest: s.chars().take(100).collect(),
                reason,
            })
        };
        let Some((algo, hex)) = s.split_once(':') else {
            return bad("missing algorithm prefix (expected sha256:<hex>)");
        };
        if algo != "sha256" {
            return bad("only sha256 is supported");
        }
        if hex.len() != 64 {
            return bad("sha256 hex must be 64 characters");
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad("sha256 hex must be lowercase 0-9a-f");
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

/// Content-addressed store of OCI blobs (layers, configs, manifests).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The default store root: `$MAGIKRUN_HOME/blobs`, else `~/.magikrun/blobs`.
pub fn default_blob_root() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("MAGIKRUN_HOME") {
        return Ok(PathBuf::from(h).join("blobs"));
    }
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h).join(".magikrun").join("blobs")),
        _ => Err(Error::Unsupported(
            "no HOME or MAGIKRUN_HOME to place the blob store in".into(),
        )),
    }
}

impl BlobStore {
    /// A store at the default root (`~/.magikrun/blobs`), created if missing.
    pub fn new() -> Result<Self> {
        Self::with_root(default_blob_root()?)
    }

    /// A store rooted at `root`, created if missing.
    pub fn with_root(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let algo = root.join("sha256");
        fs::create_dir_all(&algo).map_err(|e| Error::io(&algo, e))?;
        Ok(BlobStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is stored).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("sha256")
            .join(&digest.hex[..2])
            .join(&digest.hex)
    }

    /// Whether the blob is stored.
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        let d = Digest::parse(digest)?;
        Ok(self.blob_path(&d).is_file())
    }

    /// Stores `data` under `digest` after checking that it hashes to it. Storing a blob that is
    /// already present is a no-op (deduplication). Returns the blob's path.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<PathBuf> {
        self.put_reader(digest, data, Some(data.len() as u64), u64::MAX)
    }

    /// Streams a blob into the store, verifying digest, the announced `size` (when given) and
    /// `max_size` while writing; the blob appears under its name only once fully verified.
    pub fn put_reader(
        &self,
        digest: &str,
        mut reader: impl Read,
        size: Option<u64>,
        max_size: u64,
    ) -> Result<PathBuf> {
        let d = Digest::parse(digest)?;
        let final_path = self.blob_path(&d);
        let limit = size.map_or(max_size, |s| s.min(max_size));
        if let Some(s) = size {
            if s > max_size {
                return Err(Error::SizeLimit {
                    what: format!("blob {d}"),
                    limit: max_size,
                });
            }
        }
        let shard = final_path
            .parent()
            .ok_or_else(|| Error::InvalidDigest {
                digest: digest.into(),
                reason: "no parent",
            })?
            .to_path_buf();
        fs::create_dir_all(&shard).map_err(|e| Error::io(&shard, e))?;

        let tmp_path = shard.join(format!(
            ".tmp-{}-{}-{}",
            d.hex(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut tmp = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| Error::io(&tmp_path, e))?;
        let result = (|| {
            let mut hasher = Sha256::new();
            let mut written: u64 = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(|e| Error::io(&tmp_path, e))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > limit {
                    return Err(match size {
                        Some(s) if s <= max_size => Error::SizeMismatch {
                            digest: d.to_string(),
                            expected: s,
                            actual: written,
                        },
                        _ => Error::SizeLimit {
                            what: format!("blob {d}"),
                            limit: max_size,
                        },
                    });
                }
                hasher.update(&buf[..n]);
                tmp.write_all(&buf[..n])
                    .map_err(|e| Error::io(&tmp_path, e))?;
            }
            if let Some(s) = size {
                if written != s {
                    return Err(Error::SizeMismatch {
                        digest: d.to_string(),
                        expected: s,
                        actual: written,
                    });
                }
            }
            let actual = hex::encode(hasher.finalize());
            if actual != d.hex {
                return Err(Error::DigestMismatch {
                    expected: d.to_string(),
                    actual: format!("sha256:{actual}"),
                });
            }
            tmp.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
            Ok(())
        })();
        drop(tmp);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        if final_path.is_file() {
            // Deduplicated: identical content is already stored.
            let _ = fs::remove_file(&tmp_path);
            return Ok(final_path);
        }
        // rename() atomically replaces: concurrent writers of the same digest all rename
        // verified, identical content, so any winner is correct.
        fs::rename(&tmp_path, &final_path).map_err(|e| {
            let _ = fs::remove_file(&tmp_path);
            Error::io(&final_path, e)
        })?;
        File::open(&shard)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io(&shard, e))?;
        Ok(final_path)
    }

    /// Reads a blob, re-verifying its digest (a blob altered on disk is an error).
    pub fn get_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let d = Digest::parse(digest)?;
        let path = self.blob_path(&d);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BlobNotFound(d.to_string()))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let actual = Digest::of(&data);
        if actual != d {
            return Err(Error::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Opens a blob for streaming (callers that stream should verify, e.g. via the extractor).
    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let d = Digest::parse(digest)?;
        let path = self.blob_path(&d);
        File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::BlobNotFound(d.to_string())
            } else {
                Error::io(&path, e)
            }
        })
    }

    /// Removes a blob; removing an absent blob is not an error.
    pub fn delete_blob(&self, digest: &str) -> Result<()> {
        let d = Digest::parse(digest)?;
        let path = self.blob_path(&d);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(data: &[u8]) -> String {
        Digest::of(data).to_string()
    }

    #[test]
    fn digest_grammar() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "ab".repeat(32));
        let bad = [
            "".to_string(),
            "sha256".to_string(),
            "sha256:".to_string(),
            format!(":{}", "a".repeat(64)),
            format!("SHA256:{}", "a".repeat(64)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{}g", "a".repeat(63)),
            "sha256:../..".to_string(),
            format!("sha256:../../{}", "a".repeat(58)),
            format!("sha256:{}/", "a".repeat(63)),
            format!("sha256:{}\0", "a".repeat(63)),
            format!("sha256:{} ", "a".repeat(63)),
            format!("sha256+b64u:{}", "a".repeat(64)),
        ];
        for b in &bad {
            assert!(
                matches!(Digest::parse(b), Err(Error::InvalidDigest { .. })),
                "{b:?}"
            );
        }
    }

    #[test]
    fn put_get_roundtrip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path().join("blobs")).unwrap();
        let data = b"layer content";
        let digest = digest_of(data);
        let path = store.put_blob(&digest, data).unwrap();
        let hex = &digest[7..];
        assert_eq!(
            path,
            dir.path().join("blobs/sha256").join(&hex[..2]).join(hex)
        );
        assert_eq!(store.get_blob(&digest).unwrap(), data);
        assert!(store.has_blob(&digest).unwrap());
        // No temp files left behind.
        let shard: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(shard.len(), 1);
    }

    #[test]
    fn wrong_digest_is_refused_and_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path()).unwrap();
        let digest = digest_of(b"other");
        let err = store.put_blob(&digest, b"content").unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&digest).unwrap());
        let d = Digest::parse(&digest).unwrap();
        let shard = store.blob_path(&d).parent().unwrap().to_path_buf();
        assert_eq!(fs::read_dir(shard).unwrap().count(), 0, "temp file removed");
    }

    #[test]
    fn bad_digest_strings_never_touch_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path().join("b")).unwrap();
        for bad in [
            "sha256:../..",
            "sha256:../../etc/passwd",
            "../x",
            "sha256:ABC",
        ] {
            assert!(matches!(
                store.put_blob(bad, b"x"),
                Err(Error::InvalidDigest { .. })
            ));
            assert!(matches!(
                store.get_blob(bad),
                Err(Error::InvalidDigest { .. })
            ));
            assert!(store.has_blob(bad).is_err());
            assert!(store.delete_blob(bad).is_err());
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn size_checks_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path()).unwrap();
        let data = vec![7u8; 1000];
        let digest = digest_of(&data);
        // Announced size smaller than content (trailing bytes).
        let err = store
            .put_reader(&digest, &data[..], Some(999), u64::MAX)
            .unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        // Announced size larger than content (short read).
        let err = store
            .put_reader(&digest, &data[..], Some(1001), u64::MAX)
            .unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
        // Over the max size, unannounced.
        let err = store.put_reader(&digest, &data[..], None, 999).unwrap_err();
        assert!(matches!(err, Error::SizeLimit { .. }), "{err}");
        // Announced over the max.
        let err = store
            .put_reader(&digest, &data[..], Some(1000), 999)
            .unwrap_err();
        assert!(matches!(err, Error::SizeLimit { .. }), "{err}");
        assert!(!store.has_blob(&digest).unwrap());
        store
            .put_reader(&digest, &data[..], Some(1000), 1000)
            .unwrap();
        assert!(store.has_blob(&digest).unwrap());
    }

    #[test]
    fn dedup_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path()).unwrap();
        let digest = digest_of(b"same");
        let p1 = store.put_blob(&digest, b"same").unwrap();
        let p2 = store.put_blob(&digest, b"same").unwrap();
        assert_eq!(p1, p2);
        assert_eq!(fs::read_dir(p1.parent().unwrap()).unwrap().count(), 1);
        fs::write(&p1, b"tampered").unwrap();
        assert!(matches!(
            store.get_blob(&digest),
            Err(Error::DigestMismatch { .. })
        ));
        store.delete_blob(&digest).unwrap();
        assert!(matches!(
            store.get_blob(&digest),
            Err(Error::BlobNotFound(_))
        ));
        store.delete_blob(&digest).unwrap();
    }

    #[test]
    fn concurrent_writers_of_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::with_root(dir.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(&data);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| store.put_blob(&digest, &data).unwrap());
            }
        });
        assert_eq!(store.get_blob(&digest).unwrap(), data);
        let d = Digest::parse(&digest).unwrap();
        let shard = store.blob_path(&d).parent().unwrap().to_path_buf();
        assert_eq!(
            fs::read_dir(shard).unwrap().count(),
            1,
            "one copy, no temp files"
        );
    }

    #[test]
    fn default_root_under_home() {
        let root = default_blob_root();
        if std::env::var_os("MAGIKRUN_HOME").is_none() {
            if let Some(h) = std::env::var_os("HOME") {
                assert_eq!(root.unwrap(), PathBuf::from(h).join(".magikrun/blobs"));
            }
        }
    }
}

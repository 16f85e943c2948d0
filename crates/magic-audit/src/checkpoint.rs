//! Signed checkpoints and the signing key.
//!
//! Owns: the checkpoint statement (an Ed25519 signature over a chain length and the head
//! hash at that length), loading or generating the signing key, and checking a checkpoint
//! against a set of trusted public keys.
//!
//! Must never: log, print or store the private key anywhere but the key file it was
//! generated into (mode 0600); accept a checkpoint whose key is not trusted.
//!
//! # Signed statement
//!
//! The signature covers the ASCII text
//! `magic-audit checkpoint v1\n<seq>\n<head_hash>\n<timestamp>\n`, where `<seq>` is the
//! decimal number of records covered (the seq of the head record), `<head_hash>` that
//! record's hash in lowercase hex and `<timestamp>` when the checkpoint was made (record
//! timestamp format). Keys and signatures are written in lowercase hex (32 and 64 bytes).

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;

use crate::AuditError;

/// File in the data dir holding a generated signing key (hex seed, mode 0600).
pub const KEY_FILE_NAME: &str = "audit_signing.key";

/// A signed statement that the chain had `seq` records with head `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Number of records covered: the seq of the head record.
    pub seq: u64,
    /// Hash of record `seq` (hex).
    pub head_hash: String,
    /// When the checkpoint was made.
    pub timestamp: String,
    /// Ed25519 public key that signed it (hex).
    pub public_key: String,
    /// Ed25519 signature over [`Checkpoint::statement`] (hex).
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn statement(seq: u64, head_hash: &str, timestamp: &str) -> String {
        format!("magic-audit checkpoint v1\n{seq}\n{head_hash}\n{timestamp}\n")
    }

    /// Sign a checkpoint of `seq` records with head `head_hash`.
    pub fn sign(key: &SigningKey, seq: u64, head_hash: &str, timestamp: String) -> Checkpoint {
        let sig = key.sign(Checkpoint::statement(seq, head_hash, &timestamp).as_bytes());
        Checkpoint {
            seq,
            head_hash: head_hash.to_string(),
            timestamp,
            public_key: hex::encode(key.verifying_key().to_bytes()),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Check the signature and that the signing key is one of `trusted`. The reason is
    /// returned on failure.
    pub fn check(&self, trusted: &[VerifyingKey]) -> Result<(), String> {
        let key = parse_public_key(&self.public_key)
            .map_err(|_| format!("checkpoint {} has a malformed public key", self.seq))?;
        if !trusted.contains(&key) {
            return Err(format!(
                "checkpoint {} is signed by untrusted key {}",
                self.seq, self.public_key
            ));
        }
        let mut sig = [0_u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig)
            .map_err(|_| format!("checkpoint {} has a malformed signature", self.seq))?;
        let sig = Signature::from_bytes(&sig);
        let statement = Checkpoint::statement(self.seq, &self.head_hash, &self.timestamp);
        key.verify_strict(statement.as_bytes(), &sig)
            .map_err(|_| format!("checkpoint {} has an invalid signature", self.seq))
    }

    /// One JSON object on one line, tagged `{"checkpoint": {...}}` (sinks and exports).
    pub fn to_json_line(&self) -> String {
        serde_json::json!({ "checkpoint": self }).to_string()
    }
}

/// Parse a comma-separated list of hex Ed25519 public keys, all or nothing.
pub fn parse_public_keys(list: &str) -> Result<Vec<VerifyingKey>, AuditError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_public_key)
        .collect()
}

/// Parse one hex Ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuditError> {
    let mut raw = [0_u8; 32];
    hex::decode_to_slice(text.trim(), &mut raw)
        .map_err(|_| AuditError::Config(format!("public key {text:?} is not 64 hex digits")))?;
    VerifyingKey::from_bytes(&raw)
        .map_err(|_| AuditError::Config(format!("public key {text:?} is not an Ed25519 key")))
}

/// Parse a signing key: 64 hex digits (the 32-byte Ed25519 seed), surrounding whitespace
/// ignored. The error never echoes the input.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, AuditError> {
    let mut seed = [0_u8; 32];
    let text = text.trim();
    if text.len() != 64 || hex::decode_to_slice(text, &mut seed).is_err() {
        return Err(AuditError::Config(
            "audit signing key must be 64 hex digits (an Ed25519 seed)".into(),
        ));
    }
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// Where the signing key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `AUDIT_SIGNING_KEY`: the hex seed itself.
    Inline(String),
    /// `AUDIT_SIGNING_KEY_FILE`: a file holding the hex seed.
    File(PathBuf),
    /// Generated on first start into `DATA_DIR/audit_signing.key` (0600) and reused after.
    DataDir(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("Inline(<redacted>)"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::DataDir(p) => f.debug_tuple("DataDir").field(p).finish(),
        }
    }
}

impl KeySource {
    /// Load (or, for [`KeySource::DataDir`], generate on first use) the signing key.
    pub fn load(&self) -> Result<SigningKey, AuditError> {
        match self {
            KeySource::Inline(text) => parse_signing_key(text),
            KeySource::File(path) => parse_signing_key(&read_key_file(path)?),
            KeySource::DataDir(dir) => load_or_generate(dir),
        }
    }
}

fn read_key_file(path: &Path) -> Result<String, AuditError> {
    std::fs::read_to_string(path)
        .map_err(|e| AuditError::Config(format!("cannot read key file {}: {e}", path.display())))
}

fn load_or_generate(dir: &Path) -> Result<SigningKey, AuditError> {
    let path = dir.join(KEY_FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_signing_key(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(AuditError::Config(format!(
                "cannot read key file {}: {e}",
                path.display()
            )))
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| AuditError::Config(format!("cannot create {}: {e}", dir.display())))?;
    let mut seed = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let mut text = hex::encode(seed);
    seed.fill(0);
    text.push('\n');
    let written = write_new_private_file(&path, text.as_bytes());
    // Best-effort wipe of the hex copy.
    text.clear();
    match written {
        Ok(()) => Ok(key),
        // Another process generated it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            parse_signing_key(&read_key_file(&path)?)
        }
        Err(e) => Err(AuditError::Config(format!(
            "cannot write key file {}: {e}",
            path.display()
        ))),
    }
}

/// Create `path` (failing if it exists) with mode 0600, write and fsync it.
fn write_new_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn a_signed_checkpoint_checks_against_its_key_only() {
        let k = key(1);
        let cp = Checkpoint::sign(&k, 42, &"ab".repeat(32), "t".into());
        assert_eq!(cp.check(&[k.verifying_key()]), Ok(()));
        let other = key(2).verifying_key();
        let err = cp.check(&[other]).expect_err("untrusted");
        assert!(err.contains("untrusted"), "{err}");
        assert_eq!(cp.check(&[other, k.verifying_key()]), Ok(()));
    }

    #[test]
    fn any_change_to_a_checkpoint_breaks_it() {
        let k = key(1);
        let trusted = [k.verifying_key()];
        let cp = Checkpoint::sign(&k, 42, &"ab".repeat(32), "t".into());
        let mut bad = vec![];
        let mut c = cp.clone();
        c.seq = 43;
        bad.push(c);
        let mut c = cp.clone();
        c.head_hash = "ac".repeat(32);
        bad.push(c);
        let mut c = cp.clone();
        c.timestamp = "u".into();
        bad.push(c);
        let mut c = cp.clone();
        c.signature = "00".repeat(64);
        bad.push(c);
        let mut c = cp.clone();
        c.signature = "zz".into();
        bad.push(c);
        let mut c = cp.clone();
        c.public_key = "nothex".into();
        bad.push(c);
        for c in bad {
            assert!(c.check(&trusted).is_err(), "{c:?}");
        }
    }

    #[test]
    fn signing_keys_parse_only_from_64_hex_digits() {
        assert!(parse_signing_key(&"01".repeat(32)).is_ok());
        assert!(parse_signing_key(&format!(" {}\n", "01".repeat(32))).is_ok());
        for bad in ["", "01", &"0g".repeat(32), &"01".repeat(33)] {
            let err = parse_signing_key(bad).err().map(|e| e.to_string());
            assert!(err.is_some(), "{bad}");
        }
    }

    #[test]
    fn public_key_lists_parse() {
        let a = hex::encode(key(1).verifying_key().to_bytes());
        let b = hex::encode(key(2).verifying_key().to_bytes());
        let keys = parse_public_keys(&format!("{a}, {b},")).expect("parses");
        assert_eq!(keys.len(), 2);
        assert!(parse_public_keys(&format!("{a},xyz")).is_err());
        assert!(parse_public_keys("").expect("empty").is_empty());
    }

    #[test]
    fn generated_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let source = KeySource::DataDir(dir.path().to_path_buf());
        let k1 = source.load().expect("generated");
        let meta = std::fs::metadata(dir.path().join(KEY_FILE_NAME)).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let k2 = source.load().expect("reloaded");
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let k3 = KeySource::File(dir.path().join(KEY_FILE_NAME))
            .load()
            .expect("file");
        assert_eq!(k1.to_bytes(), k3.to_bytes());
    }

    #[test]
    fn inline_key_is_redacted_in_debug() {
        let s = format!("{:?}", KeySource::Inline("01".repeat(32)));
        assert!(!s.contains("0101"), "{s}");
    }
}

//! `secrets:read`: per-controller secrets, encrypted at rest.
//!
//! Owns: the master key (from `MAGIC_MASTER_KEY`, `MAGIC_MASTER_KEY_FILE`, or generated once
//! into `DATA_DIR/master.key` with mode 0600), sealing values with ChaCha20-Poly1305 (random
//! nonce; the controller and name are the associated data, so a sealed value moved to
//! another row does not open), the key allowlist check (E2003) and the admin functions.
//!
//! Must never: put a secret value (or the master key) in a log, audit record, error, `Debug`
//! output or metric. Only names leave this module, except the one `get` answer.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use magic_contract::{Capability, ErrorCode};
use magic_store::Store;
use rand::RngCore;
use serde::Deserialize;
use serde_json::Value;

use crate::capability::{CapabilityModule, Checked, Denial, Performed};
use crate::config::MasterKeySource;
use crate::denial::check_listed;
use crate::{AdminError, BrokerError, ExecutionContext};

/// Runtime-store tables of this module.
pub(crate) const MIGRATIONS: [magic_store::Migration; 1] = [magic_store::Migration {
    version: 1,
    description: "encrypted controller secrets",
    sqlite: "CREATE TABLE magic_broker_secrets (controller TEXT NOT NULL, name TEXT NOT NULL, \
             sealed TEXT NOT NULL, updated_by TEXT NOT NULL, updated_at TEXT NOT NULL, \
             PRIMARY KEY (controller, name))",
    postgres: "CREATE TABLE magic_broker_secrets (controller TEXT NOT NULL, name TEXT NOT NULL, \
             sealed TEXT NOT NULL, updated_by TEXT NOT NULL, updated_at TEXT NOT NULL, \
             PRIMARY KEY (controller, name))",
}];

const NONCE_LEN: usize = 12;

/// The 32-byte master key. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn decode_key(text: &str) -> Result<MasterKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "not valid base64".to_string())?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "must be base64 of exactly 32 bytes".to_string())?;
    Ok(MasterKey(key))
}

impl MasterKey {
    /// Load (or, for [`MasterKeySource::DataDir`], create once) the master key.
    pub fn load(source: &MasterKeySource, data_dir: &Path) -> Result<MasterKey, String> {
        match source {
            MasterKeySource::Base64(text) => {
                decode_key(text).map_err(|e| format!("MAGIC_MASTER_KEY {e}"))
            }
            MasterKeySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                decode_key(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
            MasterKeySource::DataDir => {
                let path = data_dir.join("master.key");
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                match opts.open(&path) {
                    Ok(mut f) => {
                        let text = base64::engine::general_purpose::STANDARD.encode(key);
                        f.write_all(text.as_bytes())
                            .and_then(|()| f.sync_all())
                            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                        tracing::info!(path = %path.display(), "generated a new secrets master key");
                        Ok(MasterKey(key))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        MasterKey::load(&MasterKeySource::File(path), data_dir)
                    }
                    Err(e) => Err(format!("cannot create {}: {e}", path.display())),
                }
            }
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

fn aad(controller: &str, name: &str) -> Vec<u8> {
    format!("magic-secret:v1:{controller}\0{name}").into_bytes()
}

/// Seal `value` for (`controller`, `name`): base64 of nonce ‖ ciphertext.
pub(crate) fn seal(
    key: &MasterKey,
    controller: &str,
    name: &str,
    value: &str,
) -> Result<String, AdminError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = aad(controller, name);
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| AdminError::Crypto)?;
    let mut out = nonce.to_vec();
    out.extend(ct);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Open a sealed value; `None` when it was tampered with, moved, or sealed by another key.
pub(crate) fn open(key: &MasterKey, controller: &str, name: &str, sealed: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = bytes.split_at(NONCE_LEN);
    let aad = aad(controller, name);
    let pt = key
        .cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .ok()?;
    String::from_utf8(pt).ok()
}

/// A secret's name and metadata (never its value).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SecretInfo {
    /// Controller the secret belongs to.
    pub controller: String,
    /// Secret name.
    pub name: String,
    /// Who set it last.
    pub updated_by: String,
    /// When (RFC 3339).
    pub updated_at: String,
}

/// Secret names: `^[A-Za-z_][A-Za-z0-9_.-]{0,127}$`.
pub(crate) fn valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The secrets capability module.
pub(crate) struct SecretsModule {
    store: Store,
    key: MasterKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetArgs {
    key: String,
}

impl SecretsModule {
    /// Secrets kept in `store`, sealed with `key`.
    pub fn new(store: Store, key: MasterKey) -> Self {
        SecretsModule { store, key }
    }

    fn check_names(controller: &str, name: &str) -> Result<(), AdminError> {
        if !magic_contract::is_valid_name(controller) {
            return Err(AdminError::Invalid(format!(
                "invalid controller name {controller:?}"
            )));
        }
        if !valid_secret_name(name) {
            return Err(AdminError::Invalid(format!("invalid secret name {name:?}")));
        }
        Ok(())
    }

    /// Set (or replace) a secret.
    pub async fn set(
        &self,
        actor: &str,
        controller: &str,
        name: &str,
        value: &str,
    ) -> Result<(), AdminError> {
        Self::check_names(controller, name)?;
        let sealed = seal(&self.key, controller, name, value)?;
        sqlx::query(
            "INSERT INTO magic_broker_secrets (controller, name, sealed, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (controller, name) DO UPDATE SET \
             sealed = excluded.sealed, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(controller)
        .bind(name)
        .bind(sealed)
        .bind(actor)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(self.store.pool())
        .await
        .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(())
    }

    /// Names of the secrets of one controller, or all.
    pub async fn list(&self, controller: Option<&str>) -> Result<Vec<SecretInfo>, AdminError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT controller, name, updated_by, updated_at FROM magic_broker_secrets \
             WHERE $1 = '' OR controller = $1 ORDER BY controller, name",
        )
        .bind(controller.unwrap_or(""))
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|(controller, name, updated_by, updated_at)| SecretInfo {
                controller,
                name,
                updated_by,
                updated_at,
            })
            .collect())
    }

    /// Delete a secret; true when it existed.
    pub async fn delete(&self, controller: &str, name: &str) -> Result<bool, AdminError> {
        Self::check_names(controller, name)?;
        let r = sqlx::query("DELETE FROM magic_broker_secrets WHERE controller = $1 AND name = $2")
            .bind(controller)
            .bind(name)
            .execute(self.store.pool())
            .await
            .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(r.rows_affected() > 0)
    }
}

#[async_trait::async_trait]
impl CapabilityModule for SecretsModule {
    type Request = String;

    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<String>, Denial> {
        const CAP: &str = "secrets:read";
        if op != "get" {
            return Err(Denial::invalid(
                Some(CAP),
                format!("unknown operation secrets.{op}"),
            ));
        }
        let GetArgs { key } = serde_json::from_value(args).map_err(|e| {
            Denial::invalid(Some(CAP), format!("invalid arguments to secrets.get: {e}"))
        })?;
        check_listed(
            &ctx.contract,
            CAP,
            "keys",
            &key,
            ErrorCode::SecretNotAllowed,
            |c| match c {
                Capability::SecretsRead { keys } => Some(keys),
                _ => None,
            },
        )
        .map_err(|e| Denial::new(CAP, key.clone(), e))?;
        Ok(Checked {
            capability: CAP,
            target: key.clone(),
            request: key,
        })
    }

    async fn perform(&self, ctx: &ExecutionContext, key: String) -> Performed {
        let row: Result<Option<(String,)>, _> = sqlx::query_as(
            "SELECT sealed FROM magic_broker_secrets WHERE controller = $1 AND name = $2",
        )
        .bind(&ctx.controller)
        .bind(&key)
        .fetch_optional(self.store.pool())
        .await;
        Performed::plain(match row {
            Err(_) => Err(BrokerError::unavailable("the secret store")),
            Ok(None) => Err(BrokerError::invalid(format!(
                "secret {key} is not set for controller {} (an admin sets it with `magic secrets set`)",
                ctx.controller
            ))),
            Ok(Some((sealed,))) => match open(&self.key, &ctx.controller, &key, &sealed) {
                Some(v) => Ok(Value::String(v)),
                None => {
                    tracing::error!(
                        controller = %ctx.controller,
                        secret = %key,
                        "error.type" = "secret_unreadable",
                        "a stored secret does not open with the master key"
                    );
                    Err(BrokerError::new(
                        ErrorCode::BackendUnavailable,
                        format!("secret {key} cannot be decrypted with the current master key"),
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_value_to_its_row() -> Result<(), AdminError> {
        let key = MasterKey([7; 32]);
        let other = MasterKey([8; 32]);
        let sealed = seal(&key, "A", "TOKEN", "s3cr3t")?;
        assert!(!sealed.contains("s3cr3t"));
        let cases = [
            (&key, "A", "TOKEN", Some("s3cr3t")),
            (&key, "B", "TOKEN", None),
            (&key, "A", "OTHER", None),
            (&other, "A", "TOKEN", None),
        ];
        for (k, c, n, want) in cases {
            assert_eq!(open(k, c, n, &sealed).as_deref(), want, "{c}/{n}");
        }
        let mut tampered = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap_or_default();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        let tampered = base64::engine::general_purpose::STANDARD.encode(tampered);
        assert_eq!(open(&key, "A", "TOKEN", &tampered), None);
        assert_eq!(open(&key, "A", "TOKEN", "AAAA"), None);
        Ok(())
    }

    #[test]
    fn two_seals_differ() -> Result<(), AdminError> {
        let key = MasterKey([1; 32]);
        assert_ne!(seal(&key, "A", "K", "v")?, seal(&key, "A", "K", "v")?);
        Ok(())
    }

    #[test]
    fn master_key_sources() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let k1 = MasterKey::load(&MasterKeySource::DataDir, dir.path())?;
        let k2 = MasterKey::load(&MasterKeySource::DataDir, dir.path())?;
        assert_eq!(k1.0, k2.0, "generated once, then reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key"))
                .map_err(|e| e.to_string())?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        assert_eq!(
            MasterKey::load(&MasterKeySource::Base64(b64), dir.path())?.0,
            [3u8; 32]
        );
        let bad = [
            MasterKeySource::Base64("short".into()),
            MasterKeySource::Base64(base64::engine::general_purpose::STANDARD.encode([1u8; 16])),
            MasterKeySource::File(dir.path().join("missing")),
        ];
        for source in bad {
            let err = MasterKey::load(&source, dir.path())
                .err()
                .unwrap_or_default();
            assert!(!err.is_empty(), "{source:?}");
        }
        assert_eq!(format!("{:?}", k1), "MasterKey(<redacted>)");
        Ok(())
    }

    #[test]
    fn secret_names() {
        for (n, ok) in [
            ("STRIPE_KEY", true),
            ("a.b-c", true),
            ("", false),
            ("a/b", false),
            ("1a", false),
        ] {
            assert_eq!(valid_secret_name(n), ok, "{n}");
        }
    }
}

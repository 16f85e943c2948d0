//! API-key authentication (the bootstrap part of the security plane).
//!
//! Owns: the `api_keys` table (SHA-256 of each key, never the key), the bootstrap admin key
//! (`MAGIC_ADMIN_API_KEY`, or one generated into `DATA_DIR/admin.key` on first start), and
//! resolving an `X-API-Key` header to an [`Identity`]. Must never: store or log a key, or
//! compare keys in a way whose timing depends on how much of them matched.

use std::path::Path;

use magic_store::{Migration, Store};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Migrations of the key table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "api_keys",
    sqlite: "CREATE TABLE api_keys (\
               id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, \
               key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT);",
    postgres: "CREATE TABLE api_keys (\
               id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, \
               key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT);",
}];

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Display name used as the audit actor (`apikey:NAME`).
    pub name: String,
    /// Role (`admin`, `executor`).
    pub role: Role,
}

/// What an identity may do. (The full RBAC matrix is the security plane's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Execute controllers only.
    Executor,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "executor" => Some(Role::Executor),
            _ => None,
        }
    }
}

/// The key table plus the bootstrap key.
pub struct KeyStore {
    store: Store,
    bootstrap_hash: [u8; 32],
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Generate a new random key (`mk_` + 43 url-safe base64 characters, 256 bits).
pub fn generate_key() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "mk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Errors opening the key store.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key table could not be prepared.
    #[error("api key store: {0}")]
    Store(#[from] magic_store::StoreError),
    /// The bootstrap key file could not be read or written.
    #[error("admin key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl KeyStore {
    /// Open the key store. The bootstrap admin key is `admin_key` when given; otherwise the
    /// key in `DATA_DIR/admin.key`, created (mode 0600) on first start. Returns the store and
    /// the path of the generated key file when one is in use.
    pub async fn open(
        store: Store,
        data_dir: &Path,
        admin_key: Option<&str>,
    ) -> Result<(KeyStore, Option<std::path::PathBuf>), AuthError> {
        store.migrate("auth", MIGRATIONS).await?;
        let (key, file) = match admin_key {
            Some(k) => (k.to_string(), None),
            None => {
                let path = data_dir.join("admin.key");
                let key = match std::fs::read_to_string(&path) {
                    Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
                    _ => {
                        let k = generate_key();
                        write_private(&path, &k).map_err(|source| AuthError::KeyFile {
                            path: path.display().to_string(),
                            source,
                        })?;
                        k
                    }
                };
                (key, Some(path))
            }
        };
        Ok((
            KeyStore {
                store,
                bootstrap_hash: hash_key(&key),
            },
            file,
        ))
    }

    /// Resolve an `X-API-Key` value. `Ok(None)` = no such (or a revoked) key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Identity>, sqlx::Error> {
        let presented_hash = hash_key(presented);
        if constant_time_eq(&presented_hash, &self.bootstrap_hash) {
            return Ok(Some(Identity {
                name: "apikey:bootstrap-admin".into(),
                role: Role::Admin,
            }));
        }
        // Looking up by hash leaks nothing about the key: the hash is uniformly distributed.
        let row: Option<(String, String, Option<String>)> =
            sqlx::query_as("SELECT name, role, revoked_at FROM api_keys WHERE key_hash = $1")
                .bind(hex::encode(presented_hash))
                .fetch_optional(self.store.pool())
                .await?;
        Ok(match row {
            Some((name, role, None)) => Role::parse(&role).map(|role| Identity {
                name: format!("apikey:{name}"),
                role,
            }),
            _ => None,
        })
    }

    /// Create a key (the security plane's `magic keys create` builds on this). Returns the key,
    /// shown once.
    pub async fn create(&self, name: &str, role: &str) -> Result<String, sqlx::Error> {
        let key = generate_key();
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(name)
        .bind(role)
        .bind(hex::encode(hash_key(&key)))
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(self.store.pool())
        .await?;
        Ok(key)
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_table() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", true),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"abc", b"ab", false),
            (b"xbc", b"abc", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(constant_time_eq(a, b), *want, "{a:?} vs {b:?}");
        }
    }

    #[tokio::test]
    async fn bootstrap_generated_keys_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let (keys, file) = KeyStore::open(store.clone(), dir.path(), None)
            .await
            .unwrap();
        let file = file.unwrap();
        let admin = std::fs::read_to_string(&file).unwrap().trim().to_string();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            keys.authenticate(&admin).await.unwrap().unwrap().role,
            Role::Admin
        );
        assert!(keys.authenticate("wrong").await.unwrap().is_none());
        assert!(keys.authenticate("").await.unwrap().is_none());

        let exec = keys.create("ci", "executor").await.unwrap();
        let id = keys.authenticate(&exec).await.unwrap().unwrap();
        assert_eq!(
            id,
            Identity {
                name: "apikey:ci".into(),
                role: Role::Executor
            }
        );
        sqlx::query("UPDATE api_keys SET revoked_at = 'now' WHERE name = 'ci'")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(keys.authenticate(&exec).await.unwrap().is_none());

        // A restart reuses the same generated admin key.
        let (keys2, _) = KeyStore::open(store, dir.path(), None).await.unwrap();
        assert!(keys2.authenticate(&admin).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn configured_admin_key_replaces_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let (keys, file) = KeyStore::open(store, dir.path(), Some("configured-admin-key-123"))
            .await
            .unwrap();
        assert!(file.is_none());
        assert!(!dir.path().join("admin.key").exists());
        assert!(keys
            .authenticate("configured-admin-key-123")
            .await
            .unwrap()
            .is_some());
    }
}

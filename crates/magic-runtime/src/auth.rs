//! API-key authentication (the bootstrap part of the security plane).
//!
//! Owns: the `api_keys` table (SHA-256 of each key, never the key), the bootstrap admin key
//! (`MAGIC_ADMIN_API_KEY`, or one generated into `DATA_DIR/admin.key` on first start), and
//! resolving an `X-API-Key` header to an [`Identity`]; creating, listing and revoking keys
//! (optional expiry, optional per-controller execute scope). Must never: store, return (after
//! creation) or log a key, accept an expired or revoked key, or compare keys in a way whose
//! timing depends on how much of them matched.

use std::path::Path;

use magic_store::{Migration, Store};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Migrations of the key table.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "api_keys",
        sqlite: "CREATE TABLE api_keys (\
               id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, \
               key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT);",
        postgres: "CREATE TABLE api_keys (\
               id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, \
               key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, revoked_at TEXT);",
    },
    Migration {
        version: 2,
        description: "api_keys expiry and execute scope",
        sqlite: "ALTER TABLE api_keys ADD COLUMN expires_at TEXT; \
             ALTER TABLE api_keys ADD COLUMN controllers TEXT;",
        postgres: "ALTER TABLE api_keys ADD COLUMN expires_at TEXT; \
               ALTER TABLE api_keys ADD COLUMN controllers TEXT;",
    },
    // One active key per name, enforced by the database: of two older unrevoked keys sharing a
    // name (possible only when one had expired) all but the newest are marked revoked first.
    Migration {
        version: 3,
        description: "unique active api key names",
        sqlite: "UPDATE api_keys SET revoked_at = created_at WHERE revoked_at IS NULL AND EXISTS \
               (SELECT 1 FROM api_keys b WHERE b.name = api_keys.name AND b.revoked_at IS NULL \
                AND (b.created_at > api_keys.created_at OR (b.created_at = api_keys.created_at AND b.id > api_keys.id))); \
             CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;",
        postgres: "UPDATE api_keys SET revoked_at = created_at WHERE revoked_at IS NULL AND EXISTS \
               (SELECT 1 FROM api_keys b WHERE b.name = api_keys.name AND b.revoked_at IS NULL \
                AND (b.created_at > api_keys.created_at OR (b.created_at = api_keys.created_at AND b.id > api_keys.id))); \
             CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;",
    },
];

pub use crate::rbac::Role;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Display name used as the audit actor (`apikey:NAME`, `jwt:SUB`).
    pub name: String,
    /// Roles held (an API key has one; a token may carry several).
    pub roles: Vec<Role>,
    /// Controllers this identity may execute; `None` = every one its roles allow.
    pub scope: Option<Vec<String>>,
}

impl Identity {
    /// Whether any role grants `permission`.
    pub fn may(&self, permission: crate::rbac::Permission) -> bool {
        crate::rbac::any_permits(&self.roles, permission)
    }

    /// Whether this identity may execute `controller` (role and scope).
    pub fn may_execute(&self, controller: &str) -> bool {
        crate::rbac::may_execute(&self.roles, self.scope.as_deref(), controller)
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// Key ID.
    pub id: String,
    /// Name (unique among unrevoked keys).
    pub name: String,
    /// Role.
    pub role: String,
    /// Controllers the key may execute; absent = every one.
    pub controllers: Option<Vec<String>>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Expiry (RFC 3339); absent = never.
    pub expires_at: Option<String>,
    /// Revocation time (RFC 3339); absent = active.
    pub revoked_at: Option<String>,
}

/// A key just created: the only time the key is returned.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key as listed.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key (shown once, stored only as a hash).
    pub key: String,
}

/// Why a key could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Unknown role.
    #[error("unknown role {0:?}: expected one of admin, deployer, secrets-admin, operator, auditor, executor, approver")]
    UnknownRole(String),
    /// Bad name.
    #[error("key name {0:?} must be 1-64 of [A-Za-z0-9._-]")]
    BadName(String),
    /// An active key already has this name.
    #[error("an active key is already named {0:?}")]
    NameTaken(String),
    /// Bad controller list.
    #[error("controllers must be a non-empty list of controller names")]
    BadScope,
    /// The store failed.
    #[error("api key store: {0}")]
    Store(#[from] sqlx::Error),
}

/// Whether `name` is an acceptable key name.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether a key that expires at `expires_at` (RFC 3339) is expired at `now`. An unparsable
/// expiry counts as expired (fail closed).
pub fn is_expired(expires_at: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> bool {
    match expires_at {
        None => false,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t).map_or(true, |t| t <= now),
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

    /// Resolve an `X-API-Key` value. `Ok(None)` = no such, a revoked or an expired key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Identity>, sqlx::Error> {
        let presented_hash = hash_key(presented);
        if constant_time_eq(&presented_hash, &self.bootstrap_hash) {
            return Ok(Some(Identity {
                name: "apikey:bootstrap-admin".into(),
                roles: vec![Role::Admin],
                scope: None,
            }));
        }
        // Looking up by hash leaks nothing about the key: the hash is uniformly distributed.
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT name, role, revoked_at, expires_at, controllers FROM api_keys WHERE key_hash = $1",
        )
        .bind(hex::encode(presented_hash))
        .fetch_optional(self.store.pool())
        .await?;
        let Some((name, role, None, expires_at, controllers)) = row else {
            return Ok(None);
        };
        if is_expired(expires_at.as_deref(), chrono::Utc::now()) {
            return Ok(None);
        }
        // An unreadable scope grants nothing (fail closed).
        let scope =
            controllers.map(|json| serde_json::from_str::<Vec<String>>(&json).unwrap_or_default());
        Ok(Role::parse(&role).map(|role| Identity {
            name: format!("apikey:{name}"),
            roles: vec![role],
            scope,
        }))
    }

    /// Create a key. Returns it with the key, which is shown this once.
    pub async fn create(
        &self,
        name: &str,
        role: &str,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        controllers: Option<Vec<String>>,
    ) -> Result<CreatedKey, KeyError> {
        if Role::parse(role).is_none() {
            return Err(KeyError::UnknownRole(role.to_string()));
        }
        if !valid_key_name(name) {
            return Err(KeyError::BadName(name.to_string()));
        }
        if let Some(c) = &controllers {
            if c.is_empty() || c.iter().any(|n| n.is_empty() || n.len() > 64) {
                return Err(KeyError::BadScope);
            }
        }
        let now = chrono::Utc::now();
        let holders: Vec<KeyInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|k| k.name == name && k.revoked_at.is_none())
            .collect();
        if holders
            .iter()
            .any(|k| !is_expired(k.expires_at.as_deref(), now))
        {
            return Err(KeyError::NameTaken(name.to_string()));
        }
        // An expired key gives its name up: mark it revoked (at its expiry) so the unique index
        // on active names admits the new key.
        for k in holders {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(k.expires_at.unwrap_or_else(|| now.to_rfc3339()))
                .bind(&k.id)
                .execute(self.store.pool())
                .await?;
        }
        let key = generate_key();
        let info = KeyInfo {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            role: role.to_string(),
            controllers,
            created_at: chrono::Utc::now().to_rfc3339(),
            expires_at: expires_at.map(|t| t.to_rfc3339()),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, key_hash, created_at, expires_at, controllers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&info.id)
        .bind(&info.name)
        .bind(&info.role)
        .bind(hex::encode(hash_key(&key)))
        .bind(&info.created_at)
        .bind(&info.expires_at)
        .bind(
            info.controllers
                .as_ref()
                .map(|c| serde_json::Value::from(c.clone()).to_string()),
        )
        .execute(self.store.pool())
        .await
        .map_err(|e| match &e {
            // A concurrent creation of the same name lost the race at the unique index.
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                KeyError::NameTaken(name.to_string())
            }
            _ => KeyError::Store(e),
        })?;
        Ok(CreatedKey { info, key })
    }

    /// Every key, oldest first (never the keys themselves).
    pub async fn list(&self) -> Result<Vec<KeyInfo>, sqlx::Error> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, role, created_at, expires_at, revoked_at, controllers \
             FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, name, role, created_at, expires_at, revoked_at, controllers)| KeyInfo {
                    id,
                    name,
                    role,
                    controllers: controllers.and_then(|c| serde_json::from_str(&c).ok()),
                    created_at,
                    expires_at,
                    revoked_at,
                },
            )
            .collect())
    }

    /// Revoke the unrevoked key with this ID or name. Returns the revoked keys (none = no such
    /// active key).
    pub async fn revoke(&self, id_or_name: &str) -> Result<Vec<KeyInfo>, sqlx::Error> {
        let now = chrono::Utc::now().to_rfc3339();
        let targets: Vec<KeyInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|k| k.revoked_at.is_none() && (k.id == id_or_name || k.name == id_or_name))
            .collect();
        for k in &targets {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(&now)
                .bind(&k.id)
                .execute(self.store.pool())
                .await?;
        }
        Ok(targets)
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
            keys.authenticate(&admin).await.unwrap().unwrap().roles,
            vec![Role::Admin]
        );
        assert!(keys.authenticate("wrong").await.unwrap().is_none());
        assert!(keys.authenticate("").await.unwrap().is_none());

        let exec = keys.create("ci", "executor", None, None).await.unwrap().key;
        let id = keys.authenticate(&exec).await.unwrap().unwrap();
        assert_eq!(
            id,
            Identity {
                name: "apikey:ci".into(),
                roles: vec![Role::Executor],
                scope: None,
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

    #[test]
    fn expiry_table() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T01:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        for (expires, want) in [
            (None, false),
            (Some("2026-11-22T01:00:01Z"), false),
            (Some("2026-11-22T01:00:00Z"), true),
            (Some("2026-11-22T00:59:59Z"), true),
            (Some("garbage"), true),
            (Some(""), true),
        ] {
            assert_eq!(is_expired(expires, now), want, "{expires:?}");
        }
    }

    #[test]
    fn key_names() {
        for ok in ["ci", "deploy-bot.prod_1", &"a".repeat(64)] {
            assert!(valid_key_name(ok), "{ok}");
        }
        for bad in ["", "has space", "a/b", &"a".repeat(65), "ü"] {
            assert!(!valid_key_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn create_list_revoke_expire_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let (keys, _) = KeyStore::open(store, dir.path(), Some("configured-admin-key-123"))
            .await
            .unwrap();
        assert!(matches!(
            keys.create("x", "root", None, None).await,
            Err(KeyError::UnknownRole(_))
        ));
        assert!(matches!(
            keys.create("bad name", "admin", None, None).await,
            Err(KeyError::BadName(_))
        ));
        assert!(matches!(
            keys.create("x", "executor", None, Some(vec![])).await,
            Err(KeyError::BadScope)
        ));
        let scoped = keys
            .create("scoped", "executor", None, Some(vec!["A".into()]))
            .await
            .unwrap();
        assert!(matches!(
            keys.create("scoped", "admin", None, None).await,
            Err(KeyError::NameTaken(_))
        ));
        let id = keys.authenticate(&scoped.key).await.unwrap().unwrap();
        assert!(id.may_execute("A") && !id.may_execute("B"));
        let listed = keys.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].controllers, Some(vec!["A".to_string()]));
        assert!(!serde_json::to_string(&listed)
            .unwrap()
            .contains(&scoped.key));

        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let expired = keys.create("old", "admin", Some(past), None).await.unwrap();
        assert!(keys.authenticate(&expired.key).await.unwrap().is_none());
        // An expired key's name can be reused.
        keys.create("old", "admin", None, None).await.unwrap();

        assert_eq!(keys.revoke(&scoped.info.id).await.unwrap().len(), 1);
        assert!(keys.authenticate(&scoped.key).await.unwrap().is_none());
        assert!(keys.revoke(&scoped.info.id).await.unwrap().is_empty());
        assert!(keys.revoke("nobody").await.unwrap().is_empty());
        assert!(keys
            .list()
            .await
            .unwrap()
            .iter()
            .any(|k| k.id == scoped.info.id && k.revoked_at.is_some()));
    }

    /// A key created before migration 2 keeps working after it (no expiry, no scope), and the
    /// new columns work, on `store`.
    async fn upgrade_from_v1(store: Store, dir: &Path) {
        store.migrate("auth", &MIGRATIONS[..1]).await.unwrap();
        let old_key = generate_key();
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind("old-id")
        .bind("old")
        .bind("auditor")
        .bind(hex::encode(hash_key(&old_key)))
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(store.pool())
        .await
        .unwrap();
        let (keys, _) = KeyStore::open(store.clone(), dir, Some("configured-admin-key-123"))
            .await
            .unwrap();
        assert!(store.is_migrated("auth", 3).await.unwrap());
        let id = keys.authenticate(&old_key).await.unwrap().unwrap();
        assert_eq!((id.roles, id.scope), (vec![Role::Auditor], None));
        let future = chrono::Utc::now() + chrono::Duration::days(1);
        let new = keys
            .create(
                "new",
                "executor",
                Some(future),
                Some(vec!["A".into(), "B".into()]),
            )
            .await
            .unwrap();
        let id = keys.authenticate(&new.key).await.unwrap().unwrap();
        assert_eq!(id.scope, Some(vec!["A".to_string(), "B".to_string()]));
        assert_eq!(keys.revoke("old").await.unwrap().len(), 1);
        assert!(keys.authenticate(&old_key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn migration_2_keeps_existing_keys_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        upgrade_from_v1(store, dir.path()).await;
    }

    #[tokio::test]
    async fn migration_2_keeps_existing_keys_on_postgres() {
        crate::scratch_pg::run("auth_test", |store, dir| async move {
            upgrade_from_v1(store, &dir).await
        })
        .await;
    }

    /// The database itself refuses a second active key with the same name (not only the
    /// check in `create`), and migration 3 keeps the newest of older duplicates.
    async fn active_names_are_unique_in_the_database(store: Store, dir: &Path) {
        store.migrate("auth", &MIGRATIONS[..2]).await.unwrap();
        let insert = |id: &'static str, at: &'static str| {
            sqlx::query(
                "INSERT INTO api_keys (id, name, role, key_hash, created_at, expires_at) \
                 VALUES ($1, 'dup', 'admin', $2, $3, '2000-01-01T00:00:00+00:00')",
            )
            .bind(id)
            .bind(format!("hash-{id}"))
            .bind(at)
        };
        for (id, at) in [("a", "2026-01-01T00:00:00Z"), ("b", "2026-01-02T00:00:00Z")] {
            insert(id, at).execute(store.pool()).await.unwrap();
        }
        let (keys, _) = KeyStore::open(store.clone(), dir, Some("configured-admin-key-123"))
            .await
            .unwrap();
        let active: Vec<String> = keys
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .map(|k| k.id)
            .collect();
        assert_eq!(active, ["b"]);
        let err = sqlx::query(
            "INSERT INTO api_keys (id, name, role, key_hash, created_at) \
             VALUES ('c', 'dup', 'admin', 'hash-c', '2026-01-03T00:00:00Z')",
        )
        .execute(store.pool())
        .await
        .unwrap_err();
        assert!(
            matches!(&err, sqlx::Error::Database(d) if d.is_unique_violation()),
            "{err}"
        );
        // `create` takes over the expired holder's name.
        keys.create("dup", "executor", None, None).await.unwrap();
        assert!(matches!(
            keys.create("dup", "executor", None, None).await,
            Err(KeyError::NameTaken(_))
        ));
    }

    #[tokio::test]
    async fn active_names_are_unique_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        active_names_are_unique_in_the_database(store, dir.path()).await;
    }

    #[tokio::test]
    async fn active_names_are_unique_on_postgres() {
        crate::scratch_pg::run("auth_uniq", |store, dir| async move {
            active_names_are_unique_in_the_database(store, &dir).await
        })
        .await;
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

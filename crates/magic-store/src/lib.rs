//! The runtime's state store.
//!
//! Owns: opening the one database that holds runtime state (registry, keys, secrets, audit,
//! queue): SQLite in the data dir when no `DATABASE_URL` is given, PostgreSQL when it is a
//! `postgres://` URL; applying each component's migrations exactly once; answering readiness.
//!
//! Queries go through [`sqlx::AnyPool`]; write them with `$1, $2, …` placeholders, which both
//! SQLite and PostgreSQL accept, and with types both know (`BIGINT`, `TEXT`, `BLOB`/`BYTEA`
//! differ: use [`Store::dialect`] where the DDL must differ).
//!
//! Must never: know what a controller, capability or audit record is. Components own their
//! tables and migrations; this crate only runs them.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite file in the data dir (embedded default).
    Sqlite,
    /// PostgreSQL (production).
    Postgres,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres(ql)://`.
    #[error("unsupported DATABASE_URL scheme in {0:?}: use sqlite:PATH or postgres://")]
    UnsupportedUrl(String),
    /// The database could not be reached or refused a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The data dir could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A migration failed; nothing after it was applied.
    #[error("migration {component} v{version} ({description}) failed: {source}")]
    Migration {
        /// Component that owns the migration.
        component: String,
        /// Its version.
        version: i64,
        /// Its description.
        description: String,
        /// The database error.
        source: sqlx::Error,
    },
}

impl StoreError {
    /// True when the error means the database is unreachable (E5003), not a bad query.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) | StoreError::Migration { source: e, .. } => is_unavailable(e),
            _ => false,
        }
    }
}

/// True when a sqlx error means the database could not be reached.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// One schema change of one component, in both dialects.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Monotonic version within the component, starting at 1.
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// SQL for SQLite (may hold several statements).
    pub sqlite: &'static str,
    /// SQL for PostgreSQL (may hold several statements).
    pub postgres: &'static str,
}

/// The runtime's state database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Open the store: `database_url` when given, else `DATA_DIR/magic.db` (SQLite, WAL).
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_string(), Dialect::Postgres)
            }
            Some(url) if url.starts_with("sqlite:") => (url.to_string(), Dialect::Sqlite),
            Some(url) => return Err(StoreError::UnsupportedUrl(url.to_string())),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                let path = data_dir.join("magic.db");
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Dialect::Sqlite,
                )
            }
        };
        Self::connect(&url, dialect).await
    }

    /// Online backup of the SQLite database file `src` into `dest` (a new file, consistent
    /// even while a server writes to `src`: `VACUUM INTO` reads one snapshot). Refuses to
    /// overwrite `dest`.
    pub async fn sqlite_backup(src: &Path, dest: &Path) -> Result<(), StoreError> {
        use sqlx::ConnectOptions as _;
        if !src.is_file() {
            return Err(StoreError::DataDir {
                path: src.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such database"),
            });
        }
        if dest.exists() {
            return Err(StoreError::DataDir {
                path: dest.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            });
        }
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(src)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await?;
        sqlx::query("VACUUM INTO ?1")
            .bind(dest.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Open an in-memory SQLite store (tests).
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        Self::connect("sqlite::memory:", Dialect::Sqlite).await
    }

    async fn connect(url: &str, dialect: Dialect) -> Result<Store, StoreError> {
        let options = AnyConnectOptions::from_str(url)?;
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        pool = match dialect {
            Dialect::Sqlite => {
                // One connection per in-memory DB would give every connection its own DB.
                let max = if url.contains(":memory:") { 1 } else { 8 };
                pool.max_connections(max).after_connect(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
                        )
                        .await?;
                        Ok(())
                    })
                })
            }
            Dialect::Postgres => pool.max_connections(16),
        };
        let pool = pool.connect_with(options).await?;
        let store = Store { pool, dialect };
        store.ensure_migrations_table().await?;
        Ok(store)
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn ensure_migrations_table(&self) -> Result<(), StoreError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS magic_migrations (\
               component TEXT NOT NULL, \
               version BIGINT NOT NULL, \
               description TEXT NOT NULL, \
               applied_at TEXT NOT NULL, \
               PRIMARY KEY (component, version))",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Apply the component's migrations that are not applied yet, in version order, each in
    /// its own transaction.
    pub async fn migrate(
        &self,
        component: &str,
        migrations: &[Migration],
    ) -> Result<(), StoreError> {
        let mut sorted: Vec<&Migration> = migrations.iter().collect();
        sorted.sort_by_key(|m| m.version);
        for m in sorted {
            let applied: Option<(i64,)> = sqlx::query_as(
                "SELECT version FROM magic_migrations WHERE component = $1 AND version = $2",
            )
            .bind(component)
            .bind(m.version)
            .fetch_optional(&self.pool)
            .await?;
            if applied.is_some() {
                continue;
            }
            let sql = match self.dialect {
                Dialect::Sqlite => m.sqlite,
                Dialect::Postgres => m.postgres,
            };
            let fail = |source| StoreError::Migration {
                component: component.to_string(),
                version: m.version,
                description: m.description.to_string(),
                source,
            };
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(fail)?;
            sqlx::query(
                "INSERT INTO magic_migrations (component, version, description, applied_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(component)
            .bind(m.version)
            .bind(m.description)
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            tracing::info!(
                component,
                version = m.version,
                description = m.description,
                "migration applied"
            );
        }
        Ok(())
    }

    /// True when every listed migration of the component is applied (readiness).
    pub async fn is_migrated(&self, component: &str, latest: i64) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM magic_migrations WHERE component = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(component)
        .fetch_optional(&self.pool)
        .await?;
        Ok(matches!(row, Some((v,)) if v >= latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[
        Migration {
            version: 1,
            description: "things",
            sqlite: "CREATE TABLE things (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
            postgres: "CREATE TABLE things (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
        },
        Migration {
            version: 2,
            description: "things.note",
            sqlite: "ALTER TABLE things ADD COLUMN note TEXT;",
            postgres: "ALTER TABLE things ADD COLUMN note TEXT;",
        },
    ];

    #[tokio::test]
    async fn migrations_apply_once_and_survive_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::DataDir {
            path: "tmp".into(),
            source,
        })?;
        let store = Store::open(None, dir.path()).await?;
        assert_eq!(store.dialect(), Dialect::Sqlite);
        assert!(!store.is_migrated("t", 2).await?);
        store.migrate("t", MIGRATIONS).await?;
        store.migrate("t", MIGRATIONS).await?; // idempotent
        assert!(store.is_migrated("t", 2).await?);
        sqlx::query("INSERT INTO things (id, name, note) VALUES ($1, $2, $3)")
            .bind(1_i64)
            .bind("a")
            .bind("n")
            .execute(store.pool())
            .await?;
        drop(store);
        let store = Store::open(None, dir.path()).await?;
        let (name,): (String,) = sqlx::query_as("SELECT name FROM things WHERE id = $1")
            .bind(1_i64)
            .fetch_one(store.pool())
            .await?;
        assert_eq!(name, "a");
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_migration_is_reported_and_not_recorded() -> Result<(), StoreError> {
        let store = Store::open_in_memory().await?;
        let bad = [Migration {
            version: 1,
            description: "broken",
            sqlite: "CREATE TABLE (",
            postgres: "CREATE TABLE (",
        }];
        let err = store.migrate("bad", &bad).await.err();
        assert!(matches!(
            err,
            Some(StoreError::Migration { version: 1, .. })
        ));
        assert!(!store.is_migrated("bad", 1).await?);
        Ok(())
    }

    #[tokio::test]
    async fn unsupported_url_is_refused() {
        let dir = std::env::temp_dir();
        let err = Store::open(Some("mysql://x"), &dir).await.err();
        assert!(matches!(err, Some(StoreError::UnsupportedUrl(_))));
    }
}

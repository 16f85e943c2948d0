//! The application database (`self.db`): SQLite `app.db` or PostgreSQL behind one enum.
//!
//! Owns: the pool (lazy for PostgreSQL: a database that is down answers E5003 and is
//! reconnected on a later call, no restart), table introspection (cached briefly), running a
//! planned statement with its binds, decoding rows into JSON (see `values`), and the row and
//! byte caps while streaming. Must never: run SQL that `plan` did not produce, except `raw`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use magic_store::Dialect;
use sea_query::{Value as SqlValue, Values};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::plan::{ColumnInfo, TableInfo};
use super::values::{self, postgres_class, sqlite_class, ColumnClass};
use crate::config::{BrokerConfig, BrokerLimits};
use crate::{BrokerError, BrokerInitError};

/// How long an introspected table layout is trusted.
const TABLE_INFO_TTL: Duration = Duration::from_secs(5);

/// Introspected tables with the time they were read.
type TableCache = HashMap<String, (Instant, Arc<TableInfo>)>;

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The application database.
#[derive(Debug, Clone)]
pub(crate) struct AppDb {
    pool: Pool,
    tables: Arc<RwLock<TableCache>>,
    /// PostgreSQL per-controller roles (`None`: off, or SQLite).
    roles: Option<Arc<RoleCache>>,
}

/// Roles set up so far (with every granted table present), and the database and schema
/// their names are derived from.
#[derive(Debug, Default)]
pub(crate) struct RoleCache {
    ready: tokio::sync::Mutex<std::collections::HashSet<String>>,
    location: tokio::sync::OnceCell<(String, String)>,
}

/// A failure while running a statement.
#[derive(Debug)]
pub(crate) enum DbFailure {
    /// Database unreachable (E5003).
    Unavailable,
    /// The statement failed (constraint, type, …) or the result broke a cap.
    Failed(String),
}

impl From<DbFailure> for BrokerError {
    fn from(f: DbFailure) -> Self {
        match f {
            DbFailure::Unavailable => BrokerError::unavailable("the database"),
            DbFailure::Failed(m) => BrokerError::invalid(m),
        }
    }
}

fn failure(e: sqlx::Error) -> DbFailure {
    if magic_store::is_unavailable(&e) {
        DbFailure::Unavailable
    } else {
        match e {
            sqlx::Error::Database(d) => {
                DbFailure::Failed(format!("database error: {}", d.message()))
            }
            other => DbFailure::Failed(format!("database error: {other}")),
        }
    }
}

/// The outcome of a statement.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// Decoded rows (for statements that return rows).
    pub rows: Vec<Map<String, Value>>,
    /// Rows affected (writes).
    pub rows_affected: u64,
}

macro_rules! bind_all {
    ($q:expr, $values:expr) => {{
        let mut q = $q;
        for v in $values.0 {
            q = match v {
                SqlValue::Bool(b) => q.bind(b),
                SqlValue::BigInt(i) => q.bind(i),
                SqlValue::Int(i) => q.bind(i.map(i64::from)),
                SqlValue::BigUnsigned(u) => q.bind(u.map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
                SqlValue::Unsigned(u) => q.bind(u.map(i64::from)),
                SqlValue::Double(f) => q.bind(f),
                SqlValue::String(s) => q.bind(s.map(|s| *s)),
                SqlValue::Bytes(b) => q.bind(b.map(|b| *b)),
                other => {
                    return Err(DbFailure::Failed(format!(
                        "unsupported bind value {other:?}"
                    )))
                }
            };
        }
        q
    }};
}

impl AppDb {
    /// Open the application database named by the config.
    pub async fn connect(config: &BrokerConfig) -> Result<AppDb, BrokerInitError> {
        let pool = match config.app_database_url.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| BrokerInitError::AppDatabase(e.to_string()))?;
                Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(16)
                        .acquire_timeout(config.limits.db_acquire_timeout)
                        .connect_lazy_with(opts),
                )
            }
            Some(url) if url.starts_with("sqlite:") => {
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(|e| BrokerInitError::AppDatabase(e.to_string()))?;
                Pool::Sqlite(Self::sqlite(opts, url.contains(":memory:"), &config.limits).await?)
            }
            Some(other) => {
                return Err(BrokerInitError::AppDatabase(format!(
                    "unsupported URL scheme in {:?}: use sqlite:PATH or postgres://",
                    other.split(':').next().unwrap_or_default()
                )))
            }
            None => {
                std::fs::create_dir_all(&config.data_dir)
                    .map_err(|e| BrokerInitError::AppDatabase(e.to_string()))?;
                let opts = SqliteConnectOptions::new()
                    .filename(config.data_dir.join("app.db"))
                    .create_if_missing(true);
                Pool::Sqlite(Self::sqlite(opts, false, &config.limits).await?)
            }
        };
        let roles = (config.controller_roles && matches!(pool, Pool::Postgres(_)))
            .then(|| Arc::new(RoleCache::default()));
        Ok(AppDb {
            pool,
            tables: Arc::default(),
            roles,
        })
    }

    async fn sqlite(
        opts: SqliteConnectOptions,
        memory: bool,
        limits: &BrokerLimits,
    ) -> Result<SqlitePool, BrokerInitError> {
        let opts = opts
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // LIKE is case-sensitive on PostgreSQL; make SQLite agree.
            .pragma("case_sensitive_like", "ON");
        SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .acquire_timeout(limits.db_acquire_timeout)
            .connect_with(opts)
            .await
            .map_err(|e| BrokerInitError::AppDatabase(e.to_string()))
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Round trip (readiness).
    pub async fn ping(&self) -> bool {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
            Pool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
        }
    }

    /// Forget the cached layout of `table` (after a failed statement).
    pub fn forget(&self, table: &str) {
        if let Ok(mut t) = self.tables.write() {
            t.remove(table);
        }
    }

    /// The columns and primary key of `table` (cached for a few seconds).
    pub async fn table_info(&self, table: &str) -> Result<Arc<TableInfo>, DbFailure> {
        if let Ok(t) = self.tables.read() {
            if let Some((at, info)) = t.get(table) {
                if at.elapsed() < TABLE_INFO_TTL {
                    return Ok(info.clone());
                }
            }
        }
        let info = Arc::new(self.introspect(table).await?);
        if info.columns.is_empty() {
            return Err(DbFailure::Failed(format!("table {table:?} does not exist")));
        }
        if let Ok(mut t) = self.tables.write() {
            t.insert(table.to_string(), (Instant::now(), info.clone()));
        }
        Ok(info)
    }

    async fn introspect(&self, table: &str) -> Result<TableInfo, DbFailure> {
        let mut info = TableInfo::default();
        match &self.pool {
            Pool::Sqlite(p) => {
                let rows: Vec<(String, String, i64)> =
                    sqlx::query_as("SELECT name, type, pk FROM pragma_table_info($1) ORDER BY cid")
                        .bind(table)
                        .fetch_all(p)
                        .await
                        .map_err(failure)?;
                let mut pk: Vec<(i64, String)> = Vec::new();
                for (name, decl, pk_pos) in rows {
                    if pk_pos > 0 {
                        pk.push((pk_pos, name.clone()));
                    }
                    info.columns.push(ColumnInfo {
                        class: sqlite_class(&decl),
                        name,
                        sql_type: decl,
                    });
                }
                pk.sort();
                info.primary_key = pk.into_iter().map(|(_, n)| n).collect();
            }
            Pool::Postgres(p) => {
                let rows: Vec<(String, String, bool)> = sqlx::query_as(
                    "SELECT a.attname::text, t.typname::text, \
                       COALESCE(a.attnum = ANY(i.indkey), false) \
                     FROM pg_attribute a \
                     JOIN pg_type t ON t.oid = a.atttypid \
                     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                     WHERE a.attrelid = to_regclass(quote_ident($1)) \
                       AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                )
                .bind(table)
                .fetch_all(p)
                .await
                .map_err(failure)?;
                for (name, typname, is_pk) in rows {
                    if is_pk {
                        info.primary_key.push(name.clone());
                    }
                    info.columns.push(ColumnInfo {
                        class: postgres_class(&typname),
                        name,
                        sql_type: typname,
                    });
                }
            }
        }
        Ok(info)
    }

    /// Run `sql` with `values`. Rows are decoded (with `classes` as hints, by position) and
    /// counted against the caps: more than `max_rows` rows or `max_bytes` bytes is an error.
    pub async fn fetch(
        &self,
        role: Option<&str>,
        sql: &str,
        values: Values,
        classes: &[ColumnClass],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Fetched, DbFailure> {
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut push = |row: Map<String, Value>| -> Result<(), DbFailure> {
            bytes += values::approx_size(&Value::Object(Default::default()))
                + row
                    .iter()
                    .map(|(k, v)| k.len() + 4 + values::approx_size(v))
                    .sum::<usize>();
            if rows.len() >= max_rows {
                return Err(DbFailure::Failed(format!(
                    "result too large: more than {max_rows} rows (the row cap); narrow the query or page with limit/offset"
                )));
            }
            if bytes > max_bytes {
                return Err(DbFailure::Failed(format!(
                    "result too large: more than {max_bytes} bytes (the byte cap); select fewer columns or page with limit/offset"
                )));
            }
            rows.push(row);
            Ok(())
        };
        match &self.pool {
            Pool::Sqlite(p) => {
                let q = bind_all!(sqlx::query(sql), values);
                let mut stream = q.fetch(p);
                while let Some(row) = stream.try_next().await.map_err(failure)? {
                    push(decode_sqlite(&row, classes)?)?;
                }
            }
            Pool::Postgres(p) => match role {
                None => {
                    let q = bind_all!(sqlx::query(sql), values);
                    let mut stream = q.fetch(p);
                    while let Some(row) = stream.try_next().await.map_err(failure)? {
                        push(decode_pg(&row)?)?;
                    }
                }
                Some(role) => {
                    let mut tx = begin_as(p, role).await?;
                    {
                        let q = bind_all!(sqlx::query(sql), values);
                        let mut stream = q.fetch(&mut *tx);
                        while let Some(row) = stream.try_next().await.map_err(failure)? {
                            push(decode_pg(&row)?)?;
                        }
                    }
                    tx.commit().await.map_err(failure)?;
                }
            },
        }
        let n = rows.len() as u64;
        Ok(Fetched {
            rows,
            rows_affected: n,
        })
    }

    /// Run a statement that returns no rows; answers rows affected.
    pub async fn execute(
        &self,
        role: Option<&str>,
        sql: &str,
        values: Values,
    ) -> Result<u64, DbFailure> {
        if let (Pool::Postgres(p), Some(role)) = (&self.pool, role) {
            let mut tx = begin_as(p, role).await?;
            let n = bind_all!(sqlx::query(sql), values)
                .execute(&mut *tx)
                .await
                .map_err(failure)?
                .rows_affected();
            tx.commit().await.map_err(failure)?;
            return Ok(n);
        }
        Ok(match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query(sql), values)
                .execute(p)
                .await
                .map_err(failure)?
                .rows_affected(),
            Pool::Postgres(p) => bind_all!(sqlx::query(sql), values)
                .execute(p)
                .await
                .map_err(failure)?
                .rows_affected(),
        })
    }
}

/// A transaction whose statements run as `role` (`SET LOCAL ROLE`: it ends with the
/// transaction, the pooled connection goes back as the runtime's user).
async fn begin_as<'a>(
    p: &'a PgPool,
    role: &str,
) -> Result<sqlx::Transaction<'a, sqlx::Postgres>, DbFailure> {
    let mut tx = p.begin().await.map_err(failure)?;
    sqlx::query(&format!(
        "SET LOCAL ROLE {}",
        super::roles::quote_ident(role)
    ))
    .execute(&mut *tx)
    .await
    .map_err(failure)?;
    Ok(tx)
}

impl AppDb {
    /// The role `ctx`'s statements run under: `None` on SQLite or with roles off. Creates the
    /// role and its grants on first use (idempotent; again while a granted table is missing).
    pub async fn role_for(
        &self,
        ctx: &crate::ExecutionContext,
    ) -> Result<Option<String>, DbFailure> {
        let (Some(cache), Pool::Postgres(p)) = (&self.roles, &self.pool) else {
            return Ok(None);
        };
        let (database, schema) = cache
            .location
            .get_or_try_init(|| async {
                sqlx::query_as::<_, (String, String)>(
                    "SELECT current_database()::text, current_schema()::text",
                )
                .fetch_one(p)
                .await
                .map_err(failure)
            })
            .await?
            .clone();
        let role = super::roles::role_name(&database, &schema, &ctx.controller, &ctx.version);
        let mut ready = cache.ready.lock().await;
        if ready.contains(&role) {
            return Ok(Some(role));
        }
        let grants = super::roles::Grants::of(&ctx.contract);
        let wanted: Vec<String> = grants.statements().into_iter().map(|(t, _)| t).collect();
        let existing: Vec<(String,)> = sqlx::query_as(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        )
        .bind(&schema)
        .bind(&wanted)
        .fetch_all(p)
        .await
        .map_err(failure)?;
        let existing: Vec<String> = existing.into_iter().map(|(t,)| t).collect();
        let mut sql = super::roles::setup_sql(&role, &schema, &grants, &existing);
        // Sequences owned by the written tables' columns (serial / identity), for INSERT.
        for table in grants.write.iter().filter(|t| existing.contains(t)) {
            let qualified = format!(
                "{}.{}",
                super::roles::quote_ident(&schema),
                super::roles::quote_ident(table)
            );
            let seqs: Vec<(String,)> = sqlx::query_as(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(s.relname) \
                 FROM pg_depend d JOIN pg_class s ON s.oid = d.objid \
                 JOIN pg_namespace n ON n.oid = s.relnamespace \
                 WHERE d.classid = 'pg_class'::regclass AND d.refobjid = $1::regclass \
                   AND s.relkind = 'S'",
            )
            .bind(&qualified)
            .fetch_all(p)
            .await
            .map_err(failure)?;
            for (seq,) in seqs {
                sql.push(format!(
                    "GRANT USAGE, SELECT ON SEQUENCE {seq} TO {}",
                    super::roles::quote_ident(&role)
                ));
            }
        }
        // SET ROLE needs membership (a CREATEROLE user may grant it to itself).
        sql.push(format!(
            "GRANT {} TO CURRENT_USER",
            super::roles::quote_ident(&role)
        ));
        // Several nodes may set the same role up at once: a lost race is retried once.
        let mut attempt = 0;
        loop {
            let mut failed = None;
            for statement in &sql {
                if let Err(e) = sqlx::query(statement).execute(p).await {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => break,
                Some(e) if attempt == 0 && !magic_store::is_unavailable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(e) => {
                    tracing::error!(role = %role, error = %e, "cannot set up the controller's database role (the runtime's database user needs CREATEROLE and ownership of the tables)");
                    return Err(failure(e));
                }
            }
        }
        if existing.len() == wanted.len() {
            ready.insert(role.clone());
        }
        Ok(Some(role))
    }

    /// Drop a controller version's role (when a version is removed): its grants go with it.
    #[allow(dead_code)]
    pub async fn drop_role(&self, controller: &str, version: &str) -> Result<(), DbFailure> {
        let (Some(cache), Pool::Postgres(p)) = (&self.roles, &self.pool) else {
            return Ok(());
        };
        let Some((database, schema)) = cache.location.get().cloned() else {
            return Ok(());
        };
        let role = super::roles::role_name(&database, &schema, controller, version);
        let q = super::roles::quote_ident(&role);
        let literal = role.replace('\'', "''");
        sqlx::query(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{literal}') THEN \
             EXECUTE 'DROP OWNED BY {q}'; EXECUTE 'DROP ROLE {q}'; END IF; END $$"
        ))
        .execute(p)
        .await
        .map_err(failure)?;
        cache.ready.lock().await.remove(&role);
        Ok(())
    }
}

fn decode_sqlite(
    row: &SqliteRow,
    classes: &[ColumnClass],
) -> Result<Map<String, Value>, DbFailure> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(failure)?;
        if raw.is_null() {
            out.insert(col.name().to_string(), Value::Null);
            continue;
        }
        // The value's storage class (INTEGER, REAL, TEXT, BLOB), not the declared type.
        let storage = raw.type_info().name().to_string();
        let class = classes.get(i).copied();
        let declared_bool = col.type_info().name() == "BOOLEAN";
        let v = match storage.as_str() {
            "NULL" => Value::Null,
            "INTEGER" => {
                let n: i64 = row.try_get_unchecked(i).map_err(failure)?;
                if class == Some(ColumnClass::Bool) || (class.is_none() && declared_bool) {
                    Value::Bool(n != 0)
                } else {
                    Value::from(n)
                }
            }
            "REAL" => values::real(row.try_get_unchecked::<f64, _>(i).map_err(failure)?),
            "BLOB" => values::blob(&row.try_get_unchecked::<Vec<u8>, _>(i).map_err(failure)?),
            _ => {
                let s: String = row.try_get_unchecked(i).map_err(failure)?;
                if class == Some(ColumnClass::Json) {
                    serde_json::from_str(&s).unwrap_or(Value::String(s))
                } else {
                    Value::String(s)
                }
            }
        };
        out.insert(col.name().to_string(), v);
    }
    Ok(out)
}

fn decode_pg(row: &PgRow) -> Result<Map<String, Value>, DbFailure> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(failure)?;
        if raw.is_null() {
            out.insert(col.name().to_string(), Value::Null);
            continue;
        }
        let t = col.type_info().name().to_string();
        let g = |e| failure(e);
        let v = match t.as_str() {
            "BOOL" => Value::Bool(row.try_get(i).map_err(g)?),
            "INT2" => Value::from(row.try_get::<i16, _>(i).map_err(g)?),
            "INT4" => Value::from(row.try_get::<i32, _>(i).map_err(g)?),
            "INT8" => Value::from(row.try_get::<i64, _>(i).map_err(g)?),
            "FLOAT4" => values::real(f64::from(row.try_get::<f32, _>(i).map_err(g)?)),
            "FLOAT8" => values::real(row.try_get::<f64, _>(i).map_err(g)?),
            "NUMERIC" => {
                let bytes = raw.as_bytes().map_err(|e| DbFailure::Failed(e.to_string()))?;
                values::pg_numeric(bytes).unwrap_or(Value::Null)
            }
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "UNKNOWN" => {
                Value::String(row.try_get_unchecked(i).map_err(g)?)
            }
            "BYTEA" => values::blob(&row.try_get::<Vec<u8>, _>(i).map_err(g)?),
            "TIMESTAMPTZ" => Value::String(
                row.try_get::<DateTime<Utc>, _>(i)
                    .map_err(g)?
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
            "TIMESTAMP" => Value::String(
                row.try_get::<NaiveDateTime, _>(i)
                    .map_err(g)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            "DATE" => Value::String(row.try_get::<NaiveDate, _>(i).map_err(g)?.to_string()),
            "TIME" => Value::String(row.try_get::<NaiveTime, _>(i).map_err(g)?.to_string()),
            "JSON" | "JSONB" => row.try_get::<Value, _>(i).map_err(g)?,
            "UUID" => Value::String(row.try_get::<sqlx::types::Uuid, _>(i).map_err(g)?.to_string()),
            other => {
                return Err(DbFailure::Failed(format!(
                    "column {} has type {other}, which the broker does not map to JSON; cast it (e.g. to text) in the table or view",
                    col.name()
                )))
            }
        };
        out.insert(col.name().to_string(), v);
    }
    Ok(out)
}

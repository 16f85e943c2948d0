//! The audit tables in the runtime's store.
//!
//! Owns: the schema of `magic_audit_log` and `magic_audit_checkpoints` (both dialects) and
//! every SQL statement the audit log runs.
//!
//! Must never: update or delete a record (only retention may remove whole sealed segments,
//! and it does so through its own statements); build SQL from data (values are bound).

use magic_store::Dialect;
use sqlx::{AnyConnection, AnyPool};

use crate::checkpoint::Checkpoint;
use crate::record::AuditRecord;
use crate::AuditError;

/// Component name under which the migrations are recorded.
pub const COMPONENT: &str = "audit";

/// The audit schema, both dialects. In SQLite `seq` is the rowid (`INTEGER PRIMARY KEY`).
pub const MIGRATIONS: &[magic_store::Migration] = &[
    magic_store::Migration {
        version: 1,
        description: "audit chain and signed checkpoints",
        sqlite: "CREATE TABLE magic_audit_log (\
               seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, event TEXT NOT NULL, \
               request_id TEXT, controller TEXT, version TEXT, actor TEXT, capability TEXT, \
               target TEXT, outcome TEXT, details TEXT NOT NULL, \
               prev_hash TEXT NOT NULL, hash TEXT NOT NULL); \
             CREATE TABLE magic_audit_checkpoints (\
               seq INTEGER PRIMARY KEY, head_hash TEXT NOT NULL, ts TEXT NOT NULL, \
               public_key TEXT NOT NULL, signature TEXT NOT NULL);",
        postgres: "CREATE TABLE magic_audit_log (\
               seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, event TEXT NOT NULL, \
               request_id TEXT, controller TEXT, version TEXT, actor TEXT, capability TEXT, \
               target TEXT, outcome TEXT, details TEXT NOT NULL, \
               prev_hash TEXT NOT NULL, hash TEXT NOT NULL); \
             CREATE TABLE magic_audit_checkpoints (\
               seq BIGINT PRIMARY KEY, head_hash TEXT NOT NULL, ts TEXT NOT NULL, \
               public_key TEXT NOT NULL, signature TEXT NOT NULL);",
    },
    magic_store::Migration {
        version: 2,
        description: "audit retention seals",
        sqlite: SEGMENTS_DDL,
        postgres: SEGMENTS_DDL,
    },
    magic_store::Migration {
        version: 3,
        description: "audit search indexes (request_id, controller)",
        sqlite: SEARCH_INDEXES_DDL,
        postgres: SEARCH_INDEXES_DDL,
    },
];

const SEARCH_INDEXES_DDL: &str = "\
    CREATE INDEX IF NOT EXISTS magic_audit_log_request_id ON magic_audit_log (request_id); \
    CREATE INDEX IF NOT EXISTS magic_audit_log_controller ON magic_audit_log (controller, seq);";

const SEGMENTS_DDL: &str = "CREATE TABLE magic_audit_segments (\
    last_seq BIGINT PRIMARY KEY, first_seq BIGINT NOT NULL, last_hash TEXT NOT NULL, \
    last_ts TEXT NOT NULL, sealed_at TEXT NOT NULL, archive_sha256 TEXT, \
    public_key TEXT NOT NULL, signature TEXT NOT NULL, records BIGINT NOT NULL, \
    archive TEXT);";

pub(crate) const COLUMNS: &str =
    "seq, ts, event, request_id, controller, version, actor, capability, \
                       target, outcome, details, prev_hash, hash";
pub(crate) const NCOLS: usize = 13;
/// Largest multi-row INSERT; smaller remainders use power-of-two sizes so only a handful
/// of statement shapes exist (each is prepared once per connection).
const MAX_ROWS_PER_INSERT: usize = 256;

pub(crate) fn db_err(e: sqlx::Error) -> AuditError {
    AuditError::Store(e.to_string())
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The head record (seq, hash, timestamp), read on `conn` (inside the writer's
/// transaction); when retention left no record, the newest seal stands for it.
pub(crate) async fn head(
    conn: &mut AnyConnection,
) -> Result<Option<(u64, String, String)>, AuditError> {
    let row: Option<(i64, String, String)> =
        sqlx::query_as("SELECT seq, hash, ts FROM magic_audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
    let row = match row {
        Some(r) => Some(r),
        None => sqlx::query_as(
            "SELECT last_seq, last_hash, last_ts FROM magic_audit_segments \
             ORDER BY last_seq DESC LIMIT 1",
        )
        .fetch_optional(conn)
        .await
        .map_err(db_err)?,
    };
    Ok(row.map(|(s, h, t)| (to_u64(s), h, t)))
}

/// Seq of the last record (0 when empty).
pub(crate) async fn max_seq(pool: &AnyPool) -> Result<u64, AuditError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT seq FROM magic_audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(db_err)?;
    Ok(row.map_or(0, |(s,)| to_u64(s)))
}

/// Seq of the newest checkpoint (0 when none).
pub(crate) async fn last_checkpoint_seq(pool: &AnyPool) -> Result<u64, AuditError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT seq FROM magic_audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(db_err)?;
    Ok(row.map_or(0, |(s,)| to_u64(s)))
}

/// A multi-row INSERT. SQLite gets anonymous `?` placeholders: sqlx looks up each
/// parameter's name, and SQLite finds a numbered name by a linear scan, which makes
/// binding `$N` quadratic in the number of parameters (35% of append time at 256 rows).
fn insert_sql(rows: usize, dialect: Dialect) -> String {
    let mut sql = format!("INSERT INTO magic_audit_log ({COLUMNS}) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..NCOLS {
            if c > 0 {
                sql.push(',');
            }
            match dialect {
                Dialect::Sqlite => sql.push('?'),
                Dialect::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * NCOLS + c + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Sizes to split `n` rows into: full chunks, then powers of two.
fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n >= MAX_ROWS_PER_INSERT {
        out.push(MAX_ROWS_PER_INSERT);
        n -= MAX_ROWS_PER_INSERT;
    }
    let mut size = MAX_ROWS_PER_INSERT / 2;
    while n > 0 {
        if n >= size {
            out.push(size);
            n -= size;
        }
        size /= 2;
    }
    out
}

/// Insert records (inside the writer's transaction).
pub(crate) async fn insert_records(
    conn: &mut AnyConnection,
    dialect: Dialect,
    records: &[AuditRecord],
) -> Result<(), AuditError> {
    let mut rest = records;
    for size in chunk_sizes(records.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = insert_sql(size, dialect);
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(to_i64(r.seq))
                .bind(r.timestamp.as_str())
                .bind(r.event.as_str())
                .bind(r.request_id.as_deref())
                .bind(r.controller.as_deref())
                .bind(r.version.as_deref())
                .bind(r.actor.as_deref())
                .bind(r.capability.as_deref())
                .bind(r.target.as_deref())
                .bind(r.outcome.as_deref())
                .bind(r.details.as_str())
                .bind(r.prev_hash.as_str())
                .bind(r.hash.as_str());
        }
        q.execute(&mut *conn).await.map_err(db_err)?;
    }
    Ok(())
}

/// Store a checkpoint; one already stored at that seq (another node's) is kept.
pub(crate) async fn insert_checkpoint(
    conn: &mut AnyConnection,
    cp: &Checkpoint,
) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO magic_audit_checkpoints (seq, head_hash, ts, public_key, signature) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
    )
    .bind(to_i64(cp.seq))
    .bind(cp.head_hash.as_str())
    .bind(cp.timestamp.as_str())
    .bind(cp.public_key.as_str())
    .bind(cp.signature.as_str())
    .execute(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

type RecordRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

fn from_row(r: RecordRow) -> AuditRecord {
    AuditRecord {
        seq: to_u64(r.0),
        timestamp: r.1,
        event: r.2,
        request_id: r.3,
        controller: r.4,
        version: r.5,
        actor: r.6,
        capability: r.7,
        target: r.8,
        outcome: r.9,
        details: r.10,
        prev_hash: r.11,
        hash: r.12,
    }
}

/// Records with `after < seq <= upto`, in seq order, at most `limit`.
pub(crate) async fn records_page(
    pool: &AnyPool,
    after: u64,
    upto: u64,
    limit: u64,
) -> Result<Vec<AuditRecord>, AuditError> {
    let rows: Vec<RecordRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM magic_audit_log WHERE seq > $1 AND seq <= $2 \
         ORDER BY seq LIMIT $3"
    ))
    .bind(to_i64(after))
    .bind(to_i64(upto))
    .bind(to_i64(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// The newest records (seq descending) matching every given `(column, value)` equality and
/// `seq < before`, at most `limit`. Columns come from [`crate::search::SearchFilter`] only,
/// never from input; values are bound.
pub(crate) async fn search_records(
    pool: &AnyPool,
    equal: &[(&'static str, &str)],
    before: Option<u64>,
    limit: u64,
) -> Result<Vec<AuditRecord>, AuditError> {
    let mut sql = format!("SELECT {COLUMNS} FROM magic_audit_log WHERE 1 = 1");
    let mut n = 0;
    for (column, _) in equal {
        n += 1;
        sql.push_str(&format!(" AND {column} = ${n}"));
    }
    if before.is_some() {
        n += 1;
        sql.push_str(&format!(" AND seq < ${n}"));
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
    let mut q = sqlx::query_as::<_, RecordRow>(&sql);
    for (_, value) in equal {
        q = q.bind(value.to_string());
    }
    if let Some(b) = before {
        q = q.bind(to_i64(b));
    }
    let rows = q
        .bind(to_i64(limit))
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    Ok(rows.into_iter().map(from_row).collect())
}

type CheckpointRow = (i64, String, String, String, String);

fn cp_from_row(r: CheckpointRow) -> Checkpoint {
    Checkpoint {
        seq: to_u64(r.0),
        head_hash: r.1,
        timestamp: r.2,
        public_key: r.3,
        signature: r.4,
    }
}

/// Checkpoints with `after < seq <= upto`, in seq order.
pub(crate) async fn checkpoints_between(
    pool: &AnyPool,
    after: u64,
    upto: u64,
) -> Result<Vec<Checkpoint>, AuditError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, head_hash, ts, public_key, signature FROM magic_audit_checkpoints \
         WHERE seq > $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(to_i64(after))
    .bind(to_i64(upto))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(rows.into_iter().map(cp_from_row).collect())
}

/// Up to `limit` checkpoints with `seq <= at`, newest first.
pub(crate) async fn checkpoints_before(
    pool: &AnyPool,
    at: u64,
    limit: u64,
) -> Result<Vec<Checkpoint>, AuditError> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, head_hash, ts, public_key, signature FROM magic_audit_checkpoints \
         WHERE seq <= $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(to_i64(at))
    .bind(to_i64(limit))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(rows.into_iter().map(cp_from_row).collect())
}

/// The first record with `seq >= at` as (seq, ts).
pub(crate) async fn seq_ts_at_or_after(
    pool: &AnyPool,
    at: u64,
) -> Result<Option<(u64, String)>, AuditError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, ts FROM magic_audit_log WHERE seq >= $1 ORDER BY seq LIMIT 1")
            .bind(to_i64(at))
            .fetch_optional(pool)
            .await
            .map_err(db_err)?;
    Ok(row.map(|(s, t)| (to_u64(s), t)))
}

/// Path of the SQLite main database file (`None` for an in-memory database).
pub(crate) async fn sqlite_file(pool: &AnyPool) -> Result<Option<std::path::PathBuf>, AuditError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as("PRAGMA database_list")
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .find(|(_, name, _)| name == "main")
        .map(|(_, _, file)| file)
        .filter(|f| !f.is_empty())
        .map(std::path::PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_exactly_and_use_few_shapes() {
        for n in [0, 1, 2, 3, 255, 256, 257, 1000, 2048, 4097] {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}");
            assert!(sizes
                .iter()
                .all(|s| s.is_power_of_two() && *s <= MAX_ROWS_PER_INSERT));
        }
    }

    #[test]
    fn insert_sql_numbers_placeholders() {
        let sql = insert_sql(2, Dialect::Postgres);
        assert!(sql.ends_with("($14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26)"));
        assert!(sql.contains("($1,$2,"));
        let sql = insert_sql(2, Dialect::Sqlite);
        assert!(sql.ends_with("VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?),(?,?,?,?,?,?,?,?,?,?,?,?,?)"));
    }
}

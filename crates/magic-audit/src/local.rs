//! The audit writer's own connection to an embedded (file) SQLite database.
//!
//! Owns: one synchronous SQLite connection, used only by the chain's writer, and the one
//! transaction per batch on it (read the head, insert the records and maybe a checkpoint,
//! commit). Through the shared sqlx pool a batch costs a round trip to the pool's worker
//! thread for every statement (acquire, ping, begin, head, insert, commit); here it is one
//! call on the writer's own thread, which cut the cost of an execution's two appends by about
//! an order of magnitude (docs/BENCHMARKS.md).
//!
//! Must never: hold a transaction open across calls; trust a cached head (it is read inside
//! each transaction, so another process appending to the same file stays chained); be used
//! for an in-memory database (a second connection would see another database) or for
//! PostgreSQL (the writer keeps the sqlx path there).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::checkpoint::Checkpoint;
use crate::record::AuditRecord;
use crate::AuditError;

/// Rows per multi-row INSERT (13 columns each, well inside SQLite's parameter limit).
const ROWS_PER_INSERT: usize = 64;

/// How long a commit waits for another connection's write lock (retention, another process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn sqlite_err(e: rusqlite::Error) -> AuditError {
    AuditError::Store(format!("sqlite: {e}"))
}

/// The writer's connection. Not `Sync`: the writer owns it.
pub(crate) struct LocalSqlite {
    conn: Connection,
}

impl std::fmt::Debug for LocalSqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSqlite")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl LocalSqlite {
    /// Open the database file `path` (which the store's migrations have created) with the
    /// store's settings: WAL, `synchronous=NORMAL` (durability is the writer's business, see
    /// [`crate::config::Durability`]).
    pub(crate) fn open(path: &Path) -> Result<LocalSqlite, AuditError> {
        let conn = Connection::open(path).map_err(sqlite_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(sqlite_err)?;
        Ok(LocalSqlite { conn })
    }

    /// One transaction: read the head (`None` on an empty chain), let `chain` turn the
    /// head into records (and maybe a checkpoint), insert them, commit. Nothing is stored
    /// when any step fails.
    pub(crate) fn append<T>(
        &mut self,
        chain: impl FnOnce(
            Option<(u64, String, String)>,
        ) -> Result<(Vec<AuditRecord>, Option<Checkpoint>, T), AuditError>,
    ) -> Result<(Vec<AuditRecord>, Option<Checkpoint>, T), AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_err)?;
        let head = head(&tx)?;
        let (records, cp, extra) = chain(head)?;
        insert_records(&tx, &records)?;
        if let Some(cp) = &cp {
            tx.prepare_cached(
                "INSERT INTO magic_audit_checkpoints (seq, head_hash, ts, public_key, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (seq) DO NOTHING",
            )
            .and_then(|mut st| {
                st.execute(params![
                    crate::db::to_i64(cp.seq),
                    cp.head_hash,
                    cp.timestamp,
                    cp.public_key,
                    cp.signature
                ])
            })
            .map_err(sqlite_err)?;
        }
        tx.commit().map_err(sqlite_err)?;
        Ok((records, cp, extra))
    }
}

/// The head record (seq, hash, timestamp); when retention left no record, the newest seal.
fn head(conn: &Connection) -> Result<Option<(u64, String, String)>, AuditError> {
    let row = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut st| {
                st.query_row([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(sqlite_err)
    };
    let found = match row("SELECT seq, hash, ts FROM magic_audit_log ORDER BY seq DESC LIMIT 1")? {
        Some(r) => Some(r),
        None => row(
            "SELECT last_seq, last_hash, last_ts FROM magic_audit_segments \
             ORDER BY last_seq DESC LIMIT 1",
        )?,
    };
    Ok(found.map(|(s, h, t)| (u64::try_from(s).unwrap_or(0), h, t)))
}

fn insert_sql(rows: usize) -> String {
    let one = format!("({})", vec!["?"; crate::db::NCOLS].join(","));
    format!(
        "INSERT INTO magic_audit_log ({}) VALUES {}",
        crate::db::COLUMNS,
        vec![one; rows].join(",")
    )
}

fn insert_records(conn: &Connection, records: &[AuditRecord]) -> Result<(), AuditError> {
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let mut st = conn
            .prepare_cached(&insert_sql(chunk.len()))
            .map_err(sqlite_err)?;
        let mut values: Vec<&dyn rusqlite::ToSql> =
            Vec::with_capacity(chunk.len() * crate::db::NCOLS);
        let seqs: Vec<i64> = chunk.iter().map(|r| crate::db::to_i64(r.seq)).collect();
        for (r, seq) in chunk.iter().zip(&seqs) {
            values.extend_from_slice(&[
                seq,
                &r.timestamp,
                &r.event,
                &r.request_id,
                &r.controller,
                &r.version,
                &r.actor,
                &r.capability,
                &r.target,
                &r.outcome,
                &r.details,
                &r.prev_hash,
                &r.hash,
            ]);
        }
        st.execute(values.as_slice()).map_err(sqlite_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_a_placeholder_per_column_and_row() {
        let sql = insert_sql(2);
        assert_eq!(sql.matches('?').count(), 2 * crate::db::NCOLS);
        assert!(sql.starts_with("INSERT INTO magic_audit_log (seq,"));
        assert!(sql.ends_with("?),(?,?,?,?,?,?,?,?,?,?,?,?,?)"));
    }
}

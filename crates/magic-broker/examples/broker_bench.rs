//! Brokered `db.query_one` by primary key vs the same query made directly through sqlx,
//! on SQLite (embedded) and PostgreSQL (127.0.0.1:5432, database `test`).
//!
//! `cargo run --release -p magic-broker --example broker_bench -- [ITERATIONS]`
//!
//! Both paths run interleaved on one task against the same table (1,000 rows), after a
//! warm-up; every iteration picks a pseudo-random id. The brokered path is the full
//! `CapabilityBroker::call`: contract check, plan with sea-query, bind, run, decode to JSON,
//! audit record (to a sink that discards it: the audit log's own cost is measured by its
//! crate). The direct path is `sqlx::query_as` with the same SQL text, decoded to a tuple.

use std::sync::Arc;
use std::time::{Duration, Instant};

use magic_audit::{AuditError, AuditEvent, AuditSink};
use magic_broker::{BrokerConfig, CapabilityBroker, CapabilityCall, ExecutionContext};
use magic_contract::{Capability, Contract};
use magic_store::Store;
use serde_json::json;

enum Typed {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

struct DiscardSink;

#[async_trait::async_trait]
impl AuditSink for DiscardSink {
    async fn append(&self, _event: AuditEvent) -> Result<(), AuditError> {
        Ok(())
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = us(v[v.len() / 2]);
    let p99 = us(v[v.len() * 99 / 100]);
    let mean = v.iter().map(|d| us(*d)).sum::<f64>() / v.len() as f64;
    (p50, p99, mean)
}

async fn run(
    name: &str,
    app_url: String,
    store: Store,
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let table = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = BrokerConfig::new(dir.path());
    config.app_database_url = Some(app_url.clone());
    let broker = CapabilityBroker::connect(config, Arc::new(DiscardSink), store).await?;
    sqlx::any::install_default_drivers();
    let direct = sqlx::AnyPool::connect(&app_url).await?;
    let pg = app_url.starts_with("postgres");
    // The direct path uses the same typed driver the broker uses (not the Any driver).
    let typed = if pg {
        Typed::Pg(sqlx::PgPool::connect(&app_url).await?)
    } else {
        Typed::Sqlite(sqlx::SqlitePool::connect(&app_url).await?)
    };
    let ddl = if pg {
        format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL)"
        )
    } else {
        format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL)")
    };
    sqlx::raw_sql(&ddl).execute(&direct).await?;
    for i in 0..1000_i64 {
        sqlx::query(&format!(
            "INSERT INTO {table} (id, name, qty) VALUES ($1, $2, $3)"
        ))
        .bind(i)
        .bind(format!("name-{i}"))
        .bind(i * 7)
        .execute(&direct)
        .await?;
    }
    let ctx = ExecutionContext {
        request_id: "bench".into(),
        controller: "Bench".into(),
        version: "1.0.0".into(),
        contract: Arc::new(Contract {
            name: "Bench".into(),
            version: semver::Version::new(1, 0, 0),
            input: json!({}),
            output: json!({}),
            capabilities: vec![Capability::DbRead {
                tables: vec![table.clone()],
            }],
            resources: Default::default(),
        }),
        deadline: Instant::now() + Duration::from_secs(3600),
        temp_dir: None,
        traceparent: None,
        start: None,
    };
    let sql = if pg {
        format!(
            r#"SELECT "id", "name", "qty" FROM "{table}" WHERE "id" = $1 ORDER BY "id" ASC LIMIT $2"#
        )
    } else {
        format!(
            r#"SELECT "id", "name", "qty" FROM "{table}" WHERE "id" = ? ORDER BY "id" ASC LIMIT ?"#
        )
    };
    let mut brokered = Vec::with_capacity(n);
    let mut plain = Vec::with_capacity(n);
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for i in 0..(n + 1000) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % 1000) as i64;
        let t = Instant::now();
        let r = broker
            .call(
                &ctx,
                CapabilityCall {
                    capability: "db".into(),
                    op: "query_one".into(),
                    args: json!({"table": table, "where": {"id": id}}),
                },
            )
            .await;
        let b = t.elapsed();
        let row = r.result?;
        assert_eq!(row["id"], json!(id));
        let t = Instant::now();
        let (got, _name, _qty): (i64, String, i64) = match &typed {
            Typed::Pg(p) => {
                sqlx::query_as(&sql)
                    .bind(id)
                    .bind(1_i64)
                    .fetch_one(p)
                    .await?
            }
            Typed::Sqlite(p) => {
                sqlx::query_as(&sql)
                    .bind(id)
                    .bind(1_i64)
                    .fetch_one(p)
                    .await?
            }
        };
        let d = t.elapsed();
        assert_eq!(got, id);
        if i >= 1000 {
            brokered.push(b);
            plain.push(d);
        }
    }
    let (bp50, bp99, bmean) = stats(brokered);
    let (dp50, dp99, dmean) = stats(plain);
    println!("| {name} | direct sqlx | {dp50:.1} | {dp99:.1} | {dmean:.1} |");
    println!("| {name} | brokered | {bp50:.1} | {bp99:.1} | {bmean:.1} |");
    println!(
        "| {name} | overhead | {:.1} | {:.1} | {:.1} |",
        bp50 - dp50,
        bp99 - dp99,
        bmean - dmean
    );
    sqlx::raw_sql(&format!("DROP TABLE {table}"))
        .execute(&direct)
        .await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!("iterations: {n} per path (after 1,000 warm-up)\n");
    println!("| backend | path | p50 µs | p99 µs | mean µs |");
    println!("| --- | --- | --- | --- | --- |");
    let dir = tempfile::tempdir()?;
    let store = Store::open(None, dir.path()).await?;
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    run("SQLite", sqlite_url, store.clone(), n).await?;
    let pg = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    run("PostgreSQL", pg, store, n).await?;
    Ok(())
}

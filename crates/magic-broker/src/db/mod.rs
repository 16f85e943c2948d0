//! `db:read`, `db:write`, `db:rawsql`: the structured data access layer.
//!
//! Owns: checking the table named by the call against the contract's `tables` before
//! anything runs (E2004), planning the statement (`plan`), running it on the application
//! database (`backend`), the `db:rawsql` policy approvals (in the runtime store) and the
//! audit details of each call (table, op, rows; the full SQL text of `raw`).
//!
//! Must never: run SQL for a table the contract does not list, string-build SQL from
//! controller input, or run `raw` for a controller without a standing approval (E2007).

mod backend;
mod plan;
mod roles;
mod values;

use magic_contract::{Capability, ErrorCode};
use magic_store::Store;
use serde_json::{json, Value};

pub(crate) use backend::AppDb;
use plan::{Answer, DbOp};

use crate::capability::{CapabilityModule, Checked, Denial, Performed};
use crate::config::BrokerLimits;
use crate::denial::{check_listed, denied, not_declared};
use crate::{AdminError, BrokerError, ExecutionContext, RawSqlApproval};

/// The JSON mapping of SQL values (see the `values` module docs).
pub const JSON_MAPPING: &str = "integers → JSON integers; reals/numeric → JSON numbers \
(NaN/inf → null); booleans → true/false; text → string; blobs → base64 string; timestamps → \
RFC 3339 string; JSON columns → the JSON value; UUID → string; NULL → null";

/// Runtime-store tables of this module.
pub(crate) const MIGRATIONS: [magic_store::Migration; 1] = [magic_store::Migration {
    version: 1,
    description: "db:rawsql approvals",
    sqlite: "CREATE TABLE magic_broker_rawsql_approvals (\
               controller TEXT PRIMARY KEY, approved_by TEXT NOT NULL, approved_at TEXT NOT NULL)",
    postgres: "CREATE TABLE magic_broker_rawsql_approvals (\
               controller TEXT PRIMARY KEY, approved_by TEXT NOT NULL, approved_at TEXT NOT NULL)",
}];

/// The db capability module.
pub(crate) struct DbModule {
    app: AppDb,
    store: Store,
    limits: BrokerLimits,
}

impl DbModule {
    /// A module over `app` (data) and `store` (approvals).
    pub fn new(app: AppDb, store: Store, limits: BrokerLimits) -> Self {
        DbModule { app, store, limits }
    }

    /// Readiness of the application database.
    pub async fn ping(&self) -> bool {
        self.app.ping().await
    }

    async fn approved(&self, controller: &str) -> Result<bool, BrokerError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT approved_by FROM magic_broker_rawsql_approvals WHERE controller = $1",
        )
        .bind(controller)
        .fetch_optional(self.store.pool())
        .await
        .map_err(|_| BrokerError::unavailable("the runtime store"))?;
        Ok(row.is_some())
    }

    /// Approve raw SQL for `controller`.
    pub async fn approve_rawsql(&self, actor: &str, controller: &str) -> Result<(), AdminError> {
        if !magic_contract::is_valid_name(controller) {
            return Err(AdminError::Invalid(format!(
                "invalid controller name {controller:?}"
            )));
        }
        sqlx::query(
            "INSERT INTO magic_broker_rawsql_approvals (controller, approved_by, approved_at) \
             VALUES ($1, $2, $3) ON CONFLICT (controller) DO UPDATE \
             SET approved_by = excluded.approved_by, approved_at = excluded.approved_at",
        )
        .bind(controller)
        .bind(actor)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(self.store.pool())
        .await
        .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(())
    }

    /// Withdraw the approval of `controller`.
    pub async fn revoke_rawsql(&self, controller: &str) -> Result<bool, AdminError> {
        let r = sqlx::query("DELETE FROM magic_broker_rawsql_approvals WHERE controller = $1")
            .bind(controller)
            .execute(self.store.pool())
            .await
            .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(r.rows_affected() > 0)
    }

    /// Every approval.
    pub async fn approvals(&self) -> Result<Vec<RawSqlApproval>, AdminError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT controller, approved_by, approved_at FROM magic_broker_rawsql_approvals \
             ORDER BY controller",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| AdminError::Store(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|(controller, approved_by, approved_at)| RawSqlApproval {
                controller,
                approved_by,
                approved_at,
            })
            .collect())
    }

    async fn run_structured(&self, ctx: &ExecutionContext, op: &DbOp, table: &str) -> Performed {
        let details = |rows: Option<u64>| json!({ "op": op_name(op), "rows": rows });
        let role = match self.app.role_for(ctx).await {
            Ok(r) => r,
            Err(e) => {
                return Performed {
                    result: Err(e.into()),
                    details: details(None),
                }
            }
        };
        let role = role.as_deref();
        let info = match self.app.table_info(table).await {
            Ok(i) => i,
            Err(e) => {
                return Performed {
                    result: Err(e.into()),
                    details: details(None),
                }
            }
        };
        let planned = match plan::plan(self.app.dialect(), op, &info, &self.limits) {
            Ok(p) => p,
            Err(m) => {
                return Performed {
                    result: Err(BrokerError::invalid(m)),
                    details: details(None),
                }
            }
        };
        let result = match planned.answer {
            Answer::Rows | Answer::OneRow => self
                .app
                .fetch(
                    role,
                    &planned.sql,
                    planned.values,
                    &planned.classes,
                    self.limits.max_rows,
                    self.limits.max_result_bytes,
                )
                .await
                .map(|f| {
                    let n = f.rows.len() as u64;
                    let v = if planned.answer == Answer::OneRow {
                        f.rows.into_iter().next().map_or(Value::Null, Value::Object)
                    } else {
                        Value::Array(f.rows.into_iter().map(Value::Object).collect())
                    };
                    (v, n)
                }),
            Answer::Affected { returning_pk: true } => self
                .app
                .fetch(
                    role,
                    &planned.sql,
                    planned.values,
                    &planned.classes,
                    usize::MAX,
                    usize::MAX,
                )
                .await
                .map(|f| {
                    let n = f.rows_affected;
                    let last = f
                        .rows
                        .last()
                        .and_then(|r| r.values().next().cloned())
                        .unwrap_or(Value::Null);
                    (json!({ "rows_affected": n, "last_insert_id": last }), n)
                }),
            Answer::Affected {
                returning_pk: false,
            } => self
                .app
                .execute(role, &planned.sql, planned.values)
                .await
                .map(|n| (json!({ "rows_affected": n }), n)),
        };
        match result {
            Ok((v, n)) => Performed {
                result: Ok(v),
                details: details(Some(n)),
            },
            Err(e) => {
                self.app.forget(table);
                Performed {
                    result: Err(e.into()),
                    details: details(None),
                }
            }
        }
    }

    async fn run_raw(&self, ctx: &ExecutionContext, sql: &str, params: &[Value]) -> Performed {
        let details = |rows: Option<u64>| json!({ "op": "raw", "sql": sql, "params": params.len(), "rows": rows });
        match self.approved(&ctx.controller).await {
            Ok(true) => {}
            Ok(false) => {
                return Performed {
                    result: Err(denied(
                        ErrorCode::RawSqlNotApproved,
                        "db:rawsql",
                        &ctx.controller,
                        format!(
                            "db:rawsql (declared) and an admin approval for controller {} \
                             (approve_rawsql)",
                            ctx.controller
                        ),
                        format!(
                            "db:rawsql is declared but not approved by policy for controller {}",
                            ctx.controller
                        ),
                    )),
                    details: details(None),
                }
            }
            Err(e) => {
                return Performed {
                    result: Err(e),
                    details: details(None),
                }
            }
        }
        // Raw SQL is not confined to the contract's tables (that is what the approval is
        // for): it runs as the runtime's user, not under the version's role.
        let result = self
            .app
            .fetch(
                None,
                sql,
                plan::raw_values(params),
                &[],
                self.limits.max_rows,
                self.limits.max_result_bytes,
            )
            .await;
        match result {
            Ok(f) => {
                let n = f.rows.len() as u64;
                Performed {
                    result: Ok(Value::Array(
                        f.rows.into_iter().map(Value::Object).collect(),
                    )),
                    details: details(Some(n)),
                }
            }
            Err(e) => Performed {
                result: Err(e.into()),
                details: details(None),
            },
        }
    }
}

fn op_name(op: &DbOp) -> &'static str {
    match op {
        DbOp::Query { one: false, .. } => "query",
        DbOp::Query { one: true, .. } => "query_one",
        DbOp::Insert(_) => "insert",
        DbOp::Update(_) => "update",
        DbOp::Delete(_) => "delete",
        DbOp::Raw(_) => "raw",
    }
}

/// Tables no contract can grant: the runtime's own (`magic_*`, which in production may
/// share the database) and the system catalogs (`pg_*`, `sqlite_*`).
pub(crate) fn reserved_table(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    ["magic_", "pg_", "sqlite_"]
        .iter()
        .any(|p| t.starts_with(p))
}

/// Check the table of a structured call against the contract. Pure.
pub(crate) fn check_table(
    contract: &magic_contract::Contract,
    capability: &'static str,
    table: &str,
) -> Result<(), BrokerError> {
    if reserved_table(table) {
        return Err(denied(
            ErrorCode::TableNotAllowed,
            capability,
            table,
            "nothing: tables named magic_*, pg_* and sqlite_* belong to the runtime and the database".into(),
            format!("table {table} is reserved and cannot be granted to a controller"),
        ));
    }
    let pick: for<'a> fn(&'a Capability) -> Option<&'a Vec<String>> = if capability == "db:read" {
        |c| match c {
            Capability::DbRead { tables } => Some(tables),
            _ => None,
        }
    } else {
        |c| match c {
            Capability::DbWrite { tables } => Some(tables),
            _ => None,
        }
    };
    check_listed(
        contract,
        capability,
        "tables",
        table,
        ErrorCode::TableNotAllowed,
        pick,
    )
}

#[async_trait::async_trait]
impl CapabilityModule for DbModule {
    type Request = DbOp;

    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<DbOp>, Denial> {
        let Some(capability) = plan::op_capability(op) else {
            return Err(Denial::invalid(None, format!("unknown operation db.{op}")));
        };
        if capability == "db:rawsql" {
            if !ctx.contract.capabilities.contains(&Capability::DbRawSql) {
                return Err(Denial::new(
                    capability,
                    "raw",
                    not_declared("db:rawsql", "raw", "db:rawsql".into()),
                ));
            }
            let op = DbOp::parse(op, args).map_err(|m| Denial::invalid(Some(capability), m))?;
            return Ok(Checked {
                capability,
                target: "raw".into(),
                request: op,
            });
        }
        // The table is checked first, from the raw args, so nothing else about the call
        // (malformed or not) is looked at for a table the contract does not list.
        let table = match args.get("table") {
            Some(Value::String(t)) => t.clone(),
            _ => {
                return Err(Denial::invalid(
                    Some(capability),
                    format!("db.{op} needs a table name (string)"),
                ))
            }
        };
        check_table(&ctx.contract, capability, &table)
            .map_err(|e| Denial::new(capability, table.clone(), e))?;
        if !plan::valid_ident(&table) {
            return Err(Denial::new(
                capability,
                table.clone(),
                BrokerError::invalid(format!("invalid table name {table:?}")),
            ));
        }
        let parsed = DbOp::parse(op, args).map_err(|m| Denial {
            capability: Some(capability),
            target: table.clone(),
            error: BrokerError::invalid(m),
        })?;
        Ok(Checked {
            capability,
            target: table,
            request: parsed,
        })
    }

    async fn perform(&self, ctx: &ExecutionContext, request: DbOp) -> Performed {
        match &request {
            DbOp::Raw(raw) => self.run_raw(ctx, &raw.sql, &raw.params).await,
            other => {
                let table = other.table().unwrap_or_default().to_string();
                self.run_structured(ctx, other, &table).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denial::tests::contract;

    #[test]
    fn tables_are_checked_and_reserved_ones_never_granted() {
        let c = contract(vec![
            Capability::DbRead {
                tables: vec!["orders".into(), "magic_api_keys".into(), "pg_authid".into()],
            },
            Capability::DbWrite {
                tables: vec!["invoices".into()],
            },
        ]);
        let cases = [
            ("db:read", "orders", None),
            ("db:read", "invoices", Some(ErrorCode::TableNotAllowed)),
            ("db:write", "invoices", None),
            ("db:write", "orders", Some(ErrorCode::TableNotAllowed)),
            (
                "db:read",
                "magic_api_keys",
                Some(ErrorCode::TableNotAllowed),
            ),
            (
                "db:read",
                "MAGIC_broker_secrets",
                Some(ErrorCode::TableNotAllowed),
            ),
            ("db:read", "pg_authid", Some(ErrorCode::TableNotAllowed)),
            ("db:read", "sqlite_master", Some(ErrorCode::TableNotAllowed)),
        ];
        for (cap, table, want) in cases {
            assert_eq!(
                check_table(&c, cap, table).err().map(|e| e.code),
                want,
                "{cap} {table}"
            );
        }
        let none = contract(vec![]);
        assert_eq!(
            check_table(&none, "db:write", "orders")
                .err()
                .map(|e| e.code),
            Some(ErrorCode::CapabilityNotDeclared)
        );
    }
}

/// Per-controller roles against the real PostgreSQL (127.0.0.1:5432, db `test`), with a
/// runtime user that is not a superuser but has CREATEROLE.
#[cfg(test)]
mod pg_role_tests {
    use super::backend::DbFailure;
    use super::*;
    use crate::config::BrokerConfig;
    use crate::denial::tests::contract;

    const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    async fn sql(pool: &sqlx::PgPool, statement: &str) {
        sqlx::raw_sql(statement).execute(pool).await.unwrap();
    }

    fn ctx(version: &str) -> ExecutionContext {
        ExecutionContext {
            request_id: "req-roles".into(),
            controller: "Reporter".into(),
            version: version.into(),
            contract: contract(vec![
                Capability::DbRead {
                    tables: vec!["orders".into()],
                },
                Capability::DbWrite {
                    tables: vec!["notes".into()],
                },
            ]),
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
            temp_dir: None,
            traceparent: None,
            start: None,
        }
    }

    fn permission_denied(r: Result<impl std::fmt::Debug, DbFailure>) -> String {
        match r {
            Err(DbFailure::Failed(m)) if m.contains("permission denied") => m,
            other => panic!("expected a PostgreSQL permission error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn statements_run_under_a_role_granted_exactly_the_contract_tables() {
        let Ok(admin) = sqlx::PgPool::connect(ADMIN_URL).await else {
            eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432");
            return;
        };
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let (schema, user) = (format!("roles_{suffix}"), format!("magic_rt_{suffix}"));
        sql(
            &admin,
            &format!("CREATE ROLE {user} LOGIN CREATEROLE NOSUPERUSER"),
        )
        .await;
        sql(
            &admin,
            &format!("CREATE SCHEMA {schema} AUTHORIZATION {user}"),
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::new(tmp.path());
        config.app_database_url = Some(format!(
            "postgres://{user}@127.0.0.1:5432/test?options[search_path]={schema}"
        ));
        let app = AppDb::connect(&config).await.unwrap();
        let values = || sea_query::Values(vec![]);
        for ddl in [
            "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, qty INT)",
            "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT)",
            "CREATE TABLE payroll (id INT, salary INT)",
            "INSERT INTO orders (qty) VALUES (3)",
            "INSERT INTO payroll VALUES (1, 100000)",
        ] {
            app.execute(None, ddl, values()).await.unwrap();
        }

        let c = ctx("1.0.0");
        let role = app.role_for(&c).await.unwrap().unwrap();
        assert!(role.starts_with("magic_ctl_reporter_"), "{role}");
        // Idempotent: again, and from another runtime (fresh cache) on the same database.
        assert_eq!(
            app.role_for(&c).await.unwrap().as_deref(),
            Some(role.as_str())
        );
        let other = AppDb::connect(&config).await.unwrap();
        assert_eq!(
            other.role_for(&c).await.unwrap().as_deref(),
            Some(role.as_str())
        );
        let (login, superuser): (bool, bool) =
            sqlx::query_as("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = $1")
                .bind(&role)
                .fetch_one(&admin)
                .await
                .unwrap();
        assert!(!login && !superuser);

        // What the contract allows runs under the role.
        let r = app
            .fetch(
                Some(&role),
                "SELECT qty FROM orders",
                values(),
                &[],
                10,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.rows.len(), 1);
        let who = app
            .fetch(
                Some(&role),
                "SELECT current_user::text AS u",
                values(),
                &[],
                10,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(who.rows[0]["u"], serde_json::json!(role));
        let n = app
            .execute(
                Some(&role),
                "INSERT INTO notes (body) VALUES ('x')",
                values(),
            )
            .await
            .unwrap();
        assert_eq!(
            n, 1,
            "db:write tables take inserts (their sequence is granted)"
        );
        app.execute(
            Some(&role),
            "UPDATE notes SET body = 'y' WHERE id = 1",
            values(),
        )
        .await
        .unwrap();

        // A bypassed broker check: the database itself refuses what the contract does not list.
        permission_denied(
            app.fetch(
                Some(&role),
                "SELECT * FROM payroll",
                values(),
                &[],
                10,
                1 << 20,
            )
            .await,
        );
        permission_denied(
            app.execute(Some(&role), "INSERT INTO orders (qty) VALUES (1)", values())
                .await,
        );
        permission_denied(
            app.execute(Some(&role), "CREATE TABLE sneaky (x INT)", values())
                .await,
        );
        // The role ends with the transaction: the pool's connections are the runtime's again.
        let who = app
            .fetch(
                None,
                "SELECT current_user::text AS u",
                values(),
                &[],
                10,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(who.rows[0]["u"], serde_json::json!(user));

        // Each version has its own role; removing a version drops its role.
        let v2 = app.role_for(&ctx("2.0.0")).await.unwrap().unwrap();
        assert_ne!(v2, role);
        for (version, name) in [("1.0.0", &role), ("2.0.0", &v2)] {
            app.drop_role("Reporter", version).await.unwrap();
            let left: Option<(String,)> =
                sqlx::query_as("SELECT rolname::text FROM pg_roles WHERE rolname = $1")
                    .bind(name)
                    .fetch_optional(&admin)
                    .await
                    .unwrap();
            assert!(left.is_none(), "{name} still exists");
        }
        drop((app, other));
        sql(&admin, &format!("DROP SCHEMA {schema} CASCADE")).await;
        sql(&admin, &format!("DROP OWNED BY {user}")).await;
        sql(&admin, &format!("DROP ROLE {user}")).await;
    }
}

//! db:read / db:write / db:rawsql against SQLite and PostgreSQL.

mod common;

use common::*;
use magic_broker::BrokerLimits;
use magic_contract::Capability;
use serde_json::{json, Value};

fn read(tables: &[&str]) -> Capability {
    Capability::DbRead {
        tables: tables.iter().map(|s| s.to_string()).collect(),
    }
}
fn write(tables: &[&str]) -> Capability {
    Capability::DbWrite {
        tables: tables.iter().map(|s| s.to_string()).collect(),
    }
}

async fn make_items(env: &Env, t: &str) {
    env.exec(
        &format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount REAL, \
             qty BIGINT, paid BOOLEAN, created_at TIMESTAMP, doc JSON, data BLOB, price NUMERIC)"
        ),
        &format!(
            "CREATE TABLE {t} (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, amount DOUBLE PRECISION, \
             qty BIGINT, paid BOOLEAN, created_at TIMESTAMPTZ, doc JSONB, data BYTEA, price NUMERIC)"
        ),
    )
    .await;
}

/// The same calls give the same JSON on both backends (the expected values are literal).
async fn crud_is_identical(env: &Env) {
    let t = unique("items");
    make_items(env, &t).await;
    let ctx = env.ctx("Shop", vec![read(&[&t]), write(&[&t])]);
    let r = env
        .call(&ctx, "db", "insert", json!({"table": t, "values": [
            {"name": "apple", "amount": 1.5, "qty": 3, "paid": true, "created_at": "2024-05-01T10:00:00Z",
             "doc": {"tags": ["a", "b"], "n": 1}, "data": "aGVsbG8=", "price": 12.5},
            {"name": "Banana", "amount": null, "qty": 9007199254740993_i64, "paid": false, "created_at": null,
             "doc": null, "data": null, "price": 7}
        ]}))
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 2, "last_insert_id": 2})));
    let r = env
        .call(
            &ctx,
            "db",
            "insert",
            json!({"table": t, "values": {"name": "cherry", "qty": -1}}),
        )
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 1, "last_insert_id": 3})));

    let rows = env.call(&ctx, "db", "query", json!({"table": t})).await;
    assert_eq!(
        rows,
        Ok(json!([
            {"id": 1, "name": "apple", "amount": 1.5, "qty": 3, "paid": true, "created_at": "2024-05-01T10:00:00Z",
             "doc": {"tags": ["a", "b"], "n": 1}, "data": "aGVsbG8=", "price": 12.5},
            {"id": 2, "name": "Banana", "amount": null, "qty": 9007199254740993_i64, "paid": false, "created_at": null,
             "doc": null, "data": null, "price": 7},
            {"id": 3, "name": "cherry", "amount": null, "qty": -1, "paid": null, "created_at": null,
             "doc": null, "data": null, "price": null}
        ])),
        "{:?}",
        env.kind
    );
    let one = env
        .call(
            &ctx,
            "db",
            "query_one",
            json!({"table": t, "where": {"id": 2}, "columns": ["name", "paid"]}),
        )
        .await;
    assert_eq!(one, Ok(json!({"name": "Banana", "paid": false})));
    let none = env
        .call(
            &ctx,
            "db",
            "query_one",
            json!({"table": t, "where": {"id": 99}}),
        )
        .await;
    assert_eq!(none, Ok(Value::Null));
    let cases = [
        (
            json!({"qty": {"op": ">", "value": 0}}),
            json!(["apple", "Banana"]),
        ),
        (
            json!({"qty": {"op": "in", "value": [3, -1]}}),
            json!(["apple", "cherry"]),
        ),
        (json!({"qty": {"op": "in", "value": []}}), json!([])),
        (
            json!({"name": {"op": "like", "value": "%an%"}}),
            json!(["Banana"]),
        ),
        (json!({"name": {"op": "like", "value": "b%"}}), json!([])),
        (json!({"paid": null}), json!(["cherry"])),
        (
            json!({"paid": {"op": "is_null", "value": false}}),
            json!(["apple", "Banana"]),
        ),
        (json!({"paid": true, "name": "apple"}), json!(["apple"])),
        (
            json!({"name": {"op": "!=", "value": "apple"}}),
            json!(["Banana", "cherry"]),
        ),
        (
            json!({"created_at": {"op": ">=", "value": "2024-01-01T00:00:00Z"}}),
            json!(["apple"]),
        ),
    ];
    for (filter, names) in cases {
        let r = env
            .call(
                &ctx,
                "db",
                "query",
                json!({"table": t, "where": filter, "columns": ["name"]}),
            )
            .await;
        let got: Vec<Value> = r
            .clone()
            .unwrap_or_default()
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|row| row["name"].clone())
            .collect();
        assert_eq!(Value::Array(got), names, "{filter} → {r:?}");
    }
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "order_by": ["-qty"], "limit": 2, "offset": 1, "columns": ["id"]}),
        )
        .await;
    assert_eq!(r, Ok(json!([{"id": 1}, {"id": 3}])));
    let r = env
        .call(
            &ctx,
            "db",
            "update",
            json!({"table": t, "values": {"paid": true}, "where": {"paid": false}}),
        )
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 1})));
    let r = env
        .call(
            &ctx,
            "db",
            "update",
            json!({"table": t, "values": {"amount": 0.25}, "allow_all": true}),
        )
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 3})));
    let r = env
        .call(
            &ctx,
            "db",
            "delete",
            json!({"table": t, "where": {"id": 3}}),
        )
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 1})));
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "columns": ["amount", "paid"]}),
        )
        .await;
    assert_eq!(
        r,
        Ok(json!([{"amount": 0.25, "paid": true}, {"amount": 0.25, "paid": true}]))
    );
    // Every call audited as a capability use with the table as target.
    let ev = env.events_for(&ctx);
    assert!(ev.len() >= 20, "{}", ev.len());
    for e in &ev {
        assert_eq!(e.event, "capability_use");
        assert_eq!(e.target.as_deref(), Some(t.as_str()));
        assert_eq!(e.controller.as_deref(), Some("Shop"));
        assert_eq!(e.version.as_deref(), Some("1.0.0"));
        assert!(matches!(
            e.capability.as_deref(),
            Some("db:read" | "db:write")
        ));
        assert_eq!(e.outcome.as_deref(), Some("ok"));
    }
}
both!(crud_is_identical);

async fn denials_explain_themselves(env: &Env) {
    let t = unique("orders");
    make_items(env, &t).await;
    let ctx = env.ctx("Shop", vec![read(&["customers", &t])]);
    let r = env
        .call(&ctx, "db", "query", json!({"table": "invoices"}))
        .await;
    assert_denied(
        &r,
        "E2004",
        "db:read",
        "invoices",
        &format!("db:read: {{ tables: [customers, {t}, invoices] }}"),
    );
    let r = env
        .call(
            &ctx,
            "db",
            "insert",
            json!({"table": t, "values": {"name": "x"}}),
        )
        .await;
    assert_denied(
        &r,
        "E2001",
        "db:write",
        &t,
        &format!("db:write: {{ tables: [{t}] }}"),
    );
    let r = env
        .call(&ctx, "db", "raw", json!({"sql": "SELECT 1"}))
        .await;
    assert_denied(&r, "E2001", "db:rawsql", "raw", "db:rawsql");
    // Injection through the table name: never listed, so refused before anything runs.
    for table in [
        format!("{t}; DROP TABLE {t}"),
        format!("{t}\" --"),
        format!("{t} t2, customers"),
        "customers\u{0}".to_string(),
        "pg_catalog.pg_tables".to_string(),
        "sqlite_master".to_string(),
    ] {
        let r = env.call(&ctx, "db", "query", json!({"table": table})).await;
        assert_eq!(code(&r), "E2004", "{table}");
    }
    // A table checked first even when the rest of the call is garbage.
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": "secrets", "where": 5, "bogus": true}),
        )
        .await;
    assert_eq!(code(&r), "E2004");
    // Injection through columns, order_by and where keys; type confusion in where.
    let bad = [
        json!({"table": t, "columns": [format!("name FROM {t} --")]}),
        json!({"table": t, "columns": ["*"]}),
        json!({"table": t, "order_by": "name; DELETE FROM x"}),
        json!({"table": t, "order_by": "(CASE WHEN 1=1 THEN id END)"}),
        json!({"table": t, "where": {"id = id OR 1": 1}}),
        json!({"table": t, "where": {"id": "1 OR 1=1"}}),
        json!({"table": t, "where": {"id": {"op": ">", "value": "0"}}}),
        json!({"table": t, "where": {"name": 1}}),
        json!({"table": t, "where": {"name": {"$ne": "x"}}}),
        json!({"table": t, "where": {"name": ["a", "b"]}}),
        json!({"table": t, "where": {"paid": "true"}}),
        json!({"table": t, "where": {"id": {"op": "in", "value": "1,2"}}}),
        json!({"table": t, "where": {"nope": 1}}),
        json!({"table": t, "limit": "10"}),
    ];
    for args in bad {
        let r = env.call(&ctx, "db", "query", args.clone()).await;
        assert_eq!(code(&r), "E5001", "{args} → {r:?}");
    }
    // Audit: each denial is a violation with capability, target and outcome.
    let ev = env.events_for(&ctx);
    let violations: Vec<_> = ev
        .iter()
        .filter(|e| e.event == "capability_violation")
        .collect();
    assert!(violations.len() >= 10, "{}", violations.len());
    let first = &violations[0];
    assert_eq!(first.capability.as_deref(), Some("db:read"));
    assert_eq!(first.target.as_deref(), Some("invoices"));
    assert_eq!(first.outcome.as_deref(), Some("E2004"));
    assert_eq!(first.request_id.as_deref(), Some(ctx.request_id.as_str()));
    assert_eq!(
        first.details["denial"]["allow_with"],
        json!(format!("db:read: {{ tables: [customers, {t}, invoices] }}"))
    );
    // The table survived every attempt.
    let w = env.ctx("Shop", vec![read(&[&t]), write(&[&t])]);
    assert_eq!(
        env.call(&w, "db", "query", json!({"table": t})).await,
        Ok(json!([]))
    );
}
both!(denials_explain_themselves);

async fn writes_without_where_are_refused(env: &Env) {
    let t = unique("w");
    make_items(env, &t).await;
    let ctx = env.ctx("Shop", vec![read(&[&t]), write(&[&t])]);
    env.call(
        &ctx,
        "db",
        "insert",
        json!({"table": t, "values": [{"name": "a"}, {"name": "b"}]}),
    )
    .await
    .ok();
    for (op, args) in [
        ("update", json!({"table": t, "values": {"name": "z"}})),
        (
            "update",
            json!({"table": t, "values": {"name": "z"}, "where": {}}),
        ),
        ("delete", json!({"table": t})),
        (
            "delete",
            json!({"table": t, "where": {}, "allow_all": false}),
        ),
    ] {
        let r = env.call(&ctx, "db", op, args.clone()).await;
        let e = r.err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("allow_all"), "{op} {args}: {e}");
    }
    let rows = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "columns": ["name"]}),
        )
        .await;
    assert_eq!(rows, Ok(json!([{"name": "a"}, {"name": "b"}])));
    let r = env
        .call(&ctx, "db", "delete", json!({"table": t, "allow_all": true}))
        .await;
    assert_eq!(r, Ok(json!({"rows_affected": 2})));
    // A constraint failure in a batch insert writes nothing (one statement).
    let r = env
        .call(
            &ctx,
            "db",
            "insert",
            json!({"table": t, "values": [{"id": 50, "name": "x"}, {"id": 50, "name": "y"}]}),
        )
        .await;
    assert_eq!(code(&r), "E5001");
    assert_eq!(
        env.call(&ctx, "db", "query", json!({"table": t})).await,
        Ok(json!([]))
    );
}
both!(writes_without_where_are_refused);

/// Huge results: a clear error at the row or byte cap, never a silent truncation.
async fn caps(kind: Kind) {
    let limits = BrokerLimits {
        max_rows: 50,
        max_result_bytes: 4_000,
        ..BrokerLimits::default()
    };
    let env = Env::with_limits(kind, limits).await;
    let t = unique("big");
    make_items(&env, &t).await;
    let ctx = env.ctx("Shop", vec![read(&[&t]), write(&[&t])]);
    let rows: Vec<Value> = (0..60)
        .map(|i| json!({"name": format!("n{i}"), "qty": i}))
        .collect();
    assert_eq!(
        env.call(&ctx, "db", "insert", json!({"table": t, "values": rows}))
            .await
            .map(|v| v["rows_affected"].clone()),
        Ok(json!(60))
    );
    let r = env
        .call(&ctx, "db", "query", json!({"table": t, "columns": ["id"]}))
        .await;
    let e = r.err().map(|e| e.message).unwrap_or_default();
    assert!(e.contains("more than 50 rows"), "{e}");
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "columns": ["id"], "limit": 50}),
        )
        .await;
    assert_eq!(r.map(|v| v.as_array().map(Vec::len)), Ok(Some(50)));
    let big = "x".repeat(3_000);
    env.call(
        &ctx,
        "db",
        "update",
        json!({"table": t, "values": {"name": big}, "where": {"qty": {"op": "<", "value": 2}}}),
    )
    .await
    .ok();
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "where": {"qty": {"op": "<", "value": 5}}}),
        )
        .await;
    let e = r.err().map(|e| e.message).unwrap_or_default();
    assert!(e.contains("more than 4000 bytes"), "{e}");
    let r = env
        .call(
            &ctx,
            "db",
            "query",
            json!({"table": t, "where": {"qty": {"op": "<", "value": 1}}}),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn caps_embedded() {
    caps(Kind::Embedded).await;
}

#[tokio::test]
async fn caps_production() {
    caps(Kind::Production).await;
}

async fn rawsql_needs_approval(env: &Env) {
    let t = unique("raw");
    make_items(env, &t).await;
    let ctx = env.ctx("Reporter", vec![Capability::DbRawSql]);
    let sql = format!("SELECT name, qty FROM {t} WHERE qty > $1 ORDER BY id");
    let r = env
        .call(&ctx, "db", "raw", json!({"sql": sql, "params": [0]}))
        .await;
    assert_denied(
        &r,
        "E2007",
        "db:rawsql",
        "Reporter",
        "db:rawsql (declared) and an admin approval for controller Reporter (approve_rawsql)",
    );
    env.broker
        .approve_rawsql("alice@example.com", "Reporter")
        .await
        .expect("approve");
    let approvals = env.broker.rawsql_approvals().await.expect("list");
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].approved_by, "alice@example.com");
    env.exec(
        &format!("INSERT INTO {t} (name, qty) VALUES ('a', 1), ('b', 0)"),
        &format!("INSERT INTO {t} (name, qty) VALUES ('a', 1), ('b', 0)"),
    )
    .await;
    let r = env
        .call(&ctx, "db", "raw", json!({"sql": sql, "params": [0]}))
        .await;
    assert_eq!(r, Ok(json!([{"name": "a", "qty": 1}])));
    // Full query text audited; admin action audited with the actor.
    let ev = env.events_for(&ctx);
    let used = ev
        .iter()
        .find(|e| e.event == "capability_use")
        .expect("use");
    assert_eq!(used.details["sql"], json!(sql));
    assert_eq!(
        ev.iter()
            .filter(|e| e.event == "capability_violation")
            .count(),
        1
    );
    let admin: Vec<_> = env
        .audit
        .events()
        .into_iter()
        .filter(|e| e.event == "admin_action")
        .collect();
    assert_eq!(admin[0].actor.as_deref(), Some("alice@example.com"));
    assert_eq!(admin[0].details["action"], "rawsql_approve");
    assert_eq!(admin[0].target.as_deref(), Some("Reporter"));
    // Another controller is not approved by Reporter's approval.
    let other = env.ctx("Other", vec![Capability::DbRawSql]);
    assert_eq!(
        code(
            &env.call(&other, "db", "raw", json!({"sql": "SELECT 1"}))
                .await
        ),
        "E2007"
    );
    assert!(env
        .broker
        .revoke_rawsql("alice@example.com", "Reporter")
        .await
        .expect("revoke"));
    assert_eq!(
        code(
            &env.call(&ctx, "db", "raw", json!({"sql": "SELECT 1"}))
                .await
        ),
        "E2007"
    );
    assert!(
        env.broker.approve_rawsql("", "Reporter").await.is_err(),
        "actor required"
    );
}
both!(rawsql_needs_approval);

async fn calls_after_the_deadline_are_refused(env: &Env) {
    let t = unique("late");
    make_items(env, &t).await;
    let mut ctx = env.ctx("Shop", vec![read(&[&t]), write(&[&t])]);
    ctx.deadline = std::time::Instant::now() - std::time::Duration::from_millis(1);
    let r = env
        .call(
            &ctx,
            "db",
            "insert",
            json!({"table": t, "values": {"name": "late"}}),
        )
        .await;
    assert_eq!(code(&r), "E3001");
    let ev = env.events_for(&ctx);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].outcome.as_deref(), Some("E3001"));
    let fresh = env.ctx("Shop", vec![read(&[&t])]);
    assert_eq!(
        env.call(&fresh, "db", "query", json!({"table": t})).await,
        Ok(json!([])),
        "nothing was written"
    );
    // Undeclared capability family.
    let r = env.call(&fresh, "bogus", "x", json!({})).await;
    assert_eq!(code(&r), "E2001");
}
both!(calls_after_the_deadline_are_refused);

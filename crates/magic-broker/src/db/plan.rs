//! Turning a structured db call into parameterized SQL.
//!
//! Owns: parsing the `args` of `query`, `query_one`, `insert`, `update`, `delete`, `raw`;
//! validating identifiers (table, columns, order_by) against a strict pattern and against the
//! table's real columns; building the statement with `sea-query`, which quotes identifiers
//! and turns every value into a bind parameter. Pure: no I/O.
//!
//! Must never: put a controller-supplied string into SQL text. Identifiers reach SQL only
//! after [`valid_ident`] and a match against the introspected columns; values only as binds.

use std::collections::BTreeSet;

use magic_store::Dialect;
use sea_query::{
    Alias, BinOper, Expr, Order, PostgresQueryBuilder, Query, SimpleExpr, SqliteQueryBuilder,
    Value as SqlValue, Values,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::values::{bind_value, Bound, ColumnClass};
use crate::config::BrokerLimits;

/// One column of a table, as introspected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Its class.
    pub class: ColumnClass,
    /// SQLite declared type or PostgreSQL `typname`.
    pub sql_type: String,
}

/// A table, as introspected.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct TableInfo {
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// Primary key columns, in key order.
    pub primary_key: Vec<String>,
}

impl TableInfo {
    fn column(&self, name: &str) -> Result<&ColumnInfo, String> {
        if !valid_ident(name) {
            return Err(format!("invalid column name {:?}", truncate(name)));
        }
        self.columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("unknown column {name:?}"))
    }

    /// The single integer primary key column, if the table has one.
    pub fn integer_pk(&self) -> Option<&ColumnInfo> {
        match self.primary_key.as_slice() {
            [one] => self
                .columns
                .iter()
                .find(|c| &c.name == one && c.class == ColumnClass::Integer),
            _ => None,
        }
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`: the only identifiers the broker puts into SQL.
pub(crate) fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `order_by`: one column or a list; `-col` means descending.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum OrderBy {
    /// One column.
    One(String),
    /// Several columns.
    Many(Vec<String>),
}

/// Args of `query` / `query_one`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryArgs {
    /// Table (already checked against the contract).
    pub table: String,
    /// Conditions.
    #[serde(default, rename = "where")]
    pub filter: Option<Map<String, Value>>,
    /// Columns to return (default: all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Sort order.
    #[serde(default)]
    pub order_by: Option<OrderBy>,
    /// Row limit.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Rows to skip.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// `values` of `insert`: one row or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum InsertValues {
    /// One row.
    One(Map<String, Value>),
    /// Several rows.
    Many(Vec<Map<String, Value>>),
}

/// Args of `insert`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InsertArgs {
    /// Table.
    pub table: String,
    /// Row(s).
    pub values: InsertValues,
}

/// Args of `update`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateArgs {
    /// Table.
    pub table: String,
    /// Column → new value.
    pub values: Map<String, Value>,
    /// Conditions.
    #[serde(default, rename = "where")]
    pub filter: Option<Map<String, Value>>,
    /// Explicitly update every row when `where` is empty.
    #[serde(default)]
    pub allow_all: bool,
}

/// Args of `delete`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteArgs {
    /// Table.
    pub table: String,
    /// Conditions.
    #[serde(default, rename = "where")]
    pub filter: Option<Map<String, Value>>,
    /// Explicitly delete every row when `where` is empty.
    #[serde(default)]
    pub allow_all: bool,
}

/// Args of `raw`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawArgs {
    /// SQL text with `$1, $2, …` placeholders.
    pub sql: String,
    /// Bound parameters.
    #[serde(default)]
    pub params: Vec<Value>,
}

/// A parsed db call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DbOp {
    /// `query` (`one: false`) or `query_one`.
    Query {
        /// Return one row or null.
        one: bool,
        /// Args.
        args: QueryArgs,
    },
    /// `insert`.
    Insert(InsertArgs),
    /// `update`.
    Update(UpdateArgs),
    /// `delete`.
    Delete(DeleteArgs),
    /// `raw`.
    Raw(RawArgs),
}

impl DbOp {
    /// Parse `args` of `op`.
    pub fn parse(op: &str, args: Value) -> Result<DbOp, String> {
        fn de<T: serde::de::DeserializeOwned>(op: &str, args: Value) -> Result<T, String> {
            serde_json::from_value(args).map_err(|e| format!("invalid arguments to db.{op}: {e}"))
        }
        Ok(match op {
            "query" => DbOp::Query {
                one: false,
                args: de(op, args)?,
            },
            "query_one" => DbOp::Query {
                one: true,
                args: de(op, args)?,
            },
            "insert" => DbOp::Insert(de(op, args)?),
            "update" => DbOp::Update(de(op, args)?),
            "delete" => DbOp::Delete(de(op, args)?),
            "raw" => DbOp::Raw(de(op, args)?),
            other => return Err(format!("unknown operation db.{other}")),
        })
    }

    /// The table the call names (`None` for `raw`).
    pub fn table(&self) -> Option<&str> {
        match self {
            DbOp::Query { args, .. } => Some(&args.table),
            DbOp::Insert(a) => Some(&a.table),
            DbOp::Update(a) => Some(&a.table),
            DbOp::Delete(a) => Some(&a.table),
            DbOp::Raw(_) => None,
        }
    }
}

/// The capability an op exercises.
pub(crate) fn op_capability(op: &str) -> Option<&'static str> {
    match op {
        "query" | "query_one" => Some("db:read"),
        "insert" | "update" | "delete" => Some("db:write"),
        "raw" => Some("db:rawsql"),
        _ => None,
    }
}

/// A comparison in `where`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `IN (…)`
    In,
    /// `LIKE` (case-sensitive on both backends)
    Like,
    /// `IS NULL` (value true) / `IS NOT NULL` (value false)
    IsNull,
}

/// One condition of `where`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cond {
    /// Column (not yet validated).
    pub column: String,
    /// Operator.
    pub op: CmpOp,
    /// Operand.
    pub value: Value,
}

/// Parse `where` (shape only; columns and value types are checked against the table later).
/// A bare value means equality (`null` means `IS NULL`); an object must be exactly
/// `{"op": …, "value": …}`; arrays are only operands of `in`.
pub(crate) fn parse_where(filter: &Map<String, Value>) -> Result<Vec<Cond>, String> {
    let mut out = Vec::with_capacity(filter.len());
    for (column, v) in filter {
        let cond = match v {
            Value::Null => Cond {
                column: column.clone(),
                op: CmpOp::IsNull,
                value: Value::Bool(true),
            },
            Value::Array(_) => {
                return Err(format!(
                    "where.{column}: a list is only allowed as {{\"op\": \"in\", \"value\": [...]}}"
                ))
            }
            Value::Object(o) => {
                let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
                if keys != BTreeSet::from(["op", "value"]) {
                    return Err(format!(
                        "where.{column}: an object must be exactly {{\"op\": ..., \"value\": ...}}"
                    ));
                }
                let op = match o.get("op").and_then(Value::as_str) {
                    Some("=") => CmpOp::Eq,
                    Some("!=") => CmpOp::Ne,
                    Some("<") => CmpOp::Lt,
                    Some("<=") => CmpOp::Le,
                    Some(">") => CmpOp::Gt,
                    Some(">=") => CmpOp::Ge,
                    Some("in") => CmpOp::In,
                    Some("like") => CmpOp::Like,
                    Some("is_null") => CmpOp::IsNull,
                    _ => {
                        return Err(format!(
                            "where.{column}: op must be one of <, <=, >, >=, !=, in, like, is_null"
                        ))
                    }
                };
                let value = o.get("value").cloned().unwrap_or(Value::Null);
                match (op, &value) {
                    (CmpOp::In, Value::Array(items))
                        if items
                            .iter()
                            .any(|x| x.is_array() || x.is_object() || x.is_null()) =>
                    {
                        return Err(format!("where.{column}: in takes a list of scalars"));
                    }
                    (CmpOp::In, Value::Array(_)) => {}
                    (CmpOp::In, _) => return Err(format!("where.{column}: in takes a list")),
                    (CmpOp::Like, Value::String(_)) => {}
                    (CmpOp::Like, _) => return Err(format!("where.{column}: like takes a string")),
                    (CmpOp::IsNull, Value::Bool(_)) => {}
                    (CmpOp::IsNull, _) => {
                        return Err(format!("where.{column}: is_null takes true or false"))
                    }
                    (_, Value::Array(_) | Value::Object(_) | Value::Null) => {
                        return Err(format!("where.{column}: comparison takes a scalar"))
                    }
                    _ => {}
                }
                Cond {
                    column: column.clone(),
                    op,
                    value,
                }
            }
            scalar => Cond {
                column: column.clone(),
                op: CmpOp::Eq,
                value: scalar.clone(),
            },
        };
        out.push(cond);
    }
    Ok(out)
}

/// What kind of answer a planned statement gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A list of rows.
    Rows,
    /// One row or null.
    OneRow,
    /// `{"rows_affected": n, "last_insert_id"?: id}` (insert returns the pk column).
    Affected {
        /// The statement returns the integer pk of each inserted row.
        returning_pk: bool,
    },
}

/// A statement ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// SQL text (identifiers quoted, values as placeholders).
    pub sql: String,
    /// Bind values, in placeholder order.
    pub values: Values,
    /// Class of each result column (in order), for decoding.
    pub classes: Vec<ColumnClass>,
    /// The answer's shape.
    pub answer: Answer,
}

fn build<S: sea_query::QueryStatementWriter>(dialect: Dialect, q: &S) -> (String, Values) {
    match dialect {
        Dialect::Sqlite => q.build(SqliteQueryBuilder),
        Dialect::Postgres => q.build(PostgresQueryBuilder),
    }
}

/// Is `t` safe to write after `AS` in a cast? (It comes from the catalog, but is checked.)
fn valid_type_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn bound_expr(dialect: Dialect, col: &ColumnInfo, b: Bound) -> SimpleExpr {
    let cast_pg = |e: SimpleExpr| {
        if dialect == Dialect::Postgres && valid_type_name(&col.sql_type) {
            e.cast_as(Alias::new(col.sql_type.clone()))
        } else {
            e
        }
    };
    match b {
        Bound::Null if col.class == ColumnClass::Text => SimpleExpr::Value(SqlValue::String(None)),
        Bound::Null => cast_pg(SimpleExpr::Value(SqlValue::String(None))),
        Bound::Bool(v) => SimpleExpr::Value(SqlValue::Bool(Some(v))),
        Bound::Int(v) => SimpleExpr::Value(SqlValue::BigInt(Some(v))),
        Bound::Real(v) => SimpleExpr::Value(SqlValue::Double(Some(v))),
        Bound::Text { text, cast } => {
            let e = SimpleExpr::Value(SqlValue::String(Some(Box::new(text))));
            if cast {
                cast_pg(e)
            } else {
                e
            }
        }
        Bound::Bytes(v) => SimpleExpr::Value(SqlValue::Bytes(Some(Box::new(v)))),
    }
}

fn value_expr(
    dialect: Dialect,
    col: &ColumnInfo,
    v: &Value,
    what: &str,
) -> Result<SimpleExpr, String> {
    let b = bind_value(col.class, v).map_err(|e| format!("{what}: column {} {e}", col.name))?;
    Ok(bound_expr(dialect, col, b))
}

fn conditions(
    dialect: Dialect,
    info: &TableInfo,
    filter: Option<&Map<String, Value>>,
    limits: &BrokerLimits,
) -> Result<Vec<SimpleExpr>, String> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for cond in parse_where(filter)? {
        let col = info
            .column(&cond.column)
            .map_err(|e| format!("where: {e}"))?;
        let lhs = Expr::col(Alias::new(col.name.clone()));
        let what = "where";
        let e = match cond.op {
            CmpOp::IsNull => {
                if cond.value == Value::Bool(true) {
                    lhs.is_null()
                } else {
                    lhs.is_not_null()
                }
            }
            CmpOp::In => {
                let items = cond.value.as_array().cloned().unwrap_or_default();
                if items.len() > limits.max_in_values {
                    return Err(format!(
                        "where.{}: in takes at most {} values",
                        col.name, limits.max_in_values
                    ));
                }
                if items.is_empty() {
                    Expr::cust("1 = 0")
                } else {
                    let exprs = items
                        .iter()
                        .map(|v| value_expr(dialect, col, v, what))
                        .collect::<Result<Vec<_>, _>>()?;
                    lhs.binary(BinOper::In, SimpleExpr::Tuple(exprs))
                }
            }
            CmpOp::Like => {
                if !matches!(col.class, ColumnClass::Text | ColumnClass::Other) {
                    return Err(format!("where.{}: like needs a text column", col.name));
                }
                let rhs = SimpleExpr::Value(SqlValue::String(Some(Box::new(
                    cond.value.as_str().unwrap_or_default().to_string(),
                ))));
                lhs.binary(BinOper::Like, rhs)
            }
            op => {
                let rhs = value_expr(dialect, col, &cond.value, what)?;
                let bin = match op {
                    CmpOp::Eq => BinOper::Equal,
                    CmpOp::Ne => BinOper::NotEqual,
                    CmpOp::Lt => BinOper::SmallerThan,
                    CmpOp::Le => BinOper::SmallerThanOrEqual,
                    CmpOp::Gt => BinOper::GreaterThan,
                    _ => BinOper::GreaterThanOrEqual,
                };
                lhs.binary(bin, rhs)
            }
        };
        out.push(e);
    }
    Ok(out)
}

fn order_columns(order_by: Option<&OrderBy>) -> Vec<String> {
    match order_by {
        None => Vec::new(),
        Some(OrderBy::One(c)) => vec![c.clone()],
        Some(OrderBy::Many(v)) => v.clone(),
    }
}

/// Plan a structured op against `info` (the table's real columns).
pub(crate) fn plan(
    dialect: Dialect,
    op: &DbOp,
    info: &TableInfo,
    limits: &BrokerLimits,
) -> Result<Planned, String> {
    match op {
        DbOp::Query { one, args } => plan_select(dialect, *one, args, info, limits),
        DbOp::Insert(a) => plan_insert(dialect, a, info, limits),
        DbOp::Update(a) => {
            if a.values.is_empty() {
                return Err("update: values is empty".into());
            }
            let conds = conditions(dialect, info, a.filter.as_ref(), limits)?;
            if conds.is_empty() && !a.allow_all {
                return Err(
                    "update without where would change every row; pass allow_all: true to mean it"
                        .into(),
                );
            }
            let mut q = Query::update();
            q.table(Alias::new(a.table.clone()));
            let mut sets = Vec::new();
            for (c, v) in &a.values {
                let col = info.column(c).map_err(|e| format!("values: {e}"))?;
                sets.push((
                    Alias::new(col.name.clone()),
                    value_expr(dialect, col, v, "values")?,
                ));
            }
            q.values(sets);
            for c in conds {
                q.and_where(c);
            }
            let (sql, values) = build(dialect, &q);
            Ok(Planned {
                sql,
                values,
                classes: Vec::new(),
                answer: Answer::Affected {
                    returning_pk: false,
                },
            })
        }
        DbOp::Delete(a) => {
            let conds = conditions(dialect, info, a.filter.as_ref(), limits)?;
            if conds.is_empty() && !a.allow_all {
                return Err(
                    "delete without where would remove every row; pass allow_all: true to mean it"
                        .into(),
                );
            }
            let mut q = Query::delete();
            q.from_table(Alias::new(a.table.clone()));
            for c in conds {
                q.and_where(c);
            }
            let (sql, values) = build(dialect, &q);
            Ok(Planned {
                sql,
                values,
                classes: Vec::new(),
                answer: Answer::Affected {
                    returning_pk: false,
                },
            })
        }
        DbOp::Raw(_) => Err("raw statements are not planned".into()),
    }
}

fn plan_select(
    dialect: Dialect,
    one: bool,
    args: &QueryArgs,
    info: &TableInfo,
    limits: &BrokerLimits,
) -> Result<Planned, String> {
    let mut q = Query::select();
    q.from(Alias::new(args.table.clone()));
    let selected: Vec<&ColumnInfo> = match &args.columns {
        Some(cols) if cols.is_empty() => return Err("columns is empty".into()),
        Some(cols) => cols
            .iter()
            .map(|c| info.column(c).map_err(|e| format!("columns: {e}")))
            .collect::<Result<_, _>>()?,
        None => info.columns.iter().collect(),
    };
    for c in &selected {
        q.column(Alias::new(c.name.clone()));
    }
    for c in conditions(dialect, info, args.filter.as_ref(), limits)? {
        q.and_where(c);
    }
    let mut ordered: Vec<String> = Vec::new();
    for spec in order_columns(args.order_by.as_ref()) {
        let (name, order) = match spec.strip_prefix('-') {
            Some(rest) => (rest, Order::Desc),
            None => (spec.as_str(), Order::Asc),
        };
        let col = info.column(name).map_err(|e| format!("order_by: {e}"))?;
        q.order_by(Alias::new(col.name.clone()), order);
        ordered.push(col.name.clone());
    }
    // Ties (and unordered queries) are broken by the primary key, so both backends
    // return rows in the same order.
    for pk in &info.primary_key {
        if !ordered.contains(pk) {
            q.order_by(Alias::new(pk.clone()), Order::Asc);
        }
    }
    let cap = limits.max_rows as u64 + 1;
    let limit = if one {
        1
    } else {
        args.limit.map_or(cap, |l| l.min(cap))
    };
    q.limit(limit);
    if let Some(offset) = args.offset {
        q.offset(offset);
    }
    let (sql, values) = build(dialect, &q);
    Ok(Planned {
        sql,
        values,
        classes: selected.iter().map(|c| c.class).collect(),
        answer: if one { Answer::OneRow } else { Answer::Rows },
    })
}

fn plan_insert(
    dialect: Dialect,
    a: &InsertArgs,
    info: &TableInfo,
    limits: &BrokerLimits,
) -> Result<Planned, String> {
    let rows: Vec<&Map<String, Value>> = match &a.values {
        InsertValues::One(r) => vec![r],
        InsertValues::Many(rs) => rs.iter().collect(),
    };
    if rows.is_empty() {
        return Err("insert: values is empty".into());
    }
    if rows.len() > limits.max_insert_rows {
        return Err(format!(
            "insert: at most {} rows per call (got {})",
            limits.max_insert_rows,
            rows.len()
        ));
    }
    let first: Vec<&String> = rows[0].keys().collect();
    if first.is_empty() {
        return Err("insert: a row has no columns".into());
    }
    let cols: Vec<&ColumnInfo> = first
        .iter()
        .map(|c| info.column(c).map_err(|e| format!("values: {e}")))
        .collect::<Result<_, _>>()?;
    let mut q = Query::insert();
    q.into_table(Alias::new(a.table.clone()));
    q.columns(cols.iter().map(|c| Alias::new(c.name.clone())));
    for (i, row) in rows.iter().enumerate() {
        if row.keys().collect::<Vec<_>>() != first {
            return Err(format!("insert: row {i} has different columns than row 0"));
        }
        let exprs = cols
            .iter()
            .map(|c| value_expr(dialect, c, &row[&c.name], "values"))
            .collect::<Result<Vec<_>, _>>()?;
        q.values(exprs).map_err(|e| format!("insert: {e}"))?;
    }
    let pk = info.integer_pk();
    if let Some(pk) = pk {
        q.returning_col(Alias::new(pk.name.clone()));
    }
    let (sql, values) = build(dialect, &q);
    Ok(Planned {
        sql,
        values,
        classes: pk.map(|c| vec![c.class]).unwrap_or_default(),
        answer: Answer::Affected {
            returning_pk: pk.is_some(),
        },
    })
}

/// Bind values of a raw statement (no column knowledge: JSON kinds map directly).
pub(crate) fn raw_values(params: &[Value]) -> Values {
    Values(
        params
            .iter()
            .map(|p| match p {
                Value::Null => SqlValue::String(None),
                Value::Bool(b) => SqlValue::Bool(Some(*b)),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => SqlValue::BigInt(Some(i)),
                    None => SqlValue::Double(n.as_f64()),
                },
                Value::String(s) => SqlValue::String(Some(Box::new(s.clone()))),
                other => SqlValue::String(Some(Box::new(other.to_string()))),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> TableInfo {
        let col = |name: &str, class, t: &str| ColumnInfo {
            name: name.into(),
            class,
            sql_type: t.into(),
        };
        TableInfo {
            columns: vec![
                col("id", ColumnClass::Integer, "int8"),
                col("name", ColumnClass::Text, "text"),
                col("at", ColumnClass::Timestamp, "timestamptz"),
                col("doc", ColumnClass::Json, "jsonb"),
            ],
            primary_key: vec!["id".into()],
        }
    }

    fn planned(dialect: Dialect, op: &str, args: Value) -> Result<Planned, String> {
        let op = DbOp::parse(op, args)?;
        plan(dialect, &op, &info(), &BrokerLimits::default())
    }

    #[test]
    fn identifiers() {
        let cases = [
            ("orders", true),
            ("_x1", true),
            ("Orders_2", true),
            ("", false),
            ("1abc", false),
            ("a-b", false),
            ("a b", false),
            ("a\"b", false),
            ("a;drop", false),
            ("a.b", false),
            ("naïve", false),
            (&"a".repeat(64), false),
        ];
        for (s, ok) in cases {
            assert_eq!(valid_ident(s), ok, "{s}");
        }
    }

    #[test]
    fn select_is_parameterized_and_quoted() -> Result<(), String> {
        let p = planned(
            Dialect::Postgres,
            "query",
            json!({"table": "t", "where": {"name": "x' OR '1'='1", "id": {"op": ">", "value": 3}},
                   "columns": ["id", "name"], "order_by": "-name", "limit": 5}),
        )?;
        assert_eq!(
            p.sql,
            r#"SELECT "id", "name" FROM "t" WHERE "id" > $1 AND "name" = $2 ORDER BY "name" DESC, "id" ASC LIMIT $3"#
        );
        assert_eq!(p.values.0.len(), 3);
        assert!(!p.sql.contains("OR '1'"));
        let p = planned(
            Dialect::Sqlite,
            "query_one",
            json!({"table": "t", "where": {"id": 1}}),
        )?;
        assert_eq!(
            p.sql,
            r#"SELECT "id", "name", "at", "doc" FROM "t" WHERE "id" = ? ORDER BY "id" ASC LIMIT ?"#
        );
        assert_eq!(p.answer, Answer::OneRow);
        Ok(())
    }

    #[test]
    fn postgres_casts_text_for_typed_columns() -> Result<(), String> {
        let p = planned(
            Dialect::Postgres,
            "insert",
            json!({"table": "t", "values": {"id": 1, "at": "2024-01-01T00:00:00Z", "doc": {"a": 1}, "name": null}}),
        )?;
        assert_eq!(
            p.sql,
            r#"INSERT INTO "t" ("at", "doc", "id", "name") VALUES (CAST($1 AS timestamptz), CAST($2 AS jsonb), $3, $4) RETURNING "id""#
        );
        Ok(())
    }

    #[test]
    fn bad_identifiers_and_shapes_are_refused() {
        let cases = [
            (
                "query",
                json!({"table": "t", "columns": ["id\" FROM secrets --"]}),
                "invalid column",
            ),
            (
                "query",
                json!({"table": "t", "columns": ["nope"]}),
                "unknown column",
            ),
            (
                "query",
                json!({"table": "t", "order_by": "name; DROP TABLE t"}),
                "invalid column",
            ),
            (
                "query",
                json!({"table": "t", "order_by": ["-id", "-(select 1)"]}),
                "invalid column",
            ),
            (
                "query",
                json!({"table": "t", "where": {"1=1 OR id": 1}}),
                "invalid column",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": "1 OR 1=1"}}),
                "expects an integer",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": [1, 2]}}),
                "only allowed as",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": {"$gt": 1}}}),
                "exactly",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": {"op": "in", "value": 1}}}),
                "in takes a list",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": {"op": "in", "value": [[1]]}}}),
                "list of scalars",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": {"op": "like", "value": "1%"}}}),
                "text column",
            ),
            (
                "query",
                json!({"table": "t", "where": {"id": {"op": "~", "value": 1}}}),
                "op must be",
            ),
            (
                "query",
                json!({"table": "t", "where": {"name": {"op": "is_null", "value": "yes"}}}),
                "is_null",
            ),
            ("query", json!({"table": "t", "bogus": 1}), "unknown field"),
            (
                "query",
                json!({"table": "t", "limit": -1}),
                "invalid arguments",
            ),
            (
                "update",
                json!({"table": "t", "values": {"name": "x"}}),
                "allow_all",
            ),
            (
                "update",
                json!({"table": "t", "values": {"name": "x"}, "where": {}}),
                "allow_all",
            ),
            ("delete", json!({"table": "t"}), "allow_all"),
            ("insert", json!({"table": "t", "values": []}), "empty"),
            (
                "insert",
                json!({"table": "t", "values": [{"id": 1}, {"name": "x"}]}),
                "different columns",
            ),
            (
                "insert",
                json!({"table": "t", "values": {"id": "7"}}),
                "expects an integer",
            ),
            ("frob", json!({"table": "t"}), "unknown operation"),
        ];
        for (op, args, want) in cases {
            let err = planned(Dialect::Postgres, op, args.clone())
                .err()
                .unwrap_or_default();
            assert!(err.contains(want), "{op} {args}: {err}");
        }
    }

    #[test]
    fn allow_all_and_in_and_null() -> Result<(), String> {
        let p = planned(
            Dialect::Sqlite,
            "delete",
            json!({"table": "t", "allow_all": true}),
        )?;
        assert_eq!(p.sql, r#"DELETE FROM "t""#);
        let p = planned(
            Dialect::Sqlite,
            "query",
            json!({"table": "t", "where": {"id": {"op": "in", "value": [1, 2]}, "name": null}}),
        )?;
        assert!(p.sql.contains(r#""id" IN (?, ?)"#), "{}", p.sql);
        assert!(p.sql.contains(r#""name" IS NULL"#), "{}", p.sql);
        let p = planned(
            Dialect::Sqlite,
            "query",
            json!({"table": "t", "where": {"id": {"op": "in", "value": []}}}),
        )?;
        assert!(p.sql.contains("1 = 0"), "{}", p.sql);
        Ok(())
    }

    #[test]
    fn limit_is_capped_one_past_the_row_cap() -> Result<(), String> {
        let p = planned(
            Dialect::Sqlite,
            "query",
            json!({"table": "t", "limit": 1_000_000}),
        )?;
        assert!(
            p.values.0.contains(&SqlValue::BigUnsigned(Some(10_001))),
            "{:?}",
            p.values
        );
        Ok(())
    }
}

//! The JSON ⇄ SQL value mapping, identical on SQLite and PostgreSQL.
//!
//! Owns: classifying a column's declared type, deciding whether a JSON value a controller
//! sent fits a column (type confusion is refused before any SQL runs), and the JSON a row
//! value becomes. Must never: coerce silently (a string is never an integer, an object is
//! never a scalar outside a JSON column).
//!
//! The mapping (also in `docs/protocol.md` terms):
//!
//! | SQL (SQLite declared type / PostgreSQL type) | JSON |
//! | --- | --- |
//! | NULL | `null` |
//! | integer (`INTEGER`, `BIGINT`, `INT`… / `int2`, `int4`, `int8`) | number (integer, 64-bit) |
//! | real (`REAL`, `DOUBLE`, `FLOAT` / `float4`, `float8`), `NUMERIC` | number (NaN/∞ → `null`) |
//! | boolean (`BOOLEAN` / `bool`) | `true` / `false` (SQLite stores 0/1) |
//! | text (`TEXT`, `VARCHAR`… / `text`, `varchar`, `bpchar`, `name`) | string |
//! | blob (`BLOB` / `bytea`) | string, standard base64 with padding |
//! | timestamp (`TIMESTAMP`, `DATETIME`, `DATE` / `timestamptz`, `timestamp`, `date`) | string: PostgreSQL renders RFC 3339 (`2024-05-01T10:00:00Z`, UTC, fractional seconds only when non-zero); SQLite returns the text stored — store RFC 3339 UTC with `Z` and both are identical |
//! | JSON (`JSON` / `json`, `jsonb`) | the JSON value itself |
//! | UUID (`UUID` / `uuid`) | string, lower-case hyphenated |
//!
//! Values a controller sends are checked against the column's class by [`bind_value`].

use base64::Engine;
use serde_json::Value;

/// What kind of values a column holds (both backends map onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnClass {
    /// 64-bit integers.
    Integer,
    /// Floating point.
    Real,
    /// Exact decimal (PostgreSQL `numeric`; SQLite `NUMERIC`/`DECIMAL`).
    Numeric,
    /// Booleans.
    Bool,
    /// Text.
    Text,
    /// Bytes.
    Blob,
    /// Date/time, written as text.
    Timestamp,
    /// JSON documents.
    Json,
    /// UUIDs, written as text.
    Uuid,
    /// Anything else: text or numbers are passed on and the database decides.
    Other,
}

/// Class of a SQLite declared type (type affinity rules, plus the names we map specially).
pub(crate) fn sqlite_class(decl: &str) -> ColumnClass {
    let t = decl.to_ascii_lowercase();
    if t.contains("bool") {
        ColumnClass::Bool
    } else if t.contains("int") {
        ColumnClass::Integer
    } else if t.contains("json") {
        ColumnClass::Json
    } else if t.contains("uuid") {
        ColumnClass::Uuid
    } else if t.contains("char") || t.contains("clob") || t.contains("text") {
        ColumnClass::Text
    } else if t.contains("blob") || t.is_empty() {
        ColumnClass::Blob
    } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
        ColumnClass::Real
    } else if t.contains("date") || t.contains("time") {
        ColumnClass::Timestamp
    } else if t.contains("num") || t.contains("dec") {
        ColumnClass::Numeric
    } else {
        ColumnClass::Other
    }
}

/// Class of a PostgreSQL type name (`pg_type.typname`).
pub(crate) fn postgres_class(typname: &str) -> ColumnClass {
    match typname {
        "bool" => ColumnClass::Bool,
        "int2" | "int4" | "int8" => ColumnClass::Integer,
        "float4" | "float8" => ColumnClass::Real,
        "numeric" => ColumnClass::Numeric,
        "text" | "varchar" | "bpchar" | "name" | "citext" => ColumnClass::Text,
        "bytea" => ColumnClass::Blob,
        "timestamptz" | "timestamp" | "date" | "time" | "timetz" => ColumnClass::Timestamp,
        "json" | "jsonb" => ColumnClass::Json,
        "uuid" => ColumnClass::Uuid,
        _ => ColumnClass::Other,
    }
}

/// A controller value that fits its column, ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bound {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Real(f64),
    /// Text; `cast` is true when PostgreSQL must cast it to the column's type.
    Text {
        /// The text.
        text: String,
        /// Cast to the column type (timestamps, uuids, json, other types).
        cast: bool,
    },
    /// Bytes.
    Bytes(Vec<u8>),
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Check that `v` fits a column of class `class` and turn it into a bound value.
/// The error names the expected and the given JSON kind.
pub(crate) fn bind_value(class: ColumnClass, v: &Value) -> Result<Bound, String> {
    let mismatch = |expected: &str| format!("expects {expected}, got {}", kind(v));
    Ok(match (class, v) {
        (_, Value::Null) => Bound::Null,
        (ColumnClass::Json, other) => Bound::Text {
            text: other.to_string(),
            cast: true,
        },
        (ColumnClass::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => Bound::Int(i),
            None if n.is_u64() => return Err("integer out of 64-bit range".into()),
            None => return Err(mismatch("an integer")),
        },
        (ColumnClass::Integer, _) => return Err(mismatch("an integer")),
        (ColumnClass::Real | ColumnClass::Numeric, Value::Number(n)) => match n.as_i64() {
            Some(i) => Bound::Int(i),
            None => Bound::Real(n.as_f64().ok_or_else(|| mismatch("a number"))?),
        },
        (ColumnClass::Real | ColumnClass::Numeric, _) => return Err(mismatch("a number")),
        (ColumnClass::Bool, Value::Bool(b)) => Bound::Bool(*b),
        (ColumnClass::Bool, _) => return Err(mismatch("a boolean")),
        (ColumnClass::Text, Value::String(s)) => Bound::Text {
            text: s.clone(),
            cast: false,
        },
        (ColumnClass::Text, _) => return Err(mismatch("a string")),
        (ColumnClass::Blob, Value::String(s)) => Bound::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| "expects base64 text for a blob column".to_string())?,
        ),
        (ColumnClass::Blob, _) => return Err(mismatch("base64 text")),
        (ColumnClass::Timestamp | ColumnClass::Uuid, Value::String(s)) => Bound::Text {
            text: s.clone(),
            cast: true,
        },
        (ColumnClass::Timestamp | ColumnClass::Uuid, _) => return Err(mismatch("a string")),
        (ColumnClass::Other, Value::String(s)) => Bound::Text {
            text: s.clone(),
            cast: true,
        },
        (ColumnClass::Other, Value::Number(n)) => match n.as_i64() {
            Some(i) => Bound::Int(i),
            None => Bound::Real(n.as_f64().ok_or_else(|| mismatch("a number"))?),
        },
        (ColumnClass::Other, Value::Bool(b)) => Bound::Bool(*b),
        (ColumnClass::Other, _) => return Err(mismatch("a scalar")),
    })
}

/// A JSON value for a float (NaN and infinities have none: `null`).
pub(crate) fn real(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Base64 of a blob.
pub(crate) fn blob(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Approximate JSON-encoded size of a value (for the result byte cap).
pub(crate) fn approx_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|x| approx_size(x) + 1).sum::<usize>(),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, x)| k.len() + 4 + approx_size(x))
                .sum::<usize>()
        }
    }
}

/// Decode PostgreSQL's binary `numeric` into a JSON number (integer when it has no
/// fraction and fits 64 bits, else a float). `None` for NaN or malformed input.
pub(crate) fn pg_numeric(bytes: &[u8]) -> Option<Value> {
    let word = |i: usize| -> Option<i32> {
        let b = bytes.get(i * 2..i * 2 + 2)?;
        Some(i32::from(i16::from_be_bytes([b[0], b[1]])))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = word(1)?;
    let sign = u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]);
    let dscale = word(3)?;
    if sign == 0xC000 || sign & 0x2000 != 0 {
        return None; // NaN or ±Infinity
    }
    let negative = sign == 0x4000;
    let mut digits = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        digits.push(word(4 + k)?);
    }
    // Integer when no digit lies right of the decimal point.
    let fractional = digits
        .iter()
        .enumerate()
        .any(|(k, d)| *d != 0 && weight - (k as i32) < 0);
    if dscale == 0 || !fractional {
        let mut acc: i128 = 0;
        let mut ok = true;
        for k in 0..=weight.max(-1) {
            let d = digits.get(k as usize).copied().unwrap_or(0);
            match acc
                .checked_mul(10_000)
                .and_then(|a| a.checked_add(i128::from(d)))
            {
                Some(a) => acc = a,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let signed = if negative { -acc } else { acc };
            if let Ok(i) = i64::try_from(signed) {
                return Some(Value::from(i));
            }
        }
    }
    let mut f = 0.0_f64;
    for (k, d) in digits.iter().enumerate() {
        f += f64::from(*d) * 10_000_f64.powi(weight - k as i32);
    }
    Some(real(if negative { -f } else { f }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classes_of_declared_types() {
        let sqlite = [
            ("INTEGER", ColumnClass::Integer),
            ("BIGINT", ColumnClass::Integer),
            ("BOOLEAN", ColumnClass::Bool),
            ("TEXT", ColumnClass::Text),
            ("VARCHAR(20)", ColumnClass::Text),
            ("REAL", ColumnClass::Real),
            ("DOUBLE PRECISION", ColumnClass::Real),
            ("BLOB", ColumnClass::Blob),
            ("", ColumnClass::Blob),
            ("TIMESTAMP", ColumnClass::Timestamp),
            ("JSON", ColumnClass::Json),
            ("UUID", ColumnClass::Uuid),
            ("NUMERIC(10,2)", ColumnClass::Numeric),
        ];
        for (decl, class) in sqlite {
            assert_eq!(sqlite_class(decl), class, "{decl}");
        }
        let pg = [
            ("int4", ColumnClass::Integer),
            ("int8", ColumnClass::Integer),
            ("bool", ColumnClass::Bool),
            ("text", ColumnClass::Text),
            ("varchar", ColumnClass::Text),
            ("float8", ColumnClass::Real),
            ("numeric", ColumnClass::Numeric),
            ("bytea", ColumnClass::Blob),
            ("timestamptz", ColumnClass::Timestamp),
            ("jsonb", ColumnClass::Json),
            ("uuid", ColumnClass::Uuid),
            ("inet", ColumnClass::Other),
        ];
        for (t, class) in pg {
            assert_eq!(postgres_class(t), class, "{t}");
        }
    }

    #[test]
    fn type_confusion_is_refused() {
        use ColumnClass::*;
        // (class, value, accepted)
        let cases = [
            (Integer, json!(1), true),
            (Integer, json!("1"), false),
            (Integer, json!("1 OR 1=1"), false),
            (Integer, json!(1.5), false),
            (Integer, json!(true), false),
            (Integer, json!([1]), false),
            (Integer, json!({"$gt": 0}), false),
            (Integer, json!(u64::MAX), false),
            (Integer, json!(null), true),
            (Real, json!(1.5), true),
            (Real, json!("1.5"), false),
            (Text, json!("x"), true),
            (Text, json!(1), false),
            (Text, json!({"a": 1}), false),
            (Text, json!(["x"]), false),
            (Bool, json!(true), true),
            (Bool, json!(1), false),
            (Bool, json!("true"), false),
            (Blob, json!("aGVsbG8="), true),
            (Blob, json!("not base64!"), false),
            (Timestamp, json!("2024-01-01T00:00:00Z"), true),
            (Timestamp, json!(0), false),
            (Json, json!({"a": [1, 2]}), true),
            (Uuid, json!(5), false),
            (Other, json!({"a": 1}), false),
        ];
        for (class, v, ok) in cases {
            assert_eq!(bind_value(class, &v).is_ok(), ok, "{class:?} {v}");
        }
        assert_eq!(
            bind_value(Json, &json!({"a": 1})),
            Ok(Bound::Text {
                text: "{\"a\":1}".into(),
                cast: true
            })
        );
        assert_eq!(
            bind_value(Blob, &json!("aGk=")),
            Ok(Bound::Bytes(b"hi".to_vec()))
        );
    }

    #[test]
    fn pg_numeric_decodes() {
        // 12345.67 → ndigits 3, weight 1, sign 0, dscale 2, digits [1, 2345, 6700]
        let enc = |ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]| {
            let mut b = Vec::new();
            b.extend(ndigits.to_be_bytes());
            b.extend(weight.to_be_bytes());
            b.extend(sign.to_be_bytes());
            b.extend(dscale.to_be_bytes());
            for d in digits {
                b.extend(d.to_be_bytes());
            }
            b
        };
        assert_eq!(
            pg_numeric(&enc(3, 1, 0, 2, &[1, 2345, 6700])),
            Some(json!(12345.67))
        );
        assert_eq!(
            pg_numeric(&enc(2, 1, 0x4000, 0, &[42, 0])),
            Some(json!(-420000))
        );
        assert_eq!(pg_numeric(&enc(0, 0, 0, 0, &[])), Some(json!(0)));
        assert_eq!(pg_numeric(&enc(1, 0, 0, 2, &[5])), Some(json!(5)));
        assert_eq!(pg_numeric(&enc(0, 0, 0xC000, 0, &[])), None);
        assert_eq!(pg_numeric(&[1, 2]), None);
    }

    #[test]
    fn non_finite_reals_are_null() {
        assert_eq!(real(f64::NAN), Value::Null);
        assert_eq!(real(2.5), json!(2.5));
    }
}

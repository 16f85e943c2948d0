//! The spellings a contract accepts for identifiers: table names, secret keys, queue names,
//! cache prefixes.
//!
//! Owns: one pure predicate per kind of name, each returning a reason on refusal.
//! Must never: normalise a name silently (what the author wrote is what the broker matches).

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`: an unquoted SQL identifier.
pub fn is_sql_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A table name: an SQL identifier, optionally qualified by a schema (`billing.invoices`).
pub fn check_table_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| is_sql_identifier(p)) {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a table name: use letters, digits and _ (not starting with a digit, \
             at most 63), optionally qualified as schema.table"
        ))
    }
}

/// A secret key: `^[A-Za-z_][A-Za-z0-9_]{0,127}$`.
pub fn check_secret_key(key: &str) -> Result<(), String> {
    let mut bytes = key.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && key.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{key}\" is not a secret key: use letters, digits and _ (not starting with a digit, \
             at most 128), e.g. STRIPE_KEY"
        ))
    }
}

/// A queue name: `^[A-Za-z0-9_.:-]{1,128}$`.
pub fn check_queue_name(queue: &str) -> Result<(), String> {
    let ok = !queue.is_empty()
        && queue.len() <= 128
        && queue
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{queue}\" is not a queue name: use 1 to 128 letters, digits, _ . : or -"
        ))
    }
}

/// Longest cache prefix accepted.
pub const MAX_CACHE_PREFIX_LEN: usize = 256;

/// A cache key prefix: non-empty, at most 256 bytes, no whitespace or control characters.
pub fn check_cache_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err(
            "the prefix must not be empty (it would grant every key): write e.g. \"invoice:\""
                .into(),
        );
    }
    if prefix.len() > MAX_CACHE_PREFIX_LEN {
        return Err(format!(
            "the prefix is {} bytes long, at most {MAX_CACHE_PREFIX_LEN} are allowed",
            prefix.len()
        ));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{prefix:?} contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Edit distance, to suggest the key the author probably meant.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// `"; did you mean `x`?"` when one of `known` is close to `got`, else `""`.
pub(crate) fn suggestion(got: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(&got.to_ascii_lowercase(), k), *k))
        .min();
    match best {
        Some((d, k)) if d <= 2 || (d <= 3 && got.len() > 6) => format!("; did you mean `{k}`?"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        for ok in [
            "customers",
            "_t",
            "T1",
            "billing.invoices",
            "a_b_c",
            &"x".repeat(63),
        ] {
            assert!(check_table_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a.b.c",
            ".a",
            "a.",
            "a;drop",
            "\"quoted\"",
            "*",
            "tablé",
            &"x".repeat(64),
        ] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_keys() {
        for ok in ["STRIPE_KEY", "_x", "a1", &"K".repeat(128)] {
            assert!(check_secret_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1KEY", "MY-KEY", "MY.KEY", "MY KEY", &"K".repeat(129)] {
            assert!(check_secret_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queues() {
        for ok in ["invoices", "a.b:c-d_e", "1", &"q".repeat(128)] {
            assert!(check_queue_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a*", "é", &"q".repeat(129)] {
            assert!(check_queue_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_prefixes() {
        for ok in ["invoice:", "a", "x/y:", &"p".repeat(256)] {
            assert!(check_cache_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\n", "\u{7}", &"p".repeat(257)] {
            assert!(check_cache_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn suggestions() {
        let known = ["capabilities", "resources", "name"];
        assert_eq!(
            suggestion("capabilites", &known),
            "; did you mean `capabilities`?"
        );
        assert_eq!(suggestion("Name", &known), "; did you mean `name`?");
        assert_eq!(suggestion("zzzzzz", &known), "");
    }
}

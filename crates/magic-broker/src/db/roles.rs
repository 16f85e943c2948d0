//! Per-controller database roles on PostgreSQL.
//!
//! Owns: the role of each controller version (`NOLOGIN`, named deterministically from the
//! database, schema, controller and version), its GRANTs (exactly the contract's tables:
//! `SELECT` for `db:read`; `SELECT, INSERT, UPDATE, DELETE` and the tables' own sequences for
//! `db:write`), and creating them idempotently. Statements of an execution run under its role
//! (`SET LOCAL ROLE` inside a transaction, see `backend`), so the database itself refuses a
//! table the contract does not list, whatever the broker's checks let through.
//!
//! Must never: grant anything beyond the contract's tables (no schema CREATE, no other
//! tables, no LOGIN), or interpolate a name into SQL without [`quote_ident`].
//!
//! Privileges the runtime's database user needs: `CREATEROLE` (not superuser), ownership of
//! (or `GRANT OPTION` on) the application tables, and `USAGE` on their schema.

use std::collections::BTreeSet;

use magic_contract::{Capability, Contract};
use sha2::{Digest, Sha256};

/// What one controller version may do, table by table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Grants {
    /// Tables it may read (`db:read`).
    pub read: BTreeSet<String>,
    /// Tables it may write (`db:write`; also read, as UPDATE/DELETE with WHERE need SELECT).
    pub write: BTreeSet<String>,
}

impl Grants {
    /// The grants a contract declares. Pure.
    pub fn of(contract: &Contract) -> Grants {
        let mut g = Grants::default();
        for c in &contract.capabilities {
            match c {
                Capability::DbRead { tables } => g.read.extend(tables.iter().cloned()),
                Capability::DbWrite { tables } => g.write.extend(tables.iter().cloned()),
                _ => {}
            }
        }
        g
    }

    /// `(table, privileges)` for every table, each table once. Pure.
    pub fn statements(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = self
            .write
            .iter()
            .map(|t| (t.clone(), "SELECT, INSERT, UPDATE, DELETE"))
            .collect();
        out.extend(
            self.read
                .iter()
                .filter(|t| !self.write.contains(*t))
                .map(|t| (t.clone(), "SELECT")),
        );
        out
    }
}

/// Quote an SQL identifier (`"` doubled). Pure.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The role of a controller version: `magic_ctl_<name>_<hash>`, at most 63 bytes, lowercase;
/// the hash covers the database and schema too, so runtimes sharing a cluster never share a
/// role. Pure.
pub(crate) fn role_name(database: &str, schema: &str, controller: &str, version: &str) -> String {
    let mut h = Sha256::new();
    for part in [database, schema, controller, version] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name: String = controller
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(36)
        .collect();
    format!("magic_ctl_{name}_{hash}")
}

/// The statements that create `role` (when missing) and grant it exactly `grants` on the
/// tables of `schema` that exist (`existing`); sequences are granted separately (they are
/// looked up per table). Idempotent. Pure.
pub(crate) fn setup_sql(
    role: &str,
    schema: &str,
    grants: &Grants,
    existing: &[String],
) -> Vec<String> {
    let r = quote_ident(role);
    let literal = role.replace('\'', "''");
    let mut sql = vec![
        format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{literal}') \
             THEN CREATE ROLE {r} NOLOGIN NOINHERIT; END IF; END $$"
        ),
        // USAGE on the schema only when the role lacks it (`public` usually grants it to
        // PUBLIC already, and only the schema's owner could grant it again).
        format!(
            "DO $$ BEGIN IF NOT has_schema_privilege('{literal}', '{schema_literal}', 'USAGE') \
             THEN EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', '{schema_literal}', '{literal}'); \
             END IF; END $$",
            schema_literal = schema.replace('\'', "''")
        ),
    ];
    for (table, privileges) in grants.statements() {
        if existing.contains(&table) {
            sql.push(format!(
                "GRANT {privileges} ON TABLE {}.{} TO {r}",
                quote_ident(schema),
                quote_ident(&table)
            ));
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_deterministic_bounded_and_distinct() {
        let a = role_name("db", "public", "InvoiceSync", "1.0.0");
        assert_eq!(a, role_name("db", "public", "InvoiceSync", "1.0.0"));
        assert!(a.starts_with("magic_ctl_invoicesync_"), "{a}");
        assert!(a.len() <= 63);
        for other in [
            role_name("db", "public", "InvoiceSync", "1.0.1"),
            role_name("db2", "public", "InvoiceSync", "1.0.0"),
            role_name("db", "s", "InvoiceSync", "1.0.0"),
            role_name("db", "public", "Invoicesync", "1.0.0"),
        ] {
            assert_ne!(a, other);
        }
        let long = role_name("d", "s", &"A".repeat(64), "1.0.0");
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn grants_match_the_contract_exactly() {
        let g = Grants {
            read: ["orders", "items"].map(String::from).into(),
            write: ["items", "audit_notes"].map(String::from).into(),
        };
        assert_eq!(
            g.statements(),
            vec![
                ("audit_notes".to_string(), "SELECT, INSERT, UPDATE, DELETE"),
                ("items".to_string(), "SELECT, INSERT, UPDATE, DELETE"),
                ("orders".to_string(), "SELECT"),
            ]
        );
        let sql = setup_sql(
            "magic_ctl_x_1",
            "public",
            &g,
            &["orders".into(), "items".into()],
        );
        assert_eq!(sql.len(), 4, "{sql:?}");
        assert!(sql[0].contains("CREATE ROLE \"magic_ctl_x_1\" NOLOGIN"));
        assert_eq!(
            sql[1],
            "DO $$ BEGIN IF NOT has_schema_privilege('magic_ctl_x_1', 'public', 'USAGE') \
             THEN EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', 'public', 'magic_ctl_x_1'); \
             END IF; END $$"
        );
        assert!(sql.iter().any(|s| s
            == "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE \"public\".\"items\" TO \"magic_ctl_x_1\""));
        assert!(sql
            .iter()
            .any(|s| s == "GRANT SELECT ON TABLE \"public\".\"orders\" TO \"magic_ctl_x_1\""));
        assert!(
            !sql.iter().any(|s| s.contains("audit_notes")),
            "missing tables are skipped"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

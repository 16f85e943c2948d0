//! The production hardening checklist of the security model, checked against a
//! configuration (`magic doctor --production`; walked item by item in `docs/hardening.md`).
//!
//! Owns: one pure function from the settings (an environment lookup) and a few host facts to
//! a verdict per checklist item. Must never: read the process environment or the file system
//! itself (the CLI gathers [`HostFacts`]), or print a secret's value.

/// Settings read by the checks (the names are the runtime's environment variables).
pub const SETTINGS: &[&str] = &[
    "CONTROLLER_EXECUTION_MODE",
    "MAGIC_ALLOW_DEGRADED_ISOLATION",
    "CONTROLLER_ALLOWLIST",
    "MAGIC_TLS_CERT",
    "MAGIC_TLS_KEY",
    "MAGIC_BEHIND_TLS_PROXY",
    "JWT_SECRET",
    "JWT_JWKS_URL",
    "MAGIC_ADMIN_API_KEY",
    "ALLOWED_ORIGINS",
    "AUDIT_LOG_SINK",
    "AUDIT_RETENTION_DAYS",
    "AUDIT_RETENTION_MAX_RECORDS",
    "AUDIT_SIGNING_KEY",
    "AUDIT_SIGNING_KEY_FILE",
    "DATABASE_URL",
    "MAGIC_APP_DATABASE_URL",
    "REDIS_URL",
    "MAGIC_MASTER_KEY",
    "MAGIC_MASTER_KEY_FILE",
];

/// Facts about the host the checks need, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The isolation layers process mode needs but this host lacks (`None`: all present).
    pub missing_isolation: Option<String>,
    /// Unix permission bits of the master key file in use (`None`: no such file / not read).
    pub master_key_mode: Option<u32>,
    /// Whether the master key file in use is the one generated in the data dir.
    pub master_key_in_data_dir: bool,
}

/// One checklist item's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The checklist item (as named in the security model and `docs/hardening.md`).
    pub item: &'static str,
    /// Whether the configuration satisfies it.
    pub ok: bool,
    /// What was found, and what to set when it fails.
    pub detail: String,
}

fn check(item: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        item,
        ok,
        detail: detail.into(),
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// Whether a database URL points at this machine (where TLS to the database adds nothing).
fn is_local_host(url: &str) -> bool {
    let after = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host_port = after.split(['/', '?']).next().unwrap_or("");
    let host = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(|| host.split(':').next().unwrap_or(""), |(h, _)| h);
    host.is_empty() || host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Whether a PostgreSQL URL requires TLS (`sslmode=require|verify-ca|verify-full`).
fn pg_requires_tls(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|kv| {
            matches!(
                kv.split_once('='),
                Some(("sslmode", "require" | "verify-ca" | "verify-full"))
            )
        })
    })
}

/// Check every item of the production hardening checklist. `env` looks a setting up (empty
/// values count as unset).
pub fn production_checks(env: &dyn Fn(&str) -> Option<String>, host: &HostFacts) -> Vec<Check> {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut out = Vec::new();

    // 1. Process isolation.
    let mode = get("CONTROLLER_EXECUTION_MODE").unwrap_or_else(|| "process".into());
    let degraded = truthy(get("MAGIC_ALLOW_DEGRADED_ISOLATION").as_deref());
    out.push(match (mode.as_str(), degraded, &host.missing_isolation) {
        ("process", false, None) => check(
            "process isolation",
            true,
            "CONTROLLER_EXECUTION_MODE=process; every isolation layer is available",
        ),
        ("process", true, _) => check(
            "process isolation",
            false,
            "MAGIC_ALLOW_DEGRADED_ISOLATION is set: unset it (process mode must refuse to run degraded)",
        ),
        ("process", false, Some(m)) => check(
            "process isolation",
            false,
            format!("this host lacks isolation layers process mode needs: {m}"),
        ),
        (other, _, _) => check(
            "process isolation",
            false,
            format!("CONTROLLER_EXECUTION_MODE={other}: set CONTROLLER_EXECUTION_MODE=process"),
        ),
    });

    // 2. Controller allowlist.
    out.push(match get("CONTROLLER_ALLOWLIST") {
        Some(list) => {
            let names: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            match names.iter().find(|n| !magic_contract::is_valid_name(n)) {
                Some(bad) => check(
                    "controller allowlist",
                    false,
                    format!("CONTROLLER_ALLOWLIST: {bad:?} is not a controller name"),
                ),
                None if names.is_empty() => check(
                    "controller allowlist",
                    false,
                    "CONTROLLER_ALLOWLIST is empty: list the controllers that may be deployed",
                ),
                None => check(
                    "controller allowlist",
                    true,
                    format!("{} controller name(s) allowed", names.len()),
                ),
            }
        }
        None => check(
            "controller allowlist",
            false,
            "CONTROLLER_ALLOWLIST is unset: any controller may be deployed; set CONTROLLER_ALLOWLIST=Name1,Name2",
        ),
    });

    // 3. TLS termination.
    let native = get("MAGIC_TLS_CERT").is_some() && get("MAGIC_TLS_KEY").is_some();
    let proxy = truthy(get("MAGIC_BEHIND_TLS_PROXY").as_deref());
    out.push(if native {
        check("TLS termination", true, "MAGIC_TLS_CERT and MAGIC_TLS_KEY are set")
    } else if proxy {
        check(
            "TLS termination",
            true,
            "MAGIC_BEHIND_TLS_PROXY=1: a TLS-terminating proxy (deploy/nginx.conf) fronts the runtime",
        )
    } else {
        check(
            "TLS termination",
            false,
            "no TLS: set MAGIC_TLS_CERT + MAGIC_TLS_KEY, or put nginx with TLS in front and set MAGIC_BEHIND_TLS_PROXY=1",
        )
    });

    // 4. Strong secrets.
    let mut weak = Vec::new();
    if let Some(s) = get("JWT_SECRET") {
        if s.len() < 32 {
            weak.push(format!(
                "JWT_SECRET is {} bytes (at least 32 = 256 bits)",
                s.len()
            ));
        }
    }
    if let Some(k) = get("MAGIC_ADMIN_API_KEY") {
        if k.len() < 32 {
            weak.push(format!(
                "MAGIC_ADMIN_API_KEY is {} characters (at least 32)",
                k.len()
            ));
        }
    }
    out.push(if weak.is_empty() {
        check(
            "strong secrets",
            true,
            "JWT_SECRET / MAGIC_ADMIN_API_KEY are unset or at least 256 bits; rotate API keys with `magic keys` (expiry: --expires-in)",
        )
    } else {
        check("strong secrets", false, weak.join("; "))
    });

    // 5. CORS.
    out.push(match get("ALLOWED_ORIGINS") {
        Some(o) if o.split(',').any(|x| x.trim() == "*") => check(
            "CORS origins",
            false,
            "ALLOWED_ORIGINS contains *: list the exact origins (https://app.example.com)",
        ),
        Some(o) => check("CORS origins", true, format!("ALLOWED_ORIGINS={o}")),
        None => check(
            "CORS origins",
            true,
            "ALLOWED_ORIGINS unset: no cross-origin browser access",
        ),
    });

    // 6. Audit logging: always on; production ships it off the host and bounds retention.
    let sink = get("AUDIT_LOG_SINK");
    let retention =
        get("AUDIT_RETENTION_DAYS").is_some() || get("AUDIT_RETENTION_MAX_RECORDS").is_some();
    out.push(match (sink, retention) {
        (Some(s), true) => check(
            "audit logging",
            true,
            format!("AUDIT_LOG_SINK={s}; retention policy set"),
        ),
        (None, _) => check(
            "audit logging",
            false,
            "AUDIT_LOG_SINK is unset: the chain only lives in the runtime's database; add a sink (file:, syslog:, webhook:)",
        ),
        (Some(_), false) => check(
            "audit logging",
            false,
            "no retention policy: set AUDIT_RETENTION_DAYS (and AUDIT_RETENTION_ARCHIVE_DIR)",
        ),
    });

    // 7. Resource limits: contracts carry them; the runtime enforces them (cgroups in process
    // mode). What a value should be is a review, not a setting.
    out.push(check(
        "resource limits",
        host.missing_isolation.is_none() && !degraded && mode == "process",
        "contract limits (cpu, memory, timeout) are enforced by cgroups in process mode; review each contract's resources",
    ));

    // 8. Database connection security (and the shared state many nodes need).
    let db = get("DATABASE_URL");
    out.push(match &db {
        None => check(
            "database",
            false,
            "DATABASE_URL is unset: SQLite in the data dir; use PostgreSQL (postgres://…?sslmode=verify-full)",
        ),
        Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => check(
            "database",
            false,
            "DATABASE_URL is not PostgreSQL: use postgres://…?sslmode=verify-full",
        ),
        Some(u) if !is_local_host(u) && !pg_requires_tls(u) => check(
            "database",
            false,
            "DATABASE_URL reaches another host without TLS: add ?sslmode=verify-full",
        ),
        Some(_) => check("database", true, "PostgreSQL (TLS required or on this host)"),
    });
    if let Some(app) = get("MAGIC_APP_DATABASE_URL") {
        if !is_local_host(&app) && !pg_requires_tls(&app) {
            out.push(check(
                "database",
                false,
                "MAGIC_APP_DATABASE_URL reaches another host without TLS: add ?sslmode=verify-full",
            ));
        }
    }
    out.push(match get("REDIS_URL") {
        None => check(
            "redis",
            false,
            "REDIS_URL is unset: cache and queue are per node; set REDIS_URL (rediss:// across hosts)",
        ),
        Some(u) if !u.starts_with("rediss://") && !is_local_host(&u) => check(
            "redis",
            false,
            "REDIS_URL reaches another host without TLS: use rediss://",
        ),
        Some(_) => check("redis", true, "REDIS_URL is set"),
    });

    // Secrets master key: kept apart from the data (and its backups), readable by the owner only.
    out.push(if get("MAGIC_MASTER_KEY").is_some() {
        check(
            "master key",
            true,
            "MAGIC_MASTER_KEY comes from the environment (a secret store)",
        )
    } else if host.master_key_in_data_dir {
        check(
            "master key",
            false,
            "the master key is the one generated in the data dir (it travels with backups): set MAGIC_MASTER_KEY_FILE to a file from your secret store",
        )
    } else {
        match host.master_key_mode {
            Some(m) if m & 0o077 != 0 => check(
                "master key",
                false,
                format!(
                    "MAGIC_MASTER_KEY_FILE is readable by group/others (mode {:o}): chmod 600",
                    m & 0o777
                ),
            ),
            Some(_) => check(
                "master key",
                true,
                "MAGIC_MASTER_KEY_FILE is readable by its owner only",
            ),
            None => check(
                "master key",
                false,
                "MAGIC_MASTER_KEY_FILE cannot be read",
            ),
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn passing() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("CONTROLLER_EXECUTION_MODE", "process"),
            ("CONTROLLER_ALLOWLIST", "InvoiceSync,Greeter"),
            ("MAGIC_BEHIND_TLS_PROXY", "1"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ALLOWED_ORIGINS", "https://app.example.com"),
            ("AUDIT_LOG_SINK", "file:/var/log/magic/audit.jsonl"),
            ("AUDIT_RETENTION_DAYS", "365"),
            (
                "DATABASE_URL",
                "postgres://magic@db.internal:5432/magic?sslmode=verify-full",
            ),
            ("REDIS_URL", "rediss://cache.internal:6380"),
            ("MAGIC_MASTER_KEY_FILE", "/run/secrets/master.key"),
        ])
    }

    fn host() -> HostFacts {
        HostFacts {
            missing_isolation: None,
            master_key_mode: Some(0o600),
            master_key_in_data_dir: false,
        }
    }

    fn failing(env: &HashMap<&str, &str>, host: &HostFacts) -> Vec<&'static str> {
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        production_checks(&lookup, host)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.item)
            .collect()
    }

    #[test]
    fn a_production_configuration_passes() {
        assert_eq!(failing(&passing(), &host()), Vec::<&str>::new());
    }

    #[test]
    fn each_gap_fails_its_item() {
        type Change = (&'static str, Option<&'static str>);
        let table: &[(&[Change], &str)] = &[
            (
                &[("CONTROLLER_EXECUTION_MODE", Some("inline"))],
                "process isolation",
            ),
            (
                &[("MAGIC_ALLOW_DEGRADED_ISOLATION", Some("1"))],
                "process isolation",
            ),
            (&[("CONTROLLER_ALLOWLIST", None)], "controller allowlist"),
            (
                &[("CONTROLLER_ALLOWLIST", Some("9bad"))],
                "controller allowlist",
            ),
            (&[("MAGIC_BEHIND_TLS_PROXY", None)], "TLS termination"),
            (&[("JWT_SECRET", Some("short-secret"))], "strong secrets"),
            (
                &[("MAGIC_ADMIN_API_KEY", Some("0123456789abcdef"))],
                "strong secrets",
            ),
            (
                &[("ALLOWED_ORIGINS", Some("https://a.example, *"))],
                "CORS origins",
            ),
            (&[("AUDIT_LOG_SINK", None)], "audit logging"),
            (&[("AUDIT_RETENTION_DAYS", None)], "audit logging"),
            (&[("DATABASE_URL", None)], "database"),
            (
                &[("DATABASE_URL", Some("sqlite:/var/lib/magic/m.db"))],
                "database",
            ),
            (
                &[("DATABASE_URL", Some("postgres://m@db.internal/m"))],
                "database",
            ),
            (
                &[("MAGIC_APP_DATABASE_URL", Some("postgres://m@10.0.0.5/app"))],
                "database",
            ),
            (&[("REDIS_URL", None)], "redis"),
            (
                &[("REDIS_URL", Some("redis://cache.internal:6379"))],
                "redis",
            ),
        ];
        for (changes, item) in table {
            let mut env = passing();
            for (k, v) in *changes {
                match v {
                    Some(v) => env.insert(k, v),
                    None => env.remove(k),
                };
            }
            let failed = failing(&env, &host());
            assert!(failed.contains(item), "{changes:?}: {failed:?}");
            // Without process isolation the contract limits are not enforced either.
            let also = usize::from(*item == "process isolation");
            assert_eq!(
                failed.len(),
                1 + also,
                "{changes:?}: only {item} fails, got {failed:?}"
            );
        }
        // TLS natively is as good as a proxy; local databases need no TLS.
        let mut env = passing();
        env.remove("MAGIC_BEHIND_TLS_PROXY");
        env.insert("MAGIC_TLS_CERT", "/etc/magic/tls.crt");
        env.insert("MAGIC_TLS_KEY", "/etc/magic/tls.key");
        env.insert("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/magic");
        env.insert("REDIS_URL", "redis://localhost:6379");
        assert_eq!(failing(&env, &host()), Vec::<&str>::new());
    }

    #[test]
    fn host_facts_fail_their_items() {
        let env = passing();
        let mut h = host();
        h.missing_isolation = Some("cgroups".into());
        assert_eq!(failing(&env, &h), ["process isolation", "resource limits"]);
        let mut h = host();
        h.master_key_mode = Some(0o644);
        assert_eq!(failing(&env, &h), ["master key"]);
        let mut h = host();
        h.master_key_in_data_dir = true;
        assert_eq!(failing(&env, &h), ["master key"]);
        let mut h = host();
        h.master_key_mode = None;
        assert_eq!(failing(&env, &h), ["master key"]);
    }

    #[test]
    fn local_hosts() {
        for (url, local) in [
            ("postgres://u:p@127.0.0.1:5432/d", true),
            ("postgres://localhost/d", true),
            ("postgres://u@[::1]:5432/d", true),
            ("postgres:///d?host=/run/postgresql", true),
            ("postgres://u@db.internal/d", false),
            ("redis://10.0.0.2:6379", false),
        ] {
            assert_eq!(is_local_host(url), local, "{url}");
        }
        assert!(pg_requires_tls("postgres://h/d?sslmode=require"));
        assert!(!pg_requires_tls("postgres://h/d?sslmode=prefer"));
    }
}

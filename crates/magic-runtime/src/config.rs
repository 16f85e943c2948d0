//! Server configuration: one struct filled from flags and environment by the CLI.
//!
//! Owns: the settings `magic serve` runs with, their defaults and their validation. Must never:
//! read the environment outside the `*_from_env` helpers the CLI calls (tests build configs
//! directly).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `CONTROLLER_MAX_CONCURRENT`.
pub const DEFAULT_MAX_CONCURRENT: usize = 10;
/// Default request body limit (bytes) for execute.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Default `MAGIC_SHUTDOWN_GRACE`: how long SIGTERM waits for in-flight executions.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Request body limit for deploys (a package plus base64 overhead).
pub const MAX_DEPLOY_BODY: usize = 24 * 1024 * 1024;

/// How executions are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMode {
    /// The default and production mode: a fresh child of a sandboxed per-version zygote per
    /// execution (namespaces, read-only root, seccomp, no capabilities, a cgroup).
    Process,
    /// A plain child process per execution, **not isolated**: development only.
    Inline,
}

impl ExecutionMode {
    /// Parse `CONTROLLER_EXECUTION_MODE`.
    pub fn parse(s: &str) -> Result<ExecutionMode, ConfigError> {
        match s {
            "inline" => Ok(ExecutionMode::Inline),
            "process" => Ok(ExecutionMode::Process),
            other => Err(ConfigError::Invalid {
                setting: "CONTROLLER_EXECUTION_MODE",
                reason: format!("unknown mode {other:?}: expected process or inline"),
            }),
        }
    }
}

/// A bad setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The setting's value is not acceptable.
    #[error("{setting}: {reason}")]
    Invalid {
        /// Setting name as the user wrote it.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

/// Everything `magic serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data dir (SQLite state, packages, keys).
    pub data_dir: PathBuf,
    /// `DATABASE_URL`; `None` = SQLite in the data dir.
    pub database_url: Option<String>,
    /// `REDIS_URL`; `None` = in-process cache and SQLite queue.
    pub redis_url: Option<String>,
    /// `MAGIC_ADMIN_API_KEY`: accepted as an admin key.
    pub admin_api_key: Option<String>,
    /// `CONTROLLER_MAX_CONCURRENT`: in-flight executions per controller.
    pub max_concurrent: usize,
    /// `CONTROLLER_EXECUTION_MODE`.
    pub execution_mode: ExecutionMode,
    /// `MAGIC_WASM_MAX_INSTANCES`: WASM instances alive at once across all controllers (the
    /// pooling allocator's slots); beyond it executions get E3004.
    pub wasm_max_instances: u32,
    /// Largest execute request body.
    pub max_body_bytes: usize,
    /// Python interpreter (`MAGIC_PYTHON`, else `python3` on PATH).
    pub python: Option<PathBuf>,
    /// How often the registry checks the store for deploys and rollbacks made by other nodes
    /// (`MAGIC_REGISTRY_SYNC_MS`).
    pub registry_sync: std::time::Duration,
    /// `MAGIC_SLOT_LEASE_MS`: lifetime of a cross-node execution slot lease (renewed while
    /// the execution runs; a dead node's slots come back after it).
    pub slot_lease: std::time::Duration,
    /// `MAGIC_NODE_ID`: this node's name in the `X-Magic-Node` response header and logs
    /// (default `HOSTNAME:PORT`).
    pub node_id: Option<String>,
    /// `CONTROLLER_ALLOWLIST`: when set, only these controller names may be deployed.
    pub controller_allowlist: Option<Vec<String>>,
    /// The audit log's settings (`AUDIT_*`).
    pub audit: magic_audit::AuditConfig,
    /// The capability broker's settings (application database, Redis, master key, egress).
    /// Its `data_dir` is replaced by [`ServeConfig::data_dir`] at start.
    pub broker: magic_broker::BrokerConfig,
    /// `MAGIC_ALLOW_DEGRADED_ISOLATION=1`: start process mode even where an isolation layer is
    /// missing (rlimits instead of cgroups; inline without namespaces), with a loud warning.
    pub allow_degraded_isolation: bool,
    /// `JWT_SECRET` (HS256) and/or `JWT_JWKS_URL`/`OIDC_ISSUER` (RS256/ES256), with
    /// `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_ROLE_CLAIM`, `JWT_ROLE_MAP`, `JWT_JWKS_MIN_REFRESH`:
    /// accept bearer tokens; `None` = API keys (and client certificates) only.
    pub jwt: Option<crate::jwt::JwtConfig>,
    /// When deploys wait for a second person's approval (`MAGIC_REQUIRE_APPROVAL=1` or the
    /// policy file's `approvals.required_for`).
    pub approvals: crate::approvals::ApprovalMode,
    /// `MAGIC_SHUTDOWN_GRACE`: on SIGTERM, how long in-flight executions may still run before
    /// they are stopped (E5002).
    pub shutdown_grace: std::time::Duration,
    /// `MAGIC_POLICY_FILE`, loaded: checked at deploy and at every execution.
    pub policy: Option<crate::policy::Policy>,
    /// `ALLOWED_ORIGINS`: origins answered with CORS headers (`None`: no CORS headers at all).
    pub allowed_origins: Option<Vec<String>>,
    /// `MAGIC_RATE_LIMIT`: requests per identity (in Redis when `REDIS_URL` is set).
    pub rate_limit: Option<crate::hardening::RateLimit>,
    /// `MAGIC_AUTH_FAILURE_LIMIT`: failed authentications per client address (default
    /// [`crate::hardening::DEFAULT_AUTH_FAILURE_LIMIT`]; `None`: off).
    pub auth_failure_limit: Option<crate::hardening::Rate>,
    /// `MAGIC_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client (default none:
    /// the header is ignored and the peer address is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The server terminates TLS itself (adds `Strict-Transport-Security`).
    pub tls: bool,
    /// `MAGIC_TLS_CERT`/`MAGIC_TLS_KEY` (+ `MAGIC_TLS_CLIENT_CA`, `MAGIC_MTLS_ROLES`): serve
    /// HTTPS, optionally requiring client certificates. `None`: plain HTTP (the default).
    pub tls_settings: Option<crate::tls::TlsSettings>,
}

impl ServeConfig {
    /// Defaults for a data dir (tests and embedded use).
    pub fn new(data_dir: PathBuf) -> Self {
        ServeConfig {
            registry_sync: std::time::Duration::from_millis(500),
            slot_lease: crate::slots::DEFAULT_LEASE,
            node_id: None,
            controller_allowlist: None,
            audit: magic_audit::AuditConfig::new(&data_dir),
            broker: magic_broker::BrokerConfig::new(data_dir.clone()),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            database_url: None,
            redis_url: None,
            admin_api_key: None,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            execution_mode: ExecutionMode::Process,
            wasm_max_instances: crate::wasm::DEFAULT_MAX_INSTANCES,
            max_body_bytes: DEFAULT_MAX_BODY,
            python: None,
            allow_degraded_isolation: false,
            jwt: None,
            approvals: crate::approvals::ApprovalMode::Off,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            policy: None,
            allowed_origins: None,
            rate_limit: None,
            auth_failure_limit: Some(crate::hardening::DEFAULT_AUTH_FAILURE_LIMIT),
            trusted_proxies: Vec::new(),
            tls: false,
            tls_settings: None,
        }
    }

    /// Check the settings; the server refuses to start on the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 || self.max_concurrent > 10_000 {
            return Err(ConfigError::Invalid {
                setting: "CONTROLLER_MAX_CONCURRENT",
                reason: format!("{} is outside 1..=10000", self.max_concurrent),
            });
        }
        if self.wasm_max_instances == 0 || self.wasm_max_instances > crate::wasm::MAX_MAX_INSTANCES
        {
            return Err(ConfigError::Invalid {
                setting: "MAGIC_WASM_MAX_INSTANCES",
                reason: format!(
                    "{} is outside 1..={} (each slot reserves address space for a 4 GiB memory)",
                    self.wasm_max_instances,
                    crate::wasm::MAX_MAX_INSTANCES
                ),
            });
        }
        if let Some(key) = &self.admin_api_key {
            if key.len() < 16 {
                return Err(ConfigError::Invalid {
                    setting: "MAGIC_ADMIN_API_KEY",
                    reason: "must be at least 16 characters".into(),
                });
            }
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()
                .map_err(|(setting, reason)| ConfigError::Invalid { setting, reason })?;
        }
        if let Some(names) = &self.controller_allowlist {
            if let Some(bad) = names.iter().find(|n| !magic_contract::is_valid_name(n)) {
                return Err(ConfigError::Invalid {
                    setting: "CONTROLLER_ALLOWLIST",
                    reason: format!("{bad:?} is not a controller name"),
                });
            }
        }
        if let Some(origins) = &self.allowed_origins {
            crate::hardening::validate_origins(origins).map_err(|reason| ConfigError::Invalid {
                setting: "ALLOWED_ORIGINS",
                reason,
            })?;
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                setting: "MAGIC_MAX_BODY_BYTES",
                reason: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

/// Parse a duration setting: `30`, `30s`, `500ms`, `2m` (a bare number is seconds).
pub fn parse_duration(
    setting: &'static str,
    text: &str,
) -> Result<std::time::Duration, ConfigError> {
    let t = text.trim();
    let bad = || ConfigError::Invalid {
        setting,
        reason: format!("{text:?} is not a duration (e.g. 30, 30s, 500ms, 2m)"),
    };
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 24 * 3600 * 1000)
        .map(std::time::Duration::from_millis)
        .ok_or_else(bad)
}

/// The JWT settings from the environment: `None` when none of `JWT_SECRET`, `JWT_JWKS_URL`
/// and `OIDC_ISSUER` is set. Used by the CLI only; [`ServeConfig::validate`] refuses a secret
/// under 256 bits, a JWKS without `JWT_AUDIENCE`, and so on.
pub fn jwt_config_from_env() -> Result<Option<crate::jwt::JwtConfig>, ConfigError> {
    use crate::jwt::{JwksSource, JwtConfig, RoleMap};
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let secret = var("JWT_SECRET");
    let jwks = match (var("JWT_JWKS_URL"), var("OIDC_ISSUER")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                setting: "JWT_JWKS_URL",
                reason: "set JWT_JWKS_URL or OIDC_ISSUER, not both (with OIDC_ISSUER the key \
                         set is found by discovery)"
                    .into(),
            })
        }
        (Some(url), None) => Some(JwksSource::Url(url.trim().to_string())),
        (None, Some(issuer)) => Some(JwksSource::Issuer(issuer.trim().to_string())),
        (None, None) => None,
    };
    if secret.is_none() && jwks.is_none() {
        return Ok(None);
    }
    let issuer = match &jwks {
        Some(JwksSource::Issuer(i)) => match var("JWT_ISSUER") {
            // validate() refuses a JWT_ISSUER that differs.
            Some(other) => Some(other),
            None => Some(i.clone()),
        },
        _ => var("JWT_ISSUER"),
    };
    let role_map = match var("JWT_ROLE_MAP") {
        Some(m) => Some(RoleMap::parse(&m).map_err(|reason| ConfigError::Invalid {
            setting: "JWT_ROLE_MAP",
            reason,
        })?),
        None => None,
    };
    let min_refresh = match var("JWT_JWKS_MIN_REFRESH") {
        Some(d) => parse_duration("JWT_JWKS_MIN_REFRESH", &d)?,
        None => crate::jwt::DEFAULT_MIN_REFRESH,
    };
    Ok(Some(JwtConfig {
        secret: secret.map(String::into_bytes),
        jwks,
        issuer,
        audience: var("JWT_AUDIENCE"),
        role_claim: var("JWT_ROLE_CLAIM").unwrap_or_else(|| crate::jwt::DEFAULT_ROLE_CLAIM.into()),
        role_map,
        min_refresh,
    }))
}

/// `MAGIC_TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges.
pub fn parse_trusted_proxies(s: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    setting: "MAGIC_TRUSTED_PROXIES",
                    reason: format!("{p:?} is not an address or CIDR range"),
                })
        })
        .collect()
}

/// The broker's settings from the environment (`MAGIC_APP_DATABASE_URL`, `MAGIC_MASTER_KEY`,
/// `MAGIC_MASTER_KEY_FILE`, `EGRESS_RESOLVE_MODE`), completed with the server's own database
/// and Redis URLs: controllers' business data live in the same database as the runtime's
/// state unless `MAGIC_APP_DATABASE_URL` says otherwise. Used by the CLI only.
pub fn broker_config_from_env(
    serve: &ServeConfig,
) -> Result<magic_broker::BrokerConfig, ConfigError> {
    let mut broker =
        magic_broker::BrokerConfig::from_env(serve.data_dir.clone()).map_err(|reason| {
            ConfigError::Invalid {
                setting: "EGRESS_RESOLVE_MODE",
                reason,
            }
        })?;
    if std::env::var("MAGIC_APP_DATABASE_URL").map_or(true, |v| v.trim().is_empty()) {
        broker.app_database_url = serve.database_url.clone();
    }
    broker.redis_url = serve.redis_url.clone();
    Ok(broker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_modes() {
        assert_eq!(
            ExecutionMode::parse("inline").ok(),
            Some(ExecutionMode::Inline)
        );
        assert_eq!(
            ExecutionMode::parse("process").ok(),
            Some(ExecutionMode::Process)
        );
        assert_eq!(
            ServeConfig::new("/tmp/x".into()).execution_mode,
            ExecutionMode::Process
        );
        assert!(ExecutionMode::parse("thread").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        let table = [
            ("30", Some(Duration::from_secs(30))),
            ("30s", Some(Duration::from_secs(30))),
            ("500ms", Some(Duration::from_millis(500))),
            ("2m", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            ("", None),
            ("-1", None),
            ("1h", None),
            ("99999999999m", None),
            ("abc", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration("X", text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn trusted_proxies() {
        let got = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8,::1,fd00::/8,").unwrap();
        let shown: Vec<String> = got.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]);
        for bad in ["proxy.local", "10.0.0.0/33", "1.2.3"] {
            assert!(parse_trusted_proxies(bad).is_err(), "{bad}");
        }
        assert!(parse_trusted_proxies("").unwrap().is_empty());
    }

    #[test]
    fn validation_refuses_bad_settings() {
        let base = ServeConfig::new("/tmp/x".into());
        assert!(base.validate().is_ok());
        let mut c = base.clone();
        c.max_concurrent = 0;
        assert!(c.validate().is_err());
        c.max_concurrent = 1;
        c.wasm_max_instances = 0;
        assert!(c.validate().is_err());
        c.wasm_max_instances = crate::wasm::MAX_MAX_INSTANCES + 1;
        assert!(c.validate().is_err());
        c.wasm_max_instances = crate::wasm::MAX_MAX_INSTANCES;
        assert!(c.validate().is_ok());
        c.max_concurrent = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.admin_api_key = Some("short".into());
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.jwt = Some(crate::jwt::JwtConfig::hs256(b"too-short"));
        assert!(c.validate().is_err());
        let mut c = base;
        c.max_body_bytes = 10;
        assert!(c.validate().is_err());
    }
}

//! Broker configuration: where the application data lives, which backends to use, and the
//! limits every call is held to.
//!
//! Must never: print the master key (its `Debug` is redacted).

use std::path::PathBuf;
use std::time::Duration;

/// Where the secrets master key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// Base64 of 32 bytes (`MAGIC_MASTER_KEY`).
    Base64(String),
    /// A file holding base64 of 32 bytes (`MAGIC_MASTER_KEY_FILE`).
    File(PathBuf),
    /// `DATA_DIR/master.key`, generated once with mode 0600 when absent (embedded default).
    DataDir,
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Base64(_) => f.write_str("Base64(<redacted>)"),
            MasterKeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            MasterKeySource::DataDir => f.write_str("DataDir"),
        }
    }
}

/// Limits applied to every call (defaults in [`BrokerLimits::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerLimits {
    /// Most rows one db call may return (more is an error, never a silent truncation).
    pub max_rows: usize,
    /// Most bytes (JSON-encoded, approximately) one db call may return.
    pub max_result_bytes: usize,
    /// Most rows one `insert` may carry.
    pub max_insert_rows: usize,
    /// Most values in one `in` list.
    pub max_in_values: usize,
    /// How long a db call waits for a pooled connection before answering E5003.
    pub db_acquire_timeout: Duration,
    /// In-process cache: most entries.
    pub cache_max_entries: usize,
    /// In-process cache: most bytes (keys + values).
    pub cache_max_bytes: usize,
    /// Largest cache value (JSON-encoded).
    pub cache_max_value_bytes: usize,
    /// Largest queue message (JSON-encoded).
    pub queue_max_message_bytes: usize,
    /// How long a received, unacked message stays invisible before it is redelivered.
    pub queue_visibility: Duration,
    /// Deliveries after which an unacked message moves to the dead letters.
    pub queue_max_attempts: u32,
    /// Most messages one `receive` returns.
    pub queue_max_receive: usize,
    /// Longest `wait_ms` a `receive` may ask for.
    pub queue_max_wait: Duration,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_rows: 10_000,
            max_result_bytes: 8 * 1024 * 1024,
            max_insert_rows: 1_000,
            max_in_values: 1_000,
            db_acquire_timeout: Duration::from_secs(2),
            cache_max_entries: 100_000,
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_value_bytes: 1024 * 1024,
            queue_max_message_bytes: 1024 * 1024,
            queue_visibility: Duration::from_secs(30),
            queue_max_attempts: 5,
            queue_max_receive: 100,
            queue_max_wait: Duration::from_secs(20),
        }
    }
}

/// Everything the broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The runtime's data dir (`app.db`, `master.key`, `tmp/`).
    pub data_dir: PathBuf,
    /// Application database (`self.db`): `None` → SQLite `DATA_DIR/app.db`;
    /// `sqlite:PATH` or `postgres://…`.
    pub app_database_url: Option<String>,
    /// Redis for cache and queue; `None` → in-process cache and the queue in the runtime store.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the broker writes (default `magic:`).
    pub redis_key_prefix: String,
    /// Secrets master key.
    pub master_key: MasterKeySource,
    /// Per-call limits.
    pub limits: BrokerLimits,
    /// How `http:egress` resolves and connects (`EGRESS_RESOLVE_MODE`, trusted roots, caps).
    pub egress: magic_egress::EgressConfig,
    /// PostgreSQL: run each controller version's statements under its own role, granted
    /// exactly its contract's tables (`MAGIC_DB_CONTROLLER_ROLES`, default on; needs
    /// `CREATEROLE`). No effect on SQLite.
    pub controller_roles: bool,
}

impl BrokerConfig {
    /// Embedded defaults: SQLite `app.db` and `master.key` in `data_dir`, no Redis.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            data_dir: data_dir.into(),
            app_database_url: None,
            redis_url: None,
            redis_key_prefix: "magic:".into(),
            master_key: MasterKeySource::DataDir,
            limits: BrokerLimits::default(),
            egress: magic_egress::EgressConfig::default(),
            controller_roles: true,
        }
    }

    /// Defaults overridden by the environment: `MAGIC_APP_DATABASE_URL` (else `DATABASE_URL`),
    /// `REDIS_URL`, `MAGIC_REDIS_PREFIX`, `MAGIC_MASTER_KEY` (base64) or `MAGIC_MASTER_KEY_FILE`.
    ///
    /// Fails on a bad `EGRESS_RESOLVE_MODE`.
    pub fn from_env(data_dir: impl Into<PathBuf>) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = BrokerConfig::new(data_dir);
        config.app_database_url = var("MAGIC_APP_DATABASE_URL").or_else(|| var("DATABASE_URL"));
        config.redis_url = var("REDIS_URL");
        if let Some(prefix) = var("MAGIC_REDIS_PREFIX") {
            config.redis_key_prefix = prefix;
        }
        config.master_key = match (var("MAGIC_MASTER_KEY"), var("MAGIC_MASTER_KEY_FILE")) {
            (Some(key), _) => MasterKeySource::Base64(key),
            (None, Some(file)) => MasterKeySource::File(file.into()),
            (None, None) => MasterKeySource::DataDir,
        };
        if let Some(v) = var("MAGIC_DB_CONTROLLER_ROLES") {
            config.controller_roles = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                other => {
                    return Err(format!(
                        "MAGIC_DB_CONTROLLER_ROLES: {other:?} is not on/off"
                    ))
                }
            };
        }
        config.egress = magic_egress::EgressConfig::from_env()
            .map_err(|e| format!("EGRESS_RESOLVE_MODE: {e}"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_debug_is_redacted() {
        let s = format!("{:?}", MasterKeySource::Base64("c2VjcmV0LWtleQ==".into()));
        assert!(!s.contains("c2VjcmV0"), "{s}");
    }
}

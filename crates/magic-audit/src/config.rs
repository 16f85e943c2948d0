//! Audit log configuration.
//!
//! Owns: the audit settings and reading them from the environment (pure parsing functions
//! over a lookup, so every value is testable without touching the process environment).
//!
//! Must never: echo a signing key in an error or a `Debug` string.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `AUDIT_LOG_ENABLED` | accepted as `true` (the seeds' name); the chain cannot be turned off, so `false` is refused | `true` |
//! | `AUDIT_DURABILITY` | `group` (answer once the commit is in the OS; fsync every `AUDIT_FSYNC_INTERVAL_MS`) or `sync` (answer after the fsync) | `group` |
//! | `AUDIT_LOG_SINK` | comma-separated sinks, see [`crate::sink::SinkSpec`] | none |
//! | `AUDIT_CHAIN_VERIFY` | verify the chain while reading (tail, export) | `false` |
//! | `AUDIT_SIGNING_KEY` / `AUDIT_SIGNING_KEY_FILE` | Ed25519 seed, 64 hex digits (inline / in a file) | generated into `DATA_DIR/audit_signing.key` |
//! | `AUDIT_TRUSTED_KEYS` | more public keys (hex, comma-separated) whose checkpoints verify, e.g. other nodes' | none |
//! | `AUDIT_CHECKPOINT_EVERY` | records between signed checkpoints | 1000 |
//! | `AUDIT_CHECKPOINT_SECS` | seconds between signed checkpoints (when records arrived) | 10 |
//! | `AUDIT_FSYNC_INTERVAL_MS` | group mode: longest time a committed record waits for an fsync | 10 |
//! | `AUDIT_BATCH_MAX` | most records per commit | 2048 |
//! | `AUDIT_QUEUE_CAPACITY` | appends waiting for the writer before `append` waits | 16384 |
//! | `AUDIT_SINK_BUFFER` | records buffered per network sink before it drops (counted) | 100000 |
//! | `AUDIT_RETENTION_DAYS` | remove records older than this many days (behind a signed seal) | keep all |
//! | `AUDIT_RETENTION_MAX_RECORDS` | keep at most this many newest records | keep all |
//! | `AUDIT_RETENTION_ARCHIVE_DIR` | write removed records to sealed archive files here | no archive |
//! | `AUDIT_RETENTION_CHECK_SECS` | how often retention runs | 3600 |

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::checkpoint::{parse_public_keys, KeySource};
use crate::retention::RetentionPolicy;
use crate::sink::SinkSpec;
use crate::AuditError;

/// When `append` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Answer once the batch is committed and handed to the OS (survives a process crash);
    /// an fsync follows within [`AuditConfig::fsync_interval`] (bounds power-loss exposure).
    Group,
    /// Answer only after the batch's commit is fsynced (survives power loss).
    Sync,
}

impl Durability {
    /// Parse `AUDIT_DURABILITY`.
    pub fn parse(text: &str) -> Result<Durability, AuditError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "group" | "normal" | "os" => Ok(Durability::Group),
            "sync" | "fsync" | "full" => Ok(Durability::Sync),
            other => Err(AuditError::Config(format!(
                "AUDIT_DURABILITY={other:?}: use `group` or `sync`"
            ))),
        }
    }
}

/// Settings of an [`crate::AuditChain`].
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// When appends answer.
    pub durability: Durability,
    /// Appends queued for the writer before `append` itself waits (back-pressure).
    pub queue_capacity: usize,
    /// Most records in one commit.
    pub batch_max: usize,
    /// Group mode: a committed batch is fsynced at most this long after it was answered.
    pub fsync_interval: Duration,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one, whichever comes first (only if records arrived).
    pub checkpoint_interval: Duration,
    /// Where the checkpoint signing key comes from.
    pub key: KeySource,
    /// Public keys besides our own whose checkpoints verify.
    pub trusted_keys: Vec<VerifyingKey>,
    /// Where committed records are copied.
    pub sinks: Vec<SinkSpec>,
    /// Verify the chain while reading (`AUDIT_CHAIN_VERIFY`).
    pub verify_on_read: bool,
    /// Records buffered per network sink (syslog, webhook) before new ones are dropped.
    pub sink_buffer: usize,
    /// Webhook: most records per POST.
    pub webhook_batch_max: usize,
    /// Webhook: how long records wait to fill a batch.
    pub webhook_linger: Duration,
    /// Webhook: attempts per batch before it is dropped (counted).
    pub webhook_attempts: u32,
    /// Webhook: first retry delay; doubles per attempt.
    pub webhook_backoff: Duration,
    /// Webhook: per-request timeout.
    pub webhook_timeout: Duration,
    /// Syslog APP-NAME.
    pub syslog_app_name: String,
    /// What to remove, and when (nothing by default).
    pub retention: RetentionPolicy,
}

impl AuditConfig {
    /// Defaults, with the signing key generated into (or read from) `data_dir`.
    pub fn new(data_dir: &Path) -> AuditConfig {
        AuditConfig {
            durability: Durability::Group,
            queue_capacity: 16_384,
            batch_max: 2048,
            fsync_interval: Duration::from_millis(10),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            key: KeySource::DataDir(data_dir.to_path_buf()),
            trusted_keys: Vec::new(),
            sinks: Vec::new(),
            verify_on_read: false,
            sink_buffer: 100_000,
            webhook_batch_max: 500,
            webhook_linger: Duration::from_millis(200),
            webhook_attempts: 6,
            webhook_backoff: Duration::from_millis(200),
            webhook_timeout: Duration::from_secs(10),
            syslog_app_name: "magic".to_string(),
            retention: RetentionPolicy {
                check_interval: Duration::from_secs(3600),
                ..RetentionPolicy::default()
            },
        }
    }

    /// Read the `AUDIT_*` variables of the process environment (see the module doc).
    pub fn from_env(data_dir: &Path) -> Result<AuditConfig, AuditError> {
        AuditConfig::from_lookup(data_dir, |name| std::env::var(name).ok())
    }

    /// Read the `AUDIT_*` settings from `lookup` (the environment, or a map in tests).
    pub fn from_lookup(
        data_dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AuditConfig, AuditError> {
        let mut c = AuditConfig::new(data_dir);
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("AUDIT_LOG_ENABLED") {
            if !parse_bool("AUDIT_LOG_ENABLED", &v)? {
                return Err(AuditError::Config(
                    "AUDIT_LOG_ENABLED=false: the audit chain cannot be turned off (every execution, \
                     capability call and admin action is recorded); remove the setting"
                        .into(),
                ));
            }
        }
        if let Some(v) = get("AUDIT_DURABILITY") {
            c.durability = Durability::parse(&v)?;
        }
        if let Some(v) = get("AUDIT_LOG_SINK") {
            c.sinks = SinkSpec::parse_list(&v)?;
        }
        if let Some(v) = get("AUDIT_CHAIN_VERIFY") {
            c.verify_on_read = parse_bool("AUDIT_CHAIN_VERIFY", &v)?;
        }
        match (get("AUDIT_SIGNING_KEY"), get("AUDIT_SIGNING_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(AuditError::Config(
                    "set only one of AUDIT_SIGNING_KEY and AUDIT_SIGNING_KEY_FILE".into(),
                ))
            }
            (Some(k), None) => c.key = KeySource::Inline(k),
            (None, Some(f)) => c.key = KeySource::File(f.into()),
            (None, None) => {}
        }
        if let Some(v) = get("AUDIT_TRUSTED_KEYS") {
            c.trusted_keys = parse_public_keys(&v)?;
        }
        if let Some(v) = get("AUDIT_CHECKPOINT_EVERY") {
            c.checkpoint_every = parse_num("AUDIT_CHECKPOINT_EVERY", &v, 1)?;
        }
        if let Some(v) = get("AUDIT_CHECKPOINT_SECS") {
            c.checkpoint_interval = Duration::from_secs(parse_num("AUDIT_CHECKPOINT_SECS", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_FSYNC_INTERVAL_MS") {
            c.fsync_interval = Duration::from_millis(parse_num("AUDIT_FSYNC_INTERVAL_MS", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_BATCH_MAX") {
            c.batch_max = to_usize(parse_num("AUDIT_BATCH_MAX", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_QUEUE_CAPACITY") {
            c.queue_capacity = to_usize(parse_num("AUDIT_QUEUE_CAPACITY", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_SINK_BUFFER") {
            c.sink_buffer = to_usize(parse_num("AUDIT_SINK_BUFFER", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_RETENTION_DAYS") {
            let days = parse_num("AUDIT_RETENTION_DAYS", &v, 1)?;
            c.retention.max_age = Some(Duration::from_secs(days.saturating_mul(86_400)));
        }
        if let Some(v) = get("AUDIT_RETENTION_MAX_RECORDS") {
            c.retention.max_records = Some(parse_num("AUDIT_RETENTION_MAX_RECORDS", &v, 1)?);
        }
        if let Some(v) = get("AUDIT_RETENTION_ARCHIVE_DIR") {
            c.retention.archive_dir = Some(v.into());
        }
        if let Some(v) = get("AUDIT_RETENTION_CHECK_SECS") {
            c.retention.check_interval =
                Duration::from_secs(parse_num("AUDIT_RETENTION_CHECK_SECS", &v, 1)?);
        }
        Ok(c)
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Parse a boolean setting: `true/1/yes/on` or `false/0/no/off`.
pub fn parse_bool(name: &str, text: &str) -> Result<bool, AuditError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(AuditError::Config(format!(
            "{name}={text:?}: use true or false"
        ))),
    }
}

/// Parse a whole number of at least `min`.
fn parse_num(name: &str, text: &str, min: u64) -> Result<u64, AuditError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(AuditError::Config(format!(
            "{name}={text:?}: must be a whole number >= {min}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<AuditConfig, AuditError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AuditConfig::from_lookup(Path::new("/data"), |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_without_variables() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.durability, Durability::Group);
        assert!(!c.verify_on_read);
        assert!(c.sinks.is_empty());
        assert!(!c.retention.is_active());
        assert_eq!(c.key, KeySource::DataDir("/data".into()));
    }

    #[test]
    fn the_chain_cannot_be_turned_off() {
        for on in ["true", "1", "yes", "TRUE"] {
            assert!(cfg(&[("AUDIT_LOG_ENABLED", on)]).is_ok(), "{on}");
        }
        for off in ["false", "0", "no"] {
            let err = cfg(&[("AUDIT_LOG_ENABLED", off)])
                .expect_err(off)
                .to_string();
            assert!(err.contains("cannot be turned off"), "{off}: {err}");
        }
        assert!(cfg(&[("AUDIT_LOG_ENABLED", "maybe")]).is_err());
    }

    #[test]
    fn variables_are_read() {
        let c = cfg(&[
            ("AUDIT_DURABILITY", "sync"),
            ("AUDIT_CHAIN_VERIFY", "true"),
            ("AUDIT_LOG_SINK", "file:/tmp/a.jsonl"),
            ("AUDIT_SIGNING_KEY_FILE", "/k"),
            ("AUDIT_CHECKPOINT_EVERY", "5"),
            ("AUDIT_CHECKPOINT_SECS", "2"),
            ("AUDIT_FSYNC_INTERVAL_MS", "3"),
            ("AUDIT_BATCH_MAX", "7"),
            ("AUDIT_QUEUE_CAPACITY", "8"),
            ("AUDIT_SINK_BUFFER", "9"),
            ("AUDIT_RETENTION_DAYS", "2"),
            ("AUDIT_RETENTION_MAX_RECORDS", "1000"),
            ("AUDIT_RETENTION_ARCHIVE_DIR", "/arch"),
            ("AUDIT_RETENTION_CHECK_SECS", "60"),
        ])
        .expect("valid");
        assert_eq!(c.durability, Durability::Sync);
        assert!(c.verify_on_read);
        assert_eq!(c.sinks.len(), 1);
        assert_eq!(c.key, KeySource::File("/k".into()));
        assert_eq!(c.checkpoint_every, 5);
        assert_eq!(c.checkpoint_interval, Duration::from_secs(2));
        assert_eq!(c.fsync_interval, Duration::from_millis(3));
        assert_eq!((c.batch_max, c.queue_capacity, c.sink_buffer), (7, 8, 9));
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(c.retention.max_records, Some(1000));
        assert_eq!(c.retention.archive_dir, Some("/arch".into()));
        assert_eq!(c.retention.check_interval, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_are_refused() {
        let bad: &[(&str, &str)] = &[
            ("AUDIT_DURABILITY", "maybe"),
            ("AUDIT_CHAIN_VERIFY", "perhaps"),
            ("AUDIT_LOG_SINK", "ftp://x"),
            ("AUDIT_CHECKPOINT_EVERY", "0"),
            ("AUDIT_CHECKPOINT_SECS", "-1"),
            ("AUDIT_BATCH_MAX", "many"),
            ("AUDIT_QUEUE_CAPACITY", "0"),
            ("AUDIT_TRUSTED_KEYS", "abc"),
            ("AUDIT_RETENTION_DAYS", "0"),
            ("AUDIT_RETENTION_MAX_RECORDS", "x"),
            ("AUDIT_RETENTION_CHECK_SECS", "0"),
        ];
        for (k, v) in bad {
            assert!(cfg(&[(k, v)]).is_err(), "{k}={v}");
        }
        let both = cfg(&[("AUDIT_SIGNING_KEY", "x"), ("AUDIT_SIGNING_KEY_FILE", "/k")]);
        assert!(both.is_err());
    }

    #[test]
    fn inline_key_never_appears_in_debug_or_errors() {
        let secret = "ab".repeat(32);
        let c = cfg(&[("AUDIT_SIGNING_KEY", &secret)]).expect("valid");
        assert!(!format!("{c:?}").contains(&secret));
        let err = KeySource::Inline("zz-secret-zz".into())
            .load()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("zz-secret-zz"), "{err}");
    }

    #[test]
    fn durability_names() {
        for (text, want) in [
            ("group", Durability::Group),
            ("NORMAL", Durability::Group),
            ("sync", Durability::Sync),
            (" full ", Durability::Sync),
        ] {
            assert_eq!(Durability::parse(text).ok(), Some(want), "{text}");
        }
    }
}

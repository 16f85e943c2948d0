//! `cache:read` / `cache:write`: a key-value cache with prefixes and TTLs.
//!
//! Owns: the prefix check (E2006), the TTL cap (`ttl_s` above `max_ttl` is E2006; no
//! `ttl_s` means `max_ttl`), the per-controller namespace (the stored key is
//! `cache:{controller}:{key}`, so two controllers declaring the same prefix never see each
//! other's keys), the value size cap, and the two backends behind [`KvBackend`]: a bounded
//! in-process LRU (embedded) and Redis (production).
//!
//! Must never: read or write a key outside the controller's namespace and declared prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use magic_contract::{Capability, Contract, ErrorCode};
use serde::Deserialize;
use serde_json::Value;

use crate::capability::{CapabilityModule, Checked, Denial, Performed};
use crate::config::BrokerLimits;
use crate::denial::{denied, not_declared, yaml_scalar};
use crate::redis_conn::{unavailable, RedisConn};
use crate::{BrokerError, ExecutionContext};

/// Where cache entries live.
#[async_trait::async_trait]
pub(crate) trait KvBackend: Send + Sync {
    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError>;
    /// Store `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BrokerError>;
    /// Remove `key`.
    async fn delete(&self, key: &str) -> Result<(), BrokerError>;
}

struct Entry {
    value: Vec<u8>,
    expires: Instant,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

impl Lru {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= key.len() + e.value.len();
        }
    }
}

/// A bounded in-process LRU cache (entries and bytes), with per-entry expiry.
pub(crate) struct InProcessKv {
    lru: Mutex<Lru>,
    max_entries: usize,
    max_bytes: usize,
}

impl InProcessKv {
    /// An empty cache holding at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        InProcessKv {
            lru: Mutex::default(),
            max_entries,
            max_bytes,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Lru>, BrokerError> {
        self.lru
            .lock()
            .map_err(|_| BrokerError::unavailable("the cache"))
    }
}

#[async_trait::async_trait]
impl KvBackend for InProcessKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        let mut lru = self.lock()?;
        let now = Instant::now();
        let expired = match lru.entries.get(key) {
            None => return Ok(None),
            Some(e) => e.expires <= now,
        };
        if expired {
            lru.remove(key);
            return Ok(None);
        }
        lru.tick += 1;
        let tick = lru.tick;
        let Lru { entries, order, .. } = &mut *lru;
        let Some(e) = entries.get_mut(key) else {
            return Ok(None);
        };
        order.remove(&e.tick);
        e.tick = tick;
        order.insert(tick, key.to_string());
        Ok(Some(e.value.clone()))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BrokerError> {
        let mut lru = self.lock()?;
        lru.remove(key);
        let size = key.len() + value.len();
        if size > self.max_bytes {
            return Ok(()); // larger than the whole cache: not cached
        }
        while lru.entries.len() >= self.max_entries || lru.bytes + size > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(e) = lru.entries.remove(&oldest) {
                lru.bytes -= oldest.len() + e.value.len();
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key.to_string());
        lru.bytes += size;
        lru.entries.insert(
            key.to_string(),
            Entry {
                value,
                expires: Instant::now() + ttl,
                tick,
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BrokerError> {
        self.lock()?.remove(key);
        Ok(())
    }
}

/// Redis-backed cache (`SET key value PX ttl`).
pub(crate) struct RedisKv {
    redis: RedisConn,
}

impl RedisKv {
    /// A cache in `redis`.
    pub fn new(redis: RedisConn) -> Self {
        RedisKv { redis }
    }
}

#[async_trait::async_trait]
impl KvBackend for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        let mut c = self.redis.conn().await?;
        redis::cmd("GET")
            .arg(self.redis.key(key))
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BrokerError> {
        let mut c = self.redis.conn().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.redis.key(key))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, key: &str) -> Result<(), BrokerError> {
        let mut c = self.redis.conn().await?;
        redis::cmd("DEL")
            .arg(self.redis.key(key))
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// A checked cache call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CacheRequest {
    /// Read `key`.
    Get {
        /// Namespaced key.
        key: String,
    },
    /// Write `key`.
    Set {
        /// Namespaced key.
        key: String,
        /// JSON-encoded value.
        value: Vec<u8>,
        /// TTL (capped by max_ttl).
        ttl: Duration,
    },
    /// Delete `key`.
    Delete {
        /// Namespaced key.
        key: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheArgs {
    key: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Cache keys: 1..=512 bytes, no control characters.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 512 && !key.chars().any(char::is_control)
}

/// The stored key of `key` for `controller` (its private namespace).
pub(crate) fn namespaced(controller: &str, key: &str) -> String {
    format!("cache:{controller}:{key}")
}

/// A prefix to suggest for `key` in a denial: up to and including its first `:`.
fn suggested_prefix(key: &str) -> String {
    match key.find(':') {
        Some(i) => key[..=i].to_string(),
        None => key.to_string(),
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && (s / 3600) * 3600 == s {
        format!("{}h", s / 3600)
    } else if s > 0 && (s / 60) * 60 == s {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Check a read of `key`. Pure.
pub(crate) fn check_read(contract: &Contract, key: &str) -> Result<(), BrokerError> {
    const CAP: &str = "cache:read";
    let prefixes: Vec<&str> = contract
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::CacheRead { prefix } => Some(prefix.as_str()),
            _ => None,
        })
        .collect();
    let allow = format!(
        "cache:read: {{ prefix: {} }}",
        yaml_scalar(&suggested_prefix(key))
    );
    if prefixes.is_empty() {
        return Err(not_declared(CAP, key, allow));
    }
    if prefixes.iter().any(|p| key.starts_with(p)) {
        return Ok(());
    }
    Err(denied(
        ErrorCode::CacheNotAllowed,
        CAP,
        key,
        allow,
        format!("cache key {key:?} is outside the contract's cache:read prefix"),
    ))
}

/// Check a write (or delete, `ttl_s = None`) of `key`; answers the TTL to use. Pure.
pub(crate) fn check_write(
    contract: &Contract,
    key: &str,
    ttl_s: Option<u64>,
) -> Result<Duration, BrokerError> {
    const CAP: &str = "cache:write";
    let grants: Vec<(&str, Duration)> = contract
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::CacheWrite { prefix, max_ttl } => Some((prefix.as_str(), *max_ttl)),
            _ => None,
        })
        .collect();
    let wanted = ttl_s.map(Duration::from_secs);
    let allow = |ttl: Option<Duration>| {
        format!(
            "cache:write: {{ prefix: {}, max_ttl: {} }}",
            yaml_scalar(&suggested_prefix(key)),
            humanize(ttl.unwrap_or(Duration::from_secs(3600)))
        )
    };
    if grants.is_empty() {
        return Err(not_declared(CAP, key, allow(wanted)));
    }
    let matching: Vec<Duration> = grants
        .iter()
        .filter(|(p, _)| key.starts_with(p))
        .map(|(_, t)| *t)
        .collect();
    let Some(max_ttl) = matching.iter().max().copied() else {
        return Err(denied(
            ErrorCode::CacheNotAllowed,
            CAP,
            key,
            allow(wanted),
            format!("cache key {key:?} is outside the contract's cache:write prefix"),
        ));
    };
    match wanted {
        None => Ok(max_ttl),
        Some(t) if t.is_zero() => Err(BrokerError::invalid("ttl_s must be at least 1")),
        Some(t) if t <= max_ttl => Ok(t),
        Some(t) => {
            let prefix = grants
                .iter()
                .find(|(p, _)| key.starts_with(p))
                .map_or(String::new(), |(p, _)| p.to_string());
            Err(denied(
                ErrorCode::CacheNotAllowed,
                CAP,
                key,
                format!(
                    "cache:write: {{ prefix: {}, max_ttl: {} }}",
                    yaml_scalar(&prefix),
                    humanize(t)
                ),
                format!(
                    "ttl_s {} is above the contract's cache:write max_ttl ({}s)",
                    t.as_secs(),
                    max_ttl.as_secs()
                ),
            ))
        }
    }
}

/// The cache capability module.
pub(crate) struct CacheModule {
    kv: std::sync::Arc<dyn KvBackend>,
    limits: BrokerLimits,
}

impl CacheModule {
    /// A module over `kv`.
    pub fn new(kv: std::sync::Arc<dyn KvBackend>, limits: BrokerLimits) -> Self {
        CacheModule { kv, limits }
    }
}

#[async_trait::async_trait]
impl CapabilityModule for CacheModule {
    type Request = CacheRequest;

    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<CacheRequest>, Denial> {
        let capability = match op {
            "get" => "cache:read",
            "set" | "delete" => "cache:write",
            _ => {
                return Err(Denial::invalid(
                    None,
                    format!("unknown operation cache.{op}"),
                ))
            }
        };
        let a: CacheArgs = serde_json::from_value(args).map_err(|e| {
            Denial::invalid(
                Some(capability),
                format!("invalid arguments to cache.{op}: {e}"),
            )
        })?;
        if !valid_key(&a.key) {
            return Err(Denial::invalid(
                Some(capability),
                "cache keys are 1 to 512 bytes without control characters",
            ));
        }
        let deny = |e| Denial::new(capability, a.key.clone(), e);
        let key = namespaced(&ctx.controller, &a.key);
        let request = match op {
            "get" => {
                check_read(&ctx.contract, &a.key).map_err(deny)?;
                CacheRequest::Get { key }
            }
            "delete" => {
                check_write(&ctx.contract, &a.key, None).map_err(deny)?;
                CacheRequest::Delete { key }
            }
            _ => {
                let ttl = check_write(&ctx.contract, &a.key, a.ttl_s).map_err(deny)?;
                let value = serde_json::to_vec(&a.value.unwrap_or(Value::Null))
                    .map_err(|e| Denial::invalid(Some(capability), e.to_string()))?;
                if value.len() > self.limits.cache_max_value_bytes {
                    return Err(Denial::new(
                        capability,
                        a.key.clone(),
                        BrokerError::invalid(format!(
                            "cache value is {} bytes, above the {} byte limit",
                            value.len(),
                            self.limits.cache_max_value_bytes
                        )),
                    ));
                }
                CacheRequest::Set { key, value, ttl }
            }
        };
        Ok(Checked {
            capability,
            target: a.key,
            request,
        })
    }

    async fn perform(&self, _ctx: &ExecutionContext, request: CacheRequest) -> Performed {
        Performed::plain(match request {
            CacheRequest::Get { key } => self.kv.get(&key).await.map(|v| {
                v.and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or(Value::Null)
            }),
            CacheRequest::Set { key, value, ttl } => {
                self.kv.set(&key, value, ttl).await.map(|()| Value::Null)
            }
            CacheRequest::Delete { key } => self.kv.delete(&key).await.map(|()| Value::Null),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denial::tests::contract;

    #[test]
    fn read_prefix_checks() {
        let c = contract(vec![Capability::CacheRead {
            prefix: "invoice:".into(),
        }]);
        let none = contract(vec![]);
        let cases: &[(&Contract, &str, Option<ErrorCode>)] = &[
            (&c, "invoice:1", None),
            (&c, "invoice:", None),
            (&c, "invoice", Some(ErrorCode::CacheNotAllowed)),
            (&c, "user:1", Some(ErrorCode::CacheNotAllowed)),
            (&c, "INVOICE:1", Some(ErrorCode::CacheNotAllowed)),
            (&none, "invoice:1", Some(ErrorCode::CapabilityNotDeclared)),
        ];
        for (contract, key, want) in cases {
            assert_eq!(
                check_read(contract, key).err().map(|e| e.code),
                *want,
                "{key}"
            );
        }
        let e = check_read(&c, "user:1")
            .err()
            .and_then(|e| e.details)
            .unwrap_or_default();
        assert_eq!(e["allow_with"], "cache:read: { prefix: \"user:\" }");
    }

    #[test]
    fn write_ttl_checks() {
        let c = contract(vec![Capability::CacheWrite {
            prefix: "invoice:".into(),
            max_ttl: Duration::from_secs(3600),
        }]);
        let cases: &[(&str, Option<u64>, Result<u64, ErrorCode>)] = &[
            ("invoice:1", None, Ok(3600)),
            ("invoice:1", Some(60), Ok(60)),
            ("invoice:1", Some(3600), Ok(3600)),
            ("invoice:1", Some(3601), Err(ErrorCode::CacheNotAllowed)),
            ("invoice:1", Some(0), Err(ErrorCode::ControllerFailed)),
            ("other:1", Some(60), Err(ErrorCode::CacheNotAllowed)),
        ];
        for (key, ttl, want) in cases {
            let got = check_write(&c, key, *ttl)
                .map(|d| d.as_secs())
                .map_err(|e| e.code);
            assert_eq!(&got, want, "{key} {ttl:?}");
        }
        let d = check_write(&c, "invoice:1", Some(7200))
            .err()
            .and_then(|e| e.details)
            .unwrap_or_default();
        assert_eq!(
            d["allow_with"],
            "cache:write: { prefix: \"invoice:\", max_ttl: 2h }"
        );
        let none = contract(vec![Capability::CacheRead {
            prefix: "invoice:".into(),
        }]);
        assert_eq!(
            check_write(&none, "invoice:1", None).err().map(|e| e.code),
            Some(ErrorCode::CapabilityNotDeclared)
        );
    }

    #[test]
    fn namespaces_and_keys() {
        assert_ne!(namespaced("A", "k"), namespaced("B", "k"));
        for (k, ok) in [
            ("a", true),
            ("", false),
            ("a\nb", false),
            (&"x".repeat(513), false),
        ] {
            assert_eq!(valid_key(k), ok);
        }
    }

    #[tokio::test]
    async fn lru_is_bounded_and_expires() -> Result<(), BrokerError> {
        let kv = InProcessKv::new(2, 1_000);
        kv.set("a", b"1".to_vec(), Duration::from_secs(60)).await?;
        kv.set("b", b"2".to_vec(), Duration::from_secs(60)).await?;
        assert!(kv.get("a").await?.is_some()); // a is now the most recent
        kv.set("c", b"3".to_vec(), Duration::from_secs(60)).await?;
        assert!(kv.get("b").await?.is_none(), "least recently used evicted");
        assert!(kv.get("a").await?.is_some());
        kv.set("e", b"x".to_vec(), Duration::from_millis(1)).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(kv.get("e").await?.is_none(), "expired");
        let small = InProcessKv::new(100, 10);
        small.set("k1", vec![0; 6], Duration::from_secs(60)).await?;
        small.set("k2", vec![0; 6], Duration::from_secs(60)).await?;
        assert!(small.get("k1").await?.is_none(), "byte bound evicts");
        assert!(small.get("k2").await?.is_some());
        Ok(())
    }
}

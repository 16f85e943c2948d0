//! Execution slots: `CONTROLLER_MAX_CONCURRENT` per controller, on this node and — when
//! `REDIS_URL` is set — across every node sharing the Redis.
//!
//! Owns: admitting an execution or refusing it (E3004). The node-local semaphore is always
//! taken first (cheap, bounds this node); with Redis, a lease in a sorted set per controller
//! (`{prefix}slots:{controller}`, member = lease id, score = expiry in Redis server time) is
//! taken too. A live lease is renewed every third of its lifetime; a node that dies stops
//! renewing, so its slots come back once its leases expire (`MAGIC_SLOT_LEASE_MS`). When Redis
//! cannot be reached the node-local limit still holds and a warning is logged: an outage of
//! Redis never stops executions.
//!
//! Must never: admit more than the limit on one node, keep a slot after its guard is dropped
//! (the release is sent on drop), or use server-local clocks to judge another node's lease.

use std::sync::Arc;
use std::time::Duration;

use magic_broker::redis_conn::RedisConn;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default `MAGIC_SLOT_LEASE_MS`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Take a slot if fewer than `ARGV[1]` live leases exist (expired ones are dropped first).
/// `ARGV[2]` = lease lifetime in ms, `ARGV[3]` = lease id. Uses the Redis server's clock.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

/// Extend lease `ARGV[2]` by `ARGV[1]` ms if it still exists.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
  return 1
end
return 0
";

/// Slots shared through Redis.
#[derive(Clone)]
pub struct ClusterSlots {
    redis: RedisConn,
    lease: Duration,
}

/// A held slot: dropping it releases the node-local permit and the cluster lease.
pub struct SlotGuard {
    _local: OwnedSemaphorePermit,
    lease: Option<Lease>,
}

struct Lease {
    redis: RedisConn,
    key: String,
    id: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        let redis = self.redis.clone();
        let key = std::mem::take(&mut self.key);
        let id = std::mem::take(&mut self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(mut c) = redis.conn().await {
                    let _: Result<i64, _> = redis::cmd("ZREM")
                        .arg(&key)
                        .arg(&id)
                        .query_async(&mut c)
                        .await;
                }
            });
        }
    }
}

/// Why a slot was not given.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This node already runs the limit.
    LocalFull,
    /// The nodes together already run the limit.
    ClusterFull,
}

impl ClusterSlots {
    /// Slots on `redis`, leases living `lease` (renewed while the execution runs).
    pub fn new(redis: RedisConn, lease: Duration) -> Self {
        ClusterSlots {
            redis,
            lease: lease.max(Duration::from_millis(300)),
        }
    }

    /// Take a cluster lease for `controller` if fewer than `max` are live. `Ok(None)` = full;
    /// `Err` = Redis unreachable.
    async fn acquire(&self, controller: &str, max: usize) -> Result<Option<Lease>, String> {
        let key = self.redis.key(&format!("slots:{controller}"));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let lease_ms = self.lease.as_millis() as u64;
        let mut c = self.redis.conn().await.map_err(|e| e.to_string())?;
        let got: i64 = redis::Script::new(ACQUIRE)
            .key(&key)
            .arg(max)
            .arg(lease_ms)
            .arg(&id)
            .invoke_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if got != 1 {
            return Ok(None);
        }
        let renewer = {
            let redis = self.redis.clone();
            let (key, id) = (key.clone(), id.clone());
            let every = self.lease / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Ok(mut c) = redis.conn().await else {
                        continue;
                    };
                    let renewed: Result<i64, _> = redis::Script::new(RENEW)
                        .key(&key)
                        .arg(lease_ms)
                        .arg(&id)
                        .invoke_async(&mut c)
                        .await;
                    if let Ok(0) = renewed {
                        tracing::warn!(event = "slot_lease_lost", key = %key, "an execution slot lease expired before its execution ended");
                        return;
                    }
                }
            })
        };
        Ok(Some(Lease {
            redis: self.redis.clone(),
            key,
            id,
            renewer,
        }))
    }
}

/// Admit one execution of `controller`: the node-local permit from `local`, then (with
/// `cluster`) a cluster lease among at most `max`.
pub async fn admit(
    local: &Arc<Semaphore>,
    cluster: Option<&ClusterSlots>,
    controller: &str,
    max: usize,
) -> Result<SlotGuard, Refusal> {
    let permit = local
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::LocalFull)?;
    let lease = match cluster {
        None => None,
        Some(slots) => match slots.acquire(controller, max).await {
            Ok(Some(lease)) => Some(lease),
            Ok(None) => return Err(Refusal::ClusterFull),
            Err(e) => {
                tracing::warn!(event = "slots_degraded", controller, error = %e, "redis unreachable: CONTROLLER_MAX_CONCURRENT holds on this node only");
                None
            }
        },
    };
    Ok(SlotGuard {
        _local: permit,
        lease,
    })
}

impl SlotGuard {
    /// True when the slot is also counted across nodes.
    pub fn is_cluster_wide(&self) -> bool {
        self.lease.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    #[tokio::test]
    async fn local_limit_without_redis() {
        let local = Arc::new(Semaphore::new(1));
        let a = admit(&local, None, "C", 1).await;
        assert!(a.is_ok());
        assert_eq!(
            admit(&local, None, "C", 1).await.err(),
            Some(Refusal::LocalFull)
        );
        drop(a);
        assert!(admit(&local, None, "C", 1).await.is_ok());
    }

    #[tokio::test]
    async fn leases_are_shared_released_and_expire() {
        let prefix = format!("slots_test_{}:", uuid::Uuid::new_v4().simple());
        let conn = RedisConn::new(&redis_url(), &prefix).unwrap();
        let slots = ClusterSlots::new(conn.clone(), Duration::from_millis(600));
        // Two "nodes": separate local semaphores, one Redis.
        let (n1, n2) = (Arc::new(Semaphore::new(5)), Arc::new(Semaphore::new(5)));
        let a = admit(&n1, Some(&slots), "C", 2).await.unwrap();
        assert!(a.is_cluster_wide());
        let mut b = admit(&n2, Some(&slots), "C", 2).await.unwrap();
        assert_eq!(
            admit(&n1, Some(&slots), "C", 2).await.err(),
            Some(Refusal::ClusterFull)
        );
        // Another controller has its own slots.
        assert!(admit(&n1, Some(&slots), "D", 2).await.is_ok());
        drop(a);
        let mut again = None;
        for _ in 0..50 {
            if let Ok(g) = admit(&n1, Some(&slots), "C", 2).await {
                again = Some(g);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(again.is_some(), "a released slot comes back");
        // A held slot outlives its lease lifetime (renewed).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            admit(&n1, Some(&slots), "C", 2).await.err(),
            Some(Refusal::ClusterFull)
        );
        // A dead holder (renewal stopped, no release): its slot comes back after the lease.
        let mut dead = b.lease.take().unwrap();
        dead.renewer.abort();
        dead.key.clear(); // its release goes nowhere, as if the node died
        drop(dead);
        drop(b);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(admit(&n1, Some(&slots), "C", 2).await.is_ok());
        let mut c = conn.conn().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .unwrap();
        for k in keys {
            let _: i64 = redis::cmd("DEL").arg(k).query_async(&mut c).await.unwrap();
        }
    }
}

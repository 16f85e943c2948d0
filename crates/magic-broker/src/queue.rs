//! `queue:publish` / `queue:subscribe`: durable work queues with at-least-once delivery.
//!
//! Owns: the queue allowlist (E2005), message size cap, the receive-with-wait loop, and the
//! [`QueueBackend`] trait with two impls: a SQL queue in the runtime store (SQLite or
//! PostgreSQL; `FOR UPDATE SKIP LOCKED` on PostgreSQL) and Redis Streams with one consumer
//! group. Semantics (both backends): every message goes to one receiver; a received message
//! is invisible for the visibility timeout and delivered again if not acked; after
//! `queue_max_attempts` deliveries an unacked message moves to the queue's dead letters.
//!
//! Must never: deliver from or publish to a queue the contract does not list, or lose a
//! message that was not acked (moves to dead letters happen in one transaction).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use magic_contract::{Capability, ErrorCode};
use magic_store::{Dialect, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::capability::{CapabilityModule, Checked, Denial, Performed};
use crate::config::BrokerLimits;
use crate::denial::check_listed;
use crate::redis_conn::{unavailable, RedisConn};
use crate::{BrokerError, ExecutionContext};

/// Runtime-store tables of the SQL queue.
pub(crate) const MIGRATIONS: [magic_store::Migration; 1] = [magic_store::Migration {
    version: 1,
    description: "embedded queue and dead letters",
    sqlite: "CREATE TABLE magic_broker_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, \
               queue TEXT NOT NULL, body TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, \
               visible_at BIGINT NOT NULL, created_at BIGINT NOT NULL); \
             CREATE INDEX magic_broker_queue_ready ON magic_broker_queue (queue, visible_at, id); \
             CREATE TABLE magic_broker_queue_dead (id BIGINT PRIMARY KEY, queue TEXT NOT NULL, \
               body TEXT NOT NULL, attempts BIGINT NOT NULL, died_at BIGINT NOT NULL);",
    postgres: "CREATE TABLE magic_broker_queue (id BIGSERIAL PRIMARY KEY, \
               queue TEXT NOT NULL, body TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, \
               visible_at BIGINT NOT NULL, created_at BIGINT NOT NULL); \
             CREATE INDEX magic_broker_queue_ready ON magic_broker_queue (queue, visible_at, id); \
             CREATE TABLE magic_broker_queue_dead (id BIGINT PRIMARY KEY, queue TEXT NOT NULL, \
               body TEXT NOT NULL, attempts BIGINT NOT NULL, died_at BIGINT NOT NULL);",
}];

/// One delivered message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Delivery {
    /// Message ID (ack with it).
    pub id: String,
    /// The message as published.
    pub message: Value,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
}

/// Queue failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    /// The backing store (database or Redis) is unavailable (E5003).
    #[error("queue backend unavailable")]
    Unavailable,
    /// Bad argument (name, id, size).
    #[error("invalid queue call: {0}")]
    Invalid(String),
}

impl From<QueueError> for BrokerError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Unavailable => BrokerError::unavailable("the queue"),
            QueueError::Invalid(m) => BrokerError::invalid(m),
        }
    }
}

impl From<BrokerError> for QueueError {
    fn from(_: BrokerError) -> Self {
        QueueError::Unavailable
    }
}

/// A durable queue (the runtime drives queue-triggered controllers with it).
#[async_trait::async_trait]
pub trait QueueBackend: Send + Sync {
    /// Append `message` to `queue`; answers its ID.
    async fn publish(&self, queue: &str, message: &Value) -> Result<String, QueueError>;
    /// Take up to `max` visible messages (never waits). Each becomes invisible for the
    /// visibility timeout; messages delivered `queue_max_attempts` times without an ack are
    /// moved to the dead letters instead of being returned.
    async fn receive(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Acknowledge (remove) message `id`; true when it was still pending.
    async fn ack(&self, queue: &str, id: &str) -> Result<bool, QueueError>;
    /// Make message `id` visible again now (a failed attempt that should be retried soon).
    async fn release(&self, queue: &str, id: &str) -> Result<bool, QueueError>;
    /// Up to `max` dead letters of `queue`, oldest first.
    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError>;
}

/// Receive with waiting: poll `backend` until a message arrives or `wait` passes.
pub async fn receive_wait(
    backend: &dyn QueueBackend,
    queue: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, QueueError> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let got = backend.receive(queue, max).await?;
        if !got.is_empty() || tokio::time::Instant::now() >= until {
            return Ok(got);
        }
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + Duration::from_millis(50)).min(until),
        )
        .await;
    }
}

/// Queue names: `^[A-Za-z0-9_.:-]{1,128}$`.
pub(crate) fn valid_queue_name(q: &str) -> bool {
    !q.is_empty()
        && q.len() <= 128
        && q.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---- SQL queue (runtime store) -------------------------------------------------------------

/// The embedded queue: rows in the runtime store.
pub(crate) struct SqlQueue {
    store: Store,
    limits: BrokerLimits,
}

impl SqlQueue {
    /// A queue in `store`.
    pub fn new(store: Store, limits: BrokerLimits) -> Self {
        SqlQueue { store, limits }
    }
}

fn store_err(e: sqlx::Error) -> QueueError {
    tracing::warn!(error = %e, "error.type" = "queue_store_error", "queue statement failed");
    QueueError::Unavailable
}

fn parse_id(id: &str) -> Result<i64, QueueError> {
    id.parse()
        .map_err(|_| QueueError::Invalid(format!("unknown message id {id:?}")))
}

#[async_trait::async_trait]
impl QueueBackend for SqlQueue {
    async fn publish(&self, queue: &str, message: &Value) -> Result<String, QueueError> {
        let now = now_ms();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO magic_broker_queue (queue, body, attempts, visible_at, created_at) \
             VALUES ($1, $2, 0, $3, $3) RETURNING id",
        )
        .bind(queue)
        .bind(message.to_string())
        .bind(now)
        .fetch_one(self.store.pool())
        .await
        .map_err(store_err)?;
        Ok(id.to_string())
    }

    async fn receive(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let now = now_ms();
        let max_attempts = i64::from(self.limits.queue_max_attempts);
        // 1. Messages whose last allowed delivery timed out go to the dead letters, in one
        //    transaction (deleted and copied together, or neither).
        let mut tx = self.store.pool().begin().await.map_err(store_err)?;
        let dead: Vec<(i64, String, i64)> = sqlx::query_as(
            "DELETE FROM magic_broker_queue WHERE queue = $1 AND visible_at <= $2 AND attempts >= $3 \
             RETURNING id, body, attempts",
        )
        .bind(queue)
        .bind(now)
        .bind(max_attempts)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_err)?;
        for (id, body, attempts) in &dead {
            sqlx::query(
                "INSERT INTO magic_broker_queue_dead (id, queue, body, attempts, died_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(queue)
            .bind(body)
            .bind(attempts)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
        }
        tx.commit().await.map_err(store_err)?;
        if !dead.is_empty() {
            tracing::warn!(
                queue,
                count = dead.len(),
                "error.type" = "queue_dead_letter",
                "messages moved to dead letters"
            );
        }
        // 2. Claim visible messages in one statement.
        let lock = match self.store.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "UPDATE magic_broker_queue SET attempts = attempts + 1, visible_at = $1 \
             WHERE id IN (SELECT id FROM magic_broker_queue WHERE queue = $2 AND visible_at <= $3 \
               AND attempts < $4 ORDER BY id LIMIT $5{lock}) \
             RETURNING id, body, attempts"
        );
        let mut rows: Vec<(i64, String, i64)> = sqlx::query_as(&sql)
            .bind(now + ms(self.limits.queue_visibility))
            .bind(queue)
            .bind(now)
            .bind(max_attempts)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await
            .map_err(store_err)?;
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(|(id, body, attempts)| Delivery {
                id: id.to_string(),
                message: serde_json::from_str(&body).unwrap_or(Value::String(body)),
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            })
            .collect())
    }

    async fn ack(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        let r = sqlx::query("DELETE FROM magic_broker_queue WHERE queue = $1 AND id = $2")
            .bind(queue)
            .bind(parse_id(id)?)
            .execute(self.store.pool())
            .await
            .map_err(store_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn release(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        let r = sqlx::query(
            "UPDATE magic_broker_queue SET visible_at = 0 WHERE queue = $1 AND id = $2",
        )
        .bind(queue)
        .bind(parse_id(id)?)
        .execute(self.store.pool())
        .await
        .map_err(store_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, body, attempts FROM magic_broker_queue_dead WHERE queue = $1 ORDER BY id LIMIT $2",
        )
        .bind(queue)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(self.store.pool())
        .await
        .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, body, attempts)| Delivery {
                id: id.to_string(),
                message: serde_json::from_str(&body).unwrap_or(Value::String(body)),
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
            })
            .collect())
    }
}

// ---- Redis Streams -------------------------------------------------------------------------

const GROUP: &str = "magic";

/// The production queue: one Redis stream per queue, one consumer group.
pub(crate) struct RedisQueue {
    redis: RedisConn,
    limits: BrokerLimits,
    consumer: String,
    groups: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

type Entry = (String, HashMap<String, String>);

impl RedisQueue {
    /// A queue in `redis`.
    pub fn new(redis: RedisConn, limits: BrokerLimits) -> Self {
        RedisQueue {
            redis,
            limits,
            consumer: format!("broker-{}", uuid::Uuid::new_v4()),
            groups: Default::default(),
        }
    }

    fn stream(&self, queue: &str) -> String {
        self.redis.key(&format!("queue:{queue}"))
    }

    async fn ensure_group(
        &self,
        c: &mut redis::aio::ConnectionManager,
        stream: &str,
    ) -> Result<(), QueueError> {
        let mut known = self.groups.lock().await;
        if known.contains(stream) {
            return Ok(());
        }
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(c)
            .await;
        match r {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e).into()),
        }
        known.insert(stream.to_string());
        Ok(())
    }

    fn delivery(entry: Entry, attempt: u32) -> Delivery {
        let (id, fields) = entry;
        let body = fields.get("m").cloned().unwrap_or_default();
        Delivery {
            id,
            message: serde_json::from_str(&body).unwrap_or(Value::String(body)),
            attempt,
        }
    }
}

#[async_trait::async_trait]
impl QueueBackend for RedisQueue {
    async fn publish(&self, queue: &str, message: &Value) -> Result<String, QueueError> {
        let mut c = self.redis.conn().await?;
        let stream = self.stream(queue);
        self.ensure_group(&mut c, &stream).await?;
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("m")
            .arg(message.to_string())
            .query_async(&mut c)
            .await
            .map_err(|e| unavailable(e).into())
    }

    async fn receive(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut c = self.redis.conn().await?;
        let stream = self.stream(queue);
        self.ensure_group(&mut c, &stream).await?;
        let mut out = Vec::new();
        // 1. Redeliver messages whose visibility timeout passed.
        let claimed: (String, Vec<Option<Entry>>, Vec<String>) = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(ms(self.limits.queue_visibility))
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        for entry in claimed.1.into_iter().flatten() {
            let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg(&entry.0)
                .arg(&entry.0)
                .arg(1)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let count = pending.first().map_or(1, |p| p.3);
            let attempt = u32::try_from(count).unwrap_or(u32::MAX);
            if attempt > self.limits.queue_max_attempts {
                let body = entry.1.get("m").cloned().unwrap_or_default();
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("XADD")
                    .arg(format!("{stream}:dead"))
                    .arg("*")
                    .arg("m")
                    .arg(body)
                    .arg("attempts")
                    .arg(count - 1)
                    .arg("id")
                    .arg(&entry.0)
                    .ignore()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&entry.0)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&entry.0)
                    .ignore();
                pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
                continue;
            }
            out.push(Self::delivery(entry, attempt));
        }
        // 2. New messages.
        if out.len() < max {
            let read: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max - out.len())
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            for (_, entries) in read.unwrap_or_default() {
                out.extend(entries.into_iter().map(|e| Self::delivery(e, 1)));
            }
        }
        Ok(out)
    }

    async fn ack(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        if !valid_stream_id(id) {
            return Err(QueueError::Invalid(format!("unknown message id {id:?}")));
        }
        let mut c = self.redis.conn().await?;
        let stream = self.stream(queue);
        let (acked, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(id)
            .cmd("XDEL")
            .arg(&stream)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(acked > 0)
    }

    async fn release(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        if !valid_stream_id(id) {
            return Err(QueueError::Invalid(format!("unknown message id {id:?}")));
        }
        let mut c = self.redis.conn().await?;
        let ids: Vec<String> = redis::cmd("XCLAIM")
            .arg(self.stream(queue))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(ms(self.limits.queue_visibility) + 1)
            .arg("JUSTID")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(!ids.is_empty())
    }

    async fn dead_letters(&self, queue: &str, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut c = self.redis.conn().await?;
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(format!("{}:dead", self.stream(queue)))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let attempts =
                    e.1.get("attempts")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0);
                let id = e.1.get("id").cloned().unwrap_or_else(|| e.0.clone());
                let mut d = Self::delivery(e, attempts);
                d.id = id;
                d
            })
            .collect())
    }
}

/// Redis stream IDs: `<ms>-<seq>`.
fn valid_stream_id(id: &str) -> bool {
    let mut parts = id.split('-');
    matches!((parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty()
            && a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()))
}

// ---- the capability module ---------------------------------------------------------------

/// A checked queue call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueueRequest {
    /// Publish.
    Publish {
        /// Queue.
        queue: String,
        /// Message.
        message: Value,
    },
    /// Receive with wait.
    Receive {
        /// Queue.
        queue: String,
        /// Wait for at most this long.
        wait: Duration,
        /// At most this many.
        max: usize,
    },
    /// Ack.
    Ack {
        /// Queue.
        queue: String,
        /// Message ID.
        id: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueArgs {
    queue: String,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    id: Option<String>,
}

/// Check `queue` against the contract's list for `capability`. Pure.
pub(crate) fn check_queue(
    contract: &magic_contract::Contract,
    capability: &'static str,
    queue: &str,
) -> Result<(), BrokerError> {
    let pick: for<'a> fn(&'a Capability) -> Option<&'a Vec<String>> =
        if capability == "queue:publish" {
            |c| match c {
                Capability::QueuePublish { queues } => Some(queues),
                _ => None,
            }
        } else {
            |c| match c {
                Capability::QueueSubscribe { queues } => Some(queues),
                _ => None,
            }
        };
    check_listed(
        contract,
        capability,
        "queues",
        queue,
        ErrorCode::QueueNotAllowed,
        pick,
    )
}

/// The queue capability module.
pub(crate) struct QueueModule {
    backend: std::sync::Arc<dyn QueueBackend>,
    limits: BrokerLimits,
}

impl QueueModule {
    /// A module over `backend`.
    pub fn new(backend: std::sync::Arc<dyn QueueBackend>, limits: BrokerLimits) -> Self {
        QueueModule { backend, limits }
    }

    /// The backend (runtime primitives).
    pub fn backend(&self) -> std::sync::Arc<dyn QueueBackend> {
        self.backend.clone()
    }
}

#[async_trait::async_trait]
impl CapabilityModule for QueueModule {
    type Request = QueueRequest;

    fn check(
        &self,
        ctx: &ExecutionContext,
        op: &str,
        args: Value,
    ) -> Result<Checked<QueueRequest>, Denial> {
        let capability = match op {
            "publish" => "queue:publish",
            "receive" | "ack" => "queue:subscribe",
            _ => {
                return Err(Denial::invalid(
                    None,
                    format!("unknown operation queue.{op}"),
                ))
            }
        };
        let a: QueueArgs = serde_json::from_value(args).map_err(|e| {
            Denial::invalid(
                Some(capability),
                format!("invalid arguments to queue.{op}: {e}"),
            )
        })?;
        check_queue(&ctx.contract, capability, &a.queue)
            .map_err(|e| Denial::new(capability, a.queue.clone(), e))?;
        let invalid = |m: String| Denial::new(capability, a.queue.clone(), BrokerError::invalid(m));
        if !valid_queue_name(&a.queue) {
            return Err(invalid(format!("invalid queue name {:?}", a.queue)));
        }
        let request = match op {
            "publish" => {
                let message = a
                    .message
                    .clone()
                    .ok_or_else(|| invalid("queue.publish needs a message".into()))?;
                let size = message.to_string().len();
                if size > self.limits.queue_max_message_bytes {
                    return Err(invalid(format!(
                        "message is {size} bytes, above the {} byte limit",
                        self.limits.queue_max_message_bytes
                    )));
                }
                QueueRequest::Publish {
                    queue: a.queue.clone(),
                    message,
                }
            }
            "receive" => QueueRequest::Receive {
                queue: a.queue.clone(),
                wait: Duration::from_millis(a.wait_ms.unwrap_or(0)).min(self.limits.queue_max_wait),
                max: a.max.unwrap_or(1).clamp(1, self.limits.queue_max_receive),
            },
            _ => QueueRequest::Ack {
                queue: a.queue.clone(),
                id: a
                    .id
                    .clone()
                    .ok_or_else(|| invalid("queue.ack needs an id".into()))?,
            },
        };
        Ok(Checked {
            capability,
            target: a.queue,
            request,
        })
    }

    async fn perform(&self, ctx: &ExecutionContext, request: QueueRequest) -> Performed {
        match request {
            QueueRequest::Publish { queue, message } => {
                match self.backend.publish(&queue, &message).await {
                    Ok(id) => Performed {
                        result: Ok(json!({ "id": id })),
                        details: json!({ "op": "publish", "id": id }),
                    },
                    Err(e) => Performed::plain(Err(e.into())),
                }
            }
            QueueRequest::Receive { queue, wait, max } => {
                // Never wait past the execution's deadline (leave a little time to answer).
                let left = ctx
                    .deadline
                    .saturating_duration_since(std::time::Instant::now());
                let wait = wait.min(left.saturating_sub(Duration::from_millis(50)));
                match receive_wait(&*self.backend, &queue, max, wait).await {
                    Ok(d) => {
                        let ids: Vec<&str> = d.iter().map(|d| d.id.as_str()).collect();
                        let details = json!({ "op": "receive", "ids": ids });
                        Performed {
                            result: Ok(serde_json::to_value(&d).unwrap_or(Value::Null)),
                            details,
                        }
                    }
                    Err(e) => Performed::plain(Err(e.into())),
                }
            }
            QueueRequest::Ack { queue, id } => match self.backend.ack(&queue, &id).await {
                Ok(acked) => Performed {
                    result: Ok(Value::Null),
                    details: json!({ "op": "ack", "id": id, "acked": acked }),
                },
                Err(e) => Performed::plain(Err(e.into())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denial::tests::contract;

    #[test]
    fn queue_allowlist() {
        let c = contract(vec![
            Capability::QueuePublish {
                queues: vec!["invoices".into()],
            },
            Capability::QueueSubscribe {
                queues: vec!["jobs".into()],
            },
        ]);
        let cases = [
            ("queue:publish", "invoices", None),
            ("queue:publish", "jobs", Some(ErrorCode::QueueNotAllowed)),
            ("queue:subscribe", "jobs", None),
            (
                "queue:subscribe",
                "invoices",
                Some(ErrorCode::QueueNotAllowed),
            ),
        ];
        for (cap, q, want) in cases {
            assert_eq!(
                check_queue(&c, cap, q).err().map(|e| e.code),
                want,
                "{cap} {q}"
            );
        }
        let none = contract(vec![]);
        let e = check_queue(&none, "queue:publish", "x").err();
        assert_eq!(
            e.as_ref().map(|e| e.code),
            Some(ErrorCode::CapabilityNotDeclared)
        );
        assert_eq!(
            e.and_then(|e| e.details).unwrap_or_default()["allow_with"],
            "queue:publish: { queues: [x] }"
        );
    }

    #[test]
    fn names_and_ids() {
        for (q, ok) in [
            ("jobs", true),
            ("a.b:c-d_1", true),
            ("", false),
            ("a b", false),
            ("a/b", false),
        ] {
            assert_eq!(valid_queue_name(q), ok, "{q}");
        }
        for (id, ok) in [
            ("1-0", true),
            ("1700000000000-12", true),
            ("1", false),
            ("a-b", false),
            ("1-2-3", false),
            ("-1", false),
        ] {
            assert_eq!(valid_stream_id(id), ok, "{id}");
        }
    }
}

//! One shared Redis connection for the cache and queue backends.
//!
//! Owns: connecting lazily (Redis down at startup is not fatal: calls answer E5003 until it
//! is back), bounded connect and response timeouts, and the key prefix. The connection
//! manager reconnects by itself after a drop. Must never: block a call longer than its
//! timeouts, or write a key outside the configured prefix.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::BrokerError;

/// A lazily connected, shared Redis connection.
#[derive(Clone)]
pub struct RedisConn {
    client: redis::Client,
    prefix: String,
    manager: Arc<tokio::sync::Mutex<Option<ConnectionManager>>>,
}

impl RedisConn {
    /// A connection to `url` (not opened yet); every key starts with `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisConn {
            client,
            prefix: prefix.to_string(),
            manager: Arc::default(),
        })
    }

    /// A full key: the prefix, then `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The connection, connecting first if needed (E5003 when Redis cannot be reached).
    pub async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        let mut guard = self.manager.lock().await;
        if let Some(m) = guard.as_ref() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1)
            .set_max_delay(500);
        let connect = self.client.get_connection_manager_with_config(config);
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(m)) => {
                *guard = Some(m.clone());
                Ok(m)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "error.type" = "redis_unavailable", "cannot connect to redis");
                Err(BrokerError::unavailable("redis"))
            }
            Err(_) => Err(BrokerError::unavailable("redis")),
        }
    }

    /// Round trip (readiness).
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let mut c = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// Map a Redis failure: connection problems are E5003; a refused command is a broker bug,
/// reported as E5003 too (the controller can do nothing about either).
pub(crate) fn unavailable(e: redis::RedisError) -> BrokerError {
    tracing::warn!(error = %e, "error.type" = "redis_error", "redis command failed");
    BrokerError::unavailable("redis")
}

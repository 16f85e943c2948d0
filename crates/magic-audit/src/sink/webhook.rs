//! The webhook sink: batched `POST`s of JSON arrays, retried with exponential backoff.
//!
//! Owns: grouping committed records into batches, posting them, retrying failures.
//!
//! Must never: block the chain writer: records wait in the sink's bounded buffer (their
//! permits are held until delivered or given up), and when it is full new records are
//! dropped and counted.
//!
//! Body: a JSON array whose elements are record objects (the JSON-line form) and
//! `{"checkpoint":{…}}` objects, in chain order. Any 2xx answer is success; anything else,
//! or no answer within the timeout, is retried after 1, 2, 4, … × the backoff, and the batch
//! is dropped (counted) after the configured number of attempts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{item_lines, Counters, SinkItem};
use crate::config::AuditConfig;
use crate::AuditError;

struct Settings {
    batch_max: usize,
    linger: Duration,
    attempts: u32,
    backoff: Duration,
}

pub(crate) fn spawn(
    url: &str,
    config: &AuditConfig,
    rx: mpsc::UnboundedReceiver<SinkItem>,
    counters: Arc<Counters>,
) -> Result<(), AuditError> {
    let client = reqwest::Client::builder()
        .timeout(config.webhook_timeout)
        .build()
        .map_err(|e| AuditError::Config(format!("webhook client: {e}")))?;
    let settings = Settings {
        batch_max: config.webhook_batch_max.max(1),
        linger: config.webhook_linger,
        attempts: config.webhook_attempts.max(1),
        backoff: config.webhook_backoff,
    };
    tokio::spawn(run(client, url.to_string(), settings, rx, counters));
    Ok(())
}

async fn run(
    client: reqwest::Client,
    url: String,
    s: Settings,
    mut rx: mpsc::UnboundedReceiver<SinkItem>,
    counters: Arc<Counters>,
) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut held: Vec<SinkItem> = vec![first];
        let mut lines: usize = held[0].len() as usize;
        let mut flush = matches!(held[0], SinkItem::Flush(_));
        let deadline = tokio::time::Instant::now() + s.linger;
        while lines < s.batch_max && !flush {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => {
                    lines += item.len() as usize;
                    flush = matches!(item, SinkItem::Flush(_));
                    held.push(item);
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut all: Vec<String> = Vec::with_capacity(lines);
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut permits = Vec::new();
        for item in held {
            all.extend(item_lines(&item));
            match item {
                SinkItem::Flush(done) => waiters.push(done),
                other => permits.push(other),
            }
        }
        for chunk in all.chunks(s.batch_max) {
            let body = format!("[{}]", chunk.join(","));
            let n = chunk.len() as u64;
            if post_with_retry(&client, &url, body, &s, &counters).await {
                counters.delivered.fetch_add(n, Ordering::Relaxed);
            } else {
                counters.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        drop(permits);
        for w in waiters {
            let _ = w.send(());
        }
    }
}

async fn post_with_retry(
    client: &reqwest::Client,
    url: &str,
    body: String,
    s: &Settings,
    counters: &Counters,
) -> bool {
    for attempt in 0..s.attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff_delay(s.backoff, attempt)).await;
        }
        let result = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(status = %resp.status(), attempt, "audit webhook refused a batch");
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, attempt, "audit webhook post failed");
            }
        }
    }
    false
}

/// Delay before retry `attempt` (1-based): `base × 2^(attempt-1)`, capped at 30 s.
pub(crate) fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 1_u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff_delay(b, 1), Duration::from_millis(100));
        assert_eq!(backoff_delay(b, 2), Duration::from_millis(200));
        assert_eq!(backoff_delay(b, 4), Duration::from_millis(800));
        assert_eq!(backoff_delay(b, 40), Duration::from_secs(30));
    }
}

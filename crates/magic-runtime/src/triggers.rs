//! Queue-triggered controllers.
//!
//! Owns: the `controller_triggers` table (controller → queue) and one consumer task per
//! trigger that receives each message and executes the controller's active version with the
//! message as its input — the same path as an HTTP request (schema checks, concurrency limit,
//! audit, metrics). A message is acknowledged only after a successful execution; a failed one
//! is released for a retry, and the broker moves it to the queue's dead letters after its
//! `queue_max_attempts`-th delivery (at-least-once). Must never: acknowledge a message whose
//! execution failed, or consume a queue the controller's contract does not subscribe to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use magic_contract::{Capability, ErrorCode};
use magic_store::{Migration, Store};
use serde::Serialize;

use crate::auth::{Identity, Role};
use crate::error::ApiError;
use crate::Runtime;

/// Migrations of the trigger table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "controller_triggers",
    sqlite: "CREATE TABLE controller_triggers (\
               name TEXT PRIMARY KEY, queue TEXT NOT NULL, \
               created_at TEXT NOT NULL, created_by TEXT NOT NULL);",
    postgres: "CREATE TABLE controller_triggers (\
               name TEXT PRIMARY KEY, queue TEXT NOT NULL, \
               created_at TEXT NOT NULL, created_by TEXT NOT NULL);",
}];

/// How long one receive waits for a message before polling again.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);
/// Back-off after a failed receive (backing service down) or a busy controller.
const BACKOFF: Duration = Duration::from_millis(500);

/// A controller consuming a queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Trigger {
    /// Controller name.
    pub controller: String,
    /// Queue whose messages it executes.
    pub queue: String,
    /// When it was set.
    pub created_at: String,
    /// By whom.
    pub created_by: String,
}

/// The triggers and their running consumers.
pub struct Triggers {
    store: Store,
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "trigger store failure");
    ApiError::new(
        ErrorCode::BackendUnavailable,
        "the runtime store is unavailable",
    )
}

/// Whether the contract subscribes to `queue` (a trigger is a subscription).
pub fn contract_subscribes(capabilities: &[Capability], queue: &str) -> bool {
    capabilities.iter().any(
        |c| matches!(c, Capability::QueueSubscribe { queues } if queues.iter().any(|q| q == queue)),
    )
}

impl Triggers {
    /// Apply migrations.
    pub async fn open(store: Store) -> Result<Triggers, magic_store::StoreError> {
        store.migrate("triggers", MIGRATIONS).await?;
        Ok(Triggers {
            store,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Every trigger.
    pub async fn list(&self) -> Result<Vec<Trigger>, ApiError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT name, queue, created_at, created_by FROM controller_triggers ORDER BY name",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|(controller, queue, created_at, created_by)| Trigger {
                controller,
                queue,
                created_at,
                created_by,
            })
            .collect())
    }

    /// Start a consumer for every stored trigger (at start-up).
    pub async fn start_all(&self, runtime: &Arc<Runtime>) -> Result<(), ApiError> {
        for t in self.list().await? {
            self.spawn(runtime, t.controller, t.queue);
        }
        Ok(())
    }

    /// Make `controller` consume `queue` (replacing an earlier trigger of it).
    pub async fn set(
        &self,
        runtime: &Arc<Runtime>,
        controller: &str,
        queue: &str,
        actor: &str,
    ) -> Result<Trigger, ApiError> {
        let (active, _) = runtime.registry.resolve(controller, None)?;
        if !contract_subscribes(&active.contract.capabilities, queue) {
            return Err(ApiError::new(
                ErrorCode::QueueNotAllowed,
                format!(
                    "{controller} {} does not declare queue:subscribe for {queue:?}; a trigger is a subscription",
                    active.version
                ),
            )
            .with_details(serde_json::json!({
                "capability": "queue:subscribe", "target": queue,
                "allow_with": format!("queue:subscribe: {{ queues: [{queue}] }}"),
            })));
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        sqlx::query(
            "INSERT INTO controller_triggers (name, queue, created_at, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET queue = excluded.queue, \
               created_at = excluded.created_at, created_by = excluded.created_by",
        )
        .bind(controller)
        .bind(queue)
        .bind(&now)
        .bind(actor)
        .execute(self.store.pool())
        .await
        .map_err(internal)?;
        self.spawn(runtime, controller.to_string(), queue.to_string());
        Ok(Trigger {
            controller: controller.to_string(),
            queue: queue.to_string(),
            created_at: now,
            created_by: actor.to_string(),
        })
    }

    /// Stop `controller` consuming; true when it had a trigger.
    pub async fn remove(&self, controller: &str) -> Result<bool, ApiError> {
        let done = sqlx::query("DELETE FROM controller_triggers WHERE name = $1")
            .bind(controller)
            .execute(self.store.pool())
            .await
            .map_err(internal)?;
        if let Ok(mut running) = self.running.lock() {
            if let Some(task) = running.remove(controller) {
                task.abort();
            }
        }
        Ok(done.rows_affected() > 0)
    }

    fn spawn(&self, runtime: &Arc<Runtime>, controller: String, queue: String) {
        let weak = Arc::downgrade(runtime);
        let name = controller.clone();
        let task = tokio::spawn(async move { consume(weak, controller, queue).await });
        if let Ok(mut running) = self.running.lock() {
            if let Some(old) = running.insert(name, task) {
                old.abort();
            }
        }
    }

    /// Stop every consumer (shutdown).
    pub fn stop_all(&self) {
        if let Ok(mut running) = self.running.lock() {
            for (_, task) in running.drain() {
                task.abort();
            }
        }
    }
}

/// The consumer loop of one trigger. Holds the runtime weakly so shutdown is not delayed.
async fn consume(runtime: Weak<Runtime>, controller: String, queue: String) {
    let identity = Identity {
        name: format!("trigger:queue:{queue}"),
        roles: vec![Role::Executor],
        scope: Some(vec![controller.clone()]),
    };
    tracing::info!(event = "trigger_started", controller = %controller, queue = %queue);
    loop {
        let Some(rt) = runtime.upgrade() else { return };
        let backend = rt.broker.queue();
        let deliveries = match magic_broker::receive_wait(&*backend, &queue, 1, RECEIVE_WAIT).await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(event = "trigger_receive_failed", controller = %controller, queue = %queue, error = %e);
                drop(rt);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        for delivery in deliveries {
            let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
            let body = serde_json::to_vec(&delivery.message).unwrap_or_default();
            let result = rt
                .execute(
                    &request_id,
                    &controller,
                    None,
                    &identity,
                    &http::HeaderMap::new(),
                    axum::body::Body::from(body),
                )
                .await;
            match result {
                Ok(_) => {
                    if let Err(e) = backend.ack(&queue, &delivery.id).await {
                        tracing::warn!(event = "trigger_ack_failed", request_id = %request_id, controller = %controller, queue = %queue, error = %e);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        event = "trigger_execution_failed", request_id = %request_id, controller = %controller,
                        queue = %queue, message_id = %delivery.id, attempt = delivery.attempt,
                        error_code = e.code.as_str(), error = %e.message
                    );
                    let _ = backend.release(&queue, &delivery.id).await;
                    if e.code == ErrorCode::ConcurrencyLimit
                        || e.code == ErrorCode::ControllerNotFound
                    {
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_needs_a_subscription_to_that_queue() {
        let caps = vec![
            Capability::QueuePublish {
                queues: vec!["orders".into()],
            },
            Capability::QueueSubscribe {
                queues: vec!["events".into(), "jobs".into()],
            },
        ];
        assert!(contract_subscribes(&caps, "jobs"));
        assert!(contract_subscribes(&caps, "events"));
        assert!(
            !contract_subscribes(&caps, "orders"),
            "publishing is not subscribing"
        );
        assert!(!contract_subscribes(&caps, "job"));
        assert!(!contract_subscribes(&[], "jobs"));
    }
}

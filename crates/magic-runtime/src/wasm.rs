//! Running WASM controllers (`controller.wasm`, docs/wasm.md) through the executor.
//!
//! Owns: the process's [`magic_wasm::Engine`] (started at the first WASM version, so a runtime
//! without WASM controllers reserves nothing), preparing each deployed WASM version (kept on the
//! version itself, [`DeployedVersion::wasm`]), and the [`magic_wasm::Host`] that answers an execution's imports with the same
//! broker, accounting, logs and metrics as the executor's worker frames. Must never: answer a
//! capability call any other way than `CapabilityBroker::call`, or keep an instance after its
//! execution.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use magic_broker::{CapabilityBroker, CapabilityCall, ExecutionContext};
use magic_contract::ErrorCode;
use magic_wasm::{Controller, Engine, EngineConfig, Failure, Host, Limits, WasmError};

use crate::error::ApiError;
use crate::executor::{self, ExecutionOutcome};
use crate::metrics::Metrics;
use crate::protocol::WireError;
use crate::registry::DeployedVersion;

/// Default of `MAGIC_WASM_MAX_INSTANCES`: WASM instances that may exist at once across all
/// controllers (the pooling allocator's slots). Beyond it executions get E3004.
pub const DEFAULT_MAX_INSTANCES: u32 = 128;
/// Largest accepted `MAGIC_WASM_MAX_INSTANCES`: each slot reserves address space for a 4 GiB
/// memory plus guard pages, and x86-64 user space is 128 TiB.
pub const MAX_MAX_INSTANCES: u32 = 4096;

/// The engine.
pub struct WasmMode {
    cache_dir: PathBuf,
    max_instances: u32,
    engine: OnceLock<Result<Arc<Engine>, String>>,
}

impl WasmMode {
    /// WASM support caching compiled code in `cache_dir`, with at most `max_instances`
    /// instances alive at once; the engine starts on first use.
    pub fn new(cache_dir: PathBuf, max_instances: u32) -> WasmMode {
        WasmMode {
            cache_dir,
            max_instances,
            engine: OnceLock::new(),
        }
    }

    /// The engine, started on first use.
    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        self.engine
            .get_or_init(|| {
                Engine::new(EngineConfig {
                    cache_dir: self.cache_dir.clone(),
                    max_instances: self.max_instances,
                    fuel: None,
                })
                .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| ApiError::new(ErrorCode::SandboxUnavailable, e))
    }

    /// Compile (or load from the disk cache) and pre-link `version`'s `controller.wasm`, once
    /// per version: later calls return the kept controller.
    pub fn prepare(&self, version: &DeployedVersion) -> Result<Arc<Controller>, ApiError> {
        if let Some(c) = version.wasm.get() {
            return Ok(c.clone());
        }
        let engine = self.engine()?;
        let path = version.package_dir.join("controller.wasm");
        let bytes = std::fs::read(&path).map_err(|e| {
            ApiError::new(
                ErrorCode::ControllerFailed,
                format!("cannot read the controller's controller.wasm: {e}"),
            )
        })?;
        let controller = Arc::new(
            engine
                .prepare(&bytes)
                .map_err(|e| ApiError::new(e.code(), e.to_string()))?,
        );
        // Two first executions may race: both are prepared, one is kept (errors are not, so a
        // version whose engine was unavailable is tried again).
        Ok(version.wasm.get_or_init(|| controller).clone())
    }

    /// Run one execution of `version` in a fresh instance.
    pub async fn execute(
        &self,
        broker: &Arc<CapabilityBroker>,
        metrics: &Arc<Metrics>,
        ctx: ExecutionContext,
        version: &Arc<DeployedVersion>,
        input: &serde_json::Value,
    ) -> ExecutionOutcome {
        let controller = match self.prepare(version) {
            Ok(c) => c,
            Err(e) => return executor::failed(e),
        };
        let timeout = version.contract.resources.timeout;
        let limits = Limits {
            memory: version.contract.resources.memory,
            deadline: ctx.deadline,
        };
        let host = Arc::new(WasmHost {
            broker: broker.clone(),
            metrics: metrics.clone(),
            ctx: Arc::new(ctx),
            seen: Arc::new(Mutex::new(Seen::default())),
        });
        let run = controller
            .run(host.clone(), &input.to_string(), limits)
            .await;
        let controller_name = &version.name;
        let mut timed_out = false;
        let result = match run {
            Ok(Ok(text)) => serde_json::from_str(&text).map_err(|e| {
                ApiError::new(
                    ErrorCode::ControllerFailed,
                    format!("the controller's output is not JSON: {e}"),
                )
            }),
            Ok(Err(failure)) => Err(executor::controller_error(Some(WireError {
                code: failure.code,
                message: failure.message,
                details: None,
                exception: None,
                traceback: None,
            }))),
            Err(WasmError::Timeout(_)) => {
                timed_out = true;
                Err(executor::limit_error(
                    metrics,
                    controller_name,
                    ErrorCode::Timeout,
                    "timeout",
                    format!(
                        "execution exceeded the contract's timeout of {}",
                        executor::humanize(timeout)
                    ),
                ))
            }
            Err(e @ WasmError::Memory { .. }) => Err(executor::limit_error(
                metrics,
                controller_name,
                ErrorCode::MemoryExceeded,
                "memory",
                format!("the execution was stopped for {e}"),
            )),
            Err(e) => Err(ApiError::new(e.code(), e.to_string())),
        };
        let seen = host
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        ExecutionOutcome {
            result,
            capabilities_used: seen.used.into_iter().collect(),
            denials: seen.denials,
            timed_out,
        }
    }
}

/// What an execution's calls did, for the outcome.
#[derive(Default)]
struct Seen {
    used: BTreeSet<String>,
    denials: usize,
    log_lines: usize,
}

/// The imports of one execution: the broker, the executor's accounting, logs and metrics.
struct WasmHost {
    broker: Arc<CapabilityBroker>,
    metrics: Arc<Metrics>,
    ctx: Arc<ExecutionContext>,
    seen: Arc<Mutex<Seen>>,
}

impl Host for WasmHost {
    fn call(
        &self,
        capability: &'static str,
        op: String,
        args: String,
    ) -> BoxFuture<'static, Result<String, Failure>> {
        let broker = self.broker.clone();
        let metrics = self.metrics.clone();
        let ctx = self.ctx.clone();
        let args = serde_json::from_str::<serde_json::Value>(&args);
        let seen = self.seen.clone();
        Box::pin(async move {
            let args = args.map_err(|e| Failure {
                code: ErrorCode::InputInvalid.as_str().into(),
                message: format!("the call's args are not JSON: {e}"),
            })?;
            let reply = broker
                .call(
                    &ctx,
                    CapabilityCall {
                        capability: capability.to_string(),
                        op,
                        args,
                    },
                )
                .await;
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            let Seen { used, denials, .. } = &mut *s;
            executor::account_reply(&metrics, &ctx.controller, &reply, used, denials);
            drop(s);
            match reply.result {
                Ok(value) => Ok(value.to_string()),
                Err(e) => Err(Failure {
                    code: e.code.as_str().to_string(),
                    message: e.message,
                }),
            }
        })
    }

    fn log(&self, level: &str, message: &str, fields: &str) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.log_lines += 1;
        let n = s.log_lines;
        drop(s);
        let fields = match serde_json::from_str::<serde_json::Value>(fields) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        executor::controller_log_limited(&self.ctx, n, level, message, &fields);
        if n <= executor::MAX_LOG_LINES {
            self.metrics
                .activity
                .log(&self.ctx.request_id, level, message);
        }
    }

    fn metric(&self, kind: &str, name: &str, value: f64, labels: &str) {
        let labels: BTreeMap<String, String> = serde_json::from_str(labels).unwrap_or_default();
        if let Err(e) = self
            .metrics
            .record_custom(&self.ctx.controller, kind, name, value, &labels)
        {
            tracing::debug!(request_id = %self.ctx.request_id, controller = %self.ctx.controller, error = %e, "custom metric refused");
        }
    }
}

//! WASM controllers: compile, cache, instantiate and run components of the `magic:controller`
//! world (`wit/magic-controller.wit`, docs/wasm.md) on one wasmtime engine.
//!
//! Owns: the process's one [`Engine`] (pooling instance allocator, epoch interruption driven
//! by a ticker thread, optional fuel), componentizing core modules, the on-disk cache of
//! compiled code, the linker whose imports forward to a [`Host`], and one execution: a fresh
//! instance from a prepared [`Controller`] (`InstancePre`), its memory cap, its deadline, its
//! output limit, and mapping traps to errors. Must never: talk to a database, the network or a
//! registry itself (every capability goes through the [`Host`], which the runtime answers with
//! the capability broker), let an instance outlive its execution, or reuse an instance's memory
//! for another execution.

mod cache;
pub mod componentize;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use magic_contract::ErrorCode;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, InstancePre, Lift, Linker, Lower,
};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

/// Largest output (JSON text) an execution may return.
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// How often the ticker thread advances the engine's epoch: the deadline's granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Largest table a controller may grow to (elements).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// A refused or failed call, or a controller's own error (`failure` in the WIT world).
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lift, Lower)]
#[component(record)]
pub struct Failure {
    /// Public error code (`E2004`).
    pub code: String,
    /// Message.
    pub message: String,
}

/// What the controller's imports call: the runtime answers with the capability broker, its
/// logs and its metrics, exactly as for a Python controller.
pub trait Host: Send + Sync {
    /// A capability call (`capability` is `db`, `http`, `secrets`, `queue` or `cache`); `args`
    /// and the result are JSON text.
    fn call(
        &self,
        capability: &'static str,
        op: String,
        args: String,
    ) -> BoxFuture<'static, Result<String, Failure>>;
    /// A log line (`fields` is a JSON object as text).
    fn log(&self, level: &str, message: &str, fields: &str);
    /// A custom metric sample (`labels` is a JSON object as text).
    fn metric(&self, kind: &str, name: &str, value: f64, labels: &str);
}

/// Errors of this crate, each with the public code it is reported with.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The binary is not a controller of the world.
    #[error("{0}")]
    Invalid(String),
    /// The engine could not be set up, or compiling failed for a reason not the binary's.
    #[error("wasm engine: {0}")]
    Internal(String),
    /// The deadline passed (epoch interruption) or the fuel ran out.
    #[error("{0}")]
    Timeout(String),
    /// The instance tried to grow its memory past the cap.
    #[error("memory growth past the contract's limit of {limit} bytes")]
    Memory {
        /// The cap in bytes.
        limit: u64,
    },
    /// The controller trapped (stack overflow, unreachable, out-of-bounds access, …).
    #[error("the controller trapped: {0}")]
    Trap(String),
    /// The controller returned an output above [`MAX_OUTPUT`].
    #[error("the controller's output of {size} bytes exceeds the {MAX_OUTPUT}-byte limit")]
    OutputTooLarge {
        /// Its size.
        size: usize,
    },
    /// Every pooled instance slot is in use.
    #[error("all WASM instance slots are in use: {0}")]
    Busy(String),
}

impl WasmError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            WasmError::Invalid(_) => ErrorCode::ContractInvalid,
            WasmError::Internal(_) | WasmError::Trap(_) | WasmError::OutputTooLarge { .. } => {
                ErrorCode::ControllerFailed
            }
            WasmError::Timeout(_) => ErrorCode::Timeout,
            WasmError::Memory { .. } => ErrorCode::MemoryExceeded,
            WasmError::Busy(_) => ErrorCode::ConcurrencyLimit,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled code is cached (`DATA_DIR/runtime/wasm-cache`).
    pub cache_dir: PathBuf,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
    /// Fuel per execution (`None`: no fuel metering; the deadline alone bounds CPU).
    pub fuel: Option<u64>,
}

/// Counters of the compiled-code cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled (cache misses).
    pub compiled: u64,
    /// Components loaded from the disk cache.
    pub loaded: u64,
}

/// The one wasmtime engine of the process and the linker every controller is instantiated with.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<State>,
    cache: cache::DiskCache,
    fuel: Option<u64>,
    pooling: bool,
    stop: Arc<AtomicBool>,
    compiled: AtomicU64,
    loaded: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pooling", &self.pooling)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

/// A controller ready to run: its component pre-linked (`InstancePre`).
pub struct Controller {
    pre: InstancePre<State>,
    execute: ComponentExportIndex,
    fuel: Option<u64>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

/// One execution's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory cap in bytes (the contract's `resources.memory`).
    pub memory: u64,
    /// When the execution is interrupted.
    pub deadline: Instant,
}

/// Per-execution store data.
struct State {
    host: Arc<dyn Host>,
    memory_cap: u64,
    memory_hit: bool,
    deadline: Instant,
    timed_out: bool,
}

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_cap {
            self.memory_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory growth to {desired} bytes exceeds the limit of {} bytes",
                self.memory_cap
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The capability interfaces whose `call` goes to [`Host::call`].
const CAPABILITIES: [&str; 5] = ["db", "http", "secrets", "queue", "cache"];

impl Engine {
    /// Build the engine (pooling allocator when the host allows it, else on-demand), its
    /// linker, and start the epoch ticker thread.
    pub fn new(config: EngineConfig) -> Result<Arc<Engine>, WasmError> {
        let (engine, pooling) = match build_engine(&config, true) {
            Ok(e) => (e, true),
            Err(pooled) => {
                tracing::warn!(error = %pooled, "wasm pooling allocator unavailable; using on-demand allocation");
                (build_engine(&config, false)?, false)
            }
        };
        let linker = linker(&engine)?;
        let cache = cache::DiskCache::open(config.cache_dir.clone(), &engine)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let ticking = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !ticking.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| WasmError::Internal(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(Engine {
            engine,
            linker,
            cache,
            fuel: config.fuel,
            pooling,
            stop,
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
        }))
    }

    /// Whether the pooling instance allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compiled-code cache counters since start.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    /// Prepare `bytes` (a `controller.wasm`): from the disk cache when this engine compiled the
    /// same bytes before, else componentize (core modules), compile and cache; then link.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Controller, WasmError> {
        let key = self.cache.key(bytes);
        let component = match self.cache.load(&self.engine, &key) {
            Some(c) => {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "wasm_cache_hit", key = %key, "compiled controller loaded from the cache");
                c
            }
            None => {
                let component_bytes = componentize::to_component(bytes)?;
                let started = Instant::now();
                let component = Component::new(&self.engine, &component_bytes).map_err(|e| {
                    WasmError::Invalid(format!("controller.wasm does not compile: {e:#}"))
                })?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "wasm_compiled", key = %key, ms = started.elapsed().as_millis() as u64, "controller compiled");
                if let Err(e) = self.cache.store(&key, &component) {
                    tracing::warn!(error = %e, "compiled controller not cached");
                }
                component
            }
        };
        let execute = component.get_export_index(None, "execute").ok_or_else(|| {
            WasmError::Invalid("controller.wasm does not export `execute`".into())
        })?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            WasmError::Invalid(format!(
                "controller.wasm imports something the magic:controller world does not offer: {e:#}"
            ))
        })?;
        Ok(Controller {
            pre,
            execute,
            fuel: self.fuel,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Core instances (and tables) one controller instance may use: its module plus the shims
/// `wit-component` adds.
const CORE_INSTANCES_PER_COMPONENT: u32 = 4;

/// Bytes of each pooled memory, table and stack slot kept resident (zeroed with memset)
/// when an instance is dropped.
const KEEP_RESIDENT: usize = 256 << 10;

fn build_engine(config: &EngineConfig, pooling: bool) -> Result<wasmtime::Engine, WasmError> {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel.is_some());
    if pooling {
        let n = config.max_instances.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // A componentized core module instantiates a few core instances and tables of its
        // own (the adapter's shim and fixup modules) next to the controller's one memory.
        let inner = n.saturating_mul(CORE_INSTANCES_PER_COMPONENT);
        pool.total_component_instances(n)
            .total_core_instances(inner)
            .total_memories(n)
            .total_tables(inner)
            .total_stacks(n)
            // A freed slot's first pages are zeroed in place rather than returned with
            // madvise: no page faults on the next instance and no TLB-shootdown IPIs across
            // cores on every drop (measured: madvise was ~5% of a loaded server's CPU).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    wasmtime::Engine::new(&c).map_err(|e| WasmError::Internal(format!("{e:#}")))
}

/// The linker: every world import forwards to the store's [`Host`].
fn linker(engine: &wasmtime::Engine) -> Result<Linker<State>, WasmError> {
    let internal = |e: wasmtime::Error| WasmError::Internal(format!("{e:#}"));
    let mut linker = Linker::<State>::new(engine);
    linker
        .root()
        .instance("magic:controller/types")
        .map_err(internal)?;
    for capability in CAPABILITIES {
        let mut root = linker.root();
        let mut instance = root
            .instance(&format!("magic:controller/{capability}"))
            .map_err(internal)?;
        instance
            .func_wrap_async(
                "call",
                move |store: wasmtime::StoreContextMut<'_, State>,
                      (op, args): (String, String)| {
                    let host = store.data().host.clone();
                    let expired = Instant::now() >= store.data().deadline;
                    Box::new(async move {
                        if expired {
                            return Ok((Err(Failure {
                                code: ErrorCode::Timeout.as_str().to_string(),
                                message: "the execution's deadline has passed; the call was not performed".into(),
                            }),));
                        }
                        Ok((host.call(capability, op, args).await,))
                    })
                },
            )
            .map_err(internal)?;
    }
    linker
        .root()
        .instance("magic:controller/metrics")
        .map_err(internal)?
        .func_wrap(
            "emit",
            |store: wasmtime::StoreContextMut<'_, State>,
             (kind, name, value, labels): (String, String, f64, String)| {
                store.data().host.metric(&kind, &name, value, &labels);
                Ok(())
            },
        )
        .map_err(internal)?;
    linker
        .root()
        .instance("magic:controller/log")
        .map_err(internal)?
        .func_wrap(
            "log",
            |store: wasmtime::StoreContextMut<'_, State>,
             (level, message, fields): (String, String, String)| {
                store.data().host.log(&level, &message, &fields);
                Ok(())
            },
        )
        .map_err(internal)?;
    Ok(linker)
}

impl Controller {
    /// Run one execution in a fresh instance: `input` is JSON text; the result is the
    /// controller's output (JSON text, at most [`MAX_OUTPUT`] bytes) or its `failure`.
    pub async fn run(
        &self,
        host: Arc<dyn Host>,
        input: &str,
        limits: Limits,
    ) -> Result<Result<String, Failure>, WasmError> {
        let mut store = Store::new(
            self.pre.engine(),
            State {
                host,
                memory_cap: limits.memory,
                memory_hit: false,
                deadline: limits.deadline,
                timed_out: false,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        if let Some(fuel) = self.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| WasmError::Internal(format!("{e:#}")))?;
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().timed_out = true;
                return Err(wasmtime::Error::msg("the execution's deadline passed"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let outcome = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let func = instance
                .get_typed_func::<(&str,), (Result<String, Failure>,)>(&mut store, self.execute)?;
            let (result,) = func.call_async(&mut store, (input,)).await?;
            wasmtime::Result::Ok(result)
        }
        .await;
        let state = store.data();
        match outcome {
            Ok(Ok(output)) if output.len() > MAX_OUTPUT => {
                Err(WasmError::OutputTooLarge { size: output.len() })
            }
            Ok(result) => Ok(result),
            Err(_) if state.timed_out => Err(WasmError::Timeout(
                "the execution's deadline passed (epoch interruption)".into(),
            )),
            Err(_) if state.memory_hit => Err(WasmError::Memory {
                limit: state.memory_cap,
            }),
            Err(e) => Err(classify(e)),
        }
    }
}

/// A failed instantiation or call that is neither the deadline nor the memory cap.
fn classify(e: wasmtime::Error) -> WasmError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::OutOfFuel {
            return WasmError::Timeout("the execution ran out of fuel".into());
        }
        return WasmError::Trap(trap.to_string());
    }
    let message = format!("{e:#}");
    if message.contains("maximum concurrent") || message.contains("limit of") {
        return WasmError::Busy(message);
    }
    WasmError::Trap(message)
}

//! `WasmtimeRuntime`: WASI (preview 1) modules in wasmtime, one store per container.
//!
//! Owns: the WASM backend. A module sees only its arguments, its environment, its stdin bytes
//! and its preopened directories; stdout/stderr go to bounded in-memory pipes. Execution is
//! bounded by fuel and by a memory cap enforced through a `ResourceLimiter`; `kill` interrupts
//! it through epoch interruption. Must never: inherit the host's stdio, environment or
//! filesystem, or let a module grow memory past its cap.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::bundle::{Bundle, WasiConfig};
use crate::constants::{MAX_WASM_MEMORY_PAGES, MAX_WASM_MODULE_SIZE, WASM_PAGE_SIZE};
use crate::error::{Error, Result};
use crate::runtimes::{OciRuntime, Signal};
use crate::state::{
    transition, validate_container_id, ContainerState, ContainerStatus, LifecycleOp,
};

/// Capacity of each captured output stream (stdout, stderr).
pub const MAX_CAPTURED_OUTPUT: usize = 16 * 1024 * 1024;

/// Exit code recorded when fuel runs out (as if killed by SIGKILL).
pub const EXIT_FUEL_EXHAUSTED: i32 = 137;

/// Memory cap for one store; records whether a growth was refused.
#[derive(Debug)]
pub struct MemoryCap {
    max_bytes: usize,
    denied: bool,
}

impl MemoryCap {
    /// A cap of `pages` 64 KiB pages (at most `MAX_WASM_MEMORY_PAGES`).
    pub fn new(pages: u64) -> Self {
        let pages = pages.min(MAX_WASM_MEMORY_PAGES);
        MemoryCap {
            max_bytes: usize::try_from(pages * WASM_PAGE_SIZE).unwrap_or(usize::MAX),
            denied: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.max_bytes && maximum.is_none_or(|m| desired <= m);
        if !ok {
            self.denied = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        4
    }
    fn tables(&self) -> usize {
        8
    }
}

struct StoreData {
    wasi: WasiP1Ctx,
    cap: MemoryCap,
}

struct Container {
    bundle_path: PathBuf,
    module: Module,
    wasi: WasiConfig,
    status: Mutex<Run>,
    killed: Arc<AtomicI32>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

#[derive(Debug, Clone, Default)]
struct Run {
    status: Option<ContainerStatus>,
    exit_code: Option<i32>,
    error: Option<String>,
    memory_denied: bool,
}

/// Outcome of one module run. Pure mapping from wasmtime's result, see [`classify_exit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmExit {
    /// Exit code (0 success, `proc_exit` code, 128+signal when killed, 137 fuel, 1 trap).
    pub code: i32,
    /// Why it ended abnormally.
    pub error: Option<String>,
}

/// Maps a run's result to an exit. `killed` is the signal number sent by `kill`, 0 if none.
pub fn classify_exit(result: &wasmtime::Result<()>, killed: i32) -> WasmExit {
    match result {
        Ok(()) => WasmExit {
            code: 0,
            error: None,
        },
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return WasmExit {
                    code: exit.0,
                    error: None,
                };
            }
            match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => WasmExit {
                    code: EXIT_FUEL_EXHAUSTED,
                    error: Some("fuel exhausted".into()),
                },
                Some(Trap::Interrupt) if killed != 0 => WasmExit {
                    code: 128 + killed,
                    error: Some(format!("killed by signal {killed}")),
                },
                _ => WasmExit {
                    code: 1,
                    error: Some(format!("{e:#}").chars().take(1000).collect()),
                },
            }
        }
    }
}

/// Most compiled modules kept by one runtime.
pub const MODULE_CACHE_ENTRIES: usize = 64;
/// Most module bytes (sum of the source modules' sizes) behind the cached compilations.
pub const MODULE_CACHE_BYTES: u64 = 512 * 1024 * 1024;

/// Compiled modules by the SHA-256 of their bytes, oldest evicted first. A `Module` is a cheap
/// handle (reference counted), so a hit costs a hash of the bytes, not a compilation.
#[derive(Default)]
struct ModuleCache {
    order: std::collections::VecDeque<String>,
    modules: HashMap<String, (Module, u64)>,
    bytes: u64,
    compilations: u64,
}

impl ModuleCache {
    fn get(&self, key: &str) -> Option<Module> {
        self.modules.get(key).map(|(m, _)| m.clone())
    }

    fn insert(&mut self, key: String, module: Module, size: u64) {
        if self.modules.contains_key(&key) || size > MODULE_CACHE_BYTES {
            return;
        }
        while self.modules.len() >= MODULE_CACHE_ENTRIES
            || self.bytes.saturating_add(size) > MODULE_CACHE_BYTES
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, n)) = self.modules.remove(&old) {
                self.bytes = self.bytes.saturating_sub(n);
            }
        }
        self.order.push_back(key.clone());
        self.modules.insert(key, (module, size));
        self.bytes = self.bytes.saturating_add(size);
    }
}

/// The WASM backend. One `Engine` for all containers; compiled modules are cached by the
/// SHA-256 of their bytes, so creating many containers from one module compiles it once.
pub struct WasmtimeRuntime {
    engine: Engine,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    cache: Arc<Mutex<ModuleCache>>,
}

impl std::fmt::Debug for WasmtimeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmtimeRuntime").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WasmtimeRuntime {
    /// An engine with fuel metering and epoch interruption.
    pub fn new() -> Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| Error::Wasm(format!("engine: {e}")))?;
        Ok(WasmtimeRuntime {
            engine,
            containers: Mutex::new(HashMap::new()),
            cache: Arc::new(Mutex::new(ModuleCache::default())),
        })
    }

    /// How many modules this runtime has compiled (cache misses) so far.
    pub fn compilations(&self) -> u64 {
        lock(&self.cache).compilations
    }

    /// How many compiled modules are cached now.
    pub fn cached_modules(&self) -> usize {
        lock(&self.cache).modules.len()
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    /// Captured stdout and stderr of a container so far.
    pub fn output(&self, id: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let c = self.get(id)?;
        Ok((c.stdout.contents().to_vec(), c.stderr.contents().to_vec()))
    }

    fn run(engine: &Engine, c: &Container) -> (wasmtime::Result<()>, bool) {
        let mut b = WasiCtxBuilder::new();
        b.args(&c.wasi.args)
            .envs(&c.wasi.env)
            .stdin(MemoryInputPipe::new(c.wasi.stdin.clone()))
            .stdout(c.stdout.clone())
            .stderr(c.stderr.clone());
        for p in &c.wasi.preopens {
            let perms = if p.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if let Err(e) = b.preopened_dir(&p.host, &p.guest, perms) {
                return (Err(e), false);
            }
        }
        let data = StoreData {
            wasi: b.build_p1(),
            cap: MemoryCap::new(c.wasi.max_memory_pages),
        };
        let mut store = Store::new(engine, data);
        store.limiter(|d| &mut d.cap);
        if let Err(e) = store.set_fuel(c.wasi.fuel) {
            return (Err(e), false);
        }
        store.set_epoch_deadline(1);
        let killed = c.killed.clone();
        store.epoch_deadline_callback(move |_| {
            if killed.load(Ordering::SeqCst) != 0 {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        let result = (|| {
            let mut linker: Linker<StoreData> = Linker::new(engine);
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |d: &mut StoreData| &mut d.wasi)?;
            let instance = linker.instantiate(&mut store, &c.module)?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        })();
        let denied = store.data().cap.denied;
        (result, denied)
    }
}

#[async_trait]
impl OciRuntime for WasmtimeRuntime {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        validate_container_id(id)?;
        let Bundle::Wasm { module, wasi } = bundle else {
            return Err(Error::UnsupportedBundle {
                runtime: "wasmtime".into(),
                reason: format!("expects a Wasm bundle, got {}", bundle.kind()),
            });
        };
        if lock(&self.containers).contains_key(id) {
            return Err(Error::ContainerExists(id.to_string()));
        }
        let meta = std::fs::metadata(module).map_err(|e| Error::io(module, e))?;
        if meta.len() > MAX_WASM_MODULE_SIZE {
            return Err(Error::SizeLimit {
                what: format!("WASM module {}", module.display()),
                limit: MAX_WASM_MODULE_SIZE,
            });
        }
        for p in &wasi.preopens {
            if !p.host.is_dir() {
                return Err(Error::InvalidBundle(format!(
                    "preopen {} is not a directory",
                    p.host.display()
                )));
            }
        }
        let engine = self.engine.clone();
        let cache = Arc::clone(&self.cache);
        let path = module.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if bytes.len() as u64 > MAX_WASM_MODULE_SIZE {
                return Err(Error::SizeLimit {
                    what: "WASM module".into(),
                    limit: MAX_WASM_MODULE_SIZE,
                });
            }
            // Keyed by content, not path: a file replaced in place is compiled again.
            let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if let Some(m) = lock(&cache).get(&key) {
                return Ok(m);
            }
            let m = Module::from_binary(&engine, &bytes)
                .map_err(|e| Error::Wasm(format!("compile: {e}")))?;
            let mut c = lock(&cache);
            c.compilations += 1;
            c.insert(key, m.clone(), bytes.len() as u64);
            Ok(m)
        })
        .await
        .map_err(|e| Error::Wasm(format!("compile task: {e}")))??;
        let next = transition(None, LifecycleOp::Create)?;
        let c = Arc::new(Container {
            bundle_path: module.clone(),
            module: compiled,
            wasi: wasi.clone(),
            status: Mutex::new(Run {
                status: next,
                ..Run::default()
            }),
            killed: Arc::new(AtomicI32::new(0)),
            stdout: MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT),
            stderr: MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT),
        });
        let mut map = lock(&self.containers);
        if map.contains_key(id) {
            return Err(Error::ContainerExists(id.to_string()));
        }
        map.insert(id.to_string(), c);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        {
            let mut run = lock(&c.status);
            run.status = transition(run.status, LifecycleOp::Start)?;
        }
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name(format!("wasm-{id}"))
            .spawn(move || {
                let (result, denied) = WasmtimeRuntime::run(&engine, &c);
                let exit = classify_exit(&result, c.killed.load(Ordering::SeqCst));
                let mut run = lock(&c.status);
                run.status = Some(ContainerStatus::Stopped);
                run.exit_code = Some(exit.code);
                run.error = exit.error;
                run.memory_denied = denied;
            })
            .map_err(|e| Error::Wasm(format!("spawn: {e}")))?;
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        let c = self.get(id)?;
        let run = lock(&c.status).clone();
        let status = run
            .status
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        let mut st = ContainerState::new(id, status, None, c.bundle_path.clone());
        let mut ann = BTreeMap::new();
        if let Some(code) = run.exit_code {
            ann.insert("magikrun.exit_code".to_string(), code.to_string());
        }
        if let Some(e) = run.error {
            ann.insert("magikrun.error".to_string(), e);
        }
        if run.memory_denied {
            ann.insert("magikrun.memory_limit_hit".to_string(), "true".to_string());
        }
        st.annotations = ann;
        Ok(st)
    }

    async fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let c = self.get(id)?;
        let mut run = lock(&c.status);
        transition(run.status, LifecycleOp::Kill)?;
        match run.status {
            Some(ContainerStatus::Created) => {
                // Never ran: it stops right away.
                run.status = transition(run.status, LifecycleOp::Exited)?;
                run.exit_code = Some(128 + signal.number());
                run.error = Some(format!("killed by signal {} before start", signal.number()));
            }
            _ => {
                c.killed.store(signal.number(), Ordering::SeqCst);
                self.engine.increment_epoch();
            }
        }
        Ok(())
    }

    async fn captured_output(&self, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.output(id).map(Some)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        {
            let run = lock(&c.status);
            transition(run.status, LifecycleOp::Delete)?;
        }
        lock(&self.containers).remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(engine: &Engine) -> Module {
        Module::new(engine, wat::parse_str("(module)").unwrap()).unwrap()
    }

    #[test]
    fn module_cache_evicts_oldest_by_count_and_bytes() {
        let engine = Engine::default();
        let mut c = ModuleCache::default();
        for i in 0..MODULE_CACHE_ENTRIES + 3 {
            c.insert(format!("k{i}"), module(&engine), 10);
        }
        assert_eq!(c.modules.len(), MODULE_CACHE_ENTRIES);
        assert!(c.get("k0").is_none() && c.get("k2").is_none());
        assert!(c.get("k3").is_some());
        assert_eq!(c.bytes, 10 * MODULE_CACHE_ENTRIES as u64);

        let mut c = ModuleCache::default();
        c.insert("a".into(), module(&engine), MODULE_CACHE_BYTES / 2);
        c.insert("b".into(), module(&engine), MODULE_CACHE_BYTES / 2);
        c.insert("c".into(), module(&engine), 1);
        assert!(
            c.get("a").is_none(),
            "oldest evicted to stay within the byte bound"
        );
        assert!(c.get("b").is_some() && c.get("c").is_some());
        assert!(c.bytes <= MODULE_CACHE_BYTES);
        // Larger than the whole cache: not kept. A duplicate key is not counted twice.
        c.insert("huge".into(), module(&engine), MODULE_CACHE_BYTES + 1);
        assert!(c.get("huge").is_none());
        let before = c.bytes;
        c.insert("c".into(), module(&engine), 1);
        assert_eq!(c.bytes, before);
        assert_eq!(c.order.len(), c.modules.len());
    }
}

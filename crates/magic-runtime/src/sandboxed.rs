//! Process mode: zygotes per deployed version (one, more under load), a pool of pre-forked
//! spare children sized to the load, and the start-up decision whether process mode can run
//! on this host.
//!
//! Owns: the per-version pools (zygotes + spares), restarting a dead zygote, adding and
//! retiring extra zygotes, never handing out a spare whose zygote or process died, and the refusal
//! to start when an isolation layer is missing. Must never: hand a child to a second
//! execution, kill a zygote because an execution ended, or fall back to weaker isolation
//! without `MAGIC_ALLOW_DEGRADED_ISOLATION=1` and a loud warning.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use magic_contract::{Capability, ErrorCode};
use magic_sandbox::{Child, Confined, Limits, Sandbox, SandboxConfig, Zygote, ZygoteSpec};

use crate::config::{ExecutionMode, ServeConfig};
use crate::error::ApiError;
use crate::registry::DeployedVersion;

pub use magic_sandbox::{missing_required, Layer};

/// This host's isolation layers (for `magic doctor`).
pub fn isolation_layers() -> Vec<Layer> {
    magic_sandbox::probe()
}

/// Processes and threads one execution may have at once (fork bombs stop here).
pub const PIDS_PER_EXECUTION: u64 = 64;
/// Fewest spare children kept ready per version (while it has a zygote).
pub const MIN_SPARES: usize = 2;
/// Most spare children kept ready per version (each costs about 1 MiB of private memory).
pub const MAX_SPARES: usize = 16;
/// Most zygotes per version (each forks serially; more use more cores under load).
pub const MAX_ZYGOTES: usize = 4;
/// An extra zygote is retired after this long without a request that found no spare.
pub const ZYGOTE_IDLE: Duration = Duration::from_secs(30);
/// The observed peak of concurrent executions decays to the current value this often.
pub const PEAK_WINDOW: Duration = Duration::from_secs(10);

/// How many spares to keep ready: the recent peak of concurrent executions (rate × latency,
/// Little's law) plus one, at least [`MIN_SPARES`], at most [`MAX_SPARES`], and never more
/// than `max_concurrent`.
pub fn spare_target(peak_in_flight: usize, max_concurrent: usize) -> usize {
    let ceiling = MAX_SPARES.min(max_concurrent.max(1));
    (peak_in_flight + 1).clamp(MIN_SPARES.min(ceiling), ceiling)
}

/// Whether a version gets another zygote: a request found no spare ready (its zygotes could
/// not fork fast enough) and it has fewer than `max_zygotes` (one per core, at most
/// [`MAX_ZYGOTES`]).
pub fn wants_another_zygote(missed: bool, zygotes: usize, max_zygotes: usize) -> bool {
    missed && zygotes < max_zygotes
}

/// Whether an extra zygote (never the first) is retired: no request missed a spare for
/// [`ZYGOTE_IDLE`].
pub fn retire_extra_zygote(zygotes: usize, since_last_miss: Duration) -> bool {
    zygotes > 1 && since_last_miss >= ZYGOTE_IDLE
}

/// How `magic serve` will isolate executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Refuse to start, with this message.
    Refuse(String),
    /// Run inline (not isolated), with a loud warning when `warn` is set.
    Inline {
        /// Why inline was chosen despite process mode being requested.
        warn: Option<String>,
    },
    /// Run sandboxed; `without_cgroups` = rlimits only (loud warning).
    Process {
        /// Degraded: no usable cgroups.
        without_cgroups: bool,
    },
}

/// Pure decision from the requested mode, the probed layers and the override.
pub fn decide(mode: ExecutionMode, layers: &[Layer], allow_degraded: bool) -> Decision {
    if mode == ExecutionMode::Inline {
        return Decision::Inline { warn: None };
    }
    let Some(missing) = missing_required(layers) else {
        return Decision::Process {
            without_cgroups: false,
        };
    };
    if !allow_degraded {
        return Decision::Refuse(format!(
            "process mode needs isolation layers this host lacks: {missing}. Run as root on \
             Linux with namespaces, seccomp and cgroups (see `magic doctor`), or set \
             MAGIC_ALLOW_DEGRADED_ISOLATION=1 to run with weaker isolation"
        ));
    }
    let cgroups_only = layers
        .iter()
        .filter(|l| l.required && !l.active)
        .all(|l| l.name == "cgroups");
    if cgroups_only {
        Decision::Process {
            without_cgroups: true,
        }
    } else {
        Decision::Inline {
            warn: Some(missing),
        }
    }
}

/// Decide how `magic serve` isolates executions on this host and start the sandbox.
/// `Ok(None)` = inline mode. Refuses process mode when a required layer is missing, unless
/// degraded isolation is explicitly allowed (then: rlimits without cgroups, or inline without
/// namespaces), always with a loud warning.
pub fn start_sandbox(
    config: &ServeConfig,
    python: &Path,
    sdk_dir: &Path,
    runtime_dir: &Path,
) -> Result<Option<Arc<Sandbox>>, String> {
    let layers = magic_sandbox::probe();
    let without_cgroups = match decide(
        config.execution_mode,
        &layers,
        config.allow_degraded_isolation,
    ) {
        Decision::Refuse(msg) => return Err(msg),
        Decision::Inline { warn } => {
            match warn {
                None => tracing::warn!(
                    event = "isolation_degraded",
                    "CONTROLLER_EXECUTION_MODE=inline: executions are NOT isolated (development only)"
                ),
                Some(missing) => tracing::error!(
                    event = "isolation_degraded",
                    missing = %missing,
                    "MAGIC_ALLOW_DEGRADED_ISOLATION=1: process mode is impossible here; \
                     executions run INLINE, NOT ISOLATED"
                ),
            }
            return Ok(None);
        }
        Decision::Process { without_cgroups } => without_cgroups,
    };
    if without_cgroups {
        tracing::error!(
            event = "isolation_degraded",
            "MAGIC_ALLOW_DEGRADED_ISOLATION=1: no usable cgroups; executions are limited by \
             rlimits only (memory via RLIMIT_AS, processes via RLIMIT_NPROC)"
        );
    }
    let id_base = magic_sandbox::configured_id_base()?;
    let sb = Sandbox::new(SandboxConfig {
        python: python.to_path_buf(),
        sdk_dir: sdk_dir.to_path_buf(),
        work_dir: runtime_dir.to_path_buf(),
        allow_without_cgroups: without_cgroups,
        id_base,
    })
    .map_err(|e| format!("process mode cannot start: {e}"))?;
    tracing::info!(event = "sandbox_ready", cgroups = ?sb.cgroup_layout(), host_id_base = sb.id_bases().0,
        "process mode: executions are sandboxed");
    Ok(Some(sb))
}

/// The `fs:temp` size a version declares.
pub fn temp_size(version: &DeployedVersion) -> Option<u64> {
    version.contract.capabilities.iter().find_map(|c| match c {
        Capability::FsTemp { size } => Some(*size),
        _ => None,
    })
}

fn spec(version: &DeployedVersion) -> ZygoteSpec {
    let r = &version.contract.resources;
    ZygoteSpec {
        package_dir: version.package_dir.clone(),
        temp_size: temp_size(version),
        limits: Limits {
            memory: r.memory,
            cpu: r.cpu,
            pids: PIDS_PER_EXECUTION,
        },
    }
}

async fn start_zygote(
    sb: &Arc<Sandbox>,
    v: &DeployedVersion,
) -> Result<Arc<Zygote>, magic_sandbox::SandboxError> {
    Zygote::start(sb, spec(v)).await
}

/// A ready child and the zygote it was forked from.
struct Spare {
    child: Child,
    zygote: Arc<Zygote>,
}

/// A version's zygotes and their ready children.
struct Pool {
    /// The first zygote is the version's own (restarted when it dies); the others are extra
    /// zygotes started under load and retired when idle.
    zygotes: tokio::sync::Mutex<Vec<Arc<Zygote>>>,
    spares: Mutex<Vec<Spare>>,
    filling: AtomicBool,
    growing: AtomicBool,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    next: AtomicUsize,
    /// When a request last found no spare, and when `peak` was last reset.
    clock: Mutex<(Instant, Instant)>,
}

impl Default for Pool {
    fn default() -> Self {
        let now = Instant::now();
        Pool {
            zygotes: tokio::sync::Mutex::new(Vec::new()),
            spares: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            growing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            clock: Mutex::new((now, now)),
        }
    }
}

impl Pool {
    /// Take a spare whose zygote and process are still alive; dead ones are released.
    fn take_spare(&self, sb: &Arc<Sandbox>) -> Option<Child> {
        loop {
            let spare = self.spares.lock().ok()?.pop()?;
            if spare.zygote.is_alive() && !spare.child.is_gone() {
                return Some(spare.child);
            }
            release_unused(sb, spare.child);
        }
    }

    fn spare_count(&self) -> usize {
        self.spares.lock().map(|s| s.len()).unwrap_or(usize::MAX)
    }

    /// The spare target now, from the recent peak of concurrent executions (reset to the
    /// current count every [`PEAK_WINDOW`]).
    fn target(&self, max_concurrent: usize) -> usize {
        if let Ok(mut clock) = self.clock.lock() {
            if clock.1.elapsed() >= PEAK_WINDOW {
                clock.1 = Instant::now();
                self.peak
                    .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
            }
        }
        spare_target(self.peak.load(Ordering::SeqCst), max_concurrent)
    }

    fn since_last_miss(&self) -> Duration {
        self.clock
            .lock()
            .map(|c| c.0.elapsed())
            .unwrap_or(Duration::ZERO)
    }
}

/// Kill a child that never served an execution and pool its cgroup slot (off the async
/// threads).
fn release_unused(sb: &Arc<Sandbox>, child: Child) {
    let (_, confined) = child.split();
    confined.kill();
    let sb = sb.clone();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn_blocking(move || sb.release(confined));
    } else {
        sb.release(confined);
    }
}

/// One version's zygote as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteInfo {
    /// Controller.
    pub controller: String,
    /// Version.
    pub version: String,
    /// The zygote's pid when it is alive.
    pub pid: Option<i32>,
    /// Pre-forked children ready.
    pub spares: usize,
    /// Resident memory of the zygote (`VmRSS`), when readable.
    pub rss_bytes: Option<u64>,
}

/// `VmRSS` of `pid` in bytes.
fn rss_bytes(pid: i32) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb = kb.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// Process mode state of the executor.
pub struct ProcessMode {
    sandbox: Arc<Sandbox>,
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
    max_concurrent: usize,
    max_zygotes: usize,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, event = "sandbox_unavailable");
    ApiError::new(
        ErrorCode::SandboxUnavailable,
        format!("the sandbox is unavailable: {e}"),
    )
}

impl ProcessMode {
    /// Process mode over `sandbox`; the spares per version follow the load and never exceed
    /// `max_concurrent`.
    pub fn new(sandbox: Arc<Sandbox>, max_concurrent: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ProcessMode {
            sandbox,
            pools: Mutex::new(HashMap::new()),
            max_concurrent: max_concurrent.max(1),
            max_zygotes: cores.clamp(1, MAX_ZYGOTES),
        }
    }

    fn pool(&self, v: &DeployedVersion) -> Arc<Pool> {
        let key = (v.name.clone(), v.version_text.clone());
        match self.pools.lock() {
            Ok(mut pools) => pools.entry(key).or_default().clone(),
            Err(_) => Arc::new(Pool::default()),
        }
    }

    /// Start `v`'s zygote and fill its spares now.
    pub async fn prepare(&self, v: &Arc<DeployedVersion>) -> Result<(), ApiError> {
        if !v.package_dir.join("controller.py").is_file() {
            return Ok(()); // not a Python controller: no zygote
        }
        let pool = self.pool(v);
        zygote(&self.sandbox, &pool, v).await?;
        fill(self.sandbox.clone(), self.max_concurrent, pool, v.clone()).await;
        Ok(())
    }

    /// A fresh child for one execution of `v`: a pre-forked spare when one is ready, else one
    /// forked now (and, under such load, the version gets another zygote, up to one per core).
    pub async fn child(&self, v: &Arc<DeployedVersion>) -> Result<Child, ApiError> {
        let pool = self.pool(v);
        let now = pool.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        pool.peak.fetch_max(now, Ordering::SeqCst);
        let child = match pool.take_spare(&self.sandbox) {
            Some(c) => Ok(c),
            None => {
                if let Ok(mut clock) = pool.clock.lock() {
                    clock.0 = Instant::now();
                }
                self.grow(&pool, v);
                fork(&self.sandbox, &pool, v).await
            }
        };
        if child.is_err() {
            let _ = pool
                .in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        // Refill now only when no spare is left; otherwise after this execution ends (in
        // `release`), so that forking does not compete with it for the CPU.
        if pool.spare_count() == 0 {
            self.refill(pool, v.clone());
        }
        child
    }

    /// Start one more zygote for `v` in the background when the load calls for it.
    fn grow(&self, pool: &Arc<Pool>, v: &Arc<DeployedVersion>) {
        // Only while every zygote is alive (a dead first zygote is being restarted instead).
        let count = pool
            .zygotes
            .try_lock()
            .ok()
            .filter(|z| z.iter().all(|z| z.is_alive()))
            .map_or(usize::MAX, |z| z.len());
        if count == 0
            || !wants_another_zygote(true, count, self.max_zygotes)
            || pool.growing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (sb, pool, v) = (self.sandbox.clone(), pool.clone(), v.clone());
        tokio::spawn(async move {
            match start_zygote(&sb, &v).await {
                Ok(z) => {
                    tracing::info!(controller = %v.name, version = %v.version, event = "zygote_added",
                        ready_ms = z.ready_in.as_secs_f64() * 1000.0, pid = z.pid(), "another zygote for this version (load)");
                    pool.zygotes.lock().await.push(z);
                }
                Err(e) => {
                    tracing::warn!(controller = %v.name, version = %v.version, error = %e, "extra zygote failed to start");
                }
            }
            pool.growing.store(false, Ordering::SeqCst);
        });
    }

    fn refill(&self, pool: Arc<Pool>, v: Arc<DeployedVersion>) {
        if !pool.filling.swap(true, Ordering::SeqCst) {
            let (sb, n) = (self.sandbox.clone(), self.max_concurrent);
            tokio::spawn(async move {
                retire_idle(&sb, &pool, &v).await;
                fill(sb, n, pool.clone(), v).await;
                pool.filling.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Every version's zygote on this node with its resident memory (the console's health
    /// page). Never waits: a zygote being (re)started right now is reported as not alive.
    pub fn zygotes(&self) -> Vec<ZygoteInfo> {
        let pools: Vec<((String, String), Arc<Pool>)> = match self.pools.lock() {
            Ok(p) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return vec![],
        };
        let mut out: Vec<ZygoteInfo> = pools
            .into_iter()
            .map(|((controller, version), pool)| {
                let pid = pool
                    .zygotes
                    .try_lock()
                    .ok()
                    .and_then(|g| g.first().filter(|z| z.is_alive()).map(|z| z.pid()));
                ZygoteInfo {
                    controller,
                    version,
                    pid,
                    spares: pool.spares.lock().map(|s| s.len()).unwrap_or(0),
                    rss_bytes: pid.and_then(rss_bytes),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.controller, &a.version).cmp(&(&b.controller, &b.version)));
        out
    }

    /// Shutdown: terminate every zygote (its PID namespace, so every child, ends with it), drop
    /// the spare children and remove the sandbox's cgroups.
    pub async fn shutdown(&self) {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .map(|mut p| p.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        let mut zygotes = 0;
        for pool in pools {
            if let Ok(mut spares) = pool.spares.lock() {
                for s in spares.drain(..) {
                    let (_, confined) = s.child.split();
                    confined.kill();
                }
            }
            for z in pool.zygotes.lock().await.drain(..) {
                z.terminate();
                zygotes += 1;
            }
        }
        let sb = self.sandbox.clone();
        let left = tokio::task::spawn_blocking(move || sb.remove_cgroups())
            .await
            .unwrap_or_default();
        if left.is_empty() {
            tracing::info!(
                event = "sandbox_stopped",
                zygotes,
                "zygotes stopped, cgroups removed"
            );
        } else {
            tracing::error!(event = "sandbox_stopped", zygotes, left = ?left, "cgroups left behind");
        }
    }

    /// Kill what is left of an execution's child and pool its cgroup slot (off the request
    /// path), then top up `v`'s spares.
    pub fn release(&self, c: Confined, v: &Arc<DeployedVersion>) {
        let sb = self.sandbox.clone();
        tokio::task::spawn_blocking(move || sb.release(c));
        let pool = self.pool(v);
        let _ = pool
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.refill(pool, v.clone());
    }
}

/// The version's first zygote: started, or restarted when it died. Dead extra zygotes are
/// dropped (their spares are found dead when taken).
async fn zygote(
    sb: &Arc<Sandbox>,
    pool: &Pool,
    v: &DeployedVersion,
) -> Result<Arc<Zygote>, ApiError> {
    let mut guard = pool.zygotes.lock().await;
    if guard.len() > 1 {
        let first = guard.remove(0);
        guard.retain(|z| z.is_alive());
        guard.insert(0, first);
    }
    if let Some(z) = guard.first() {
        if z.is_alive() {
            return Ok(z.clone());
        }
        tracing::warn!(controller = %v.name, version = %v.version, event = "zygote_restart", "zygote died; starting a new one");
        guard.remove(0);
        // Its spares died with it (PID namespace): release their slots now.
        let dead: Vec<Spare> = match pool.spares.lock() {
            Ok(mut spares) => {
                let (dead, live): (Vec<Spare>, Vec<Spare>) =
                    spares.drain(..).partition(|s| !s.zygote.is_alive());
                *spares = live;
                dead
            }
            Err(_) => Vec::new(),
        };
        for s in dead {
            release_unused(sb, s.child);
        }
    }
    let z = match start_zygote(sb, v).await {
        Ok(z) => z,
        Err(e) => {
            tracing::warn!(controller = %v.name, version = %v.version, error = %e, "zygote start failed; retrying once");
            start_zygote(sb, v).await.map_err(unavailable)?
        }
    };
    tracing::info!(controller = %v.name, version = %v.version, event = "zygote_ready",
        ready_ms = z.ready_in.as_secs_f64() * 1000.0, pid = z.pid());
    guard.insert(0, z.clone());
    Ok(z)
}

/// A live zygote of the version, taking turns between them (the first is (re)started when
/// needed).
async fn pick(
    sb: &Arc<Sandbox>,
    pool: &Pool,
    v: &DeployedVersion,
) -> Result<Arc<Zygote>, ApiError> {
    let first = zygote(sb, pool, v).await?;
    let guard = pool.zygotes.lock().await;
    let n = pool.next.fetch_add(1, Ordering::Relaxed);
    let alive: Vec<&Arc<Zygote>> = guard.iter().filter(|z| z.is_alive()).collect();
    Ok(alive
        .get(n % alive.len().max(1))
        .map(|z| (*z).clone())
        .unwrap_or(first))
}

async fn fork(sb: &Arc<Sandbox>, pool: &Pool, v: &DeployedVersion) -> Result<Child, ApiError> {
    Ok(fork_spare(sb, pool, v).await?.child)
}

async fn fork_spare(
    sb: &Arc<Sandbox>,
    pool: &Pool,
    v: &DeployedVersion,
) -> Result<Spare, ApiError> {
    for _attempt in 0..2 {
        let z = pick(sb, pool, v).await?;
        match z.fork_child(sb).await {
            Ok(child) => return Ok(Spare { child, zygote: z }),
            Err(magic_sandbox::SandboxError::ZygoteGone(e)) => {
                tracing::warn!(controller = %v.name, error = %e, "zygote gone while forking");
                z.terminate();
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(unavailable("the zygote keeps dying"))
}

/// Retire extra zygotes after [`ZYGOTE_IDLE`] without a missed spare (their spares die with
/// them and are released).
async fn retire_idle(sb: &Arc<Sandbox>, pool: &Pool, v: &DeployedVersion) {
    let retired = {
        let mut guard = pool.zygotes.lock().await;
        if !retire_extra_zygote(guard.len(), pool.since_last_miss()) {
            return;
        }
        guard.pop()
    };
    let Some(z) = retired else { return };
    let unused: Vec<Spare> = match pool.spares.lock() {
        Ok(mut spares) => {
            let (theirs, ours): (Vec<Spare>, Vec<Spare>) =
                spares.drain(..).partition(|s| Arc::ptr_eq(&s.zygote, &z));
            *spares = ours;
            theirs
        }
        Err(_) => Vec::new(),
    };
    for s in unused {
        release_unused(sb, s.child);
    }
    z.terminate();
    tracing::info!(controller = %v.name, version = %v.version, event = "zygote_retired", pid = z.pid(), "extra zygote retired (idle)");
}

async fn fill(sb: Arc<Sandbox>, max_concurrent: usize, pool: Arc<Pool>, v: Arc<DeployedVersion>) {
    loop {
        let need = pool
            .target(max_concurrent)
            .saturating_sub(pool.spare_count());
        if need == 0 {
            return;
        }
        // Several children at once, taking turns between the zygotes: moving a process into a
        // cgroup waits for an RCU grace period (milliseconds on v1), and concurrent moves
        // share it.
        let forks = (0..need).map(|_| fork_spare(&sb, &pool, &v));
        let mut failed = false;
        for r in futures::future::join_all(forks).await {
            match r {
                // A spare whose zygote died meanwhile is not kept (it died with it).
                Ok(s) if s.zygote.is_alive() => {
                    if let Ok(mut spares) = pool.spares.lock() {
                        spares.push(s);
                    }
                }
                Ok(s) => release_unused(&sb, s.child),
                Err(_) => failed = true,
            }
        }
        if failed {
            return;
        }
    }
}

/// Whether a child that hung up was OOM-killed (the counter can trail the hang-up briefly).
pub async fn wait_oom(c: &Confined) -> bool {
    for _ in 0..5 {
        if c.oom_killed() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  30000 kB\nVmRSS:\t   21608 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(21608 * 1024));
        for bad in ["", "VmRSS:\tlots\n", "VmRSS:\t12 MB\n", "Name: x\n"] {
            assert_eq!(parse_vm_rss(bad), None, "{bad:?}");
        }
        // This process has one.
        assert!(rss_bytes(std::process::id() as i32).is_some_and(|b| b > 0));
    }

    fn layer(name: &'static str, active: bool) -> Layer {
        Layer {
            name,
            active,
            required: true,
            detail: String::new(),
        }
    }

    #[test]
    fn spares_follow_the_load_within_bounds() {
        // (peak in flight, CONTROLLER_MAX_CONCURRENT) → spares
        let cases = [
            (0, 64, MIN_SPARES),
            (1, 64, MIN_SPARES),
            (2, 64, 3),
            (4, 64, 5),
            (100, 64, MAX_SPARES),
            (4, 3, 3),
            (0, 1, 1),
            (0, 0, 1),
        ];
        for (peak, max, want) in cases {
            assert_eq!(spare_target(peak, max), want, "peak {peak}, max {max}");
        }
    }

    #[test]
    fn zygotes_scale_with_misses_and_retire_when_idle() {
        assert!(wants_another_zygote(true, 1, 2));
        assert!(!wants_another_zygote(false, 1, 2));
        assert!(!wants_another_zygote(true, 2, 2));
        assert!(
            !retire_extra_zygote(1, ZYGOTE_IDLE * 10),
            "the first zygote stays"
        );
        assert!(!retire_extra_zygote(2, ZYGOTE_IDLE / 2));
        assert!(retire_extra_zygote(2, ZYGOTE_IDLE));
    }

    #[test]
    fn start_up_decisions() {
        let all = vec![
            layer("namespaces", true),
            layer("seccomp", true),
            layer("cgroups", true),
        ];
        let no_cg = vec![
            layer("namespaces", true),
            layer("seccomp", true),
            layer("cgroups", false),
        ];
        let no_ns = vec![
            layer("namespaces", false),
            layer("seccomp", true),
            layer("cgroups", true),
        ];
        let p = ExecutionMode::Process;
        assert_eq!(
            decide(p, &all, false),
            Decision::Process {
                without_cgroups: false
            }
        );
        assert!(matches!(decide(p, &no_cg, false), Decision::Refuse(m) if m.contains("cgroups")));
        assert_eq!(
            decide(p, &no_cg, true),
            Decision::Process {
                without_cgroups: true
            }
        );
        assert!(
            matches!(decide(p, &no_ns, false), Decision::Refuse(m) if m.contains("namespaces"))
        );
        assert!(
            matches!(decide(p, &no_ns, true), Decision::Inline { warn: Some(m) } if m.contains("namespaces"))
        );
        assert_eq!(
            decide(ExecutionMode::Inline, &no_ns, false),
            Decision::Inline { warn: None }
        );
    }
}

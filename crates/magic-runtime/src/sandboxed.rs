//! Process mode: one zygote per deployed version, a pre-forked spare child per version, and
//! the start-up decision whether process mode can run on this host.
//!
//! Owns: the per-version pools (zygote + spares), restarting a dead zygote, and the refusal
//! to start when an isolation layer is missing. Must never: hand a child to a second
//! execution, kill a zygote because an execution ended, or fall back to weaker isolation
//! without `MAGIC_ALLOW_DEGRADED_ISOLATION=1` and a loud warning.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// Spare children kept ready per version.
pub const SPARES: usize = 4;

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
    let sb = Sandbox::new(SandboxConfig {
        python: python.to_path_buf(),
        sdk_dir: sdk_dir.to_path_buf(),
        work_dir: runtime_dir.to_path_buf(),
        allow_without_cgroups: without_cgroups,
    })
    .map_err(|e| format!("process mode cannot start: {e}"))?;
    tracing::info!(event = "sandbox_ready", cgroups = ?sb.cgroup_layout(), "process mode: executions are sandboxed");
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

/// A version's zygote and its ready children.
#[derive(Default)]
struct Pool {
    zygote: tokio::sync::Mutex<Option<Arc<Zygote>>>,
    spares: Mutex<Vec<Child>>,
    filling: AtomicBool,
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
    spares: usize,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, event = "sandbox_unavailable");
    ApiError::new(
        ErrorCode::SandboxUnavailable,
        format!("the sandbox is unavailable: {e}"),
    )
}

impl ProcessMode {
    /// Process mode over `sandbox`; at most `max_concurrent` spare children per version.
    pub fn new(sandbox: Arc<Sandbox>, max_concurrent: usize) -> Self {
        ProcessMode {
            sandbox,
            pools: Mutex::new(HashMap::new()),
            spares: SPARES.min(max_concurrent.max(1)),
        }
    }

    fn pool(&self, v: &DeployedVersion) -> Arc<Pool> {
        let key = (v.name.clone(), v.version.to_string());
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
        fill(self.sandbox.clone(), self.spares, pool, v.clone()).await;
        Ok(())
    }

    /// A fresh child for one execution of `v`: a pre-forked spare when one is ready (the next
    /// one is forked in the background), else one forked now.
    pub async fn child(&self, v: &Arc<DeployedVersion>) -> Result<Child, ApiError> {
        let pool = self.pool(v);
        let zygote_alive = match pool.zygote.try_lock() {
            Ok(g) => g.as_ref().is_some_and(|z| z.is_alive()),
            Err(_) => true,
        };
        let (spare, left) = if zygote_alive {
            pool.spares
                .lock()
                .map(|mut s| (s.pop(), s.len()))
                .unwrap_or((None, 0))
        } else {
            (None, 0)
        };
        let child = match spare {
            Some(c) => c,
            None => fork(&self.sandbox, &pool, v).await?,
        };
        // Refill now only when no spare is left; otherwise after this execution ends (in
        // `release`), so that forking does not compete with it for the CPU.
        if left == 0 {
            self.refill(pool, v.clone());
        }
        Ok(child)
    }

    fn refill(&self, pool: Arc<Pool>, v: Arc<DeployedVersion>) {
        if !pool.filling.swap(true, Ordering::SeqCst) {
            let (sb, n) = (self.sandbox.clone(), self.spares);
            tokio::spawn(async move {
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
                    .zygote
                    .try_lock()
                    .ok()
                    .and_then(|g| g.as_ref().filter(|z| z.is_alive()).map(|z| z.pid()));
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
                for c in spares.drain(..) {
                    let (_, confined) = c.split();
                    confined.kill();
                }
            }
            if let Some(z) = pool.zygote.lock().await.take() {
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
        self.refill(self.pool(v), v.clone());
    }
}

async fn zygote(
    sb: &Arc<Sandbox>,
    pool: &Pool,
    v: &DeployedVersion,
) -> Result<Arc<Zygote>, ApiError> {
    let mut guard = pool.zygote.lock().await;
    if let Some(z) = guard.as_ref() {
        if z.is_alive() {
            return Ok(z.clone());
        }
        tracing::warn!(controller = %v.name, version = %v.version, event = "zygote_restart", "zygote died; starting a new one");
        if let Ok(mut spares) = pool.spares.lock() {
            spares.clear();
        }
    }
    let z = match Zygote::start(sb, spec(v)).await {
        Ok(z) => z,
        Err(e) => {
            // One more try: a start can fail while the host is briefly overloaded.
            tracing::warn!(controller = %v.name, version = %v.version, error = %e, "zygote start failed; retrying once");
            Zygote::start(sb, spec(v)).await.map_err(unavailable)?
        }
    };
    tracing::info!(controller = %v.name, version = %v.version, event = "zygote_ready",
        ready_ms = z.ready_in.as_secs_f64() * 1000.0, pid = z.pid());
    *guard = Some(z.clone());
    Ok(z)
}

async fn fork(sb: &Arc<Sandbox>, pool: &Pool, v: &DeployedVersion) -> Result<Child, ApiError> {
    for _attempt in 0..2 {
        let z = zygote(sb, pool, v).await?;
        match z.fork_child(sb).await {
            Ok(c) => return Ok(c),
            Err(magic_sandbox::SandboxError::ZygoteGone(e)) => {
                tracing::warn!(controller = %v.name, error = %e, "zygote gone while forking");
                z.terminate();
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(unavailable("the zygote keeps dying"))
}

async fn fill(sb: Arc<Sandbox>, want: usize, pool: Arc<Pool>, v: Arc<DeployedVersion>) {
    loop {
        let have = pool.spares.lock().map(|s| s.len()).unwrap_or(usize::MAX);
        let need = want.saturating_sub(have);
        if need == 0 {
            return;
        }
        // Several children at once: moving a process into a cgroup waits for an RCU grace
        // period (milliseconds on v1), and concurrent moves share it.
        let forks = (0..need).map(|_| fork(&sb, &pool, &v));
        let mut failed = false;
        for r in futures::future::join_all(forks).await {
            match r {
                Ok(c) => {
                    if let Ok(mut s) = pool.spares.lock() {
                        s.push(c);
                    }
                }
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

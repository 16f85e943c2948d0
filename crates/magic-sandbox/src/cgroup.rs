//! Per-execution cgroups: detection of a usable v2 or v1 hierarchy, a pool of pre-created
//! slot cgroups, limits, placement, OOM detection and killing everything in a slot.
//!
//! Owns: the `magic-<pid>` subtree it creates under each controller hierarchy. Must never:
//! touch a cgroup outside that subtree, kill a process that is not in one of its slots, or hand
//! a slot back to the pool while something still runs in it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::SandboxError;

/// Where the cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout is used for execution limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// A v2 hierarchy at this path with `memory`, `cpu` and `pids` available.
    V2(PathBuf),
    /// v1 hierarchies for `memory`, `cpu` and `pids`.
    V1 {
        /// The memory controller's mount.
        memory: PathBuf,
        /// The cpu controller's mount.
        cpu: PathBuf,
        /// The pids controller's mount.
        pids: PathBuf,
    },
}

/// Pure decision: given the controllers a v2 root offers (if any) and which v1 controller
/// mounts exist, pick the layout. v2 wins when it has all three controllers.
pub fn choose_layout(
    v2: Option<(&Path, &str)>,
    v1_memory: Option<&Path>,
    v1_cpu: Option<&Path>,
    v1_pids: Option<&Path>,
) -> Option<CgroupLayout> {
    if let Some((root, controllers)) = v2 {
        let have: Vec<&str> = controllers.split_whitespace().collect();
        if ["memory", "cpu", "pids"].iter().all(|c| have.contains(c)) {
            return Some(CgroupLayout::V2(root.to_path_buf()));
        }
    }
    match (v1_memory, v1_cpu, v1_pids) {
        (Some(m), Some(c), Some(p)) => Some(CgroupLayout::V1 {
            memory: m.to_path_buf(),
            cpu: c.to_path_buf(),
            pids: p.to_path_buf(),
        }),
        _ => None,
    }
}

/// Look at this host: pure v2 at `/sys/fs/cgroup`, the `unified` tree of a hybrid host, or v1.
pub fn detect() -> Option<CgroupLayout> {
    let root = Path::new(CGROUP_ROOT);
    let mut v2 = None;
    for candidate in [root.to_path_buf(), root.join("unified")] {
        if let Ok(c) = std::fs::read_to_string(candidate.join("cgroup.controllers")) {
            v2 = Some((candidate, c));
            break;
        }
    }
    let v1 = |name: &str| {
        let p = root.join(name);
        p.join("cgroup.procs").is_file().then_some(p)
    };
    let (m, c, p) = (v1("memory"), v1("cpu"), v1("pids"));
    choose_layout(
        v2.as_ref().map(|(p, c)| (p.as_path(), c.as_str())),
        m.as_deref(),
        c.as_deref(),
        p.as_deref(),
    )
}

/// Limits applied to one slot for one execution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory in bytes (page cache and tmpfs pages count).
    pub memory: u64,
    /// CPU in cores (0.5 = half a core).
    pub cpu: f64,
    /// Processes and threads.
    pub pids: u64,
}

/// The CFS period used for `cpu.max` / `cpu.cfs_period_us`.
pub const CPU_PERIOD_US: u64 = 100_000;

/// `cpu.max` value for `cores`: quota and period in microseconds (at least 1 ms of quota).
pub fn cpu_quota_us(cores: f64) -> u64 {
    let q = (cores * CPU_PERIOD_US as f64).round();
    if q.is_finite() && q >= 1000.0 {
        q as u64
    } else {
        1000
    }
}

/// Parse the `oom_kill N` line of `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Pure: whether children move themselves into their slot (v1 `tasks`, see
/// [`Slot::self_attach_fds`]) rather than being moved by the runtime (v2).
pub fn uses_self_attach(v2: bool) -> bool {
    !v2
}

/// Pure: whether a `cgroup.procs` text lists `pid`.
pub fn procs_list_has(text: &str, pid: i32) -> bool {
    text.lines().any(|l| l.trim().parse::<i32>() == Ok(pid))
}

/// One pooled cgroup (a directory per hierarchy).
#[derive(Debug)]
pub struct Slot {
    dirs: Vec<PathBuf>,
    v2: bool,
    oom_base: u64,
    /// Write-only descriptors of the slot's v1 `tasks` files (see [`Slot::self_attach_fds`]).
    attach: Vec<OwnedFd>,
}

impl Slot {
    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
        std::fs::write(dir.join(file), value)
            .map_err(|e| SandboxError::Cgroup(format!("{}/{file}: {e}", dir.display())))
    }

    /// Set the slot's limits (before a process is placed in it).
    pub fn set_limits(&mut self, l: &Limits) -> Result<(), SandboxError> {
        if self.v2 {
            let d = self.dirs[0].clone();
            self.write(&d, "memory.max", &l.memory.to_string())?;
            let _ = self.write(&d, "memory.swap.max", "0");
            self.write(
                &d,
                "cpu.max",
                &format!("{} {CPU_PERIOD_US}", cpu_quota_us(l.cpu)),
            )?;
            self.write(&d, "pids.max", &l.pids.to_string())?;
        } else {
            let (m, c, p) = (
                self.dirs[0].clone(),
                self.dirs[1].clone(),
                self.dirs[2].clone(),
            );
            self.write(&m, "memory.limit_in_bytes", &l.memory.to_string())?;
            let _ = self.write(&m, "memory.swappiness", "0");
            self.write(&c, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            self.write(&c, "cpu.cfs_quota_us", &cpu_quota_us(l.cpu).to_string())?;
            self.write(&p, "pids.max", &l.pids.to_string())?;
        }
        self.oom_base = self.oom_kills();
        Ok(())
    }

    /// Move `pid` (a host pid) into the slot in every hierarchy.
    pub fn place(&self, pid: i32) -> Result<(), SandboxError> {
        for d in &self.dirs {
            self.write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Descriptors a fresh child uses to move **itself** into the slot before it says hello:
    /// write-only handles of the slot's `tasks` file in each v1 hierarchy (opened once per
    /// slot, by the runtime, so the kernel checks the runtime's credentials). Writing `0` to
    /// `tasks` moves the writing thread alone, which lets the kernel skip
    /// `cgroup_threadgroup_rwsem` and its RCU grace period (5–15 ms for each isolated write of a
    /// pid to `cgroup.procs`; ~0.1 ms this way). Only for a single-threaded process — a child
    /// just forked from the zygote — and the runtime still checks with [`Slot::holds`] before
    /// letting the child go on. Empty on v2 (a thread cannot be moved alone between domain
    /// cgroups there) or when a file cannot be opened: the runtime then moves the child.
    pub fn self_attach_fds(&mut self) -> Vec<RawFd> {
        if !uses_self_attach(self.v2) {
            return Vec::new();
        }
        if self.attach.len() != self.dirs.len() {
            let opened: Result<Vec<OwnedFd>, std::io::Error> = self
                .dirs
                .iter()
                .map(|d| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(d.join("tasks"))
                        .map(OwnedFd::from)
                })
                .collect();
            match opened {
                Ok(fds) => self.attach = fds,
                Err(_) => return Vec::new(),
            }
        }
        self.attach.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Whether `pid` (a host pid) is in the slot in every hierarchy.
    pub fn holds(&self, pid: i32) -> bool {
        self.dirs.iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|t| procs_list_has(&t, pid))
        })
    }

    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory_dir().join(file))
            .map(|t| parse_oom_kills(&t))
            .unwrap_or(0)
    }

    /// Whether the kernel OOM-killed something in this slot since its limits were set.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > self.oom_base
    }

    /// Host pids currently in the slot.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self.dirs.last().unwrap_or(&self.dirs[0]);
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL everything in the slot once, without waiting (safe on an async thread).
    /// Returns how many processes were signalled.
    pub fn signal_all(&self) -> usize {
        if self.v2 && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return 1;
        }
        let pids = self.pids();
        for pid in &pids {
            if *pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        pids.len()
    }

    /// SIGKILL everything in the slot and wait (up to ~1 s) until it is empty. Blocking.
    /// Returns whether it is empty.
    pub fn kill_all(&self) -> bool {
        for _ in 0..2000 {
            if self.pids().is_empty() {
                return true;
            }
            self.signal_all();
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        self.pids().is_empty()
    }
}

/// Pre-created slot cgroups under `magic-<runtime pid>` in each hierarchy.
#[derive(Debug)]
pub struct CgroupPool {
    layout: CgroupLayout,
    bases: Vec<PathBuf>,
    free: Mutex<Vec<Slot>>,
    next: Mutex<usize>,
}

impl CgroupPool {
    /// Create the pool's base directories (and enable controllers on v2) with `prealloc` slots.
    /// Empty pools left behind by runtimes that no longer run are removed first.
    pub fn new(layout: CgroupLayout, prealloc: usize) -> Result<Self, SandboxError> {
        let name = format!("magic-{}", std::process::id());
        let roots: Vec<PathBuf> = match &layout {
            CgroupLayout::V2(root) => vec![root.clone()],
            CgroupLayout::V1 { memory, cpu, pids } => {
                vec![memory.clone(), cpu.clone(), pids.clone()]
            }
        };
        for r in &roots {
            remove_stale_pools(r);
        }
        let bases: Vec<PathBuf> = roots.iter().map(|r| r.join(&name)).collect();
        for b in &bases {
            std::fs::create_dir_all(b)
                .map_err(|e| SandboxError::Cgroup(format!("{}: {e}", b.display())))?;
        }
        if let CgroupLayout::V2(root) = &layout {
            for dir in [root.as_path(), bases[0].as_path()] {
                std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids").map_err(
                    |e| {
                        SandboxError::Cgroup(format!(
                            "enabling controllers in {}: {e}",
                            dir.display()
                        ))
                    },
                )?;
            }
        }
        let pool = CgroupPool {
            layout,
            bases,
            free: Mutex::new(Vec::new()),
            next: Mutex::new(0),
        };
        let mut made = Vec::new();
        for _ in 0..prealloc {
            made.push(pool.create()?);
        }
        if let Ok(mut f) = pool.free.lock() {
            f.extend(made);
        }
        Ok(pool)
    }

    /// The layout in use.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    fn create(&self) -> Result<Slot, SandboxError> {
        let n = {
            let mut next = self
                .next
                .lock()
                .map_err(|_| SandboxError::Cgroup("pool lock poisoned".into()))?;
            *next += 1;
            *next
        };
        let mut dirs = Vec::new();
        for b in &self.bases {
            let d = b.join(format!("s{n}"));
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SandboxError::Cgroup(format!("{}: {e}", d.display()))),
            }
            dirs.push(d);
        }
        Ok(Slot {
            dirs,
            v2: matches!(self.layout, CgroupLayout::V2(_)),
            oom_base: 0,
            attach: Vec::new(),
        })
    }

    /// A free slot (a new one when the pool is empty).
    pub fn take(&self) -> Result<Slot, SandboxError> {
        if let Some(s) = self.free.lock().ok().and_then(|mut f| f.pop()) {
            return Ok(s);
        }
        self.create()
    }

    /// Kill what is left in `slot` and return it to the pool (dropped if it cannot be emptied).
    pub fn give_back(&self, slot: Slot) {
        if slot.kill_all() {
            if let Ok(mut f) = self.free.lock() {
                f.push(slot);
            }
        } else {
            tracing::warn!(slot = ?slot.dirs, "cgroup slot could not be emptied; not reused");
        }
    }
}

impl CgroupPool {
    /// Remove the whole pool at shutdown: every slot (free or still held by a child that was
    /// never released) is emptied (SIGKILL, waiting until it is empty) and removed, then the
    /// pool's base directories. Blocking. Returns the directories that could not be removed.
    pub fn remove_all(&self) -> Vec<PathBuf> {
        if let Ok(mut f) = self.free.lock() {
            f.clear();
        }
        let mut names = std::collections::BTreeSet::new();
        for b in &self.bases {
            if let Ok(entries) = std::fs::read_dir(b) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name());
                    }
                }
            }
        }
        let mut left = Vec::new();
        for name in names {
            let slot = Slot {
                dirs: self.bases.iter().map(|b| b.join(&name)).collect(),
                v2: matches!(self.layout, CgroupLayout::V2(_)),
                oom_base: 0,
                attach: Vec::new(),
            };
            slot.kill_all();
            for d in &slot.dirs {
                if !remove_cgroup_dir(d) {
                    left.push(d.clone());
                }
            }
        }
        for b in &self.bases {
            if !remove_cgroup_dir(b) {
                left.push(b.clone());
            }
        }
        left
    }
}

/// `rmdir` a cgroup, retrying briefly while the kernel still counts a dying process in it.
fn remove_cgroup_dir(dir: &Path) -> bool {
    for _ in 0..200 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    !dir.exists()
}

/// Whether `name` is a pool directory of a runtime whose process is gone.
pub fn is_stale_pool(name: &str, pid_alive: impl Fn(u32) -> bool) -> bool {
    name.strip_prefix("magic-")
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
}

fn remove_stale_pools(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_stale_pool(&name, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        if let Ok(slots) = std::fs::read_dir(e.path()) {
            for s in slots.flatten() {
                if s.path().is_dir() {
                    // rmdir fails (EBUSY) while a process is still inside: then it stays.
                    let _ = std::fs::remove_dir(s.path());
                }
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

impl Drop for CgroupPool {
    fn drop(&mut self) {
        let slots: Vec<Slot> = self
            .free
            .lock()
            .map(|mut f| f.drain(..).collect())
            .unwrap_or_default();
        for s in slots {
            s.kill_all();
            for d in &s.dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
        for b in &self.bases {
            let _ = std::fs::remove_dir(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_needs_all_three_controllers() {
        let p = Path::new("/x");
        assert_eq!(
            choose_layout(Some((p, "cpuset cpu io memory pids")), None, None, None),
            Some(CgroupLayout::V2(p.into()))
        );
        // a hybrid host's unified tree has no controllers: fall back to v1
        let (m, c, q) = (Path::new("/m"), Path::new("/c"), Path::new("/p"));
        assert!(matches!(
            choose_layout(Some((p, "")), Some(m), Some(c), Some(q)),
            Some(CgroupLayout::V1 { .. })
        ));
        assert_eq!(
            choose_layout(Some((p, "memory cpu")), None, None, None),
            None
        );
        assert_eq!(choose_layout(None, Some(m), None, Some(q)), None);
    }

    #[test]
    fn only_pools_of_dead_runtimes_are_stale() {
        let me = std::process::id();
        assert!(is_stale_pool("magic-12345", |_| false));
        assert!(!is_stale_pool("magic-12345", |_| true));
        assert!(!is_stale_pool(&format!("magic-{me}"), |_| false));
        assert!(!is_stale_pool("system.slice", |_| false));
        assert!(!is_stale_pool("magic-x", |_| false));
    }

    #[test]
    fn self_attach_only_on_v1_and_membership_is_exact() {
        assert!(uses_self_attach(false));
        assert!(!uses_self_attach(true));
        let cases = [
            ("12\n345\n", 345, true),
            ("12\n345\n", 34, false),
            ("1345\n", 345, false),
            ("", 1, false),
            ("x\n7\n", 7, true),
        ];
        for (text, pid, want) in cases {
            assert_eq!(procs_list_has(text, pid), want, "{text:?} {pid}");
        }
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.0), 1000);
        assert_eq!(cpu_quota_us(f64::NAN), 1000);
    }

    #[test]
    fn oom_counter() {
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n"),
            2
        );
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n"),
            7
        );
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), 0);
    }
}

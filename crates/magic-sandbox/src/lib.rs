//! Process-mode sandbox for Magic Runtime: every execution in a fresh process forked from a
//! per-version zygote, isolated by namespaces, a read-only root, no_new_privs, dropped
//! capabilities, seccomp and a pooled cgroup.
//!
//! Built directly on the kernel primitives (`clone`, `setns`, `mount`, `pivot_root`, `prctl`,
//! seccomp via libseccomp, cgroupfs) rather than through `magikrun`: a zygote is one long-lived
//! process, not an OCI container lifecycle, and the hot path (fork one child) needs no runtime
//! at all. See `docs/sandbox.md`.
//!
//! Owns: the shared empty network namespace, the cgroup pool, the compiled seccomp filters and
//! the host probe (`magic doctor`). Must never: run controller code with any capability, give a
//! child a second request, or kill a process outside a child's own cgroup slot.
#![allow(unsafe_code)]

pub mod cgroup;
pub mod seccomp;
pub mod zygote;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cgroup::{CgroupLayout, Limits};
pub use zygote::{Child, Confined, Zygote, ZygoteSpec};

/// The uid/gid children run as (`nobody` on Debian).
pub const SANDBOX_ID: u32 = 65534;

/// Why the sandbox cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A required isolation layer is not available on this host.
    #[error("isolation layer missing: {0}")]
    Missing(String),
    /// Building a seccomp filter failed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A cgroup operation failed.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// Preparing or starting a zygote failed.
    #[error("sandbox setup: {0}")]
    Setup(String),
    /// The zygote died; it is restarted on the next request.
    #[error("zygote gone: {0}")]
    ZygoteGone(String),
}

/// One isolation layer and whether this host provides it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Layer {
    /// Short name (`namespaces`, `seccomp`, …).
    pub name: &'static str,
    /// Whether it is available (and will be used).
    pub active: bool,
    /// Whether process mode refuses to start without it.
    pub required: bool,
    /// What was found.
    pub detail: String,
}

fn status_field(name: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        })
}

/// Probe this host's isolation layers without changing anything (for `magic doctor` and for
/// the start-up check).
pub fn probe() -> Vec<Layer> {
    let root = nix::unistd::geteuid().is_root();
    let ns: Vec<&str> = ["mnt", "pid", "ipc", "uts", "net"]
        .into_iter()
        .filter(|n| Path::new("/proc/self/ns").join(n).exists())
        .collect();
    let ns_ok = root && ns.len() == 5;
    let seccomp = status_field("Seccomp:").is_some()
        && Path::new("/proc/sys/kernel/seccomp/actions_avail").exists();
    let nnp = status_field("NoNewPrivs:").is_some();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let cg = cgroup::detect();
    let cg_detail = match &cg {
        Some(CgroupLayout::V2(p)) => format!("v2 at {} (memory, cpu, pids)", p.display()),
        Some(CgroupLayout::V1 { .. }) => {
            let unified = Path::new(cgroup::CGROUP_ROOT).join("unified");
            if unified.join("cgroup.controllers").exists() {
                "v1 memory, cpu, pids (hybrid host: the v2 unified tree has no controllers)".into()
            } else {
                "v1 memory, cpu, pids".into()
            }
        }
        None => {
            "no usable memory+cpu+pids hierarchy: rlimits only (RLIMIT_AS, RLIMIT_NPROC)".into()
        }
    };
    let writable = root && cg.is_some();
    let ids = host_id_bases(configured_id_base().ok().flatten());
    vec![
        Layer {
            name: "namespaces",
            active: ns_ok,
            required: true,
            detail: if ns_ok {
                "mount, PID, IPC, UTS per zygote; one shared empty network namespace".into()
            } else if !root {
                "needs root (CAP_SYS_ADMIN) to create mount/PID/network namespaces".into()
            } else {
                format!("only {ns:?} available")
            },
        },
        Layer {
            name: "read-only root (pivot_root)",
            active: ns_ok,
            required: true,
            detail: "tmpfs root with read-only binds of Python, /usr, the SDK and the package"
                .into(),
        },
        Layer {
            name: "seccomp",
            active: seccomp,
            required: true,
            detail: if seccomp {
                format!(
                    "allowlist of {} calls in the zygote + a stacked child filter",
                    seccomp::ALLOWED.len() + seccomp::ARG_RULES.len()
                )
            } else {
                "kernel without seccomp filter support".into()
            },
        },
        Layer {
            name: "no_new_privs",
            active: nnp,
            required: true,
            detail: "set before exec; children also drop every capability and run as uid 65534"
                .into(),
        },
        Layer {
            name: "cgroups",
            active: writable,
            required: true,
            detail: cg_detail,
        },
        Layer {
            name: "user namespaces",
            active: userns && ns_ok,
            required: true,
            detail: if userns {
                format!(
                    "zygote is root only inside its own user namespace (host uid {}); children \
                     are its uid 65534 (host {}) without capabilities",
                    ids.0,
                    ids.0 + SANDBOX_ID
                )
            } else {
                "not available (/proc/sys/user/max_user_namespaces is 0)".into()
            },
        },
    ]
}

/// The missing required layers, as a sentence, or `None` when all are present.
pub fn missing_required(layers: &[Layer]) -> Option<String> {
    let missing: Vec<String> = layers
        .iter()
        .filter(|l| l.required && !l.active)
        .map(|l| format!("{} ({})", l.name, l.detail))
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// `MAGIC_SANDBOX_ID_BASE`: the first host uid/gid of the sandbox's 65536 ids, if set.
pub fn configured_id_base() -> Result<Option<u32>, String> {
    match std::env::var("MAGIC_SANDBOX_ID_BASE") {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("MAGIC_SANDBOX_ID_BASE={v:?} is not a number"))
            .and_then(zygote::valid_id_base)
            .map(Some)
            .map_err(|e| format!("MAGIC_SANDBOX_ID_BASE: {e}")),
    }
}

/// The host uid and gid bases of the sandbox's user namespace: `configured` (from
/// `MAGIC_SANDBOX_ID_BASE`, already validated) for both, else the ranges `/etc/subuid` and
/// `/etc/subgid` delegate to root, else [`zygote::USERNS_HOST_BASE`].
pub fn host_id_bases(configured: Option<u32>) -> (u32, u32) {
    if let Some(b) = configured {
        return (b, b);
    }
    let from = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| zygote::subid_base(&t, "root", 0))
            .unwrap_or(zygote::USERNS_HOST_BASE)
    };
    (from("/etc/subuid"), from("/etc/subgid"))
}

/// Settings for [`Sandbox::new`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The real Python executable.
    pub python: PathBuf,
    /// The SDK directory (mounted read-only at `/magic/sdk`).
    pub sdk_dir: PathBuf,
    /// A runtime-owned directory for the zygotes' root mount point.
    pub work_dir: PathBuf,
    /// Run without cgroups (rlimits only) instead of refusing.
    pub allow_without_cgroups: bool,
    /// Host id base of the user namespace (`MAGIC_SANDBOX_ID_BASE`); `None`: `/etc/subuid`
    /// and `/etc/subgid`, else 100000.
    pub id_base: Option<u32>,
}

/// The process-mode sandbox shared by every zygote of one runtime.
pub struct Sandbox {
    python: PathBuf,
    python_binds: Vec<PathBuf>,
    sdk_dir: PathBuf,
    root_dir: PathBuf,
    netns: OwnedFd,
    cgroups: Option<cgroup::CgroupPool>,
    zygote_bpf: Vec<u8>,
    child_bpf: Vec<u8>,
    uid: u32,
    gid: u32,
    id_bases: (u32, u32),
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("python", &self.python)
            .field(
                "cgroups",
                &self.cgroups.as_ref().map(|c| c.layout().clone()),
            )
            .finish()
    }
}

/// Create one empty network namespace (only a loopback that is down) and keep a handle to it.
fn empty_netns() -> Result<OwnedFd, SandboxError> {
    std::thread::spawn(|| -> Result<OwnedFd, SandboxError> {
        // unshare on this short-lived thread only: the runtime's other threads keep the host
        // network namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| SandboxError::Missing(format!("network namespace: {e}")))?;
        let f = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| SandboxError::Setup(format!("network namespace handle: {e}")))?;
        Ok(OwnedFd::from(f))
    })
    .join()
    .map_err(|_| SandboxError::Setup("network namespace thread panicked".into()))?
}

/// Directories to bind read-only so that `python` runs: its installation prefix(es) unless
/// they live under `/usr` (always bound).
pub fn python_binds(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = vec![PathBuf::from("/usr")];
    for p in prefixes {
        if p.starts_with("/usr") || out.iter().any(|o| p.starts_with(o)) {
            continue;
        }
        out.push(p.clone());
    }
    out
}

fn python_prefixes(python: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let out = std::process::Command::new(python)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)",
        ])
        .output()
        .map_err(|e| SandboxError::Setup(format!("running {}: {e}", python.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<PathBuf> = text.lines().map(|l| PathBuf::from(l.trim())).collect();
    v.dedup();
    if v.is_empty() {
        return Err(SandboxError::Setup("cannot find Python's prefix".into()));
    }
    Ok(v)
}

impl Sandbox {
    /// Check the host, create the shared network namespace and the cgroup pool, compile the
    /// filters. Fails when a required layer is missing (cgroups only when
    /// `allow_without_cgroups` is false).
    pub fn new(cfg: SandboxConfig) -> Result<Arc<Sandbox>, SandboxError> {
        let layers = probe();
        let cg_missing = layers.iter().any(|l| l.name == "cgroups" && !l.active);
        let others: Vec<Layer> = layers.into_iter().filter(|l| l.name != "cgroups").collect();
        if let Some(m) = missing_required(&others) {
            return Err(SandboxError::Missing(m));
        }
        if cg_missing && !cfg.allow_without_cgroups {
            return Err(SandboxError::Missing(
                "cgroups (no writable memory+cpu+pids hierarchy)".into(),
            ));
        }
        let cgroups = match cgroup::detect() {
            Some(layout) if !cg_missing => match cgroup::CgroupPool::new(layout, 4) {
                Ok(p) => Some(p),
                Err(e) if cfg.allow_without_cgroups => {
                    tracing::warn!(error = %e, "cgroups unusable; children get rlimits only");
                    None
                }
                Err(e) => return Err(e),
            },
            _ => None,
        };
        let python = std::fs::canonicalize(&cfg.python)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", cfg.python.display())))?;
        let python_binds = python_binds(&python_prefixes(&python)?);
        let root_dir = cfg.work_dir.join("sandbox-root");
        std::fs::create_dir_all(&root_dir)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", root_dir.display())))?;
        Ok(Arc::new(Sandbox {
            python,
            python_binds,
            sdk_dir: cfg.sdk_dir,
            root_dir,
            netns: empty_netns()?,
            cgroups,
            zygote_bpf: seccomp::zygote_filter()?,
            child_bpf: seccomp::child_filter()?,
            uid: SANDBOX_ID,
            gid: SANDBOX_ID,
            id_bases: host_id_bases(cfg.id_base),
        }))
    }

    /// Host uid and gid that the sandbox's root maps to (children run as these + 65534).
    pub fn id_bases(&self) -> (u32, u32) {
        self.id_bases
    }

    /// The cgroup layout in use (`None`: rlimits only).
    pub fn cgroup_layout(&self) -> Option<CgroupLayout> {
        self.cgroups.as_ref().map(|c| c.layout().clone())
    }

    /// Shutdown, after every zygote was terminated: kill whatever is left in the sandbox's
    /// cgroups and remove them (the pool's directories in every hierarchy). Blocking. Returns
    /// the cgroup directories that could not be removed (empty when all are gone).
    pub fn remove_cgroups(&self) -> Vec<PathBuf> {
        self.cgroups
            .as_ref()
            .map(cgroup::CgroupPool::remove_all)
            .unwrap_or_default()
    }

    /// Kill what is left of `child` and return its cgroup slot to the pool. Blocking (waits
    /// until the slot is empty): call from a blocking context.
    pub fn release(&self, child: Confined) {
        let Confined { pid, slot, .. } = child;
        match (slot, &self.cgroups) {
            (Some(s), Some(pool)) => pool.give_back(s),
            _ => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_under_usr_needs_no_extra_bind() {
        assert_eq!(python_binds(&["/usr".into()]), vec![PathBuf::from("/usr")]);
        assert_eq!(
            python_binds(&[
                "/root/.pyenv/versions/3.11.7".into(),
                "/root/.pyenv/versions/3.11.7".into()
            ]),
            vec![
                PathBuf::from("/usr"),
                PathBuf::from("/root/.pyenv/versions/3.11.7")
            ]
        );
    }

    #[test]
    fn missing_layers_are_named() {
        let layers = vec![
            Layer {
                name: "seccomp",
                active: true,
                required: true,
                detail: String::new(),
            },
            Layer {
                name: "cgroups",
                active: false,
                required: true,
                detail: "none".into(),
            },
            Layer {
                name: "user namespaces",
                active: false,
                required: false,
                detail: String::new(),
            },
        ];
        let m = missing_required(&layers).expect("cgroups missing");
        assert!(m.contains("cgroups") && !m.contains("user namespaces") && !m.contains("seccomp"));
        assert_eq!(missing_required(&layers[..1]), None);
    }
}

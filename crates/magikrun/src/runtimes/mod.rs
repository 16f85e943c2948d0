//! The [`OciRuntime`] trait, [`Signal`], and the [`RuntimeRegistry`] of backends usable here.
//!
//! Owns: the backend contract and which backends are offered. Must never: offer a backend whose
//! probe failed (it is listed in [`RuntimeRegistry::unavailable`] with the reason instead).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::platform::{Capability, CgroupMode, Platform};
use crate::state::{ContainerState, ContainerStatus};

pub mod krun;
pub mod wasmtime;
#[cfg(windows)]
pub mod windows;
#[cfg(target_os = "linux")]
pub mod youki;

pub use self::krun::KrunRuntime;
pub use self::wasmtime::WasmtimeRuntime;
#[cfg(target_os = "linux")]
pub use self::youki::YoukiRuntime;

/// Signals a runtime can send to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM (15).
    Term,
    /// SIGKILL (9).
    Kill,
    /// SIGINT (2).
    Int,
    /// SIGHUP (1).
    Hup,
    /// SIGQUIT (3).
    Quit,
    /// SIGUSR1 (10).
    Usr1,
    /// SIGUSR2 (12).
    Usr2,
}

impl Signal {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Term => 15,
            Signal::Usr2 => 12,
        }
    }

    /// The name without the `SIG` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Term => "TERM",
            Signal::Usr2 => "USR2",
        }
    }

    const ALL: [Signal; 7] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Kill,
        Signal::Usr1,
        Signal::Term,
        Signal::Usr2,
    ];
}

impl FromStr for Signal {
    type Err = Error;

    /// Accepts `TERM`, `SIGTERM`, `term` or `15` (the OCI CLI forms).
    fn from_str(s: &str) -> Result<Self> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == name || sig.number().to_string() == name)
            .ok_or_else(|| Error::InvalidSignal(s.chars().take(32).collect()))
    }
}

/// A container backend following the OCI runtime lifecycle.
#[async_trait]
pub trait OciRuntime: Send + Sync {
    /// Backend name as listed by the registry (`youki`, `wasmtime`, `krun`, `windows`).
    fn name(&self) -> &'static str;

    /// Prepares a container from `bundle` without running the user program.
    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()>;

    /// Runs the user program of a created container.
    async fn start(&self, id: &str) -> Result<()>;

    /// The container's OCI state.
    async fn state(&self, id: &str) -> Result<ContainerState>;

    /// Sends `signal` to a created or running container.
    async fn kill(&self, id: &str, signal: Signal) -> Result<()>;

    /// Releases everything the container holds. Allowed when created or stopped.
    async fn delete(&self, id: &str) -> Result<()>;

    /// What the container wrote to stdout and stderr, when this backend captures it
    /// (`Ok(None)` when output goes elsewhere, e.g. inherited stdio).
    async fn captured_output(&self, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.state(id).await.map(|_| None)
    }

    /// Waits until the container is stopped, polling [`OciRuntime::state`], for at most `timeout`.
    async fn wait(&self, id: &str, timeout: Duration) -> Result<ContainerState> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut polls: u32 = 0;
        loop {
            let st = self.state(id).await?;
            if st.status == ContainerStatus::Stopped {
                return Ok(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("waiting for container {id} to stop"),
                    after: timeout,
                });
            }
            // Poll fast at first (short-lived containers), then back off.
            polls = polls.saturating_add(1);
            let pause = match polls {
                0..=50 => Duration::from_millis(1),
                51..=200 => Duration::from_millis(5),
                _ => Duration::from_millis(20),
            };
            tokio::time::sleep(pause).await;
        }
    }
}

/// Where backends keep their state.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Root of all state directories (default: `$XDG_RUNTIME_DIR/magikrun` or
    /// `/run/magikrun` for root, else `<tmp>/magikrun-<uid>`).
    pub state_root: PathBuf,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            state_root: default_state_root(),
        }
    }
}

/// The default state root (see [`RegistryOptions::state_root`]).
pub fn default_state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("magikrun");
    }
    #[cfg(unix)]
    {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return PathBuf::from("/run/magikrun");
        }
        std::env::temp_dir().join(format!("magikrun-{uid}"))
    }
    #[cfg(not(unix))]
    std::env::temp_dir().join("magikrun")
}

/// Why a backend can or cannot run on `platform`: `Ok(())` or the reason. Pure.
pub fn backend_availability(name: &str, platform: &Platform) -> std::result::Result<(), String> {
    match name {
        "wasmtime" => {
            if platform.has_capability(Capability::WasmRuntime) {
                Ok(())
            } else {
                Err("no WASM engine".into())
            }
        }
        "youki" => {
            if platform.os != "linux" {
                return Err(format!("youki needs Linux, this is {}", platform.os));
            }
            if !platform.has_capability(Capability::Namespaces) {
                return Err("kernel namespaces (mnt, pid, ipc, uts, net) are missing".into());
            }
            if !platform.has_capability(Capability::CgroupsV1)
                && !platform.has_capability(Capability::CgroupsV2)
            {
                return Err("no cgroup hierarchy is mounted".into());
            }
            if platform.is_root {
                return Ok(());
            }
            // Rootless: the bundle builder writes a user-namespace mapping (container root =
            // the calling user); the kernel must let an unprivileged user create it.
            if !platform.has_capability(Capability::UserNamespaces) {
                return Err("needs root: the kernel has no user namespaces".into());
            }
            if !platform.unprivileged_userns {
                return Err("needs root: unprivileged user namespaces are disabled \
                     (kernel.unprivileged_userns_clone / user.max_user_namespaces)"
                    .into());
            }
            // libcgroups adds a rootless container to every mounted v1 controller and does not
            // tolerate permission errors there; on v2 it goes on without a cgroup it may not
            // create.
            if platform.cgroup_mode != CgroupMode::Unified && !platform.delegated_cgroup_v1 {
                return Err(
                    "needs root, or cgroup v1 directories delegated to this user \
                     (`magikrun delegate-cgroups --uid <uid>` as root)"
                        .into(),
                );
            }
            Ok(())
        }
        "krun" => krun::availability(platform),
        "windows" => {
            if platform.os != "windows" {
                Err(format!(
                    "windows backend needs Windows, this is {}",
                    platform.os
                ))
            } else if !platform.has_capability(Capability::Wsl2) {
                Err("WSL2 is not installed".into())
            } else {
                Ok(())
            }
        }
        other => Err(format!("unknown backend {other}")),
    }
}

/// The backends that can run on this machine, by name.
pub struct RuntimeRegistry {
    runtimes: BTreeMap<&'static str, Arc<dyn OciRuntime>>,
    unavailable: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for RuntimeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeRegistry")
            .field("available", &self.available_runtimes())
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl RuntimeRegistry {
    /// Registers every backend usable on `platform`, with state under the default root.
    pub fn new(platform: &Platform) -> Result<Self> {
        Self::with_options(platform, RegistryOptions::default())
    }

    /// Like [`RuntimeRegistry::new`] with explicit options.
    pub fn with_options(platform: &Platform, options: RegistryOptions) -> Result<Self> {
        let mut reg = RuntimeRegistry {
            runtimes: BTreeMap::new(),
            unavailable: BTreeMap::new(),
        };
        // Windows is only a candidate on Windows builds: on Linux it is absent, not unavailable.
        let mut candidates = vec!["youki", "wasmtime", "krun"];
        if cfg!(windows) {
            candidates.push("windows");
        }
        for name in candidates {
            if let Err(reason) = backend_availability(name, platform) {
                reg.unavailable.insert(name, reason);
                continue;
            }
            let rt: Result<Arc<dyn OciRuntime>> = match name {
                "wasmtime" => WasmtimeRuntime::new().map(|r| Arc::new(r) as Arc<dyn OciRuntime>),
                #[cfg(target_os = "linux")]
                "youki" => Ok(Arc::new(YoukiRuntime::new(
                    options.state_root.join("youki"),
                ))),
                #[cfg(all(feature = "krun", target_os = "linux"))]
                "krun" => KrunRuntime::new().map(|r| Arc::new(r) as Arc<dyn OciRuntime>),
                #[cfg(windows)]
                "windows" => Ok(Arc::new(windows::WindowsRuntime::new())),
                _ => Err(Error::Unsupported(format!("{name} is not built in"))),
            };
            match rt {
                Ok(rt) => {
                    reg.runtimes.insert(name, rt);
                }
                Err(e) => {
                    reg.unavailable.insert(name, e.to_string());
                }
            }
        }
        let _ = &options; // only the Linux (youki) backend uses the state root
        Ok(reg)
    }

    /// Names of the backends offered, sorted.
    pub fn available_runtimes(&self) -> Vec<&'static str> {
        self.runtimes.keys().copied().collect()
    }

    /// The backend called `name`, if it can run here.
    pub fn get(&self, name: &str) -> Option<Arc<dyn OciRuntime>> {
        self.runtimes.get(name).cloned()
    }

    /// Backends that were considered but cannot run here, with the reason.
    pub fn unavailable(&self) -> &BTreeMap<&'static str, String> {
        &self.unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::CgroupMode;
    use std::collections::BTreeSet;

    fn platform(caps: &[Capability], root: bool, os: &str) -> Platform {
        Platform {
            os: os.into(),
            arch: "x86_64".into(),
            capabilities: caps.iter().copied().collect::<BTreeSet<_>>(),
            cgroup_mode: CgroupMode::Hybrid,
            namespaces: vec![],
            is_root: root,
            unprivileged_userns: false,
            delegated_cgroup_v1: false,
            notes: vec![],
        }
    }

    #[test]
    fn signal_parsing() {
        for (s, want) in [
            ("TERM", Signal::Term),
            ("SIGTERM", Signal::Term),
            ("term", Signal::Term),
            ("15", Signal::Term),
            ("KILL", Signal::Kill),
            ("9", Signal::Kill),
            ("SIGUSR1", Signal::Usr1),
            ("hup", Signal::Hup),
        ] {
            assert_eq!(s.parse::<Signal>().unwrap(), want, "{s}");
        }
        for bad in ["", "SIG", "TERMX", "99", "-9", "SIGSEGV"] {
            assert!(
                matches!(bad.parse::<Signal>(), Err(Error::InvalidSignal(_))),
                "{bad}"
            );
        }
        for sig in Signal::ALL {
            assert_eq!(sig.name().parse::<Signal>().unwrap(), sig);
            assert_eq!(sig.number().to_string().parse::<Signal>().unwrap(), sig);
        }
        assert_eq!(Signal::Kill.number(), libc::SIGKILL);
        assert_eq!(Signal::Term.number(), libc::SIGTERM);
        assert_eq!(Signal::Usr2.number(), libc::SIGUSR2);
    }

    #[test]
    fn availability_table() {
        use Capability::*;
        let full = [
            Namespaces,
            UserNamespaces,
            CgroupsV1,
            CgroupsV2,
            Seccomp,
            WasmRuntime,
        ];
        let cases: Vec<(&str, Platform, bool)> = vec![
            ("youki", platform(&full, true, "linux"), true),
            (
                "youki",
                platform(&[Namespaces, CgroupsV2, WasmRuntime], true, "linux"),
                true,
            ),
            (
                "youki",
                platform(&[Namespaces, CgroupsV1, WasmRuntime], true, "linux"),
                true,
            ),
            (
                "youki",
                platform(&[CgroupsV2, WasmRuntime], true, "linux"),
                false,
            ),
            (
                "youki",
                platform(&[Namespaces, WasmRuntime], true, "linux"),
                false,
            ),
            (
                "youki",
                platform(&[Namespaces, CgroupsV2], false, "linux"),
                false,
            ),
            (
                "youki",
                platform(&[Namespaces, CgroupsV2, UserNamespaces], false, "linux"),
                false,
            ),
            ("youki", platform(&full, true, "macos"), false),
            ("wasmtime", platform(&[WasmRuntime], false, "linux"), true),
            ("wasmtime", platform(&[], false, "linux"), false),
            ("windows", platform(&full, true, "linux"), false),
            (
                "windows",
                platform(&[Windows, Wsl2], false, "windows"),
                true,
            ),
            ("windows", platform(&[Windows], false, "windows"), false),
            ("nope", platform(&full, true, "linux"), false),
        ];
        for (name, p, ok) in cases {
            assert_eq!(
                backend_availability(name, &p).is_ok(),
                ok,
                "{name} on {:?}",
                p.capabilities
            );
        }
    }

    #[test]
    fn rootless_youki_availability_table() {
        use Capability::*;
        let caps = [Namespaces, UserNamespaces, CgroupsV1, CgroupsV2, Seccomp];
        // (user namespaces listed, unprivileged allowed, cgroup mode, v1 delegated, available)
        let cases = [
            (true, true, CgroupMode::Unified, false, true),
            (true, true, CgroupMode::Legacy, true, true),
            (true, true, CgroupMode::Hybrid, true, true),
            (true, true, CgroupMode::Legacy, false, false),
            (true, true, CgroupMode::Hybrid, false, false),
            (true, false, CgroupMode::Unified, false, false),
            (true, false, CgroupMode::Legacy, true, false),
            (false, true, CgroupMode::Unified, false, false),
        ];
        for (userns, unpriv, mode, delegated, ok) in cases {
            let mut p = platform(&caps, false, "linux");
            if !userns {
                p.capabilities.remove(&UserNamespaces);
            }
            p.unprivileged_userns = unpriv;
            p.cgroup_mode = mode;
            p.delegated_cgroup_v1 = delegated;
            let r = backend_availability("youki", &p);
            assert_eq!(
                r.is_ok(),
                ok,
                "{userns} {unpriv} {mode:?} {delegated}: {r:?}"
            );
            // Root needs none of it.
            p.is_root = true;
            assert!(backend_availability("youki", &p).is_ok());
        }
    }

    #[test]
    fn krun_unavailable_reason_without_feature_or_kvm() {
        let p = platform(
            &[Capability::Namespaces, Capability::WasmRuntime],
            true,
            "linux",
        );
        let reason = backend_availability("krun", &p).unwrap_err();
        assert!(!reason.is_empty());
        if !cfg!(feature = "krun") {
            assert!(reason.contains("feature"), "{reason}");
        }
    }

    #[test]
    fn registry_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let p = Platform::detect();
        let reg = RuntimeRegistry::with_options(
            &p,
            RegistryOptions {
                state_root: dir.path().to_path_buf(),
            },
        )
        .unwrap();
        let names = reg.available_runtimes();
        assert!(names.contains(&"wasmtime"));
        assert!(reg.get("wasmtime").is_some());
        assert!(reg.get("nope").is_none());
        // Windows is absent on Linux: neither offered nor listed as unavailable.
        if cfg!(target_os = "linux") {
            assert!(!names.contains(&"windows"));
            assert!(!reg.unavailable().contains_key("windows"));
        }
        // Every backend is either offered or unavailable with a reason, never both.
        for name in ["youki", "wasmtime", "krun"] {
            let offered = names.contains(&name);
            let reason = reg.unavailable().get(name);
            assert!(offered ^ reason.is_some(), "{name}");
            assert_eq!(
                offered,
                backend_availability(name, &p).is_ok() && reg.get(name).is_some()
            );
        }
        if !cfg!(feature = "krun") {
            assert!(reg.unavailable()["krun"].contains("feature"));
        }
        for name in &names {
            assert_eq!(reg.get(name).unwrap().name(), *name);
        }
    }
}

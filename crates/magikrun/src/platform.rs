//! Platform detection: what isolation features this host offers.
//!
//! Owns: [`Platform`], [`Capability`], [`CgroupMode`] and the probes behind them. Must never:
//! change anything on the host while probing (every probe only reads, opens or queries), or panic
//! when a probe fails: a failed probe means "capability absent", with the reason in
//! [`Platform::notes`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

/// An isolation feature the host may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Linux mount, PID, IPC, UTS and network namespaces are all present.
    Namespaces,
    /// Linux user namespaces are present (rootless containers).
    UserNamespaces,
    /// A cgroup v2 hierarchy is mounted (unified, or the `unified` tree of a hybrid layout).
    CgroupsV2,
    /// cgroup v1 controllers are mounted (legacy or hybrid layout).
    CgroupsV1,
    /// The kernel supports seccomp filters.
    Seccomp,
    /// A hardware hypervisor is usable: `/dev/kvm` opens read-write and answers its API version
    /// (Linux) or Hypervisor.framework is supported (macOS).
    Hypervisor,
    /// The compiled-in WASM engine: always present.
    WasmRuntime,
    /// Windows 10 or newer (Windows builds only).
    Windows,
    /// WSL2 is installed (Windows builds only).
    Wsl2,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Capability::Namespaces => "namespaces",
            Capability::UserNamespaces => "user_namespaces",
            Capability::CgroupsV2 => "cgroups_v2",
            Capability::CgroupsV1 => "cgroups_v1",
            Capability::Seccomp => "seccomp",
            Capability::Hypervisor => "hypervisor",
            Capability::WasmRuntime => "wasm_runtime",
            Capability::Windows => "windows",
            Capability::Wsl2 => "wsl2",
        };
        f.write_str(s)
    }
}

/// How cgroups are mounted at `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    /// Pure cgroup v2: `/sys/fs/cgroup` is a cgroup2 mount.
    Unified,
    /// cgroup v1 controllers plus a cgroup2 tree at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// cgroup v1 only.
    Legacy,
    /// No cgroup filesystem found (or not Linux).
    None,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            CgroupMode::Unified => "v2 (unified)",
            CgroupMode::Hybrid => "hybrid (v1 controllers + v2 unified tree)",
            CgroupMode::Legacy => "v1 (legacy)",
            CgroupMode::None => "none",
        };
        f.write_str(s)
    }
}

/// What one probe of `/sys/fs/cgroup` found, as filesystem kinds (input of [`cgroup_mode_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// A cgroup2 mount.
    Cgroup2,
    /// A cgroup (v1) mount.
    Cgroup1,
    /// A tmpfs (the usual parent of v1 controller mounts).
    Tmpfs,
    /// Anything else, or absent.
    Other,
}

/// Decides the cgroup layout from the kind of `/sys/fs/cgroup`, of `/sys/fs/cgroup/unified`, and
/// whether any v1 controller directory is mounted. Pure: the probes feed it.
pub fn cgroup_mode_from(root: FsKind, unified: FsKind, v1_controllers: bool) -> CgroupMode {
    match root {
        FsKind::Cgroup2 => CgroupMode::Unified,
        FsKind::Tmpfs | FsKind::Cgroup1 => {
            if unified == FsKind::Cgroup2 {
                CgroupMode::Hybrid
            } else if v1_controllers || root == FsKind::Cgroup1 {
                CgroupMode::Legacy
            } else {
                CgroupMode::None
            }
        }
        FsKind::Other => CgroupMode::None,
    }
}

/// Namespaces the container backend needs (names as in `/proc/self/ns`).
pub const REQUIRED_NAMESPACES: [&str; 5] = ["mnt", "pid", "ipc", "uts", "net"];

/// Detected host facts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Platform {
    /// Operating system (`std::env::consts::OS`, e.g. `linux`).
    pub os: String,
    /// CPU architecture (`std::env::consts::ARCH`, e.g. `x86_64`).
    pub arch: String,
    /// Capabilities found.
    pub capabilities: BTreeSet<Capability>,
    /// cgroup layout.
    pub cgroup_mode: CgroupMode,
    /// Namespace kinds listed in `/proc/self/ns`.
    pub namespaces: Vec<String>,
    /// Whether this process runs with effective uid 0.
    pub is_root: bool,
    /// Whether an unprivileged process may create user namespaces
    /// (`/proc/sys/kernel/unprivileged_userns_clone` absent or 1, and
    /// `/proc/sys/user/max_user_namespaces` above 0; see [`unprivileged_userns_allowed`]).
    pub unprivileged_userns: bool,
    /// cgroup v1 only: whether the directories `magikrun-<euid>` exist, writable by this
    /// process, under every mounted v1 controller in [`V1_CONTROLLERS`] (see
    /// `youki::delegate_cgroups_v1`). Rootless containers on v1 put their cgroups there.
    pub delegated_cgroup_v1: bool,
    /// Why a capability is absent, one line per probe that failed.
    pub notes: Vec<String>,
}

impl Platform {
    /// Probes the host. Never fails: a probe that fails leaves its capability out and adds a note.
    pub fn detect() -> Self {
        let mut p = Platform {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            capabilities: BTreeSet::new(),
            cgroup_mode: CgroupMode::None,
            namespaces: Vec::new(),
            is_root: false,
            unprivileged_userns: false,
            delegated_cgroup_v1: false,
            notes: Vec::new(),
        };
        p.capabilities.insert(Capability::WasmRuntime);
        #[cfg(target_os = "linux")]
        linux::probe(&mut p);
        #[cfg(target_os = "macos")]
        p.notes
            .push("Hypervisor.framework probe not implemented in this build".into());
        #[cfg(windows)]
        windows::probe(&mut p);
        p
    }

    /// Whether the host offers `cap`.
    pub fn has_capability(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}

/// cgroup v1 controllers libcgroups adds a container to when they are mounted (its list).
pub const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Name of the cgroup v1 directory (under each controller) delegated to `uid` for its rootless
/// containers.
pub fn delegated_cgroup_name(uid: u32) -> String {
    format!("magikrun-{uid}")
}

/// Whether unprivileged user namespaces are allowed, from the contents of
/// `/proc/sys/kernel/unprivileged_userns_clone` (Debian/Ubuntu patch; `None` when the file does
/// not exist, which means allowed) and `/proc/sys/user/max_user_namespaces` (`None` when absent:
/// no limit known). `Err` says why not. Pure.
pub fn unprivileged_userns_allowed(
    unprivileged_userns_clone: Option<&str>,
    max_user_namespaces: Option<&str>,
) -> std::result::Result<(), String> {
    if let Some(v) = unprivileged_userns_clone {
        match v.trim() {
            "1" => {}
            "0" => return Err("kernel.unprivileged_userns_clone is 0".into()),
            other => {
                return Err(format!(
                    "kernel.unprivileged_userns_clone has unknown value {other:?}"
                ))
            }
        }
    }
    if let Some(v) = max_user_namespaces {
        match v.trim().parse::<u64>() {
            Ok(0) => return Err("user.max_user_namespaces is 0".into()),
            Ok(_) => {}
            Err(_) => return Err(format!("user.max_user_namespaces is unreadable: {v:?}")),
        }
    }
    Ok(())
}

/// Lists the entries of a `/proc/<pid>/ns`-like directory, sorted.
pub fn namespaces_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Whether every namespace in [`REQUIRED_NAMESPACES`] is in `present`.
pub fn has_required_namespaces(present: &[String]) -> bool {
    REQUIRED_NAMESPACES
        .iter()
        .all(|n| present.iter().any(|p| p == n))
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, TMPFS_MAGIC};

    fn fs_kind(path: &str) -> FsKind {
        match statfs(path) {
            Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => FsKind::Cgroup2,
            Ok(s) if s.filesystem_type() == CGROUP_SUPER_MAGIC => FsKind::Cgroup1,
            Ok(s) if s.filesystem_type() == TMPFS_MAGIC => FsKind::Tmpfs,
            _ => FsKind::Other,
        }
    }

    pub(super) fn probe(p: &mut Platform) {
        p.is_root = nix::unistd::geteuid().is_root();

        p.namespaces = namespaces_in(Path::new("/proc/self/ns"));
        if has_required_namespaces(&p.namespaces) {
            p.capabilities.insert(Capability::Namespaces);
        } else {
            p.notes.push(format!(
                "namespaces: /proc/self/ns lists {:?}, need {:?}",
                p.namespaces, REQUIRED_NAMESPACES
            ));
        }
        if p.namespaces.iter().any(|n| n == "user") {
            p.capabilities.insert(Capability::UserNamespaces);
            let read = |f: &str| std::fs::read_to_string(f).ok();
            match unprivileged_userns_allowed(
                read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
                read("/proc/sys/user/max_user_namespaces").as_deref(),
            ) {
                Ok(()) => p.unprivileged_userns = true,
                Err(e) => p.notes.push(format!("unprivileged user namespaces: {e}")),
            }
        }

        let root = fs_kind("/sys/fs/cgroup");
        let unified = fs_kind("/sys/fs/cgroup/unified");
        let v1 = ["memory", "cpu", "pids", "cpu,cpuacct"]
            .iter()
            .any(|c| fs_kind(&format!("/sys/fs/cgroup/{c}")) == FsKind::Cgroup1);
        p.cgroup_mode = cgroup_mode_from(root, unified, v1);
        match p.cgroup_mode {
            CgroupMode::Unified => {
                p.capabilities.insert(Capability::CgroupsV2);
            }
            CgroupMode::Hybrid => {
                p.capabilities.insert(Capability::CgroupsV2);
                p.capabilities.insert(Capability::CgroupsV1);
            }
            CgroupMode::Legacy => {
                p.capabilities.insert(Capability::CgroupsV1);
            }
            CgroupMode::None => p
                .notes
                .push("cgroups: no cgroup filesystem at /sys/fs/cgroup".into()),
        }

        if matches!(p.cgroup_mode, CgroupMode::Legacy | CgroupMode::Hybrid) {
            let name = delegated_cgroup_name(nix::unistd::geteuid().as_raw());
            let mounted: Vec<_> = V1_CONTROLLERS
                .iter()
                .map(|c| Path::new("/sys/fs/cgroup").join(c))
                .filter(|d| fs_kind(&d.to_string_lossy()) == FsKind::Cgroup1)
                .collect();
            p.delegated_cgroup_v1 = !mounted.is_empty()
                && mounted.iter().all(|d| {
                    nix::unistd::access(&d.join(&name), nix::unistd::AccessFlags::W_OK).is_ok()
                });
        }

        match seccomp_supported() {
            Ok(()) => {
                p.capabilities.insert(Capability::Seccomp);
            }
            Err(e) => p
                .notes
                .push(format!("seccomp: prctl(PR_GET_SECCOMP) failed: {e}")),
        }

        match kvm_usable(Path::new("/dev/kvm")) {
            Ok(()) => {
                p.capabilities.insert(Capability::Hypervisor);
            }
            Err(e) => p.notes.push(format!("kvm: {e}")),
        }
    }

    /// `prctl(PR_GET_SECCOMP)` answers 0/2 when the kernel has seccomp, EINVAL when it does not.
    fn seccomp_supported() -> std::io::Result<()> {
        // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reads this thread's mode.
        let rc = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// KVM is usable when the device opens read-write and `KVM_GET_API_VERSION` answers 12.
    pub(crate) fn kvm_usable(dev: &Path) -> std::result::Result<(), String> {
        use std::os::fd::AsRawFd;
        const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
        const KVM_API_VERSION: libc::c_int = 12;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .map_err(|e| format!("{} not usable: {e}", dev.display()))?;
        // SAFETY: KVM_GET_API_VERSION takes no argument; the fd is open for the whole call.
        let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
        if v == KVM_API_VERSION {
            Ok(())
        } else {
            Err(format!(
                "{} answered KVM API version {v}, expected {KVM_API_VERSION}",
                dev.display()
            ))
        }
    }
}

#[cfg(windows)]
mod windows {
    use super::*;

    pub(super) fn probe(p: &mut Platform) {
        p.capabilities.insert(Capability::Windows);
        let wsl = std::process::Command::new("wsl").arg("--status").output();
        match wsl {
            Ok(o) if o.status.success() => {
                p.capabilities.insert(Capability::Wsl2);
            }
            _ => p.notes.push("wsl2: `wsl --status` did not succeed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_userns_table() {
        for (clone, max, ok) in [
            (None, None, true),
            (None, Some("96365\n"), true),
            (Some("1\n"), Some("10"), true),
            (Some("0\n"), Some("10"), false),
            (Some("2"), None, false),
            (None, Some("0\n"), false),
            (Some("1"), Some("0"), false),
            (None, Some("lots"), false),
        ] {
            assert_eq!(
                unprivileged_userns_allowed(clone, max).is_ok(),
                ok,
                "{clone:?} {max:?}"
            );
        }
    }

    #[test]
    fn cgroup_mode_table() {
        use FsKind::*;
        let cases = [
            (Cgroup2, Other, false, CgroupMode::Unified),
            (Cgroup2, Cgroup2, true, CgroupMode::Unified),
            (Tmpfs, Cgroup2, true, CgroupMode::Hybrid),
            (Tmpfs, Cgroup2, false, CgroupMode::Hybrid),
            (Tmpfs, Other, true, CgroupMode::Legacy),
            (Cgroup1, Other, false, CgroupMode::Legacy),
            (Tmpfs, Other, false, CgroupMode::None),
            (Other, Cgroup2, true, CgroupMode::None),
        ];
        for (root, unified, v1, want) in cases {
            assert_eq!(
                cgroup_mode_from(root, unified, v1),
                want,
                "{root:?} {unified:?} {v1}"
            );
        }
    }

    #[test]
    fn required_namespaces() {
        let all: Vec<String> = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(has_required_namespaces(&all));
        for missing in REQUIRED_NAMESPACES {
            let some: Vec<String> = all.iter().filter(|n| *n != missing).cloned().collect();
            assert!(
                !has_required_namespaces(&some),
                "{missing} missing must fail"
            );
        }
        assert!(!has_required_namespaces(&[]));
    }

    #[test]
    fn namespaces_in_reads_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pid"), "").unwrap();
        std::fs::write(d.path().join("mnt"), "").unwrap();
        assert_eq!(namespaces_in(d.path()), vec!["mnt", "pid"]);
        assert!(namespaces_in(&d.path().join("absent")).is_empty());
    }

    #[test]
    fn wasm_always_present_and_os_arch_set() {
        let p = Platform::detect();
        assert!(p.has_capability(Capability::WasmRuntime));
        assert_eq!(p.os, std::env::consts::OS);
        assert_eq!(p.arch, std::env::consts::ARCH);
        assert!(!p.has_capability(Capability::Windows) || cfg!(windows));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_detection_matches_proc() {
        let p = Platform::detect();
        // Every namespace listed must exist under /proc/self/ns.
        for n in &p.namespaces {
            assert!(Path::new("/proc/self/ns").join(n).exists());
        }
        assert_eq!(
            p.has_capability(Capability::Namespaces),
            has_required_namespaces(&namespaces_in(Path::new("/proc/self/ns")))
        );
        // /proc/self/status has a Seccomp line exactly when the kernel supports seccomp.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(
            p.has_capability(Capability::Seccomp),
            status.lines().any(|l| l.starts_with("Seccomp:"))
        );
        // The cgroup mode agrees with what is mounted.
        let unified_root = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let unified_sub = Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
        match p.cgroup_mode {
            CgroupMode::Unified => assert!(unified_root),
            CgroupMode::Hybrid => assert!(unified_sub && !unified_root),
            CgroupMode::Legacy => assert!(!unified_root && !unified_sub),
            CgroupMode::None => {}
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kvm_probe_needs_a_real_kvm_device() {
        // A regular file opens read-write but does not answer the KVM ioctl.
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(linux::kvm_usable(f.path()).is_err());
        assert!(linux::kvm_usable(Path::new("/nonexistent/kvm")).is_err());
        let p = Platform::detect();
        assert_eq!(
            p.has_capability(Capability::Hypervisor),
            linux::kvm_usable(Path::new("/dev/kvm")).is_ok()
        );
    }
}

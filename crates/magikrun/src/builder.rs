//! Bundle building: a pulled OCI image → rootfs + hardened `config.json` (or a WASM bundle).
//!
//! Owns: [`BundleBuilder`] and the hardened runtime configuration ([`hardened_config`],
//! [`default_seccomp_profile`]). Must never: write outside the bundle directory (all content goes
//! through [`crate::extract`]), leave a half-built bundle behind on error, or grant the container
//! process capabilities, a writable root or new privileges by default.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};

use crate::bundle::{Bundle, WasiConfig};
use crate::constants::OCI_VERSION;
use crate::error::{Error, Result};
use crate::extract::{extract_layer, resolve_file_in_rootfs, sanitize_entry_path, ExtractLimits};
use crate::image::PulledImage;
use crate::storage::BlobStore;

/// Paths masked in the container (as runc's defaults).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths mounted read-only in the container.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Syscalls the default seccomp profile refuses with EPERM: kernel-level administration,
/// namespace and mount manipulation, tracing other processes, keyrings, BPF, io_uring.
pub const DENIED_SYSCALLS: [&str; 40] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "userfaultfd",
    "vhangup",
];

/// The seccomp architecture of this build (native only: other ABIs are killed by libseccomp's
/// bad-architecture action).
pub fn seccomp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "SCMP_ARCH_AARCH64",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        _ => "SCMP_ARCH_X86_64",
    }
}

/// The default seccomp profile (runtime-spec `linux.seccomp`): allow, except
/// [`DENIED_SYSCALLS`] which fail with EPERM. Pure.
pub fn default_seccomp_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [seccomp_arch()],
        "syscalls": [{
            "names": &DENIED_SYSCALLS[..],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }]
    })
}

/// What the container process runs as and with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// uid inside the container.
    pub uid: u32,
    /// gid inside the container.
    pub gid: u32,
}

/// The hardened runtime configuration: read-only root, no capabilities, `noNewPrivileges`,
/// masked and read-only paths, fresh pid/net/ipc/uts/mount/cgroup namespaces, device access
/// denied in the cgroup, a pids limit, and [`default_seccomp_profile`]. Pure.
pub fn hardened_config(p: &ProcessSpec, hostname: &str) -> Value {
    let no_caps: Vec<String> = Vec::new();
    json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": false,
            "user": {"uid": p.uid, "gid": p.gid},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "permitted": no_caps,
                "inheritable": no_caps, "ambient": no_caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": &MASKED_PATHS[..],
            "readonlyPaths": &READONLY_PATHS[..],
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "pids": {"limit": 1024}
            },
            "seccomp": default_seccomp_profile()
        }
    })
}

/// The calling user as seen from a rootless container: container uid/gid 0 maps to these host
/// ids (one id each: no `newuidmap` helper or subordinate ids needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootlessIds {
    /// Host uid that container uid 0 maps to.
    pub uid: u32,
    /// Host gid that container gid 0 maps to.
    pub gid: u32,
}

impl RootlessIds {
    /// The effective uid/gid of this process.
    pub fn current() -> Self {
        RootlessIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

/// Turns a [`hardened_config`] into a rootless one. Pure. Adds a user namespace whose only
/// mapping is container uid/gid 0 → `ids` (so the process runs as container root, which is the
/// unprivileged calling user on the host, still with no capabilities and `noNewPrivileges`),
/// drops `linux.resources` (libcgroups' v1 manager always writes device rules when resources are
/// applied, which needs `CAP_SYS_ADMIN` on the host; so a rootless container is placed in a
/// cgroup but gets no cgroup limits, the pids limit included; device nodes cannot be created in
/// a user namespace anyway: libcontainer bind-mounts the defaults), drops
/// `uid=`/`gid=` mount options that name unmapped ids, and places the cgroups under
/// `/magikrun-<uid>/<name>` (the directory `youki::delegate_cgroups_v1` hands to that user on
/// cgroup v1).
pub fn make_rootless(config: &mut Value, ids: RootlessIds, name: &str) {
    config["process"]["user"] = json!({"uid": 0, "gid": 0});
    let linux = &mut config["linux"];
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        if !ns.iter().any(|n| n["type"] == "user") {
            ns.insert(0, json!({"type": "user"}));
        }
    }
    linux["uidMappings"] = json!([{"containerID": 0, "hostID": ids.uid, "size": 1}]);
    linux["gidMappings"] = json!([{"containerID": 0, "hostID": ids.gid, "size": 1}]);
    if let Some(l) = linux.as_object_mut() {
        l.remove("resources");
    }
    linux["cgroupsPath"] = json!(format!(
        "/{}/{name}",
        crate::platform::delegated_cgroup_name(ids.uid)
    ));
    if let Some(mounts) = config["mounts"].as_array_mut() {
        for m in mounts {
            if let Some(opts) = m["options"].as_array_mut() {
                opts.retain(|o| {
                    let o = o.as_str().unwrap_or_default();
                    !(o.starts_with("uid=") && o != "uid=0"
                        || o.starts_with("gid=") && o != "gid=0")
                });
            }
        }
    }
}

/// Which kind of bundle to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BundleKind {
    /// WASM when the image's entrypoint is a `.wasm` file or its platform is wasm/wasi, else OCI.
    #[default]
    Auto,
    /// Always an OCI runtime bundle.
    OciRuntime,
    /// Always a WASM bundle.
    Wasm,
}

/// Builds a bundle from a [`PulledImage`] whose blobs are in a [`BlobStore`].
#[derive(Debug, Clone, Default)]
pub struct BundleBuilder<'a> {
    image: Option<&'a PulledImage>,
    storage: Option<&'a BlobStore>,
    dir: Option<PathBuf>,
    limits: ExtractLimits,
    kind: BundleKind,
    args: Option<Vec<String>>,
    env: Vec<String>,
    hostname: Option<String>,
    rootless: Option<bool>,
}

/// The default directory under which bundles are built: `$MAGIKRUN_HOME/bundles` or
/// `~/.magikrun/bundles`.
pub fn default_bundles_root() -> Result<PathBuf> {
    Ok(crate::storage::default_blob_root()?
        .parent()
        .map(|p| p.join("bundles"))
        .unwrap_or_else(|| PathBuf::from("bundles")))
}

impl<'a> BundleBuilder<'a> {
    /// A builder with the seed's limits.
    pub fn new() -> Result<Self> {
        Ok(Self::default())
    }

    /// The image to build from.
    pub fn image(mut self, image: &'a PulledImage) -> Self {
        self.image = Some(image);
        self
    }

    /// The store holding the image's blobs.
    pub fn storage(mut self, storage: &'a BlobStore) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The bundle directory to create (must not exist or be empty). Default: a new directory
    /// under [`default_bundles_root`].
    pub fn bundle_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Overrides the extraction limits (tests use small ones).
    pub fn limits(mut self, limits: ExtractLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Chooses the bundle kind.
    pub fn kind(mut self, kind: BundleKind) -> Self {
        self.kind = kind;
        self
    }

    /// Replaces the image's entrypoint + cmd.
    pub fn args(mut self, args: Vec<String>) -> Self {
        self.args = Some(args);
        self
    }

    /// Adds `KEY=value` environment entries.
    pub fn env(mut self, env: Vec<String>) -> Self {
        self.env.extend(env);
        self
    }

    /// The container hostname (default `magikrun`).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Writes a rootless configuration ([`make_rootless`] with [`RootlessIds::current`]) or not.
    /// Default: rootless exactly when this process is not root.
    pub fn rootless(mut self, rootless: bool) -> Self {
        self.rootless = Some(rootless);
        self
    }

    /// Unpacks the layers and writes the configuration. On error the bundle directory is removed.
    pub async fn build(self) -> Result<Bundle> {
        let image = self
            .image
            .ok_or_else(|| Error::InvalidBundle("no image given to the builder".into()))?
            .clone();
        let store = self
            .storage
            .ok_or_else(|| Error::InvalidBundle("no blob store given to the builder".into()))?
            .clone();
        let dir = match self.dir.clone() {
            Some(d) => d,
            None => {
                let hex = image.manifest_digest.trim_start_matches("sha256:");
                let short = &hex[..hex.len().min(12)];
                let root = default_bundles_root()?;
                std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
                tempfile::Builder::new()
                    .prefix(&format!("{short}-"))
                    .tempdir_in(&root)
                    .map_err(|e| Error::io(&root, e))?
                    .keep()
            }
        };
        let opts = BuildOpts {
            limits: self.limits,
            kind: self.kind,
            args: self.args,
            env: self.env,
            hostname: self.hostname,
            rootless: self
                .rootless
                .unwrap_or_else(|| !nix::unistd::geteuid().is_root()),
        };
        tokio::task::spawn_blocking(move || {
            let r = build_blocking(&image, &store, &dir, &opts);
            if r.is_err() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            r
        })
        .await
        .map_err(|e| Error::InvalidBundle(format!("build task failed: {e}")))?
    }
}

/// Unpacks `image`'s layers into `rootfs` (must exist), checking the layer count, every layer's
/// digest and diff id, and the limits.
pub fn unpack_image(
    image: &PulledImage,
    store: &BlobStore,
    rootfs: &Path,
    limits: &ExtractLimits,
) -> Result<u64> {
    let layers = image.manifest.layers();
    if layers.len() > limits.max_layers {
        return Err(Error::TooManyLayers {
            count: layers.len(),
            limit: limits.max_layers,
        });
    }
    let diff_ids = image.config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(Error::InvalidImage(format!(
            "{} layers but {} diff ids in the config",
            layers.len(),
            diff_ids.len()
        )));
    }
    let mut used = 0u64;
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        if layer.size() > limits.max_layer_size {
            return Err(Error::SizeLimit {
                what: format!("layer {}", layer.digest()),
                limit: limits.max_layer_size,
            });
        }
        let f = store.open_blob(layer.digest().as_ref())?;
        let stats = extract_layer(f, rootfs, limits, &mut used)?;
        if stats.digest != layer.digest().to_string() {
            return Err(Error::DigestMismatch {
                expected: layer.digest().to_string(),
                actual: stats.digest,
            });
        }
        if &stats.diff_id != diff_id {
            return Err(Error::DigestMismatch {
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
    }
    Ok(used)
}

fn image_args(config: &ImageConfiguration) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(c) = config.config() {
        if let Some(ep) = c.entrypoint() {
            args.extend(ep.iter().cloned());
        }
        if let Some(cmd) = c.cmd() {
            args.extend(cmd.iter().cloned());
        }
    }
    args
}

/// Whether the image is a WASM image. Pure.
pub fn is_wasm_image(config: &ImageConfiguration, args: &[String]) -> bool {
    let arch = config.architecture().to_string();
    let os = config.os().to_string();
    arch == "wasm"
        || os == "wasi"
        || os == "wasip1"
        || args.first().is_some_and(|a| a.ends_with(".wasm"))
}

/// Parses an image `user` (`uid[:gid]`, or `root`) into ids; names other than `root` are looked
/// up in the rootfs' `/etc/passwd` only when it is a regular file (never through a symlink).
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let etc = rootfs.join("etc");
        if !std::fs::symlink_metadata(&etc).ok()?.is_dir() {
            return None;
        }
        let path = etc.join(file);
        let m = std::fs::symlink_metadata(&path).ok()?;
        if !m.is_file() || m.len() > 1 << 20 {
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 3 && f[0] == name {
                // passwd: name:x:uid:gid:…; group: name:x:gid:members.
                let id: u32 = f[2].parse().ok()?;
                Some((id, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id)))
            } else {
                None
            }
        })
    };
    let (uid, pgid) = if let Ok(n) = u.parse::<u32>() {
        (n, n)
    } else if u == "root" {
        (0, 0)
    } else {
        lookup("passwd", u).ok_or_else(|| Error::InvalidImage(format!("unknown user {u:?}")))?
    };
    let gid = match g {
        None => pgid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) if g == "root" => 0,
            Err(_) => lookup("group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| Error::InvalidImage(format!("unknown group {g:?}")))?,
        },
    };
    Ok((uid, gid))
}

struct BuildOpts {
    limits: ExtractLimits,
    kind: BundleKind,
    args: Option<Vec<String>>,
    env: Vec<String>,
    hostname: Option<String>,
    rootless: bool,
}

fn build_blocking(
    image: &PulledImage,
    store: &BlobStore,
    dir: &Path,
    b: &BuildOpts,
) -> Result<Bundle> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).map_err(|e| Error::io(&rootfs, e))?;
    unpack_image(image, store, &rootfs, &b.limits)?;

    let args = b.args.clone().unwrap_or_else(|| image_args(&image.config));
    if args.is_empty() {
        return Err(Error::InvalidImage(
            "image has no entrypoint or cmd and none was given".into(),
        ));
    }
    let mut env: Vec<String> = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    env.extend(b.env.iter().cloned());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }

    let wasm = match b.kind {
        BundleKind::Wasm => true,
        BundleKind::OciRuntime => false,
        BundleKind::Auto => is_wasm_image(&image.config, &args),
    };
    if wasm {
        let module = resolve_file_in_rootfs(&rootfs, &args[0])?;
        let wasi = WasiConfig {
            args,
            env: env
                .iter()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            ..WasiConfig::default()
        };
        return Ok(Bundle::Wasm { module, wasi });
    }

    // Mount points the hardened config needs, created inside the (still writable) rootfs.
    for d in ["proc", "dev", "sys", "tmp"] {
        let comps = sanitize_entry_path(d.as_bytes())?;
        let p = rootfs.join(&comps[0]);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidBundle(format!(
                    "/{d} in the image is not a directory"
                )))
            }
            Err(_) => std::fs::create_dir(&p).map_err(|e| Error::io(&p, e))?,
        }
    }
    let user = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let (uid, gid) = resolve_user(&user, &rootfs)?;
    let cwd = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let spec = ProcessSpec {
        args,
        env,
        cwd,
        uid,
        gid,
    };
    let mut config = hardened_config(&spec, b.hostname.as_deref().unwrap_or("magikrun"));
    if b.rootless {
        // The bundle directory's name is unique (a fresh temp dir, or the caller's choice).
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        make_rootless(&mut config, RootlessIds::current(), &name);
    }
    let path = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&config)?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(Bundle::OciRuntime {
        path: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProcessSpec {
        ProcessSpec {
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn hardened_config_parses_as_runtime_spec() {
        let v = hardened_config(&spec(), "h");
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(v.clone()).unwrap();
        assert!(parsed.root().as_ref().unwrap().readonly().unwrap());
        let p = parsed.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert!(caps.permitted().as_ref().unwrap().is_empty());
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(
            linux.masked_paths().as_ref().unwrap().len(),
            MASKED_PATHS.len()
        );
        assert!(linux.seccomp().is_some());
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()))
            .collect();
        for want in ["Pid", "Network", "Ipc", "Uts", "Mount", "Cgroup"] {
            assert!(ns.iter().any(|n| n == want), "{want} in {ns:?}");
        }
        assert_eq!(v["hostname"], "h");
    }

    #[test]
    fn rootless_config_maps_the_caller_and_parses() {
        let mut c = hardened_config(&spec(), "h");
        c["mounts"][2]["options"]
            .as_array_mut()
            .unwrap()
            .extend([json!("gid=5"), json!("uid=0")]);
        make_rootless(&mut c, RootlessIds { uid: 1234, gid: 99 }, "b1");
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(c.clone()).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(
            ns.iter()
                .filter(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
                .count(),
            1
        );
        let uid = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 1234, 1)
        );
        let gid = &linux.gid_mappings().as_ref().unwrap()[0];
        assert_eq!((gid.container_id(), gid.host_id(), gid.size()), (0, 99, 1));
        let user = parsed.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (0, 0));
        assert!(linux.resources().is_none());
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/magikrun-1234/b1"))
        );
        let opts = c["mounts"][2]["options"].as_array().unwrap();
        assert!(!opts.contains(&json!("gid=5")), "{opts:?}");
        assert!(opts.contains(&json!("uid=0")), "{opts:?}");
        // Still hardened: no capabilities, no new privileges, seccomp.
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["process"]["capabilities"]["bounding"], json!([]));
        assert!(c["linux"]["seccomp"].is_object());
        // Idempotent: one user namespace after a second pass.
        make_rootless(&mut c, RootlessIds { uid: 1234, gid: 99 }, "b1");
        let n = c["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(n.iter().filter(|x| x["type"] == "user").count(), 1);
    }

    #[test]
    fn seccomp_profile_denies_dangerous_syscalls() {
        let p = default_seccomp_profile();
        let names: Vec<&str> = p["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for must in [
            "ptrace",
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "kexec_load",
            "init_module",
            "userfaultfd",
            "io_uring_setup",
        ] {
            assert!(names.contains(&must), "{must}");
        }
        assert_eq!(p["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(p["architectures"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn user_resolution() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        for (u, want) in [
            ("", (0, 0)),
            ("0", (0, 0)),
            ("1000", (1000, 1000)),
            ("1000:5", (1000, 5)),
            ("app", (1000, 1001)),
            ("app:staff", (1000, 50)),
            ("root", (0, 0)),
        ] {
            assert_eq!(resolve_user(u, d.path()).unwrap(), want, "{u}");
        }
        assert!(resolve_user("nobody", d.path()).is_err());
        assert!(resolve_user("app:nogroup", d.path()).is_err());
        // A passwd that is a symlink (possibly to a host file) is never read.
        let d2 = tempfile::tempdir().unwrap();
        std::fs::create_dir(d2.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(d.path().join("etc/passwd"), d2.path().join("etc/passwd"))
            .unwrap();
        assert!(resolve_user("app", d2.path()).is_err());
    }
}

//! `KrunRuntime`: MicroVM isolation through libkrun (KVM / Hypervisor.framework).
//!
//! Owns: whether libkrun can be used here and the MicroVM backend. Must never: fail the default
//! build: libkrun is loaded at run time (`dlopen`) only when the `krun` cargo feature is on, so
//! a machine without libkrun still builds and reports the backend unavailable with a reason.
//! With the feature, `start` forks a child that configures the VM (vCPUs, memory, root,
//! command) and enters it with `krun_start_enter`; a thread reaps it. This path compiles and its
//! checks are unit-tested, but it has not run against a real libkrun (none on the dev machines).

use async_trait::async_trait;

use crate::bundle::Bundle;
use crate::constants::{MAX_VCPUS, MAX_VM_MEMORY_MIB};
use crate::error::{Error, Result};
use crate::platform::{Capability, Platform};
use crate::runtimes::{OciRuntime, Signal};
use crate::state::ContainerState;

/// Shared object names tried when loading libkrun.
pub const LIBKRUN_NAMES: [&str; 2] = ["libkrun.so.1", "libkrun.so"];

/// Whether the krun backend can run on `platform` in this build: `Ok(())` or the reason.
pub fn availability(platform: &Platform) -> std::result::Result<(), String> {
    if !cfg!(feature = "krun") {
        return Err("built without the `krun` cargo feature".into());
    }
    if !platform.has_capability(Capability::Hypervisor) {
        return Err("no usable hypervisor (/dev/kvm cannot be opened read-write)".into());
    }
    if !libkrun_present() {
        return Err(format!("libkrun not found ({})", LIBKRUN_NAMES.join(", ")));
    }
    Ok(())
}

/// Checks a MicroVM bundle's resources against `MAX_VCPUS` and `MAX_VM_MEMORY_MIB`. Pure.
pub fn validate_vm_resources(vcpus: u8, memory_mib: u32) -> Result<()> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::InvalidBundle(format!(
            "vcpus must be 1..={MAX_VCPUS}, got {vcpus}"
        )));
    }
    if !(16..=MAX_VM_MEMORY_MIB).contains(&memory_mib) {
        return Err(Error::InvalidBundle(format!(
            "memory must be 16..={MAX_VM_MEMORY_MIB} MiB, got {memory_mib}"
        )));
    }
    Ok(())
}

#[cfg(all(feature = "krun", target_os = "linux"))]
fn libkrun_present() -> bool {
    LIBKRUN_NAMES.iter().any(|name| {
        let Ok(c) = std::ffi::CString::new(*name) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated string; RTLD_LAZY only maps the library, and the
        // handle is closed right away without calling into it.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if h.is_null() {
                false
            } else {
                libc::dlclose(h);
                true
            }
        }
    })
}

#[cfg(not(all(feature = "krun", target_os = "linux")))]
fn libkrun_present() -> bool {
    false
}

/// The MicroVM backend. Construction fails where [`availability`] does.
#[derive(Debug)]
pub struct KrunRuntime {
    #[cfg(all(feature = "krun", target_os = "linux"))]
    inner: vm::Vms,
    #[cfg(not(all(feature = "krun", target_os = "linux")))]
    _private: (),
}

impl KrunRuntime {
    /// Loads libkrun; fails with the reason when it cannot be used here.
    pub fn new() -> Result<Self> {
        let p = Platform::detect();
        availability(&p).map_err(|reason| Error::RuntimeUnavailable {
            name: "krun".into(),
            reason,
        })?;
        #[cfg(all(feature = "krun", target_os = "linux"))]
        {
            Ok(KrunRuntime {
                inner: vm::Vms::load()?,
            })
        }
        #[cfg(not(all(feature = "krun", target_os = "linux")))]
        {
            Ok(KrunRuntime { _private: () })
        }
    }
}

fn check_bundle(id: &str, bundle: &Bundle) -> Result<()> {
    crate::state::validate_container_id(id)?;
    match bundle {
        Bundle::MicroVm {
            vcpus,
            memory_mib,
            command,
            rootfs,
            ..
        } => {
            validate_vm_resources(*vcpus, *memory_mib)?;
            if command.is_empty() {
                return Err(Error::InvalidBundle("MicroVm bundle has no command".into()));
            }
            if !rootfs.is_dir() {
                return Err(Error::InvalidBundle(format!(
                    "rootfs {} is not a directory",
                    rootfs.display()
                )));
            }
            Ok(())
        }
        other => Err(Error::UnsupportedBundle {
            runtime: "krun".into(),
            reason: format!("expects a MicroVm bundle, got {}", other.kind()),
        }),
    }
}

#[cfg(not(all(feature = "krun", target_os = "linux")))]
#[async_trait]
impl OciRuntime for KrunRuntime {
    fn name(&self) -> &'static str {
        "krun"
    }

    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        check_bundle(id, bundle)?;
        Err(Error::RuntimeUnavailable {
            name: "krun".into(),
            reason: "built without the `krun` cargo feature".into(),
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        Err(Error::ContainerNotFound(id.into()))
    }

    async fn state(&self, id: &str) -> Result<ContainerState> {
        Err(Error::ContainerNotFound(id.into()))
    }

    async fn kill(&self, id: &str, _signal: Signal) -> Result<()> {
        Err(Error::ContainerNotFound(id.into()))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        Err(Error::ContainerNotFound(id.into()))
    }
}

#[cfg(all(feature = "krun", target_os = "linux"))]
mod vm {
    //! libkrun through `dlopen`: symbols are resolved once in the parent; `start` forks a child
    //! that configures the VM and calls `krun_start_enter`, which turns the child into the VM
    //! (it never returns on success). The child is reaped by a thread that records the exit.
    use super::*;
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::sync::{Arc, Mutex};

    use crate::state::{transition, ContainerStatus, LifecycleOp};

    type CreateCtx = unsafe extern "C" fn() -> i32;
    type SetVmConfig = unsafe extern "C" fn(u32, u8, u32) -> i32;
    type SetRoot = unsafe extern "C" fn(u32, *const libc::c_char) -> i32;
    type SetExec = unsafe extern "C" fn(
        u32,
        *const libc::c_char,
        *const *const libc::c_char,
        *const *const libc::c_char,
    ) -> i32;
    type StartEnter = unsafe extern "C" fn(u32) -> i32;

    #[derive(Clone, Copy)]
    struct Api {
        create_ctx: CreateCtx,
        set_vm_config: SetVmConfig,
        set_root: SetRoot,
        set_exec: SetExec,
        start_enter: StartEnter,
    }

    struct Vm {
        bundle: Bundle,
        status: Option<ContainerStatus>,
        pid: Option<i32>,
        exit: Option<i32>,
    }

    /// Loaded libkrun plus the VMs of this runtime.
    pub(super) struct Vms {
        api: Api,
        vms: Arc<Mutex<HashMap<String, Vm>>>,
    }

    impl std::fmt::Debug for Vms {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Vms").finish_non_exhaustive()
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sym(handle: *mut libc::c_void, name: &str) -> Result<*mut libc::c_void> {
        let c = CString::new(name).map_err(|e| Error::Unsupported(e.to_string()))?;
        // SAFETY: `handle` is a live dlopen handle and `c` a valid C string.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(Error::RuntimeUnavailable {
                name: "krun".into(),
                reason: format!("libkrun lacks {name}"),
            })
        } else {
            Ok(p)
        }
    }

    impl Vms {
        pub(super) fn load() -> Result<Self> {
            let mut handle = std::ptr::null_mut();
            for name in LIBKRUN_NAMES {
                let c = CString::new(name).map_err(|e| Error::Unsupported(e.to_string()))?;
                // SAFETY: valid C string; the handle is kept for the life of the process.
                handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if !handle.is_null() {
                    break;
                }
            }
            if handle.is_null() {
                return Err(Error::RuntimeUnavailable {
                    name: "krun".into(),
                    reason: "libkrun could not be loaded".into(),
                });
            }
            // SAFETY: each symbol is libkrun's public C function with exactly this signature
            // (libkrun.h); transmuting a non-null dlsym pointer to it is how C APIs are bound.
            let api = unsafe {
                Api {
                    create_ctx: std::mem::transmute::<*mut libc::c_void, CreateCtx>(sym(
                        handle,
                        "krun_create_ctx",
                    )?),
                    set_vm_config: std::mem::transmute::<*mut libc::c_void, SetVmConfig>(sym(
                        handle,
                        "krun_set_vm_config",
                    )?),
                    set_root: std::mem::transmute::<*mut libc::c_void, SetRoot>(sym(
                        handle,
                        "krun_set_root",
                    )?),
                    set_exec: std::mem::transmute::<*mut libc::c_void, SetExec>(sym(
                        handle,
                        "krun_set_exec",
                    )?),
                    start_enter: std::mem::transmute::<*mut libc::c_void, StartEnter>(sym(
                        handle,
                        "krun_start_enter",
                    )?),
                }
            };
            Ok(Vms {
                api,
                vms: Arc::new(Mutex::new(HashMap::new())),
            })
        }
    }

    fn cstrings(items: impl IntoIterator<Item = String>) -> Result<Vec<CString>> {
        items
            .into_iter()
            .map(|s| {
                CString::new(s)
                    .map_err(|_| Error::InvalidBundle("NUL byte in command or env".into()))
            })
            .collect()
    }

    #[async_trait]
    impl OciRuntime for KrunRuntime {
        fn name(&self) -> &'static str {
            "krun"
        }

        async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
            check_bundle(id, bundle)?;
            let mut vms = lock(&self.inner.vms);
            if vms.contains_key(id) {
                return Err(Error::ContainerExists(id.into()));
            }
            let status = transition(None, LifecycleOp::Create)?;
            vms.insert(
                id.into(),
                Vm {
                    bundle: bundle.clone(),
                    status,
                    pid: None,
                    exit: None,
                },
            );
            Ok(())
        }

        async fn start(&self, id: &str) -> Result<()> {
            let mut vms = lock(&self.inner.vms);
            let vm = vms
                .get_mut(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            let next = transition(vm.status, LifecycleOp::Start)?;
            let Bundle::MicroVm {
                rootfs,
                command,
                env,
                vcpus,
                memory_mib,
            } = &vm.bundle
            else {
                return Err(Error::InvalidBundle("not a MicroVm bundle".into()));
            };
            // Everything the child needs is prepared before fork: it only calls libkrun.
            let root = cstrings([rootfs.to_string_lossy().into_owned()])?;
            let argv = cstrings(command.iter().cloned())?;
            let envs = cstrings(env.iter().map(|(k, v)| format!("{k}={v}")))?;
            let mut argv_p: Vec<*const libc::c_char> =
                argv.iter().skip(1).map(|c| c.as_ptr()).collect();
            argv_p.push(std::ptr::null());
            let mut env_p: Vec<*const libc::c_char> = envs.iter().map(|c| c.as_ptr()).collect();
            env_p.push(std::ptr::null());
            let api = self.inner.api;
            let (vcpus, mem) = (*vcpus, *memory_mib);
            // SAFETY: the child calls only libkrun functions with pointers prepared above and
            // leaves with _exit; krun_start_enter replaces the process with the VM.
            match unsafe { nix::unistd::fork() }.map_err(|e| Error::Backend {
                runtime: "krun",
                message: e.to_string(),
            })? {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: see above; all pointers outlive these calls (the child never returns).
                    unsafe {
                        let ctx = (api.create_ctx)();
                        if ctx < 0 {
                            libc::_exit(125);
                        }
                        let ctx = ctx as u32;
                        if (api.set_vm_config)(ctx, vcpus, mem) < 0
                            || (api.set_root)(ctx, root[0].as_ptr()) < 0
                            || (api.set_exec)(
                                ctx,
                                argv[0].as_ptr(),
                                argv_p.as_ptr(),
                                env_p.as_ptr(),
                            ) < 0
                        {
                            libc::_exit(126);
                        }
                        (api.start_enter)(ctx);
                        libc::_exit(127)
                    }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    vm.pid = Some(child.as_raw());
                    vm.status = next;
                    let vms = self.inner.vms.clone();
                    let id = id.to_string();
                    let _ = std::thread::Builder::new()
                        .name(format!("krun-{id}"))
                        .spawn(move || {
                            let code = match nix::sys::wait::waitpid(child, None) {
                                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                                _ => -1,
                            };
                            if let Some(vm) = lock(&vms).get_mut(&id) {
                                vm.status = Some(ContainerStatus::Stopped);
                                vm.exit = Some(code);
                                vm.pid = None;
                            }
                        });
                    Ok(())
                }
            }
        }

        async fn state(&self, id: &str) -> Result<ContainerState> {
            let vms = lock(&self.inner.vms);
            let vm = vms
                .get(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            let status = vm
                .status
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            let mut st = ContainerState::new(id, status, vm.pid, vm.bundle.path().to_path_buf());
            if let Some(c) = vm.exit {
                st.annotations
                    .insert("magikrun.exit_code".into(), c.to_string());
            }
            Ok(st)
        }

        async fn kill(&self, id: &str, signal: Signal) -> Result<()> {
            let mut vms = lock(&self.inner.vms);
            let vm = vms
                .get_mut(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            transition(vm.status, LifecycleOp::Kill)?;
            match vm.pid {
                Some(pid) => {
                    // SAFETY: plain kill(2) on the VM process this runtime forked and still tracks.
                    let rc = unsafe { libc::kill(pid, signal.number()) };
                    if rc != 0 {
                        return Err(Error::Backend {
                            runtime: "krun",
                            message: std::io::Error::last_os_error().to_string(),
                        });
                    }
                }
                None => {
                    vm.status = transition(vm.status, LifecycleOp::Exited)?;
                    vm.exit = Some(128 + signal.number());
                }
            }
            Ok(())
        }

        async fn delete(&self, id: &str) -> Result<()> {
            let mut vms = lock(&self.inner.vms);
            let vm = vms
                .get(id)
                .ok_or_else(|| Error::ContainerNotFound(id.into()))?;
            transition(vm.status, LifecycleOp::Delete)?;
            vms.remove(id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_resource_bounds() {
        for (v, m, ok) in [
            (1, 512, true),
            (MAX_VCPUS, MAX_VM_MEMORY_MIB, true),
            (0, 512, false),
            (MAX_VCPUS + 1, 512, false),
            (1, MAX_VM_MEMORY_MIB + 1, false),
            (1, 0, false),
        ] {
            assert_eq!(validate_vm_resources(v, m).is_ok(), ok, "{v} {m}");
        }
    }

    #[tokio::test]
    async fn bundle_checks() {
        let d = tempfile::tempdir().unwrap();
        let vm = |vcpus, memory_mib, command: Vec<String>| Bundle::MicroVm {
            rootfs: d.path().to_path_buf(),
            command,
            env: vec![],
            vcpus,
            memory_mib,
        };
        assert!(check_bundle("a", &vm(1, 512, vec!["/bin/true".into()])).is_ok());
        assert!(check_bundle("a", &vm(0, 512, vec!["/bin/true".into()])).is_err());
        assert!(check_bundle("a", &vm(1, 512, vec![])).is_err());
        assert!(check_bundle("../a", &vm(1, 512, vec!["/bin/true".into()])).is_err());
        let wasm = Bundle::Wasm {
            module: "/m.wasm".into(),
            wasi: Default::default(),
        };
        assert!(matches!(
            check_bundle("a", &wasm),
            Err(Error::UnsupportedBundle { .. })
        ));
    }

    #[test]
    fn unavailable_here_has_reason() {
        // On a build without the feature, or without libkrun, construction explains why.
        if !cfg!(feature = "krun") || !libkrun_present() {
            let err = KrunRuntime::new().unwrap_err();
            assert!(matches!(err, Error::RuntimeUnavailable { .. }));
            assert!(err.to_string().contains("krun"));
        }
    }
}

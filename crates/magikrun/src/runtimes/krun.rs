//! `KrunRuntime`: MicroVM isolation through libkrun (KVM / Hypervisor.framework).
//!
//! Owns: whether libkrun can be used here and the MicroVM backend. Must never: fail the default
//! build: libkrun is loaded at run time (`dlopen`) only when the `krun` cargo feature is on, so
//! a machine without libkrun still builds and reports the backend unavailable with a reason.

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
        Ok(KrunRuntime { _private: () })
    }

    fn not_here(&self) -> Error {
        Error::RuntimeUnavailable {
            name: "krun".into(),
            reason: "MicroVM lifecycle is not implemented in this build".into(),
        }
    }
}

#[async_trait]
impl OciRuntime for KrunRuntime {
    fn name(&self) -> &'static str {
        "krun"
    }

    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        crate::state::validate_container_id(id)?;
        match bundle {
            Bundle::MicroVm {
                vcpus, memory_mib, ..
            } => {
                validate_vm_resources(*vcpus, *memory_mib)?;
                Err(self.not_here())
            }
            other => Err(Error::UnsupportedBundle {
                runtime: "krun".into(),
                reason: format!("expects a MicroVm bundle, got {}", other.kind()),
            }),
        }
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

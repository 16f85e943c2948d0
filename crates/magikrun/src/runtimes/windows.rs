//! `WindowsRuntime`: Linux containers on Windows through WSL2 (Windows builds only).
//!
//! Owns: the Windows backend's place in the registry. Must never: be offered on a host without
//! WSL2. The container lifecycle inside WSL2 is not implemented in this build: `create` reports
//! that, and the registry only lists the backend where `wsl --status` succeeds.

use async_trait::async_trait;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::runtimes::{OciRuntime, Signal};
use crate::state::ContainerState;

/// The WSL2 backend.
#[derive(Debug, Default)]
pub struct WindowsRuntime {
    _private: (),
}

impl WindowsRuntime {
    /// A backend handle.
    pub fn new() -> Self {
        WindowsRuntime { _private: () }
    }
}

#[async_trait]
impl OciRuntime for WindowsRuntime {
    fn name(&self) -> &'static str {
        "windows"
    }

    async fn create(&self, id: &str, bundle: &Bundle) -> Result<()> {
        crate::state::validate_container_id(id)?;
        if !matches!(bundle, Bundle::OciRuntime { .. }) {
            return Err(Error::UnsupportedBundle {
                runtime: "windows".into(),
                reason: format!("expects an OCI runtime bundle, got {}", bundle.kind()),
            });
        }
        Err(Error::Unsupported(
            "WSL2 container lifecycle is not implemented in this build".into(),
        ))
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

//! `magikrun`: an OCI runtime abstraction layer.
//!
//! One [`OciRuntime`](runtimes::OciRuntime) trait (create → start → state → kill → delete) over
//! several isolation backends ([`runtimes::YoukiRuntime`] on Linux namespaces + cgroups,
//! [`runtimes::WasmtimeRuntime`] for WASI modules, [`runtimes::KrunRuntime`] for MicroVMs behind
//! the `krun` feature), plus what it takes to get from an image to a runnable bundle:
//! [`pull_image`] into a content-addressed [`BlobStore`], then [`BundleBuilder`].
//!
//! The crate stands alone (no dependency on other workspace crates). It talks to the kernel
//! (prctl, ioctl, fork, dlopen), so `unsafe` is allowed here, with a `// SAFETY:` note on every
//! block. Pod semantics (shared namespaces) are out of scope: callers set namespace paths in
//! `config.json`.
#![allow(unsafe_code)]

pub mod builder;
pub mod bundle;
pub mod constants;
pub mod error;
pub mod extract;
pub mod fuzzing;
pub mod image;
pub mod layout;
pub mod platform;
pub mod runtimes;
pub mod state;
pub mod storage;

pub use builder::{BundleBuilder, BundleKind};
pub use bundle::{Bundle, Preopen, WasiConfig};
pub use constants::*;
pub use error::{Error, Result};
pub use extract::{extract_layer, ExtractLimits};
pub use image::{pull_image, pull_image_with, ImageSource, PullOptions, PulledImage};
pub use platform::{Capability, CgroupMode, Platform};
pub use runtimes::{OciRuntime, RuntimeRegistry, Signal};
pub use state::{ContainerState, ContainerStatus};
pub use storage::{BlobStore, Digest};

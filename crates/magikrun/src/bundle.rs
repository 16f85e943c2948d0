//! Bundle formats handed to runtimes.
//!
//! Owns: [`Bundle`] and [`WasiConfig`]/[`Preopen`]. Must never: grant a WASM module anything its
//! `WasiConfig` does not list (no inherited environment, no ambient filesystem).

use std::path::{Path, PathBuf};

use crate::constants::{DEFAULT_WASM_FUEL, MAX_WASM_MEMORY_PAGES};

/// A host directory a WASM module may see, and under which guest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Host directory.
    pub host: PathBuf,
    /// Path the guest sees (e.g. `/data`).
    pub guest: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// What a WASM module gets: arguments, environment, preopened directories and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasiConfig {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// Environment variables (nothing is inherited from the host).
    pub env: Vec<(String, String)>,
    /// Directories the module may open; nothing else on the host is reachable.
    pub preopens: Vec<Preopen>,
    /// Fuel (≈ instructions) before the module is stopped.
    pub fuel: u64,
    /// Most 64 KiB pages the module's memory may grow to (capped at `MAX_WASM_MEMORY_PAGES`).
    pub max_memory_pages: u64,
    /// Bytes given to the module on stdin.
    pub stdin: Vec<u8>,
}

impl Default for WasiConfig {
    fn default() -> Self {
        WasiConfig {
            args: vec!["main.wasm".into()],
            env: Vec::new(),
            preopens: Vec::new(),
            fuel: DEFAULT_WASM_FUEL,
            max_memory_pages: MAX_WASM_MEMORY_PAGES,
            stdin: Vec::new(),
        }
    }
}

/// A runnable unit: which kind decides which runtime can take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bundle {
    /// An OCI runtime bundle directory: `config.json` + `rootfs/` (youki, windows).
    OciRuntime {
        /// Bundle directory.
        path: PathBuf,
    },
    /// A WASM module under WASI (wasmtime).
    Wasm {
        /// The `.wasm` (or `.wat`) file.
        module: PathBuf,
        /// Arguments, environment, preopens, limits.
        wasi: WasiConfig,
    },
    /// A root filesystem booted in a MicroVM (krun).
    MicroVm {
        /// Root filesystem directory.
        rootfs: PathBuf,
        /// Program and arguments run in the VM.
        command: Vec<String>,
        /// Environment of the program.
        env: Vec<(String, String)>,
        /// vCPUs (≤ `MAX_VCPUS`).
        vcpus: u8,
        /// Memory in MiB (≤ `MAX_VM_MEMORY_MIB`).
        memory_mib: u32,
    },
}

impl Bundle {
    /// A short name of the bundle kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Bundle::OciRuntime { .. } => "oci-runtime",
            Bundle::Wasm { .. } => "wasm",
            Bundle::MicroVm { .. } => "microvm",
        }
    }

    /// The path reported as `bundle` in the container's state.
    pub fn path(&self) -> &Path {
        match self {
            Bundle::OciRuntime { path } => path,
            Bundle::Wasm { module, .. } => module,
            Bundle::MicroVm { rootfs, .. } => rootfs,
        }
    }
}

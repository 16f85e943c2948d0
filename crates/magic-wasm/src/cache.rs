//! The on-disk cache of compiled controllers.
//!
//! Owns: `DATA_DIR/runtime/wasm-cache/<key>.cwasm` where the key is the SHA-256 of the
//! `controller.wasm` bytes and of the engine's compatibility hash (wasmtime version, target,
//! compiler settings), written atomically with a SHA-256 of the artifact beside it
//! (`<key>.sha256`). Must never: load an artifact whose checksum does not match (a torn write,
//! disk corruption or a stranger's file is recompiled, never run), or write outside its dir.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::WasmError;

/// The cache directory and this engine's compatibility fingerprint.
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_hash: String,
}

impl DiskCache {
    /// Create (mode 0700) or open the cache at `dir`.
    pub(crate) fn open(dir: PathBuf, engine: &wasmtime::Engine) -> Result<DiskCache, WasmError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| WasmError::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(DiskCache {
            dir,
            engine_hash: format!("{:016x}", hasher.finish()),
        })
    }

    /// The cache key of `bytes` for this engine.
    pub(crate) fn key(&self, bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(bytes);
        h.update(self.engine_hash.as_bytes());
        hex::encode(h.finalize())
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.cwasm")),
            self.dir.join(format!("{key}.sha256")),
        )
    }

    /// The cached component for `key`, if present, intact and loadable by this engine.
    pub(crate) fn load(&self, engine: &wasmtime::Engine, key: &str) -> Option<Component> {
        let (artifact, sum) = self.paths(key);
        let bytes = std::fs::read(&artifact).ok()?;
        let expected = std::fs::read_to_string(&sum).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(path = %artifact.display(), "cached compiled controller fails its checksum; recompiling");
            return None;
        }
        // SAFETY: `deserialize` runs machine code from `bytes` unchecked. These bytes were
        // produced by `Component::serialize` of an engine with the same compatibility hash (it
        // is part of the key and wasmtime re-checks it), written by this runtime into its own
        // 0700 directory, and their SHA-256 matches the one written beside them.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cached compiled controller not loadable; recompiling");
                None
            }
        }
    }

    /// Write `component` under `key` (artifact and checksum via temp files + rename).
    pub(crate) fn store(&self, key: &str, component: &Component) -> Result<(), WasmError> {
        let bytes = component
            .serialize()
            .map_err(|e| WasmError::Internal(format!("{e:#}")))?;
        let (artifact, sum) = self.paths(key);
        let write = |path: &PathBuf, data: &[u8]| -> std::io::Result<()> {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        let io = |e: std::io::Error| WasmError::Internal(format!("cache write: {e}"));
        write(&sum, hex::encode(Sha256::digest(&bytes)).as_bytes()).map_err(io)?;
        write(&artifact, &bytes).map_err(io)?;
        Ok(())
    }
}

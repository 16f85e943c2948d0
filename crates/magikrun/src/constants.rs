//! Security constants: the bounds every other module enforces.
//!
//! Owns: the numeric limits from the seed README. Must never: be loosened at run time (callers
//! that need smaller limits, e.g. tests, pass them explicitly through [`crate::ExtractLimits`]).

use std::time::Duration;

/// Largest accepted single layer, compressed or uncompressed (512 MiB).
pub const MAX_LAYER_SIZE: u64 = 512 * 1024 * 1024;
/// Largest accepted unpacked root filesystem (4 GiB).
pub const MAX_ROOTFS_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Most layers accepted in one image.
pub const MAX_LAYERS: usize = 128;
/// Largest accepted WASM module (256 MiB).
pub const MAX_WASM_MODULE_SIZE: u64 = 256 * 1024 * 1024;
/// Most 64 KiB pages one WASM linear memory may grow to (65,536 pages = 4 GiB).
pub const MAX_WASM_MEMORY_PAGES: u64 = 65_536;
/// Size of one WASM page in bytes.
pub const WASM_PAGE_SIZE: u64 = 65_536;
/// Default fuel (≈ instructions) given to one WASM execution: one billion.
pub const DEFAULT_WASM_FUEL: u64 = 1_000_000_000;
/// Largest MicroVM memory in MiB.
pub const MAX_VM_MEMORY_MIB: u32 = 4_096;
/// Most vCPUs for one MicroVM.
pub const MAX_VCPUS: u8 = 8;
/// Bound on a whole image pull (manifest, config and every layer).
pub const IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on creating or starting one container.
pub const CONTAINER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted container id (the OCI CLI gives no bound; runc/youki use similar ones).
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Largest accepted manifest, image config or index document (4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;
/// Most entries accepted in one layer archive.
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;
/// OCI runtime-spec version this crate's state and config documents follow.
pub const OCI_VERSION: &str = "1.2.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_values() {
        assert_eq!(MAX_LAYER_SIZE, 536_870_912);
        assert_eq!(MAX_ROOTFS_SIZE, 4_294_967_296);
        assert_eq!(MAX_LAYERS, 128);
        assert_eq!(MAX_WASM_MODULE_SIZE, 268_435_456);
        assert_eq!(MAX_WASM_MEMORY_PAGES, 65_536);
        assert_eq!(DEFAULT_WASM_FUEL, 1_000_000_000);
        assert_eq!(MAX_VM_MEMORY_MIB, 4096);
        assert_eq!(MAX_VCPUS, 8);
        assert_eq!(IMAGE_PULL_TIMEOUT.as_secs(), 300);
        assert_eq!(CONTAINER_START_TIMEOUT.as_secs(), 60);
    }

    #[test]
    fn derived_relations_hold() {
        // 65,536 pages of 64 KiB is exactly 4 GiB, the seed's WASM memory ceiling.
        assert_eq!(MAX_WASM_MEMORY_PAGES * WASM_PAGE_SIZE, 4 << 30);
        const { assert!(MAX_LAYER_SIZE < MAX_ROOTFS_SIZE) };
        const { assert!(MAX_WASM_MODULE_SIZE <= MAX_LAYER_SIZE) };
        assert!(u64::from(MAX_VM_MEMORY_MIB) * 1024 * 1024 == MAX_ROOTFS_SIZE);
    }
}

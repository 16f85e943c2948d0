//! Fuzz the layer extractor: any byte string, plain or gzip, must give Ok or Err, never a
//! panic, and never create anything outside the rootfs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use magikrun::{extract_layer, ExtractLimits};

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("rootfs");
    let limits = ExtractLimits {
        max_layer_size: 1 << 20,
        max_rootfs_size: 4 << 20,
        max_layers: 4,
        max_entries: 10_000,
    };
    let mut used = 0;
    let _ = extract_layer(data, &rootfs, &limits, &mut used);
    // Only `rootfs` may exist beside the sentinel-free temp root.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rootfs")]);
});

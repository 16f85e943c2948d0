//! Layer extraction (`magikrun::extract_layer`). The logic and its invariants (no panic;
//! nothing created or changed outside the rootfs; no device, FIFO or setuid file inside it)
//! live in `magikrun::fuzzing::check_extract_invariants`, which a randomized unit test also
//! runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = magikrun::fuzzing::check_extract_invariants(data) {
        panic!("extract invariant violated: {violation}");
    }
});

//! URL/host parsing + allowlist + address classification. The logic (and its invariants, e.g.
//! "never allows a non-public address unless allow_ips covers it") lives in
//! `magic_egress::fuzzing::check_invariants`, which a randomized unit test also runs on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = magic_egress::fuzzing::check_invariants(data) {
        panic!("egress invariant violated: {violation}");
    }
});

#!/bin/sh
# WASM controller benchmark (release build): a no-op WASM controller over HTTP, instantiate +
# call + drop alone, and in the same run an axum hello world and the same no-op as a Python
# controller (process mode: needs root). Bounded: BENCH_REQUESTS requests per scenario (default
# 20000), at most 20 s each. BENCH_RUST_LOG sets the server's RUST_LOG (default info).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p magic-cli --bin magic --example wasm_bench
exec target/release/examples/wasm_bench target/release/magic

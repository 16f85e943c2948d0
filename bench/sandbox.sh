#!/bin/sh
# Sandbox benchmark (release build). Needs root (process mode) and python3; bubblewrap is
# optional (its baseline is skipped when `bwrap` is missing). Bounded: BENCH_REQUESTS
# requests per scenario (default 4000), at most 20 s each.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p magic-cli --bin magic --example sandbox_bench
exec target/release/examples/sandbox_bench target/release/magic

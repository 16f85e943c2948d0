#!/bin/sh
# RUSTC_WRAPPER that adds cargo-fuzz's coverage instrumentation (no sanitizer) only to the
# crates named in $SANCOV_CRATES (space separated, crate names with `_`). Everything else,
# build scripts included, is compiled normally, so heavy dependencies stay uninstrumented and
# no `--target` is needed. Usage: see README.md.
rustc="$1"; shift
name=""
prev=""
for arg in "$@"; do
    if [ "$prev" = "--crate-name" ]; then name="$arg"; fi
    prev="$arg"
done
for c in $SANCOV_CRATES; do
    if [ "$c" = "$name" ]; then
        exec "$rustc" "$@" -Cpasses=sancov-module \
            -Cllvm-args=-sanitizer-coverage-level=4 \
            -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
            -Cllvm-args=-sanitizer-coverage-pc-table \
            -Cllvm-args=-sanitizer-coverage-trace-compares \
            --cfg fuzzing
    fi
done
exec "$rustc" "$@"

#!/bin/sh
# Build controller.wasm from controller.c with clang's wasm32 target (Debian: clang, lld).
# Freestanding: no libc and no WASI imports, only the magic:controller world's imports.
set -eu
cd "$(dirname "$0")"
CC="${CC:-clang}"
"$CC" --target=wasm32 -O2 -nostdlib -ffreestanding \
  -Wall -Wextra -Werror \
  -Wl,--no-entry \
  -o "${OUT:-controller.wasm}" controller.c

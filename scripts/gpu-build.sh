#!/usr/bin/env bash
# Build the CUDA test binaries, the examples that take --device cuda and the GPU benchmark
# here (no CUDA needed: cudarc loads the libraries at run time) and collect them, stripped,
# in .carry/bin (ignored by git) for the GPU host, which has no Rust toolchain. Then run
# scripts/gpu-run.sh there. Usage: scripts/gpu-build.sh [DEST]   (DEST default .carry/bin)
#
# The release profile's single-unit LTO build is slow on a 2-core machine; this uses 16
# codegen units and no LTO (set GPU_BUILD_FULL=1 for the real release profile).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.carry/bin}
rm -rf "$out" && mkdir -p "$out"
if [ "${GPU_BUILD_FULL:-0}" != 1 ]; then
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
cargo test --release -p tensor-cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        name = "lib" if kind == "lib" else m["target"]["name"]
        shutil.copy(m["executable"], os.path.join(sys.argv[1], "test-" + name))
' "$out"
cargo build --release -p tensor-examples --example train_digits --example chat
cargo build --release -p tensor-benches --bin gpu_bench
target=${CARGO_TARGET_DIR:-target}
cp "$target/release/examples/train_digits" "$target/release/examples/chat" \
   "$target/release/gpu_bench" "$out/"
strip "$out"/*
ls -la "$out"

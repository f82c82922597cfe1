#!/usr/bin/env bash
# Build the CUDA test and benchmark binaries here (no CUDA needed) and collect them, stripped,
# in .carry/bin for the GPU host, which has no Rust toolchain. Run them there with
# scripts/gpu-run.sh. Usage: scripts/gpu-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.carry/bin
rm -rf "$out" && mkdir -p "$out"
# Test binaries of the CUDA crate (the conformance suite, host checks, op tests).
cargo test --release -p tensor-cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        shutil.copy(m["executable"], os.path.join(sys.argv[1], "test-" + name))
' "$out"
# Examples and the GPU benchmark.
cargo build --release -p tensor-examples --example train_digits --example chat --example gpu_bench
for b in train_digits chat gpu_bench; do cp "target/release/examples/$b" "$out/"; done
strip "$out"/*
ls -la "$out"

#!/usr/bin/env bash
# The project's one test command (the README's second command; CI runs exactly this):
# every unit, integration and doc test of the workspace, then a short run of the training
# example, so "the main job still works" is part of "the tests pass".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf '\ntest.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found; install Rust (rustup) first"

# nextest runs test binaries in parallel processes and reports per test; plain cargo test is
# the fallback so a bare toolchain can still run everything. Neither runs doc tests.
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace --all-targets"
    cargo nextest run --workspace --all-targets --no-tests=warn || die "unit/integration tests"
else
    step "cargo test --workspace --all-targets (cargo-nextest not installed)"
    cargo test --workspace --all-targets || die "unit/integration tests"
fi

step "cargo test --workspace --doc"
cargo test --workspace --doc || die "doc tests"

# Release mode, as a user would run it; 300 steps keeps this to seconds once built.
step "train_mlp example (300 steps)"
cargo run --release -p tensor-examples --example train_mlp -- --steps 300 ||
    die "the train_mlp example exited with an error"

step "all tests passed"

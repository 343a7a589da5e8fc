#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run): formatting, lints,
# then every unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build the binaries the end-to-end tests run"
cargo build --workspace --bins --quiet

step "cargo test"
cargo test --workspace --quiet

step "tests NOT run here (ignored: they need hardware, or they are measurements)"
cargo test --workspace --quiet -- --ignored --list 2>/dev/null | grep ': test$' || echo "(none)"

step "benchmark, short mode (figures only, never a pass/fail): audit overhead at QD32"
cargo bench --quiet -p swiotlb-tests --bench audit_overhead -- --quick

step "demo (release build)"
./deploy/demo.sh

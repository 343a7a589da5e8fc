#!/usr/bin/env bash
# Builds the pair and runs the demo: host and guest as separate processes, SWIOTLB
# negotiated, data written and read back through the pool, DMA counters printed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec "${CARGO_TARGET_DIR:-target}/release/swiotlb-demo" "$@"

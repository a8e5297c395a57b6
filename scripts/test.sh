#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, the wasm test host on the
# built .wasm modules, and the end-to-end suites on the real Envoy 1.40 with real peers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast

#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and property tests, the wasm test host on the
# built .wasm modules, and the end-to-end suites on the real Envoy 1.40 with real peers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Peers were just installed: a suite that cannot find one is a failure, not a skip.
export MELTEMI_REQUIRE_PEERS=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The native glue is compiled only with the SDK's `native` feature: lint it too.
cargo clippy -p meltemi-sdk -p meltemi-thrift -p meltemi-dubbo -p minirpc --features meltemi-sdk/native --quiet -- -D warnings
# One built set of modules (both kinds) that every suite then uses.
bash scripts/build-modules.sh
# `cargo test --workspace` builds the controller binary for its own integration tests; the
# end-to-end suites use that one instead of building it again under other features
# (tests/e2e/src/workspace.rs, build_controller).
MELTEMI_CONTROLLER_BUILT=1 cargo test --workspace --no-fail-fast

#!/usr/bin/env bash
# The main job: build the wasm filter, start Envoy 1.40 and two MiniRPC servers, drive one
# client connection and show per-request routing, local error replies and metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
cargo run --quiet --release -p meltemi-e2e --bin minirpc-demo

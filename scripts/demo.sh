#!/usr/bin/env bash
# The main job: build the wasm filters, start Envoy 1.40 with MiniRPC and Thrift servers (v1, v2),
# drive one client connection each (our MiniRPC client, the real Apache Thrift Python client) and
# show per-request routing, local error replies, mutation and metrics, on the wasm and the native
# build; then meltemi-controller serving Envoy over ADS and a live route change.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
cargo run --quiet --release -p meltemi-e2e --bin meltemi-demo

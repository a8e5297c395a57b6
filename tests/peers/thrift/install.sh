#!/usr/bin/env bash
# Installs the real Thrift peers used by codecs/thrift tests, idempotently (CI runs it as root on a
# fresh Debian machine; rerunning it is cheap):
#   - Debian thrift-compiler (0.17): generates the Apache Python bindings for echo.thrift;
#   - PyPI thrift 0.25 (Apache Thrift: buffered/framed/THeader x binary/compact);
#   - PyPI thriftpy2 (an independent implementation that parses the IDL at run time).
# Generated code goes to gen-py/ beside this script (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v thrift >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq thrift-compiler >/dev/null
fi

PY="${PYTHON:-python3}"
have() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('$1').startswith('$2') else 1)" 2>/dev/null; }
if ! have thrift 0.25 || ! have thriftpy2 0.; then
    "$PY" -m pip install --quiet --disable-pip-version-check 'thrift==0.25.*' 'thriftpy2>=0.5,<0.8'
fi

# Regenerate only when the IDL changed.
stamp="gen-py/.echo.thrift.sha256"
want="$(sha256sum echo.thrift | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf gen-py
    mkdir -p gen-py
    thrift --gen py -out gen-py echo.thrift
    [ -d gen-py/echo ] || { echo "thrift code generation failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
echo "thrift peers ready: $(thrift --version), $("$PY" -c "import importlib.metadata as m; print('thrift', m.version('thrift'), 'thriftpy2', m.version('thriftpy2'))")"

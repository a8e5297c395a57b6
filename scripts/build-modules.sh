#!/usr/bin/env bash
# Builds every codec as both Envoy modules and writes their manifest:
#   target/modules/<module>.wasm   proxy-wasm (wasm32-wasip1, release: lto, panic = abort)
#   target/modules/lib<module>.so  Envoy dynamic module (ABI v0.2.0, profile `native`: the
#                                  release profile with panic = unwind, contained per hook)
#   target/modules/manifest.json   module, protocol, build kind, file, sha256, Envoy ABI
# Configurations and the controller reference the files by path (or URL) and sha256; Envoy
# finds a dynamic module by name in $ENVOY_DYNAMIC_MODULES_SEARCH_PATH (this directory).
set -euo pipefail
cd "$(dirname "$0")/.."
# crate:protocol for every shipped codec.
CODECS=(meltemi-thrift:thrift meltemi-dubbo:dubbo minirpc:minirpc)
packages=()
for c in "${CODECS[@]}"; do packages+=(-p "${c%%:*}"); done
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip1 || rustup target add wasm32-wasip1
cargo build --quiet --release --target wasm32-wasip1 "${packages[@]}"
cargo build --quiet --profile native --features meltemi-sdk/native "${packages[@]}"
out=target/modules
mkdir -p "$out"
abi=$(grep -o 'v[0-9]*\.[0-9]*\.[0-9]*' sdk/src/native/abi.rs | head -1)
entries=()
for c in "${CODECS[@]}"; do
  crate=${c%%:*} protocol=${c##*:} module=${crate//-/_}
  cp "target/wasm32-wasip1/release/$module.wasm" "$out/$module.wasm"
  cp "target/native/lib$module.so" "$out/lib$module.so"
  for kind in wasm native; do
    if [ "$kind" = wasm ]; then file=$module.wasm; envoy="proxy-wasm 0.2.1 (envoy.wasm.runtime.v8)";
    else file=lib$module.so; envoy="dynamic modules $abi (Envoy 1.40, $(uname -m)-linux)"; fi
    sum=$(sha256sum "$out/$file" | cut -d' ' -f1)
    entries+=("{\"module\":\"$module\",\"protocol\":\"$protocol\",\"build\":\"$kind\",\"file\":\"$file\",\"sha256\":\"$sum\",\"envoy_abi\":\"$envoy\"}")
  done
done
(IFS=,; printf '{"modules":[%s]}\n' "${entries[*]}") | python3 -m json.tool > "$out/manifest.json"
echo "built $(( ${#entries[@]} )) modules into $out:"
python3 - "$out/manifest.json" <<'PY'
import json, sys
for m in json.load(open(sys.argv[1]))["modules"]:
    print(f"  {m['build']:6} {m['protocol']:8} {m['file']:24} sha256 {m['sha256'][:16]}...")
PY

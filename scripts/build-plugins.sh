#!/usr/bin/env bash
# Builds the plugin workspaces to WebAssembly components:
#   plugins/*        (stock plugins)  -> target/plugins/<name>.wasm
#   tests/plugins/*  (test plugins)   -> target/test-plugins/<name>.wasm
# Crates build for wasm32-unknown-unknown with a rustup wasm32 target when one is installed,
# otherwise with Debian's rustc-web, which builds std for wasm from source (-Zbuild-std) and
# links with wasm-ld. The core modules carry wit-bindgen's component type; `gateway plugin
# componentize` (wit-component) turns each into a component.
# GATEWAY_BIN names the gateway binary to use (default: a debug build, built if needed).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-system.sh wasm

if [ -z "${GATEWAY_BIN:-}" ]; then
  cargo build -q -p gateway
  GATEWAY_BIN=target/debug/gateway
fi

build_workspace() {
  local dir=$1 out=$2
  local crates=()
  for manifest in "$dir"/*/Cargo.toml; do
    [ -f "$manifest" ] && crates+=("$(basename "$(dirname "$manifest")")")
  done
  mkdir -p "$out"
  if [ ${#crates[@]} -eq 0 ]; then
    echo "$dir: no plugin crates"
    return
  fi
  local target_dir="$PWD/$dir/target"
  if rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
    (cd "$dir" && cargo build -q --release --target wasm32-unknown-unknown --target-dir "$target_dir")
  else
    (cd "$dir" && RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
      /usr/bin/cargo build -q --release --target wasm32-unknown-unknown \
        -Zbuild-std=std,panic_abort --target-dir "$target_dir")
  fi
  for name in "${crates[@]}"; do
    local module="$target_dir/wasm32-unknown-unknown/release/${name//-/_}.wasm"
    "$GATEWAY_BIN" plugin componentize "$module" "$out/$name.wasm"
  done
  echo "built ${#crates[@]} components into $out: ${crates[*]}"
}

build_workspace plugins target/plugins
build_workspace tests/plugins target/test-plugins

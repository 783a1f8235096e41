#!/usr/bin/env bash
# Builds every crate in plugins/ for wasm32-unknown-unknown into target/plugins/<name>.wasm.
# Uses a rustup wasm32 target when one is installed; otherwise Debian's rustc-web, which
# builds std for wasm from source (-Zbuild-std), with wasm-ld as the linker.
set -euo pipefail
cd "$(dirname "$0")/.."

crates=()
for manifest in plugins/*/Cargo.toml; do
  [ -f "$manifest" ] && crates+=("$(basename "$(dirname "$manifest")")")
done
mkdir -p target/plugins
if [ ${#crates[@]} -eq 0 ]; then
  echo "plugins/: no plugin crates yet"
  exit 0
fi

scripts/setup-system.sh wasm
target_dir="$PWD/plugins/target"
if rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  (cd plugins && cargo build --release --target wasm32-unknown-unknown --target-dir "$target_dir")
else
  (cd plugins && RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
    /usr/bin/cargo build --release --target wasm32-unknown-unknown \
      -Zbuild-std=std,panic_abort --target-dir "$target_dir")
fi
for name in "${crates[@]}"; do
  artifact="$target_dir/wasm32-unknown-unknown/release/${name//-/_}.wasm"
  cp "$artifact" "target/plugins/$name.wasm"
  echo "built target/plugins/$name.wasm"
done

#!/usr/bin/env bash
# Installs the system packages the gateway's build needs (Debian/Ubuntu), only when missing.
#   scripts/setup-system.sh          build tools for the gateway (cmake, clang, pkg-config)
#   scripts/setup-system.sh wasm     also the wasm toolchain for plugins when no rustup wasm target exists
#   scripts/setup-system.sh test     also redis-server (the state-store tests run against a real Redis)
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)

if [ "${1:-}" = "test" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi

if [ "${1:-}" = "wasm" ]; then
  if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
    [ -x /usr/bin/rustc ] || need+=(rustc-web)
    [ -x /usr/bin/cargo ] || need+=(cargo-web)
    ls /usr/lib/rustlib/src/rust/library >/dev/null 2>&1 || need+=(rust-web-src)
    command -v wasm-ld >/dev/null 2>&1 || need+=(lld)
  fi
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The tests use the machine's Redis on 127.0.0.1:6379: start one when none answers (nothing on
# disk; the machine's own service, when it runs, is left alone).
if [ "${1:-}" = "test" ] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

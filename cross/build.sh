#!/usr/bin/env bash
# Release builds of the vitalgate binary for Raspberry Pi OS, with the stripped size of each.
# Usage: cross/build.sh [TARGET...]   (default: aarch64 and armv7)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
for t in "${targets[@]}"; do
  case "$t" in
    aarch64-unknown-linux-gnu) export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc ;;
  esac
  nice -n 10 cargo build --release -p vitalgate --target "$t" -j 2
  bin="target/$t/release/vitalgate"
  # [profile.release] strips symbols already.
  printf '%-32s %s bytes  %s\n' "$t" "$(stat -c %s "$bin")" "$bin"
done

#!/usr/bin/env bash
# Builds the vitalgate .deb packages with cargo-deb: amd64 (PC gateways), arm64 (Raspberry Pi
# OS 64-bit) and armhf (Raspberry Pi OS 32-bit). Prints each package's path and size.
# Usage: packaging/build-deb.sh [TARGET...]   (default: all three)
#   TARGET: x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb missing: cargo install cargo-deb --locked" >&2; exit 1; }

# Man pages from the clap definition (devkit, never shipped), gzipped reproducibly.
rm -rf target/man && mkdir -p target/man
cargo run -q -p vitalgate-devkit -- man --out target/man >/dev/null
gzip -9n target/man/*.1

for t in "${targets[@]}"; do
  case "$t" in
    x86_64-unknown-linux-gnu) args=() ;;
    aarch64-unknown-linux-gnu) export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc; args=(--target "$t") ;;
    armv7-unknown-linux-gnueabihf) export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc; args=(--target "$t") ;;
    *) echo "build-deb: unsupported target $t" >&2; exit 2 ;;
  esac
  # [profile.release] strips already; cargo-deb must not run the host's strip on ARM code.
  # VITALGATE_DEB_PROFILE=dev packages the debug binary as it is (--no-build: `cargo test
  # --workspace` built target/debug/vitalgate; `cargo build -p vitalgate` would rebuild ~40
  # crates with other features). For CI's install test only: the layout, the unit and the
  # installed binary do not depend on optimisation. Stripped by the host's strip, compressed
  # fast. Never ship such a package.
  extra=(--no-strip)
  if [ "${VITALGATE_DEB_PROFILE:-release}" != release ]; then
    [ "$t" = x86_64-unknown-linux-gnu ] || { echo "build-deb: VITALGATE_DEB_PROFILE only for x86_64" >&2; exit 2; }
    [ -x target/debug/vitalgate ] || { echo "build-deb: no target/debug/vitalgate: run cargo test --workspace (or cargo build) first" >&2; exit 1; }
    extra=(--profile "$VITALGATE_DEB_PROFILE" --no-build --strip --fast)
  fi
  deb=$(nice -n 10 cargo deb -p vitalgate "${args[@]}" "${extra[@]}" -- -j 2 | tail -1)
  printf '%-32s %8s bytes  %s\n' "$t" "$(stat -c %s "$deb")" "$deb"
done

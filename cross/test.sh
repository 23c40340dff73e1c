#!/usr/bin/env bash
# Builds the workspace's tests for 64-bit Raspberry Pi OS (aarch64) and runs them under
# qemu-user. CROSS_TARGET=armv7-unknown-linux-gnueabihf selects 32-bit Raspberry Pi OS.
# CROSS_SCOPE=core runs the part where a 32-bit word can bite (decoders and their vectors, the
# agent's unit tests, the store's durability and recovery tests) instead of the whole suite:
# .ci/run uses it for armv7 to stay inside its time budget. The BLE scenarios (18/18 under
# armv7 on 2026-12-06, 140 s) run there with the whole suite before a release.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CROSS_TARGET:-aarch64-unknown-linux-gnu}"
case "$target" in
  aarch64-unknown-linux-gnu)     gcc=aarch64-linux-gnu-gcc;   qemu=qemu-aarch64-static; sysroot=/usr/aarch64-linux-gnu; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static" ;;
  armv7-unknown-linux-gnueabihf) gcc=arm-linux-gnueabihf-gcc; qemu=qemu-arm-static;     sysroot=/usr/arm-linux-gnueabihf; pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static" ;;
  *) echo "cross/test.sh: unsupported CROSS_TARGET $target" >&2; exit 2 ;;
esac
missing=0
for tool in "$gcc" "$qemu"; do
  if ! command -v "$tool" >/dev/null; then
    echo "cross/test.sh: $tool not found; install: apt-get install $pkgs" >&2; missing=1
  fi
done
if ! rustup target list --installed | grep -qx "$target"; then
  echo "cross/test.sh: rust target missing; run: rustup target add $target" >&2; missing=1
fi
[ "$missing" = 0 ] || exit 1

start=$(date +%s)
# ring's build script finds the cross compiler by target prefix (cc crate: CC_<target>).
export "CC_${target//-/_}=$gcc"
# The mosquitto variant of the e2e test needs a native mosquitto; under qemu the embedded
# rumqttd broker variant runs instead.
unset VITALGATE_REQUIRE_MOSQUITTO
# Tests that spawn the vitalgate binary run it through qemu too (tests/common/mod.rs), and a
# binfmt-launched child finds the target's libraries through QEMU_LD_PREFIX.
export VITALGATE_EXEC_WRAPPER="$qemu -L $sysroot"
export QEMU_LD_PREFIX="$sysroot"
# Property tests run their full case counts natively; under emulation fewer cases keep the
# run short while still exercising the ARM code paths.
export PROPTEST_CASES="${PROPTEST_CASES:-16}"
echo "cross/test.sh: building and running the workspace tests for $target under $qemu"
# One log per run: several checkouts may run this at once on one machine.
log=$(mktemp "${TMPDIR:-/tmp}/vitalgate-cross-test-$target.XXXXXX.log")
echo "cross/test.sh: full log: $log"
set +e
# Tests named `on_pty` drive real pseudo-terminals with termios: qemu-user 7.2 does not
# implement the TCGETS2/TCSETS2 ioctls serialport uses to configure a tty (ENOSYS), so they
# cannot run under it. They run natively in .ci/run; everything else runs here.
echo "cross/test.sh: NOTE: skipping the on_pty tests (pseudo-terminal termios is not emulated by qemu-user); they run natively"
case "${CROSS_SCOPE:-all}" in
  all)  scope=(--workspace) ;;
  core) scope=(-p device-drivers --lib --tests)
        echo "cross/test.sh: CROSS_SCOPE=core: device-drivers, then the agent's unit and store tests" ;;
  *) echo "cross/test.sh: unknown CROSS_SCOPE ${CROSS_SCOPE} (all | core)" >&2; exit 2 ;;
esac
nice -n 10 cargo test "${scope[@]}" --target "$target" -j 2 --no-fail-fast -- --skip on_pty >"$log" 2>&1
status=$?
if [ "${CROSS_SCOPE:-all}" = core ]; then
  nice -n 10 cargo test -p vitalgate --lib --test store_durability --test store_recovery \
    --target "$target" -j 2 --no-fail-fast -- --skip on_pty >>"$log" 2>&1 || status=$?
fi
set -e
grep -E '^(test result|running|error)|FAILED|panicked' "$log" || true
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
echo "cross/test.sh: $target: $passed passed, $failed failed in $(( $(date +%s) - start ))s"
exit "$status"

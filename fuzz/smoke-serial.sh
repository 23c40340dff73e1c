#!/usr/bin/env bash
# Short fuzz smoke run of the serial decoders, for CI: each serial_* target for SECONDS (default
# 20) from its committed seed corpus (fuzz/corpus/<target>/seed-*), with a private working corpus
# so that CI leaves no files behind. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Exit status: non-zero on the first crash.
set -euo pipefail
SECONDS_PER_TARGET="${1:-20}"
cd "$(dirname "$0")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in serial_nonin serial_masimo serial_tanita serial_philips serial_generic; do
    mkdir -p "$work/$t"
    status=0
    cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1 \
        >"$work/$t.log" 2>&1 || status=$?
    execs="$(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}')"
    echo "$t: ${execs:-?} executions in ${SECONDS_PER_TARGET}s (exit $status)"
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$work/$t.log"
        exit "$status"
    fi
done

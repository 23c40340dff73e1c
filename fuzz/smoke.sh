#!/usr/bin/env bash
# Fuzz smoke run for CI: builds and runs every [[bin]] target of fuzz/Cargo.toml for N seconds
# (default 20) over its committed seed corpus. New inputs go to a temporary directory, so the
# committed corpus is never modified. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Exit status is non-zero if any target crashes.
set -euo pipefail

SECONDS_PER_TARGET="${1:-20}"
cd "$(dirname "$0")"

targets=$(awk '/^\[\[bin\]\]/{b=1; next} b && /^name *=/{gsub(/.*= *"|".*/, ""); print; b=0}' Cargo.toml)
if [ -z "$targets" ]; then
    echo "no fuzz targets in fuzz/Cargo.toml" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# FUZZ_DEV=1 builds without optimisations (CI: ~1 min instead of ~3 here, at about a
# seventeenth of the executions per second; the seeds and the first mutations still run with
# ASan and overflow checks). Unset: cargo-fuzz's default, an optimised ASan build.
mode=()
[ "${FUZZ_DEV:-0}" = 1 ] && mode=(--dev)
cargo +nightly fuzz build "${mode[@]}"
status=0
for t in $targets; do
    mkdir -p "$tmp/$t"
    seeds=()
    if [ -d "corpus/$t" ]; then
        seeds=("corpus/$t")
    fi
    echo "== $t (${SECONDS_PER_TARGET}s)"
    if ! cargo +nightly fuzz run "${mode[@]}" "$t" "$tmp/$t" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 2>"$tmp/$t.log"; then
        status=1
        echo "FAILED: $t" >&2
        tail -n 40 "$tmp/$t.log" >&2
    fi
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$tmp/$t.log" | sed "s/^/$t: /" || true
done
exit "$status"

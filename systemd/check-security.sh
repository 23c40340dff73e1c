#!/usr/bin/env bash
# Fails if the unit's `systemd-analyze security` exposure is above the limit (default 2.0).
# Works without a running systemd (--offline=yes, systemd >= 250; Debian 12 has 252).
# Usage: systemd/check-security.sh [UNIT_FILE] [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
unit="${1:-systemd/vitalgate.service}"
limit="${2:-2.0}"
out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || true
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -1)
if [ -z "$score" ]; then
  printf '%s\n' "$out" >&2
  echo "check-security: no exposure score in the output of systemd-analyze security" >&2
  exit 1
fi
printf '%s\n' "$out" | grep -E '✗' || true
echo "check-security: $unit exposure $score (limit $limit)"
awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s <= l) }' || {
  echo "check-security: exposure $score is above $limit" >&2; exit 1; }

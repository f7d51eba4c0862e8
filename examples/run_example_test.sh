#!/usr/bin/env bash
# Runs an example and checks every line it prints against a pattern.
# Usage: run_example_test.sh <binary> <ranks> <line-pattern>
set -euo pipefail
binary=$1 ranks=$2 pattern=$3
output=$("$binary" "$ranks")
echo "$output"
lines=$(grep -c -E "^${pattern}\$" <<<"$output" || true)
if [ "$lines" -ne "$ranks" ]; then
  echo "FAIL: expected $ranks lines matching /$pattern/, got $lines"
  exit 1
fi
echo "1 passed, 0 failed"

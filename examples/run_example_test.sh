#!/usr/bin/env bash
# Runs an example as N local processes and checks that every rank printed a line matching a
# pattern. Usage: run_example_test.sh <run_local.sh> <binary> <ranks> <line-pattern>
set -euo pipefail
runner=$1 binary=$2 ranks=$3 pattern=$4
output=$("$runner" "$ranks" "$binary")
echo "$output"
lines=$(grep -c -E "^${pattern}\$" <<<"$output" || true)
if [ "$lines" -ne "$ranks" ]; then
  echo "FAIL: expected $ranks lines matching /$pattern/, got $lines"
  exit 1
fi
echo "1 passed, 0 failed"

#!/usr/bin/env bash
# The conformance checks through TcpTransport in real processes on 127.0.0.1: 2, 3, 4 and 5
# ranks, 1 and 2 connections per neighbour, Ring and Mesh.
# Usage: multiprocess_test.sh <run_local.sh> <worker>
set -uo pipefail
runner=$1 worker=$2
# The "large" element count of the checks (the in-process suite runs the 1 000 003 one).
export COLLIE_TEST_LARGE_COUNT=${COLLIE_TEST_LARGE_COUNT:-100003}
passed=0 failed=0
for algorithm in ring mesh; do
  for ranks in 2 3 4 5; do
    for connections in 1 2; do
      label="$ranks ranks, $connections connection(s), $algorithm"
      if output=$(COLLIE_ALGORITHM=$algorithm timeout 300 "$runner" "$ranks" --connections "$connections" "$worker" 2>&1) &&
        [ "$(grep -c -E "\((tcp/$algorithm)\): [0-9]+ checks, 0 failures" <<<"$output")" -eq "$ranks" ]; then
        echo "ok: $label"
        passed=$((passed + 1))
      else
        echo "FAIL: $label"
        echo "$output" | tail -20
        failed=$((failed + 1))
      fi
    done
  done
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

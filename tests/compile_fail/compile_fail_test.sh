#!/usr/bin/env bash
# Proves that invalid policy pairings do not compile, and that the compiler names the concept that
# failed. Usage: compile_fail_test.sh <source> <include-dir>
set -euo pipefail
source_file=$1
include_dir=$2
compiler=${CXX:-g++}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

expect_failure() {
  local label=$1 pattern=$2
  shift 2
  if "$compiler" -std=c++20 -fsyntax-only -I"$include_dir" "$@" "$source_file" >"$log" 2>&1; then
    echo "FAIL: $label compiled, but it must not"
    exit 1
  fi
  if ! grep -q -E "$pattern" "$log"; then
    echo "FAIL: $label did not compile, but the diagnostic does not mention /$pattern/:"
    head -40 "$log"
    exit 1
  fi
  echo "ok: $label is rejected, the compiler names /$pattern/"
}

expect_failure "Collective<InProcessTransport, NeedsNative>" "AlgorithmFor<.*NeedsNative"
expect_failure "Collective<int, Ring>" "Transport<T>.* \[with T = int\]" -DCOLLIE_CASE_NOT_A_TRANSPORT
expect_failure "all_sum of std::vector<char>" "MutableBuffer<R>" -DCOLLIE_CASE_NOT_AN_ELEMENT
expect_failure "all_sum_async of a temporary vector" "LastingMutableBuffer<R>" -DCOLLIE_CASE_TEMPORARY_ASYNC
echo "4 passed, 0 failed"

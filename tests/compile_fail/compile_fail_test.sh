#!/usr/bin/env bash
# Proves that invalid policy pairings do not compile, and that the compiler names the concept that
# failed; and that, with COLLIE_SEPARATE_COMPILATION, a missing include or a backend switch this
# version cannot honour is a compile error that says what to do.
# Usage: compile_fail_test.sh <invalid_pairing.cpp> <include-dir> <separate_mode.cpp>
set -euo pipefail
source_file=$1
include_dir=$2
separate_file=$3
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

source_file=$separate_file
if ! "$compiler" -std=c++20 -fsyntax-only -I"$include_dir" -DCOLLIE_SEPARATE_COMPILATION \
  "$source_file" >"$log" 2>&1; then
  echo "FAIL: $source_file, with every header it needs, does not compile:"
  head -40 "$log"
  exit 1
fi
echo "ok: the separate-compilation control compiles"
expect_failure "a custom op through a Group without reduce.hpp" "needs .#include <collie/core/reduce.hpp>." \
  -DCOLLIE_SEPARATE_COMPILATION -DCOLLIE_CASE_CUSTOM_OP_WITHOUT_KERNELS
expect_failure "a Group from a Collective without enabled.hpp" "needs <collie/runtime/enabled.hpp>" \
  -DCOLLIE_SEPARATE_COMPILATION -DCOLLIE_CASE_GROUP_WITHOUT_PAIRS
expect_failure "COLLIE_WITH_MPI=1" "mpi backend \(MpiTransport\) is not in this version" -DCOLLIE_WITH_MPI=1
echo "8 passed, 0 failed"

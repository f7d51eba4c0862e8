#!/usr/bin/env bash
# Smoke test of the benchmark drivers: each runs a few small sizes, must exit 0, and must write a
# JSON report whose rows all have #wrong == 0. Sizes stay tiny so the whole test fits in well under
# a minute on two cores; it proves the drivers work, not how fast anything is.
# Usage: smoke_test.sh run_local.sh collectives wire_probe mpi_collectives kernels
set -euo pipefail

if (($# != 5)); then
  echo "usage: $0 run_local.sh collectives wire_probe mpi_collectives kernels" >&2
  exit 2
fi
run_local=$1
collectives=$2
wire_probe=$3
mpi_collectives=$4
kernels=$5

tmp=${TEST_TMPDIR:-$(mktemp -d)}
sweep=(-b 8 -e 64K -f 8 -w 1 -n 2)
failures=0
case_number=0

# The algorithms the driver lists are those bench/compare.py compares: the built-in ones at least.
listed=" $("$collectives" --list-algorithms | tr '\n' ' ')"
if [[ "$listed" != *" ring "* || "$listed" != *" mesh "* ]]; then
  echo "FAIL: collectives --list-algorithms printed: $("$collectives" --list-algorithms)"
  failures=$((failures + 1))
fi

# check_json FILE: the report parses, has rows, and every row's #wrong is 0.
check_json() {
  python3 - "$1" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    report = json.load(f)
rows = report["rows"]
assert rows, "no rows"
for key in ("tool", "contender", "op", "ranks", "peak_rss_bytes", "avg_busbw_gbs"):
    assert key in report, "missing " + key
for row in rows:
    for key in ("min", "avg", "max"):
        assert key in row["time_us"], "row without time_us." + key
bad = [row["bytes"] for row in rows if row["wrong"] != 0]
assert not bad, "#wrong > 0 at sizes %s" % bad
PY
}

# check_iters FILE N BYTES MAX: every row timed max(N, min(MAX, ceil(BYTES / size))) iterations,
# as -n N -N BYTES --max_iters MAX asks.
check_iters() {
  python3 - "$@" <<'PY'
import json, sys
path, least, target, most = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path) as f:
    rows = json.load(f)["rows"]
for row in rows:
    want = max(least, min(most, -(-target // row["bytes"])))
    assert row["iters"] == want, "%d B: %s iterations, expected %d" % (row["bytes"], row["iters"], want)
PY
}

# run_case NAME COMMAND...: runs the command with --json appended, then checks its exit code and
# its report; on failure shows the command's output and goes on with the next case.
run_case() {
  local name=$1
  shift
  case_number=$((case_number + 1))
  local json=$tmp/case$case_number.json
  local log=$tmp/case$case_number.log
  rm -f "$json"
  local code=0
  "$@" --json "$json" >"$log" 2>&1 || code=$?
  if ((code != 0)); then
    echo "FAIL $name: exit code $code: $*"
    cat "$log"
    failures=$((failures + 1))
  elif ! check_json "$json" >>"$log" 2>&1; then
    echo "FAIL $name: bad report $json: $*"
    cat "$log"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# expect_exit NAME CODE COMMAND...: the command fails with exactly this exit code.
expect_exit() {
  local name=$1 expected=$2
  shift 2
  local code=0
  "$@" >"$tmp/expect.log" 2>&1 || code=$?
  if ((code != expected)); then
    echo "FAIL $name: exit code $code, expected $expected: $*"
    cat "$tmp/expect.log"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# --- collie over TCP, two ranks, both algorithms; and over threads -------------------------------
run_case "all_sum tcp/ring" "$run_local" 2 "$collectives" "${sweep[@]}" -o all_sum
run_case "all_sum tcp/mesh" \
  env COLLIE_ALGORITHM=mesh "$run_local" 2 "$collectives" "${sweep[@]}" -o all_sum
for op in all_gather sum_scatter broadcast all_to_all sendrecv; do
  run_case "$op tcp/ring" "$run_local" 2 "$collectives" "${sweep[@]}" -o "$op"
done
run_case "all_sum inproc/ring, 3 threads, bfloat16" \
  "$collectives" --threads 3 "${sweep[@]}" -d bfloat16
run_case "all_sum tcp/ring, iterations by size (-N)" \
  "$run_local" 2 "$collectives" "${sweep[@]}" -N 64K --max_iters 50
if check_iters "$tmp/case$case_number.json" 2 65536 50 >"$tmp/iters.log" 2>&1; then
  echo "ok   -N sets each size's iterations"
else
  echo "FAIL -N sets each size's iterations"
  cat "$tmp/iters.log"
  failures=$((failures + 1))
fi
expect_exit "a bad command line exits 2" 2 "$collectives" --op no_such_op
expect_exit "an impossible root exits 2" 2 "$collectives" --threads 2 -o broadcast --root 7

# --- the peers; each block runs once its program exists ------------------------------------------
if [[ -x $wire_probe ]]; then
  run_case "wire probe" "$run_local" 2 "$wire_probe" "${sweep[@]}"
else
  echo "skip wire probe: $wire_probe is not built"
fi

if [[ -x $mpi_collectives ]]; then
  run_case "mpi all_sum" mpirun --oversubscribe -np 2 "$mpi_collectives" "${sweep[@]}"
else
  echo "skip mpi: $mpi_collectives is not built"
fi

if [[ -x $kernels ]]; then
  # Two small benchmarks: one kernel and the memcpy it is compared with, in cache.
  code=0
  "$kernels" --benchmark_min_time=0.01 \
    --benchmark_filter='^(into/float32/sum|memcpy)/32KiB$' >"$tmp/kernels.log" 2>&1 || code=$?
  if ((code != 0)) || ! grep -q 'memcpy/32KiB' "$tmp/kernels.log"; then
    echo "FAIL kernels: exit code $code"
    cat "$tmp/kernels.log"
    failures=$((failures + 1))
  else
    echo "ok   kernels"
  fi
else
  echo "skip kernels: $kernels is not built"
fi

if ((failures > 0)); then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all cases passed"

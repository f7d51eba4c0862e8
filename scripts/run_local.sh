#!/usr/bin/env bash
# Runs a program as N ranks on this machine over the TCP ring backend: picks N free loopback
# ports, writes the hostfile, starts every rank with MLX_RANK and MLX_HOSTFILE, prefixes each
# output line with its rank, and exits with the first non-zero exit code of any rank (stopping
# the others). Usage: scripts/run_local.sh N [--connections K] program [args...]
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 N [--connections K] program [args...]" >&2
  exit 2
fi
ranks=$1
shift
connections=1
if [[ $1 == --connections ]]; then
  connections=$2
  shift 2
fi

workdir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
}
# Ctrl-C or SIGTERM stops every rank and ends the script with the conventional code.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

hostfile=$workdir/hostfile.json
python3 - "$ranks" "$connections" >"$hostfile" <<'PY'
import json, socket, sys
ranks, connections = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(ranks * connections):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
ports = [s.getsockname()[1] for s in held]
print(json.dumps([[f"127.0.0.1:{ports[r * connections + i]}" for i in range(connections)]
                  for r in range(ranks)]))
PY

token=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
for ((r = 0; r < ranks; r++)); do
  MLX_RANK=$r MLX_HOSTFILE=$hostfile COLLIE_JOB_TOKEN=$token "$@" \
    > >(sed -u "s/^/[$r] /") 2> >(sed -u "s/^/[$r] /" >&2) &
  pids+=($!)
done

status=0
remaining=("${pids[@]}")
while ((${#remaining[@]} > 0)); do
  finished=
  set +e
  wait -n -p finished "${remaining[@]}" 2>/dev/null
  code=$?
  set -e
  if [[ -z ${finished:-} ]]; then
    # When two ranks end at once bash may collect both, then return 127 for the second without
    # naming it: take the saved status of a rank that is gone.
    for pid in "${remaining[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        set +e
        wait "$pid"
        code=$?
        set -e
        finished=$pid
        break
      fi
    done
    [[ -n $finished ]] || continue
  fi
  keep=()
  for pid in "${remaining[@]}"; do [[ $pid == "$finished" ]] || keep+=("$pid"); done
  remaining=("${keep[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "run_local: a rank exited with code $code; stopping the others" >&2
    for pid in "${remaining[@]}"; do kill "$pid" 2>/dev/null || true; done
  fi
done
exit "$status"

#!/usr/bin/env python3
"""Kills one of 4 ranks in the middle of a 256 MiB all_sum over TCP: the 3 survivors must exit
non-zero within the operation deadline plus 5 s, each error naming the dead rank.
Usage: kill_test.py <worker>"""
import json, os, signal, socket, subprocess, sys, tempfile, time

worker = sys.argv[1]
ranks, victim, timeout_ms = 4, 2, 10000
# 256 MiB, as the contract says; the sanitizer builds pass a smaller size (they run 5-20x slower).
mib = os.environ.get("COLLIE_KILL_TEST_MIB", "256")

held = [socket.socket() for _ in range(ranks)]
for s in held:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in held]
for s in held:
    s.close()
hostfile = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
json.dump([[f"127.0.0.1:{p}"] for p in ports], hostfile)
hostfile.close()

procs = []
for r in range(ranks):
    env = dict(os.environ, MLX_RANK=str(r), MLX_HOSTFILE=hostfile.name,
               COLLIE_TIMEOUT_MS=str(timeout_ms), )
    procs.append(subprocess.Popen([worker, "big_sum", mib], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
failures = []
try:
    # Wait until every rank finished one all_sum, then kill the victim during the next ones.
    for r, p in enumerate(procs):
        line = p.stdout.readline()
        if "ready" not in line:
            failures.append(f"rank {r} did not start: {line!r} {p.stderr.read()}")
    if not failures:
        time.sleep(0.2)
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        limit = timeout_ms / 1000 + 5
        for r, p in enumerate(procs):
            if r == victim:
                continue
            try:
                code = p.wait(timeout=max(0.1, limit - (time.monotonic() - killed_at)))
            except subprocess.TimeoutExpired:
                failures.append(f"rank {r} still running {limit:.0f} s after rank {victim} died")
                continue
            took = time.monotonic() - killed_at
            err = p.stderr.read()
            print(f"rank {r}: exit {code} after {took:.2f} s: {err.strip()[:400]}")
            if code == 0:
                failures.append(f"rank {r} exited 0")
            if f"rank {victim} (" not in err:
                failures.append(f"rank {r}'s error does not name rank {victim}: {err!r}")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    os.unlink(hostfile.name)

for f in failures:
    print("FAIL:", f)
print(f"{0 if failures else 1} passed, {1 if failures else 0} failed")
sys.exit(1 if failures else 0)

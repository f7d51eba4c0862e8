#!/usr/bin/env python3
"""collie launch, end to end, with real processes: example 01 on 4 local ranks; a failing rank's
exit code and the stop of the others; SIGTERM to the launcher; stdin broadcast; each backend's
environment; "remote" hosts reached through a stand-in ssh that runs each rank in a session of its
own; one-line errors for bad input. Usage: launch_test.py <collie> <01_all_sum> <fake_ssh>"""
import json, os, random, re, signal, socket, subprocess, sys, tempfile, time

collie, example, fake_ssh = (os.path.abspath(a) for a in sys.argv[1:4])
failures = []
tmp = tempfile.mkdtemp()


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


def free_ports(count):
    """A first port with `count` free ports after it (the launcher takes consecutive ones)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        held = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                held.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free ports")


def launch(args, stdin=subprocess.DEVNULL, timeout=60):
    start = time.monotonic()
    p = subprocess.run([collie, "launch"] + args, stdin=stdin, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - start


# A rank's shell carries a marker as its $0, and the long sleep it starts a unique duration, so
# that either one left behind is found.
SLEEP = str(500000 + os.getpid() % 100000)


def left_running(marker):
    out = subprocess.run(["pgrep", "-f", f"{marker}|sleep {SLEEP}"], capture_output=True,
                         text=True).stdout.split()
    return [pid for pid in out if int(pid) != os.getpid()]


def hostfile(hosts, name):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(hosts, f)
    return path


# 1. Four local ranks of example 01, each line prefixed with its rank.
p, _ = launch(["-n", "4", "-p", str(free_ports(4)), "--", example])
lines = sorted(p.stdout.splitlines())
check(p.returncode == 0, f"example 01: exit {p.returncode}, stderr {p.stderr!r}")
check(lines == [f"[{r}] rank {r} of 4: [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]" for r in range(4)],
      f"example 01 printed {lines!r}")

# 2. A rank that exits 3: the launcher exits 3 within 2 s and no rank is left.
marker = f"collie-launch-test-{os.getpid()}-fail"
script = f'if [ "$MLX_RANK" = 2 ]; then sleep 0.5; exit 3; fi; sleep {SLEEP}'
p, took = launch(["-n", "4", "-p", str(free_ports(4)), "--", "sh", "-c", script, marker])
check(p.returncode == 3, f"failing rank: launcher exit {p.returncode}, expected 3")
check(took < 2.5, f"failing rank: the launcher took {took:.1f} s (0.5 s of it the rank's sleep)")
check("rank 2 exited with code 3" in p.stderr, f"failing rank: stderr {p.stderr!r}")
time.sleep(0.2)
check(not left_running(marker), f"failing rank: processes left: {left_running(marker)}")

# 3. SIGTERM to the launcher reaches every rank; the launcher exits 143; nothing is left.
marker = f"collie-launch-test-{os.getpid()}-term"
script = 'trap "echo stopped; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
proc = subprocess.Popen([collie, "launch", "-n", "3", "-p", str(free_ports(3)), "--", "sh", "-c",
                         script, marker], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
ready = [proc.stdout.readline() for _ in range(3)]
proc.send_signal(signal.SIGTERM)
out, err = proc.communicate(timeout=10)
check(proc.returncode == 143, f"SIGTERM: launcher exit {proc.returncode}, expected 143")
check(sorted(out.splitlines()) == ["[0] stopped", "[1] stopped", "[2] stopped"],
      f"SIGTERM: ranks printed {ready!r} then {out!r}")
time.sleep(0.2)
check(not left_running(marker), f"SIGTERM: processes left: {left_running(marker)}")

# 4. stdin goes to every rank; --no-prefix leaves lines as they are.
p = subprocess.run([collie, "launch", "-n", "2", "-p", str(free_ports(2)), "--no-prefix", "--",
                    "sh", "-c", 'while read line; do echo "$MLX_RANK:$line"; done'],
                   input="one\ntwo\n", capture_output=True, text=True, timeout=30)
check(sorted(p.stdout.splitlines()) == ["0:one", "0:two", "1:one", "1:two"],
      f"stdin broadcast: {p.stdout!r}")

# 5. Each backend's environment, in the reference's names and the COLLIE_ spellings.
show = 'echo "$MLX_RANK $COLLIE_RANK $MLX_WORLD_SIZE $NCCL_HOST_IP $NCCL_PORT $CUDA_VISIBLE_DEVICES"'
p, _ = launch(["--backend", "nccl", "-n", "2", "--nccl-port", "4321", "--", "sh", "-c", show])
check(sorted(p.stdout.splitlines()) == ["[0] 0 0 2 127.0.0.1 4321 0", "[1] 1 1 2 127.0.0.1 4321 1"],
      f"nccl environment: {p.stdout!r} {p.stderr!r}")
base = free_ports(2)
show = ('echo "$MLX_RANK $MLX_HOSTFILE $COLLIE_JOB_TOKEN" | '
        'while read r f t; do echo "$r $(cat $f) $t"; done')
p, _ = launch(["-n", "2", "-p", str(base), "--connections-per-ip", "2", "--", "sh", "-c", show])
got = sorted(p.stdout.splitlines())
table = json.dumps([[f"127.0.0.1:{base + i}" for i in (0, 1)], [f"127.0.0.1:{base + i}" for i in (2, 3)]])
tokens = {line.split()[-1] for line in got}
check(len(got) == 2 and all(table.replace(" ", "") in line.replace(" ", "") for line in got),
      f"ring hostfile: {got!r}, expected {table}")
check(len(tokens) == 1 and all(t.isdigit() and t != "0" for t in tokens), f"job token: {got!r}")
rdma = hostfile([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"], "rdma": [None, "rdma_en2"]},
                 {"ssh": "localhost", "ips": ["127.0.0.1"], "rdma": ["rdma_en3", None]}], "rdma.json")
p, _ = launch(["--hostfile", rdma, "--backend", "jaccl-ring", "-p", "40000", "--", "sh", "-c",
               'echo "$MLX_RANK $MLX_JACCL_COORDINATOR $MLX_JACCL_RING $(cat $MLX_IBV_DEVICES)"'])
check(sorted(p.stdout.splitlines()) ==
      [f'[{r}] {r} 127.0.0.1:40000 1 [[null,"rdma_en2"],["rdma_en3",null]]' for r in (0, 1)],
      f"jaccl environment: {p.stdout!r} {p.stderr!r}")
p, _ = launch(["--backend", "mpi", "-n", "2", "--mpi-arg", "--oversubscribe", "--env", "X_TEST=5",
               "--", "sh", "-c", 'echo "mpi $OMPI_COMM_WORLD_RANK $X_TEST"'])
check(p.returncode == 0 and sorted(p.stdout.splitlines()) == ["mpi 0 5", "mpi 1 5"],
      f"mpi backend: exit {p.returncode} {p.stdout!r} {p.stderr!r}")

# 6. "Remote" hosts through the stand-in ssh: example 01 across two hosts of two ranks each.
hosts = hostfile([{"ssh": "node-a", "ips": ["127.0.0.1"]}, {"ssh": "node-b", "ips": ["127.0.0.1"]}],
                 "remote.json")
p, _ = launch(["--hostfile", hosts, "-n", "2", "-p", str(free_ports(4)), "--ssh", fake_ssh, "--",
               example])
check(p.returncode == 0 and sorted(p.stdout.splitlines()) ==
      [f"[{r}] rank {r} of 4: [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]" for r in range(4)],
      f"remote example 01: exit {p.returncode} {p.stdout!r} {p.stderr!r}")
# ...and a remote rank that fails: the others, in sessions the launcher cannot signal, are
# stopped over the (stand-in) ssh.
marker = f"collie-launch-test-{os.getpid()}-remote"
script = f'if [ "$MLX_RANK" = 1 ]; then sleep 0.5; exit 4; fi; sleep {SLEEP}'
p, took = launch(["--hostfile", hosts, "-n", "2", "-p", str(free_ports(4)), "--ssh", fake_ssh,
                  "--", "sh", "-c", script, marker])
check(p.returncode == 4, f"remote failure: exit {p.returncode} {p.stderr!r}")
check(took < 2.5, f"remote failure took {took:.1f} s")
time.sleep(0.5)
check(not left_running(marker), f"remote failure: processes left: {left_running(marker)}")

# 7. Bad input: one clear line each, exit 2 (or ssh's 255 for an unreachable host).
bad = {
    "unknown backend": (["--backend", "gloo", "--", "true"], "unknown backend \"gloo\""),
    "not JSON": (["--hostfile", os.path.join(tmp, "x"), "--", "true"], "is not valid JSON"),
    "bad host": (["--hostfile", hostfile([{"ssh": 3}], "y.json"), "--", "true"],
                 "\"ssh\" must be a string"),
    "no ips": (["--hosts", "node-a", "--", "true"], "has no \"ips\""),
    "missing hostfile": (["--hostfile", os.path.join(tmp, "none.json"), "--", "true"],
                         "cannot read the hostfile"),
    "no command": (["-n", "2"], "no command given"),
}
with open(os.path.join(tmp, "x"), "w") as f:
    f.write("[{")
for name, (args, expected) in bad.items():
    p, _ = launch(args)
    check(p.returncode == 2 and expected in p.stderr and len(p.stderr.strip().splitlines()) == 1,
          f"{name}: exit {p.returncode}, stderr {p.stderr!r}")
unreachable = hostfile([{"ssh": "unreachable", "ips": ["127.0.0.1"]}], "unreachable.json")
p, _ = launch(["--hostfile", unreachable, "--ssh", fake_ssh, "--", "true"])
check(p.returncode == 255 and "could not reach" in p.stderr,
      f"unreachable host: exit {p.returncode}, stderr {p.stderr!r}")

print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

#!/usr/bin/env python3
"""collie config and collie launch across hosts made of network namespaces, end to end.

Two clusters of four "hosts" (namespaces) reached through an `ip netns exec` stand-in for ssh:
  - a full mesh: a veth pair per pair of hosts (the cables, unaddressed), plus a shared LAN (a
    bridge in a fifth namespace, 10.77.0.0/24, default route) that must not be taken for a link;
  - a ring: cables 0-1, 1-2, 2-3, 3-0 only, named out of ring order.
`collie config` discovers each, draws it (--dot), addresses it (--auto-setup) and writes the
hostfile; `collie launch --hostfile` runs example 01 over it; failures, signals and bad input are
checked, and that nothing is left running. Needs root.
Usage: netns_test.py <collie> <01_all_sum> <netns_ssh.sh>"""
import json, os, re, signal, subprocess, sys, tempfile, time

collie, example, ssh = (os.path.abspath(a) for a in sys.argv[1:4])
failures = []
tmp = tempfile.mkdtemp()
tag = f"ct{os.getpid() % 100000}"
MESH = [f"{tag}m{i}" for i in range(4)]
RING = [f"{tag}r{i}" for i in range(4)]
SWITCH = f"{tag}sw"
SLEEP = str(600000 + os.getpid() % 100000)  # a unique sleep, found if left behind


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def make_hosts(names, pairs):
    """Namespaces `names`, and a veth pair per (i, j): `to<j>` in host i, `to<i>` in host j."""
    for n in names:
        ip("netns", "add", n)
        ip("-n", n, "link", "set", "lo", "up")
    for i, j in pairs:
        ip("link", "add", f"to{j}", "netns", names[i], "type", "veth", "peer", "name", f"to{i}",
           "netns", names[j])
        ip("-n", names[i], "link", "set", f"to{j}", "up")
        ip("-n", names[j], "link", "set", f"to{i}", "up")


def make_lan(names):
    """A bridge in its own namespace with every host on it, and a default route through it."""
    ip("netns", "add", SWITCH)
    ip("-n", SWITCH, "link", "add", "sw0", "type", "bridge")
    ip("-n", SWITCH, "addr", "add", "10.77.0.254/24", "dev", "sw0")
    ip("-n", SWITCH, "link", "set", "sw0", "up")
    for k, n in enumerate(names):
        ip("link", "add", "lan", "netns", n, "type", "veth", "peer", "name", f"p{k}", "netns", SWITCH)
        ip("-n", SWITCH, "link", "set", f"p{k}", "master", "sw0", "up")
        ip("-n", n, "addr", "add", f"10.77.0.{k + 1}/24", "dev", "lan")
        ip("-n", n, "link", "set", "lan", "up")
        ip("-n", n, "route", "add", "default", "via", "10.77.0.254")


def run(args, timeout=120):
    start = time.monotonic()
    p = subprocess.run([collie, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - start


def config(hosts, *extra):
    return run(["config", "--hosts", ",".join(hosts), "--ssh", ssh, *extra])[0]


def launch(hostfile, *command, extra=()):
    return run(["launch", "--hostfile", hostfile, "--ssh", ssh, *extra, "--", *command])


def edges(dot):
    return {tuple(sorted(m)) for m in re.findall(r'"([^"]+)" -- "([^"]+)"', dot)}


def addresses(ns):
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr"], capture_output=True, text=True,
                         check=True).stdout
    return {a["local"] for i in json.loads(out) for a in i.get("addr_info", [])}


def rx_bytes(ns, names):
    total = 0
    for name in names:
        with subprocess.Popen(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{name}/statistics/rx_bytes"],
                              stdout=subprocess.PIPE, text=True) as p:
            total += int(p.stdout.read())
    return total


def left_running(marker):
    out = subprocess.run(["pgrep", "-f", f"{marker}|sleep {SLEEP}"], capture_output=True,
                         text=True).stdout.split()
    return [pid for pid in out if int(pid) != os.getpid()]


def fours(size):
    return [f"[{r}] rank {r} of {size}: [{', '.join([str(size)] * 10)}]" for r in range(size)]


def one_line(p):
    return len(p.stderr.strip().splitlines()) == 1


def test_mesh():
    make_hosts(MESH, [(i, j) for i in range(4) for j in range(i + 1, 4)])
    make_lan(MESH)

    # Discovery alone: the six cables, the LAN left out, the commands printed, nothing changed.
    p = config(MESH, "--dot")
    check(p.returncode == 0, f"mesh --dot: exit {p.returncode} {p.stderr!r}")
    want = {tuple(sorted((MESH[i], MESH[j]))) for i in range(4) for j in range(i + 1, 4)}
    check(edges(p.stdout) == want, f"mesh --dot drew {sorted(edges(p.stdout))}, {p.stdout!r}")
    check(p.stdout.startswith("graph collie {") and p.stdout.rstrip().endswith("}"), f"dot: {p.stdout!r}")
    check("full mesh: yes" in p.stderr and "shared network" in p.stderr and "lan" in p.stderr,
          f"mesh report: {p.stderr!r}")
    check("run these on each host" in p.stderr and "ip addr replace 192.168.64.1/30 dev to1" in p.stderr,
          f"mesh commands: {p.stderr!r}")
    check(not any(a.startswith("192.168.") for a in addresses(MESH[0])), "discovery changed addresses")

    # --auto-setup, then the hostfile: a ring in host order, each host on its own address.
    hf = os.path.join(tmp, "mesh.json")
    p = config(MESH, "--auto-setup", "--output", hf)
    check(p.returncode == 0 and "set up 6 new link(s) and the routes between the hosts on 4 host(s)" in p.stderr, f"mesh setup: exit {p.returncode} {p.stderr!r}")
    with open(hf) as f:
        written = json.load(f)
    check(written.get("backend") == "ring" and [h["ssh"] for h in written["hosts"]] == MESH,
          f"mesh hostfile: {written}")
    for k, h in enumerate(written["hosts"]):
        check(len(h["ips"]) == 1 and h["ips"][0].startswith("192.168.") and h["ips"][0] in addresses(MESH[k]),
              f"mesh hostfile host {k}: {h}")

    # Once set up, a second run has nothing to do, and its check across the links passes.
    p = config(MESH)
    check(p.returncode == 0 and "run these" not in p.stderr and "(new)" not in p.stderr,
          f"mesh second run: exit {p.returncode} {p.stderr!r}")

    # Example 01 across the four namespaces over the cables (their counters move).
    cables = [f"to{j}" for j in (1, 2, 3)]
    before = rx_bytes(MESH[0], cables)
    p, _ = launch(hf, example)
    check(p.returncode == 0 and sorted(p.stdout.splitlines()) == fours(4),
          f"mesh example 01: exit {p.returncode} {p.stdout!r} {p.stderr!r}")
    check(rx_bytes(MESH[0], cables) > before, "mesh example 01 sent nothing over the cables")
    p, _ = launch(hf, example, extra=["-n", "2"])
    check(p.returncode == 0 and sorted(p.stdout.splitlines()) == sorted(fours(8)),
          f"mesh example 01, 2 ranks per host: exit {p.returncode} {p.stdout!r} {p.stderr!r}")

    # --over ethernet: the hosts' main addresses (the LAN), and a job over them.
    he = os.path.join(tmp, "ethernet.json")
    p = config(MESH, "--over", "ethernet", "--output", he)
    with open(he) as f:
        written = json.load(f)
    check(p.returncode == 0 and [h["ips"] for h in written["hosts"]] == [[f"10.77.0.{k}"] for k in range(1, 5)],
          f"ethernet hostfile: exit {p.returncode} {written} {p.stderr!r}")
    p, _ = launch(he, example)
    check(p.returncode == 0 and sorted(p.stdout.splitlines()) == fours(4),
          f"ethernet example 01: exit {p.returncode} {p.stdout!r} {p.stderr!r}")

    # A rank that fails on one namespace stops the others on theirs, which only a remote kill
    # can reach (each runs in a session of its own): exit 3 within 2 s, nothing left.
    marker = f"collie-netns-test-{os.getpid()}-fail"
    script = f'if [ "$MLX_RANK" = 2 ]; then sleep 0.5; exit 3; fi; sleep {SLEEP}'
    p, took = launch(hf, "sh", "-c", script, marker)
    check(p.returncode == 3 and "rank 2 on " + MESH[2] + " exited with code 3" in p.stderr,
          f"failing rank: exit {p.returncode} {p.stderr!r}")
    check(took < 2.5, f"failing rank: the launcher took {took:.1f} s (0.5 s of it the rank's sleep)")
    time.sleep(0.5)
    check(not left_running(marker), f"failing rank: processes left: {left_running(marker)}")

    # SIGTERM to the launcher reaches every rank on every namespace; exit 143; nothing left.
    marker = f"collie-netns-test-{os.getpid()}-term"
    script = 'trap "echo stopped; exit 7" TERM; echo ready; while :; do sleep 0.05; done'
    proc = subprocess.Popen([collie, "launch", "--hostfile", hf, "--ssh", ssh, "--", "sh", "-c", script, marker],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = [proc.stdout.readline() for _ in range(4)]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    check(proc.returncode == 143, f"SIGTERM: launcher exit {proc.returncode} {err!r}")
    check(sorted(out.splitlines()) == [f"[{r}] stopped" for r in range(4)], f"SIGTERM: {ready!r} then {out!r}")
    time.sleep(0.5)
    check(not left_running(marker), f"SIGTERM: processes left: {left_running(marker)}")

    # No RDMA devices here: jaccl is refused in one line.
    p = config(MESH, "--backend", "jaccl")
    check(p.returncode == 1 and "collie config: the jaccl backend needs RDMA devices" in p.stderr,
          f"jaccl without RDMA: exit {p.returncode} {p.stderr!r}")


def test_ring():
    make_hosts(RING, [(0, 1), (1, 2), (2, 3), (3, 0)])
    named = [RING[0], RING[2], RING[1], RING[3]]  # not in ring order
    p = config(named, "--dot")
    check(p.returncode == 0 and len(edges(p.stdout)) == 4, f"ring --dot: exit {p.returncode} {p.stdout!r} {p.stderr!r}")
    check("full mesh: no" in p.stderr and f"ring: {RING[0]} -> {RING[1]} -> {RING[2]} -> {RING[3]} -> {RING[0]}" in p.stderr,
          f"ring report: {p.stderr!r}")
    p = config(named, "--backend", "jaccl")
    check(p.returncode == 1 and "needs a link between every pair" in p.stderr,
          f"jaccl on a ring: exit {p.returncode} {p.stderr!r}")

    hf = os.path.join(tmp, "ring.json")
    p = config(named, "--auto-setup", "--output", hf)
    check(p.returncode == 0, f"ring setup: exit {p.returncode} {p.stderr!r}")
    with open(hf) as f:
        written = json.load(f)
    check([h["ssh"] for h in written["hosts"]] == RING, f"ring hostfile order: {written}")
    # Non-neighbours reach each other through the host between them (small all-reduces talk to
    # every rank): example 01 needs it.
    p, _ = launch(hf, example)
    check(p.returncode == 0 and sorted(p.stdout.splitlines()) == fours(4),
          f"ring example 01: exit {p.returncode} {p.stdout!r} {p.stderr!r}")


def test_bad_input():
    p = config([MESH[0], f"{tag}nowhere"])
    check(p.returncode == 1 and one_line(p) and f"cannot reach host {tag}nowhere" in p.stderr,
          f"unreachable host: exit {p.returncode} {p.stderr!r}")
    bad = os.path.join(tmp, "bad.json")
    with open(bad, "w") as f:
        f.write('[{"ssh": "a", "ips": 3}]')
    p, _ = run(["config", "--hostfile", bad, "--ssh", ssh])
    check(p.returncode == 2 and one_line(p) and "\"ips\" must be a list" in p.stderr,
          f"bad hostfile: exit {p.returncode} {p.stderr!r}")
    p = config(MESH, "--backend", "gloo")
    check(p.returncode == 2 and one_line(p) and "unknown backend \"gloo\"" in p.stderr,
          f"unknown backend: exit {p.returncode} {p.stderr!r}")
    unreachable = os.path.join(tmp, "unreachable.json")
    with open(unreachable, "w") as f:
        json.dump([{"ssh": f"{tag}nowhere", "ips": ["10.0.0.1"]}], f)
    p, _ = launch(unreachable, "true")
    check(p.returncode == 255 and "could not reach" in p.stderr, f"launch, unreachable: exit {p.returncode} {p.stderr!r}")


if os.geteuid() != 0:
    print("netns_test needs root: it creates network namespaces")
    sys.exit(1)
try:
    test_mesh()
    test_ring()
    test_bad_input()
finally:
    for n in MESH + RING + [SWITCH]:
        subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

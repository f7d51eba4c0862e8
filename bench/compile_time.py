#!/usr/bin/env python3
"""Compile time of a collie program's translation units, as ratios of a reference TU.

Compiles, with each compiler, the reference TU (only <asio.hpp> and <nlohmann/json.hpp>, the
libraries collie's TCP backend is built on), example 01 (init() + all_sum) and a TU that calls
every collective (bench/compile_time/every_collective.cpp), each header-only and with
COLLIE_SEPARATE_COMPILATION, and prints the median wall time and peak memory of several runs and
the ratio of each to the reference compiled in the same round. Runs alternate (round-robin over
every TU, compiler and mode) so that a noisy machine slows all of them alike. Also prints the
one-time cost of the separately compiled part (src/collie.cpp), which a build compiles once.

    bench/compile_time.py                   # g++ and clang++, -O2, 3 runs
    bench/compile_time.py --runs 5 --compilers g++ --json out.json
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TUS = [
    ("reference", "bench/compile_time/reference.cpp", False),
    ("01_all_sum", "examples/01_all_sum.cpp", True),
    ("every_collective", "bench/compile_time/every_collective.cpp", True),
]
MODES = [("header-only", []), ("separate", ["-DCOLLIE_SEPARATE_COMPILATION"])]


def compile_once(compiler, source, flags, opt, out_dir):
    """One compile of `source` to an object file: (seconds, peak KiB), or exits on failure."""
    obj = os.path.join(out_dir, "tu.o")
    cmd = ["/usr/bin/time", "-f", "%e %M", compiler, "-std=c++20", opt, "-I", "include",
           *flags, "-c", source, "-o", obj]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"compile_time: {' '.join(cmd[3:])} failed:\n{done.stderr[-3000:]}")
    peak_kib = int(done.stderr.strip().splitlines()[-1].split()[1])
    return wall, peak_kib


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each compile (median)")
    parser.add_argument("--compilers", default="g++,clang++", help="comma-separated")
    parser.add_argument("--opt", default="-O2", help="optimisation flag (default -O2)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    compilers = [c for c in args.compilers.split(",") if c]
    for c in compilers + ["/usr/bin/time"]:
        if not shutil.which(c):
            sys.exit(f"compile_time: {c} not found")

    # Every (compiler, TU, mode) to measure; the reference has one mode.
    jobs = [(c, name, src, mode, flags)
            for c in compilers
            for name, src, moded in TUS
            for mode, flags in (MODES if moded else [("-", [])])]
    times = {job[:4]: [] for job in jobs}
    peaks = {job[:4]: [] for job in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        library = {}
        for c in compilers:
            library[c] = compile_once(c, "src/collie.cpp", ["-DCOLLIE_SEPARATE_COMPILATION"],
                                      args.opt, tmp)
        for run in range(args.runs):
            for c, name, src, mode, flags in jobs:
                wall, peak = compile_once(c, src, flags, args.opt, tmp)
                times[(c, name, src, mode)].append(wall)
                peaks[(c, name, src, mode)].append(peak)
            print(f"# run {run + 1}/{args.runs} done", file=sys.stderr)

    rows = []
    print(f"# {args.opt}, median of {args.runs} alternating runs; ratio = TU / reference TU "
          "of the same compiler")
    print(f"{'compiler':<9} {'translation unit':<18} {'mode':<12} {'time s':>7} "
          f"{'ratio':>6} {'peak MB':>8}")
    for c in compilers:
        ref = statistics.median(times[(c, "reference", TUS[0][1], "-")])
        for name, src, moded in TUS:
            for mode, _ in (MODES if moded else [("-", [])]):
                t = statistics.median(times[(c, name, src, mode)])
                peak = statistics.median(peaks[(c, name, src, mode)]) / 1024
                rows.append({"compiler": c, "tu": name, "mode": mode, "seconds": round(t, 2),
                             "ratio": round(t / ref, 2), "peak_mb": round(peak)})
                print(f"{c:<9} {name:<18} {mode:<12} {t:7.2f} {t / ref:6.2f} {peak:8.0f}")
        lib_t, lib_peak = library[c]
        print(f"{c:<9} {'src/collie.cpp':<18} {'once':<12} {lib_t:7.2f} {lib_t / ref:6.2f} "
              f"{lib_peak / 1024:8.0f}")
        rows.append({"compiler": c, "tu": "src/collie.cpp", "mode": "once",
                     "seconds": round(lib_t, 2), "ratio": round(lib_t / ref, 2),
                     "peak_mb": round(lib_peak / 1024)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"opt": args.opt, "runs": args.runs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

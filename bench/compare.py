#!/usr/bin/python3
"""collie's all-reduce against its peers on this machine: runs collie (ring and mesh), the wire
probe and OpenMPI (TCP and shared memory) over the same sweep, several times in alternating order,
then prints and writes median bus bandwidths, ratios, plots and the performance targets.

    bench/compare.py --ranks 2,4 --repeats 5          # the full comparison (long)
    bench/compare.py --ranks 2 --repeats 1 -b 8 -e 64K -f 8 -w 1 -n 2 -N 0   # a quick look
    bench/compare.py --from bench/results/20250101T120000Z     # redo tables and plots only

Build the drivers first: bazel build --config=bench //bench:collectives //bench:wire_probe
//bench:mpi_collectives. See docs/performance.md, "Running the comparison".
"""

import argparse
import datetime
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO / "bazel-out" / "k8-opt" / "bin" / "bench"
RUN_LOCAL = REPO / "scripts" / "run_local.sh"

# collie's contenders are the algorithms the collectives driver can run over TCP: the driver lists
# them (--list-algorithms), so a new algorithm is compared without an edit here. These are the
# others, and the list until the driver has answered.
OTHER_CONTENDERS = ("wire", "openmpi-tcp", "openmpi-shm")
CONTENDERS = ["ring", "mesh", *OTHER_CONTENDERS]
MPI_CONTENDERS = ("openmpi-tcp", "openmpi-shm")
# OpenMPI runs a second time with glibc's allocator kept from returning memory to the kernel, so
# its large buffers are not mapped and unmapped on every call; the comparison keeps the better.
TUNED_SUFFIX = "+tunables"
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
SHORT_NAMES = {"openmpi-tcp": "ompi-tcp", "openmpi-shm": "ompi-shm"}
LEGEND_NAMES = {
    "ring": "collie ring",
    "mesh": "collie mesh",
    "wire": "wire probe (no reduction)",
    "openmpi-tcp": "OpenMPI TCP (best of plain, +tunables)",
    "openmpi-shm": "OpenMPI shared memory (best of plain, +tunables)",
}
EXTRA_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
LINE_STYLES = {
    "ring": dict(color="tab:blue", linestyle="-", marker="o"),
    "mesh": dict(color="tab:orange", linestyle="-", marker="s"),
    "wire": dict(color="0.45", linestyle=":", marker=None),
    "openmpi-tcp": dict(color="tab:red", linestyle="--", marker="^"),
    "openmpi-shm": dict(color="tab:green", linestyle="-.", marker="v"),
}

MANIFEST = "runs.json"
KIB, MIB = 1 << 10, 1 << 20
# The performance targets, checked at these rank counts when the operation is all_sum.
TARGET_RANKS = (2, 4)
TARGET_OP = "all_sum"
LARGE = (16 * MIB, 256 * MIB)
MEDIUM = (64 * KIB, 4 * MIB)
LARGE_VS_MPI, LARGE_VS_WIRE, MEDIUM_VS_MPI = 1.3, 0.8, 1.0


# --- sizes ----------------------------------------------------------------------------------------

def parse_size(text):
    """A byte count as the drivers read it: digits, then an optional K, M, G or T (binary) and an
    optional B or iB ("64K", "64KiB", "256M")."""
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        raise ValueError(f'"{text}" is not a byte count (e.g. 8, 64K, 256M)')
    unit = text[digits:].upper()
    shift = 0
    if unit and unit != "B":
        shifts = {"K": 10, "M": 20, "G": 30, "T": 40}
        if unit[0] not in shifts or unit[1:] not in ("", "B", "IB"):
            raise ValueError(f'"{text}" has an unknown unit (use K, M, G or T)')
        shift = shifts[unit[0]]
    return int(text[:digits]) << shift


def size_text(size, spaced=True):
    """8 -> "8 B", 65536 -> "64 KiB", 1536 -> "1.5 KiB"; spaced=False gives "8", "64K"."""
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift:
            value = size / (1 << shift)
            number = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
            return f"{number} {unit}iB" if spaced else number + unit
    return f"{size} B" if spaced else str(size)


def size_argument(text):
    try:
        parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))
    return text


def factor_argument(text):
    try:
        if float(text) > 1:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"the step factor must be a number greater than 1, not {text}")


def ranks_argument(text):
    try:
        ranks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ranks = []
    if not ranks or any(n < 1 for n in ranks):
        raise argparse.ArgumentTypeError(f'"{text}" is not a list of rank counts (e.g. 2,4)')
    return ranks


def is_collie(contender):
    return contender not in OTHER_CONTENDERS


def legend_name(contender):
    return LEGEND_NAMES.get(contender, f"collie {contender}")


def line_style(contender):
    if contender not in LINE_STYLES:
        extra = [c for c in CONTENDERS if c not in LINE_STYLES or c == contender]
        color = EXTRA_COLORS[extra.index(contender) % len(EXTRA_COLORS)] if contender in extra else "k"
        LINE_STYLES[contender] = dict(color=color, linestyle="-", marker="d")
    return LINE_STYLES[contender]


def discover_algorithms(bin_dir):
    """The algorithms `collectives --list-algorithms` names, or None if it cannot tell."""
    try:
        out = subprocess.run([str(Path(bin_dir) / "collectives"), "--list-algorithms"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names if out.returncode == 0 and names else None


def contenders_argument(text):
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none)'}; choose from "
            + ",".join(CONTENDERS))
    return [name for name in CONTENDERS if name in names]


# --- variants and their command lines -------------------------------------------------------------

def variants_of(contenders):
    """Every run a repeat makes: one per contender, two per OpenMPI contender."""
    out = []
    for contender in contenders:
        out.append(contender)
        if contender in MPI_CONTENDERS:
            out.append(contender + TUNED_SUFFIX)
    return out


def contender_of(variant):
    return variant[:-len(TUNED_SUFFIX)] if variant.endswith(TUNED_SUFFIX) else variant


def command_for(variant, ranks, settings, json_path):
    """The command line and environment of one run of `variant` on `ranks` ranks."""
    contender = contender_of(variant)
    bin_dir = Path(settings["bin"])
    sweep = ["-b", settings["minbytes"], "-e", settings["maxbytes"], "-f", settings["stepfactor"],
             "-w", str(settings["warmup"]), "-n", str(settings["iters"]),
             "-N", settings.get("iter_bytes", "0"),
             "--max_iters", str(settings.get("max_iters", 10000)),
             "--json", str(json_path), "--label", variant]
    operation = ["-o", settings["op"], "-d", settings["datatype"],
                 "--in-place" if settings["in_place"] else "--out-of-place"]
    env = dict(os.environ)
    launch = [str(RUN_LOCAL), str(ranks), "--connections", str(settings["connections"])]
    if is_collie(contender):
        env["COLLIE_ALGORITHM"] = contender
        return launch + [str(bin_dir / "collectives")] + operation + sweep, env
    if contender == "wire":
        # The probe moves an all-reduce's bytes and has no operation, type or placement.
        return launch + [str(bin_dir / "wire_probe")] + sweep, env
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)]
    if contender == "openmpi-tcp":
        # ob1 is named too: with UCX installed OpenMPI would otherwise pick pml ucx, which
        # ignores the btl list and moves the bytes through shared memory.
        command += ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]
    if variant.endswith(TUNED_SUFFIX):
        command += ["-x", "GLIBC_TUNABLES=" + GLIBC_TUNABLES]
    else:
        env.pop("GLIBC_TUNABLES", None)  # the plain run is plain whatever the caller exported
    return command + [str(bin_dir / "mpi_collectives")] + operation + sweep, env


def binary_of(contender):
    if is_collie(contender):
        return "collectives"
    return "wire_probe" if contender == "wire" else "mpi_collectives"


# --- running --------------------------------------------------------------------------------------

def tail_lines(path, count=8):
    try:
        with open(path, "rb") as file:
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-count:]


def run_one(command, env, stdout_path, stderr_path, timeout_s):
    """Runs a command in its own process group; returns (exit code or None on time-out, seconds).
    On a time-out or Ctrl-C the whole group is stopped, so no rank is left behind."""
    start = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, start_new_session=True)

        def stop():
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    return
                try:
                    process.wait(timeout=grace)
                    return
                except subprocess.TimeoutExpired:
                    pass

        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop()
            code = None
        except KeyboardInterrupt:
            stop()
            raise
    return code, time.monotonic() - start


def read_report(path):
    """The driver's JSON, or None when it is missing, unreadable or has no rows."""
    try:
        with open(path) as file:
            report = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not report.get("rows"):
        return None
    return report


def write_manifest(raw_dir, settings, runs):
    path = raw_dir / MANIFEST
    path.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2) + "\n")


def run_sweep(settings, out_dir, timeout_s):
    """Step 1: every rank count, every repeat, every variant in an order rotated per repeat."""
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    variants = variants_of(settings["contenders"])
    repeats = settings["repeats"]
    runs = []
    total = len(settings["ranks"]) * repeats * len(variants)
    done = 0
    for ranks in settings["ranks"]:
        for repeat in range(repeats):
            # Rotating the order spreads slow drift (thermal, other load) over every contender.
            shift = repeat % len(variants)
            order = variants[shift:] + variants[:shift]
            for variant in order:
                done += 1
                stem = f"n{ranks}_r{repeat + 1}_{variant}"
                json_path = raw_dir / (stem + ".json")
                json_path.unlink(missing_ok=True)
                command, env = command_for(variant, ranks, settings, json_path)
                print(f"[{done}/{total}] n={ranks} repeat {repeat + 1}/{repeats} {variant} ...",
                      end="", flush=True, file=sys.stderr)
                code, seconds = run_one(command, env, raw_dir / (stem + ".out"),
                                        raw_dir / (stem + ".err"), timeout_s)
                report = read_report(json_path) if code == 0 else None
                ok = report is not None
                record = {
                    "ranks": ranks, "repeat": repeat + 1, "variant": variant,
                    "contender": contender_of(variant), "command": shlex.join(command),
                    "collie_algorithm": env.get("COLLIE_ALGORITHM")
                    if is_collie(contender_of(variant)) else None,
                    "exit_code": code, "timed_out": code is None, "seconds": round(seconds, 2),
                    "json": json_path.name, "ok": ok,
                }
                if not ok:
                    why = ("timed out after %d s" % timeout_s if code is None else
                           "exit code %d" % code if code != 0 else "no usable JSON report")
                    record["error"] = why
                    record["stderr_tail"] = tail_lines(raw_dir / (stem + ".err"))
                runs.append(record)
                write_manifest(raw_dir, settings, runs)  # kept current, so --from works after ^C
                print(" ok (%.1f s)" % seconds if ok else " FAILED: " + record["error"],
                      file=sys.stderr, flush=True)


# --- loading and statistics -----------------------------------------------------------------------

def load_raw(raw_dir, cli_settings):
    """Settings and run records from DIR/raw: the manifest when there is one, else every report."""
    manifest_path = raw_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        settings, runs = manifest["settings"], manifest["runs"]
    else:
        settings, runs = dict(cli_settings), []
        for path in sorted(raw_dir.glob("*.json")):
            report = read_report(path)
            if report is None or "contender" not in report:
                continue
            variant = report["contender"]
            if contender_of(variant) not in CONTENDERS:
                print(f"compare: skipping {path.name}: contender \"{variant}\" is none of "
                      + ",".join(CONTENDERS), file=sys.stderr)
                continue
            runs.append({"ranks": report.get("ranks"), "repeat": None, "variant": variant,
                         "contender": contender_of(variant), "json": path.name, "ok": True})
        settings["ranks"] = sorted({run["ranks"] for run in runs})
        settings["contenders"] = [c for c in CONTENDERS if any(r["contender"] == c for r in runs)]
        counts = {}
        for run in runs:
            key = (run["ranks"], run["variant"])
            counts[key] = counts.get(key, 0) + 1
        settings["repeats"] = max(counts.values(), default=0)
        # What only a manifest records is unknown here; the sizes come from the reports.
        sizes = [row["bytes"] for run in runs for row in read_report(raw_dir / run["json"])["rows"]]
        settings.update(minbytes=size_text(min(sizes, default=0), False),
                        maxbytes=size_text(max(sizes, default=0), False), stepfactor=None,
                        warmup=None, iters=None, connections=None, started_utc="")
    for run in runs:
        run["report"] = read_report(raw_dir / run["json"]) if run["ok"] else None
        if run["ok"] and run["report"] is None:
            run["ok"] = False
            run["error"] = "the JSON report is missing or unreadable"
    return settings, runs


def pick_rows(report, in_place):
    """The rows of the placement compared; the wire probe has one kind of row only."""
    rows = report["rows"]
    if report.get("op") == "wire":
        return rows
    return [row for row in rows if bool(row.get("in_place")) == in_place]


def analyse(settings, runs):
    """Step 2: per rank count, per variant and size, the median busbw and slowest-rank time over
    repeats; per contender, the better OpenMPI variant at each size."""
    result = {}
    for ranks in settings["ranks"]:
        per_variant = {}
        for variant in variants_of(settings["contenders"]):
            mine = [run for run in runs if run["ranks"] == ranks and run["variant"] == variant]
            good = [run for run in mine if run["ok"]]
            samples = {}
            for run in good:
                for row in pick_rows(run["report"], settings["in_place"]):
                    entry = samples.setdefault(row["bytes"], {"busbw": [], "time": []})
                    entry["busbw"].append(row["busbw_gbs"])
                    entry["time"].append(row["time_us"]["max"])
            per_variant[variant] = {
                "runs": len(mine), "runs_ok": len(good),
                "peak_rss_mib": max((run["report"].get("peak_rss_bytes", 0) for run in good),
                                    default=None),
                "host": next((run["report"].get("host") for run in good), None),
                "sizes": {size: {"busbw_gbs": statistics.median(entry["busbw"]),
                                 "time_us": statistics.median(entry["time"]),
                                 "repeats": len(entry["busbw"])}
                          for size, entry in sorted(samples.items())},
            }
            if per_variant[variant]["peak_rss_mib"] is not None:
                per_variant[variant]["peak_rss_mib"] /= MIB
        best = {}
        for contender in settings["contenders"]:
            choices = variants_of([contender])
            sizes = sorted({s for v in choices for s in per_variant[v]["sizes"]})
            best[contender] = {}
            for size in sizes:
                present = [(v, per_variant[v]["sizes"][size]) for v in choices
                           if size in per_variant[v]["sizes"]]
                top_variant, top = max(present, key=lambda item: item[1]["busbw_gbs"])
                best[contender][size] = {
                    "busbw_gbs": top["busbw_gbs"],
                    "time_us": min(stats["time_us"] for _, stats in present),
                    "from": top_variant,
                }
        sizes = sorted({s for c in best.values() for s in c})
        hosts = {v["host"] for v in per_variant.values() if v["host"]}
        result[ranks] = {"variants": per_variant, "best": best, "sizes": sizes,
                         "host": ", ".join(sorted(hosts)) or "unknown host"}
    return result


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def busbw(table, contender, size):
    entry = table["best"].get(contender, {}).get(size)
    return entry["busbw_gbs"] if entry else None


def best_time(table, contender, size):
    entry = table["best"].get(contender, {}).get(size)
    return entry["time_us"] if entry else None


# --- tables ---------------------------------------------------------------------------------------

def markdown_table(headers, rows, right_aligned):
    """A Markdown table padded to line up in a terminal too."""
    cells = [headers] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(cell.rjust(w) if right_aligned[i] else cell.ljust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if right_aligned[i] else (":" + "-" * (w + 1))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule] + [line(row) for row in rows])


def number(value, form="%.2f"):
    return "–" if value is None else form % value


def ratio_columns(contenders):
    """(header, numerator, denominator, as percent) for the ratios the selection allows."""
    columns = []
    if "openmpi-tcp" in contenders:
        for name in contenders:
            if is_collie(name):
                columns.append((f"{name}/ompi-tcp", name, "openmpi-tcp", False))
    if "ring" in contenders and "wire" in contenders:
        columns.append(("ring % of wire", "ring", "wire", True))
    return columns


def rank_section(ranks, table, settings):
    """The Markdown of one rank count: the busbw table and the per-run table."""
    contenders = settings["contenders"]
    ratios = ratio_columns(contenders)
    headers = ["size"] + [SHORT_NAMES.get(c, c) for c in contenders] + [r[0] for r in ratios]
    rows = []
    for size in table["sizes"]:
        row = [size_text(size)] + [number(busbw(table, c, size)) for c in contenders]
        for _, top, bottom, percent in ratios:
            value = ratio(busbw(table, top, size), busbw(table, bottom, size))
            if percent:
                row.append(number(value and 100 * value, "%.0f%%"))
            else:  # small ratios keep a digit that is not zero
                row.append(number(value, "%.3fx" if value is not None and value < 0.1 else "%.2fx"))
        rows.append(row)
    placement = "in place" if settings["in_place"] else "out of place"
    caption = (f"Bus bandwidth in GB/s (decimal), median of {settings['repeats']} repeat(s); "
               f"{settings['op']} {settings['datatype']}, {placement}.")
    if any(c in MPI_CONTENDERS for c in contenders):
        caption += (" The OpenMPI columns are the better of the plain run and the run with "
                    "GLIBC_TUNABLES at each size.")
    out = [f"### {ranks} ranks on {table['host']}", "", caption, "",
           markdown_table(headers, rows, [True] * len(headers)), ""]

    smallest = table["sizes"][0] if table["sizes"] else None
    time_header = f"time at {size_text(smallest)} (µs)" if smallest else "time (µs)"
    detail_rows = []
    for variant in variants_of(contenders):
        stats = table["variants"][variant]
        at_smallest = stats["sizes"].get(smallest)
        detail_rows.append([variant, number(at_smallest and at_smallest["time_us"]),
                            number(stats["peak_rss_mib"], "%.1f"),
                            f"{stats['runs_ok']}/{stats['runs']}"])
    out += ["Median slowest-rank time at the smallest size, peak RSS (largest rank, max over "
            "repeats) and runs that succeeded:", "",
            markdown_table(["contender", time_header, "peak RSS (MiB)", "runs ok"], detail_rows,
                           [False, True, True, True]), ""]
    return "\n".join(out)


# --- targets --------------------------------------------------------------------------------------

def check_ratio_target(label, table, ranks, size_range, top, bottom, threshold, what):
    """ring busbw / peer busbw >= threshold at every swept size in size_range."""
    low, high = size_range
    sizes = [s for s in table["sizes"] if low <= s <= high]
    pairs = [(s, busbw(table, top, s), busbw(table, bottom, s)) for s in sizes]
    pairs = [(s, a, b, ratio(a, b)) for s, a, b in pairs if a is not None and b]
    where = f"n={ranks}, {size_text(low)}..{size_text(high)}"
    result = {"target": label, "ranks": ranks, "range_bytes": [low, high],
              "text": f"ring busbw >= {threshold:.1f} x {what}",
              "sizes": [{"bytes": s, "ring_gbs": a, "peer_gbs": b, "ratio": r}
                        for s, a, b, r in pairs]}
    if not pairs:
        result["status"] = "SKIP"
        absent = [name for name in (top, bottom) if not table["best"].get(name)]
        result["detail"] = where + (": no " + " or ".join(absent) + " results" if absent else
                                    ": no size in the range was swept")
        return result
    worst = min(pairs, key=lambda p: p[3])
    result["status"] = "PASS" if worst[3] >= threshold else "FAIL"
    listing = ", ".join(f"{size_text(s, False)} {a:.2f}/{b:.2f}={r:.2f}x" for s, a, b, r in pairs)
    result["detail"] = (f"{where}: worst {worst[3]:.2f}x at {size_text(worst[0])} "
                        f"(GB/s ring/peer: {listing})")
    return result


def check_latency_target(table, ranks):
    """At the smallest swept size, ring's time <= the best OpenMPI-TCP time."""
    result = {"target": "c", "ranks": ranks, "text": "smallest-size ring time <= best OpenMPI-TCP"}
    if not table["sizes"]:
        result.update(status="SKIP", detail=f"n={ranks}: no sizes")
        return result
    smallest = table["sizes"][0]
    ring_us, mpi_us = best_time(table, "ring", smallest), best_time(table, "openmpi-tcp", smallest)
    result["range_bytes"] = [smallest, smallest]
    if ring_us is None or mpi_us is None:
        absent = " or ".join(name for name, value in (("ring", ring_us), ("openmpi-tcp", mpi_us))
                             if value is None)
        result.update(status="SKIP", detail=f"n={ranks}, {size_text(smallest)}: no {absent} time")
        return result
    result["sizes"] = [{"bytes": smallest, "ring_us": ring_us, "peer_us": mpi_us}]
    result["status"] = "PASS" if ring_us <= mpi_us else "FAIL"
    result["detail"] = (f"n={ranks}, {size_text(smallest)}: ring {ring_us:.2f} µs, "
                        f"best OpenMPI-TCP {mpi_us:.2f} µs")
    return result


def check_targets(settings, tables):
    if settings["op"] != TARGET_OP:
        return []
    results = []
    for ranks in TARGET_RANKS:
        if ranks not in tables:
            continue
        table = tables[ranks]
        results.append(check_ratio_target("a", table, ranks, LARGE, "ring", "openmpi-tcp",
                                          LARGE_VS_MPI, "best OpenMPI-TCP"))
        results.append(check_ratio_target("a", table, ranks, LARGE, "ring", "wire",
                                          LARGE_VS_WIRE, "wire probe"))
        results.append(check_ratio_target("b", table, ranks, MEDIUM, "ring", "openmpi-tcp",
                                          MEDIUM_VS_MPI, "best OpenMPI-TCP"))
        results.append(check_latency_target(table, ranks))
    return results


def targets_text(settings, results):
    if settings["op"] != TARGET_OP:
        return f"Targets are defined for {TARGET_OP}; none checked for {settings['op']}."
    if not results:
        return ("Targets are checked at " + " and ".join(f"n={n}" for n in TARGET_RANKS)
                + "; neither was swept.")
    return "\n".join(f"- {r['status']} ({r['target']}) {r['text']}: {r['detail']}"
                     for r in results)


# --- plots ----------------------------------------------------------------------------------------

def draw_axes(axes, ranks, table, settings):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    for contender in settings["contenders"]:
        points = sorted(table["best"].get(contender, {}).items())
        if not points:
            continue
        axes.plot([s for s, _ in points], [e["busbw_gbs"] for _, e in points],
                  label=legend_name(contender), markersize=3, linewidth=1.4,
                  **line_style(contender))
    axes.set_xscale("log", base=2)
    if table["sizes"]:
        low = int(math.floor(math.log2(table["sizes"][0])))
        high = int(math.ceil(math.log2(table["sizes"][-1])))
        stride = max(1, math.ceil((high - low + 1) / 10))
        # A short sweep is labelled at its own sizes; a long one at evenly spaced powers of two.
        ticks = (table["sizes"] if len(table["sizes"]) <= 10 else
                 [2.0 ** e for e in range(low, high + 1, stride)])
        axes.xaxis.set_major_locator(FixedLocator(ticks))
        axes.set_xlim(2.0 ** low / 1.2, 2.0 ** high * 1.2)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: size_text(int(round(x)), False)))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_ylim(bottom=0)
    axes.set_xlabel("message size (bytes)")
    axes.set_ylabel("busbw (GB/s)")
    axes.set_title(f"{settings['op']} {settings['datatype']}, {ranks} ranks, {table['host']}",
                   fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    if axes.get_lines():
        axes.legend(fontsize=7, loc="upper left")


def draw_plots(settings, tables, out_dir):
    """Step 4: busbw_n{N}.png per rank count and busbw.png with all of them side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"compare: matplotlib is not importable from {sys.executable}; no plots drawn "
              "(install python3-matplotlib, or run the script with /usr/bin/python3)",
              file=sys.stderr)
        return []
    written = []
    note = f"median of {settings['repeats']} repeat(s)"
    for ranks, table in tables.items():
        figure, axes = plt.subplots(figsize=(8, 5))
        draw_axes(axes, ranks, table, settings)
        figure.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="0.4")
        figure.tight_layout()
        path = out_dir / f"busbw_n{ranks}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    if tables:
        figure, all_axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 5),
                                        squeeze=False)
        for axes, (ranks, table) in zip(all_axes[0], tables.items()):
            draw_axes(axes, ranks, table, settings)
        figure.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="0.4")
        figure.tight_layout()
        path = out_dir / "busbw.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


# --- reports --------------------------------------------------------------------------------------

def summary_json(settings, tables, targets, failures):
    ranks_out = {}
    for ranks, table in tables.items():
        rows = []
        for size in table["sizes"]:
            rows.append({
                "bytes": size,
                "busbw_gbs": {c: busbw(table, c, size) for c in settings["contenders"]},
                "time_us": {c: best_time(table, c, size) for c in settings["contenders"]},
                "best_variant": {c: table["best"][c][size]["from"]
                                 for c in MPI_CONTENDERS if size in table["best"].get(c, {})},
                "ratios": {name: ratio(busbw(table, top, size), busbw(table, bottom, size))
                           for name, top, bottom, _ in ratio_columns(settings["contenders"])},
            })
        variants = {}
        for variant, stats in table["variants"].items():
            variants[variant] = {
                "runs": stats["runs"], "runs_ok": stats["runs_ok"],
                "peak_rss_mib": stats["peak_rss_mib"],
                "rows": [{"bytes": size, **entry} for size, entry in stats["sizes"].items()],
            }
        ranks_out[str(ranks)] = {"host": table["host"], "rows": rows, "variants": variants}
    return {"settings": settings, "ranks": ranks_out, "targets": targets, "failures": failures}


def failure_records(runs):
    keep = ("ranks", "repeat", "variant", "command", "exit_code", "timed_out", "error",
            "stderr_tail")
    return [{key: run.get(key) for key in keep} for run in runs if not run["ok"]]


def missing_contenders(settings, tables):
    """(ranks, contender) pairs without a single successful run."""
    return [(ranks, contender) for ranks, table in tables.items()
            for contender in settings["contenders"] if not table["best"].get(contender)]


def sweep_text(settings):
    """One sentence on what was run, leaving out what is not known (--from without a manifest)."""
    placement = "in place" if settings["in_place"] else "out of place"
    parts = [f"{settings['op']} {settings['datatype']} {placement}",
             f"sizes {settings['minbytes']}..{settings['maxbytes']}"
             + (f" x{settings['stepfactor']}" if settings.get("stepfactor") else "")]
    if settings.get("iters") is not None:
        parts.append(f"-w {settings['warmup']} -n {settings['iters']}"
                     + (f" -N {settings['iter_bytes']} --max-iters {settings['max_iters']}"
                        if settings.get("iter_bytes") not in (None, "0") else ""))
    if settings.get("connections") is not None:
        parts.append(f"{settings['connections']} connection(s) per neighbour")
    parts.append(f"{settings['repeats']} repeat(s)")
    if settings.get("started_utc"):
        parts.append(f"started {settings['started_utc']}")
    return ", ".join(parts) + "."


def report(settings, runs, out_dir):
    """Steps 2 to 5, from the run records; returns the exit code."""
    tables = analyse(settings, runs)
    targets = check_targets(settings, tables)
    failures = failure_records(runs)
    missing = missing_contenders(settings, tables)

    lines = ["# collie against its peers", "", sweep_text(settings), ""]
    for ranks, table in tables.items():
        lines.append(rank_section(ranks, table, settings))
    lines += ["## Targets", "", targets_text(settings, targets), ""]
    if failures:
        lines += ["## Failed runs", ""]
        lines += [f"- n={f['ranks']} repeat {f['repeat']} {f['variant']}: {f['error']}"
                  for f in failures]
        lines.append("")
    markdown = "\n".join(lines)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "summary.json").write_text(
        json.dumps(summary_json(settings, tables, targets, failures), indent=2) + "\n")
    plots = draw_plots(settings, tables, out_dir)

    print(markdown)
    if failures:
        print(f"{len(failures)} run(s) failed:")
        for f in failures:
            print(f"  n={f['ranks']} repeat {f['repeat']} {f['variant']}: {f['error']}")
            if f.get("command"):
                print(f"    {f['command']}")
            for line in f.get("stderr_tail") or []:
                print(f"    | {line}")
    for ranks, contender in missing:
        print(f"compare: {contender} never succeeded at n={ranks}")
    written = [out_dir / "summary.md", out_dir / "summary.json"] + plots
    print("wrote " + ", ".join(str(p) for p in written))
    if missing:
        return 1
    if settings.get("strict") and any(t["status"] == "FAIL" for t in targets):
        return 1
    return 0


# --- command line ---------------------------------------------------------------------------------

def parse_arguments(argv):
    # collie's contenders come from the driver, so --bin is read first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    algorithms = discover_algorithms(pre.parse_known_args(argv)[0].bin)
    if algorithms:
        CONTENDERS[:] = [*algorithms, *OTHER_CONTENDERS]
    parser = argparse.ArgumentParser(
        description="Runs collie (every algorithm the collectives driver lists), the wire probe "
                    "and OpenMPI (TCP, shared memory) over the same all-reduce sweep, repeatedly and in alternating order, and "
                    "reports median bus bandwidths, ratios, plots and the performance targets.",
        epilog="Exit codes: 0 done, 1 a contender never succeeded at some rank count (or, with "
               "--strict, a target failed), 2 bad command line or missing programs.")
    parser.add_argument("--ranks", type=ranks_argument, default=[2, 4],
                        help="rank counts, comma-separated (default 2,4)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of every contender per rank count (default 5)")
    parser.add_argument("-b", "--minbytes", type=size_argument, default="8",
                        help="smallest size (default 8)")
    parser.add_argument("-e", "--maxbytes", type=size_argument, default="256M",
                        help="largest size (default 256M)")
    parser.add_argument("-f", "--stepfactor", type=factor_argument, default="2",
                        help="size factor between steps (default 2)")
    parser.add_argument("-w", "--warmup", type=int, default=5,
                        help="untimed iterations per size (default 5)")
    parser.add_argument("-n", "--iters", type=int, default=20,
                        help="timed iterations per size, the least with -N (default 20)")
    parser.add_argument("-N", "--iter-bytes", type=size_argument, default="1G",
                        help="time enough iterations at each size to move this many bytes per "
                             "rank, at least -n and at most --max-iters, so small sizes are "
                             "timed over more than a millisecond (default 1G; 0: -n everywhere)")
    parser.add_argument("--max-iters", type=int, default=2000,
                        help="the most timed iterations -N asks for (default 2000)")
    parser.add_argument("-o", "--op", default="all_sum", help="the collective (default all_sum)")
    parser.add_argument("-d", "--datatype", default="float32",
                        help="the element type (default float32)")
    parser.add_argument("--connections", type=int, default=1,
                        help="TCP connections per neighbour for collie and the wire probe "
                             "(default 1)")
    parser.add_argument("--contenders", type=contenders_argument, default=list(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--out", type=Path,
                        help="output folder (default bench/results/<UTC timestamp>; with --from, "
                             "the folder read)")
    parser.add_argument("--bin", type=Path, default=DEFAULT_BIN,
                        help="folder of the optimised drivers (default "
                             "bazel-out/k8-opt/bin/bench)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--in-place", dest="in_place", action="store_true", default=None,
                           help="time the in-place form (default)")
    placement.add_argument("--out-of-place", dest="in_place", action="store_false",
                           help="time the out-of-place form")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds before one run is stopped and counted as failed "
                             "(default 1800)")
    parser.add_argument("--from", dest="from_dir", type=Path,
                        help="run nothing: redo the statistics, tables, plots and targets from "
                             "DIR/raw")
    parser.add_argument("--strict", action="store_true",
                        help="also exit 1 when a target fails")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command lines of the first repeat and exit")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 0 or args.iters < 1 or args.max_iters < 1:
        parser.error("-w must be at least 0, and -n and --max-iters at least 1")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if parse_size(args.minbytes) > parse_size(args.maxbytes):
        parser.error(f"-b {args.minbytes} is larger than -e {args.maxbytes}")
    return args


def settings_of(args):
    return {
        "ranks": args.ranks, "repeats": args.repeats, "minbytes": args.minbytes,
        "maxbytes": args.maxbytes, "stepfactor": args.stepfactor, "warmup": args.warmup,
        "iters": args.iters, "iter_bytes": args.iter_bytes, "max_iters": args.max_iters,
        "op": args.op, "datatype": args.datatype,
        "connections": args.connections, "contenders": args.contenders,
        "in_place": True if args.in_place is None else args.in_place,
        "bin": str(args.bin.absolute()), "strict": args.strict,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def check_programs(settings):
    """Every program the selection needs, before the first run; a list of what is missing."""
    problems = []
    bin_dir = Path(settings["bin"])
    for name in sorted({binary_of(c) for c in settings["contenders"]}):
        if not os.access(bin_dir / name, os.X_OK):
            problems.append(f"{bin_dir / name} is not built (bazel build --config=bench "
                            f"//bench:{name})")
    if any(c in MPI_CONTENDERS for c in settings["contenders"]):
        from shutil import which
        if which("mpirun") is None:
            problems.append("mpirun is not on PATH (OpenMPI)")
    return problems


def main(argv):
    args = parse_arguments(argv)
    if args.from_dir is not None:
        raw_dir = args.from_dir / "raw"
        if not raw_dir.is_dir():
            print(f"compare: {raw_dir} is not a folder of raw results", file=sys.stderr)
            return 2
        settings, runs = load_raw(raw_dir, settings_of(args))
        if args.in_place is not None:
            settings["in_place"] = args.in_place
        settings["strict"] = args.strict
        if not runs:
            print(f"compare: {raw_dir} holds no reports", file=sys.stderr)
            return 2
        return report(settings, runs, args.out or args.from_dir)

    settings = settings_of(args)
    if args.dry_run:
        for ranks in settings["ranks"]:
            for variant in variants_of(settings["contenders"]):
                command, env = command_for(variant, ranks, settings, Path("OUT/raw") / "x.json")
                prefix = (f"COLLIE_ALGORITHM={env['COLLIE_ALGORITHM']} "
                          if is_collie(variant) else "")
                print(prefix + shlex.join(command))
        return 0
    problems = check_programs(settings)
    if problems:
        for problem in problems:
            print("compare: " + problem, file=sys.stderr)
        return 2
    out_dir = args.out or REPO / "bench" / "results" / datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    print(f"compare: writing to {out_dir}", file=sys.stderr)
    run_sweep(settings, out_dir, args.timeout)
    _, runs = load_raw(out_dir / "raw", settings)
    return report(settings, runs, out_dir)


def interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # A polite kill stops the run in progress like Ctrl-C does, rather than orphaning its ranks.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("\ncompare: interrupted; --from DIR reports what ran so far", file=sys.stderr)
        sys.exit(130)

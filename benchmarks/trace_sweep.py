"""Where the 100,000-point CLI sweep's time goes, on 1 and on 2 CPUs (not part of ``run_all.py``).

Runs ``bench_sweep.py``'s sweep (with ``--csv``) through ``ctrlsim.cli.main``
in a child process per CPU count, pinned to that many CPUs with as many numba
threads, with a warm numba cache, and times inside the child: importing the
CLI, the first block (it includes numba's first-call set-up and the cache
load), the other blocks (each one compiled call, timed in the worker thread),
the gaps between blocks and what comes after the last one. Then the bound
that the serial part puts on the 1 -> 2 CPU ratio: (S + W1) / (S + W2).

Usage: python benchmarks/trace_sweep.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_sweep import SCENARIO, grid
from installed import byte_compile

CHILD = """
import importlib, json, os, sys, time
t_start = time.perf_counter()
import ctrlsim.cli as cli
t_import = time.perf_counter()
S = importlib.import_module("ctrlsim.sweep")
marks = []
run_block = S._simulate_block

def timed(args, custom):
    a = time.perf_counter()
    result = run_block(args, custom)
    marks.append((a, time.perf_counter()))
    return result

S._simulate_block = timed
sys.stdout = open(os.devnull, "w")
cli.main(sys.argv[1:])
t_end = time.perf_counter()
first = marks[0][1] - marks[0][0]
rest = [b - a for a, b in marks[1:]]
print(json.dumps({"import": t_import - t_start, "until_first": marks[0][0] - t_import,
                  "first": first, "block": sorted(rest)[len(rest) // 2], "rest": sum(rest),
                  "gaps": sum(max(0.0, marks[i + 1][0] - marks[i][1])
                              for i in range(len(marks) - 1)),
                  "tail": t_end - marks[-1][1], "total": t_end - t_start,
                  "blocks": len(marks)}), file=sys.__stdout__)
"""


def trace(folder: Path, cpus: int) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(cpus)}
    pinned = sorted(os.sched_getaffinity(0))[:cpus]
    cmd = [sys.executable, "-c", CHILD, "sweep", str(folder / "bench.toml"), *grid(100_000),
           "--csv", str(folder / "sweep.csv")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, pinned)).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench.toml").write_text(SCENARIO)
        subprocess.run([sys.executable, "-m", "ctrlsim", "sweep", str(folder / "bench.toml"),
                        "--param", "kp=20:200:2"], check=True, capture_output=True)  # warm
        runs = [(cpus, trace(folder, cpus)) for _ in range(args.repeat) for cpus in (1, 2)]
    print("| CPUs | import s | first block s | median block s | other blocks s | gaps s | "
          "after last s | total s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cpus, r in runs:
        print(f"| {cpus} | {r['import']:.2f} | {r['first']:.2f} | {r['block']:.3f} | "
              f"{r['rest']:.2f} | {r['gaps']:.3f} | {r['tail']:.2f} | {r['total']:.2f} |")
    best = {c: min((r for k, r in runs if k == c), key=lambda r: r["total"]) for c in (1, 2)}
    one, two = best[1], best[2]
    # Serial: start-up, the first block's excess over a median block (numba's
    # first-call set-up and the cache load), gaps and the end; W: the blocks'
    # compute (the first one counted as a median block).
    serial = [r["import"] + r["until_first"] + r["first"] - r["block"] + r["gaps"] + r["tail"]
              for r in (one, two)]
    s = sum(serial) / 2
    w1, w2 = one["rest"] + one["block"], two["rest"] + two["block"]
    print(f"\nbest runs: {one['total']:.2f} s on 1 CPU, {two['total']:.2f} s on 2: "
          f"{one['total'] / two['total']:.2f}x")
    print(f"blocks alone: {one['block']:.3f} s vs {two['block']:.3f} s a block, "
          f"{one['block'] / two['block']:.2f}x; serial part S = {serial[0]:.2f} / "
          f"{serial[1]:.2f} s on 1 / 2 CPUs")
    print(f"bound with that serial part: (S + W1) / (S + W2) = ({s:.2f} + {w1:.1f}) / "
          f"({s:.2f} + {w2:.1f}) = {(s + w1) / (s + w2):.2f}x")


if __name__ == "__main__":
    main()

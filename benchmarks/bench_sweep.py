"""A 100,000-point sweep through the CLI: wall time, runs/s, peak memory, 1 vs 2 threads.

The sweep: a 20 s robot scenario at 10 ms with 5 RK4 substeps (2001 samples,
~1e4 substeps a run), ``kp`` x ``ki`` = 400 x 250 points, i.e. 1e9 RK4
substeps, written to a CSV block by block (and, for the 1 -> 2 thread ratio,
also without ``--csv``: the table only). Each configuration runs
``ctrlsim sweep`` in a fresh child process (table to /dev/null) with a warm
numba cache, pinned to as many CPUs as it has threads; peak memory is the
child's maximum resident set (``wait4``).
A 10,000-point sweep shows that memory does not grow with the points.

The same sweep is also timed inside a process that has already run one
(``ctrlsim.sweep(..., csv=...)`` after a small first sweep): the sweep's own
1 -> 2 thread scaling, without the ~0.7 s that every fresh process spends
single-threaded before its first block (interpreter, numpy and numba imports,
numba's registries, the cached kernel's load), which no thread count shortens.

Usage: python benchmarks/bench_sweep.py [--points 100000] [--threads 2,1] [--repeat 3]
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from installed import byte_compile

SCENARIO = """name = "bench-robot"
duration = 20.0
control_period = 0.01
substeps = 5
initial_speed = 1.0

[plant]
preset = "robot"

[controller]
type = "leaky"
alpha = 0.1
kp = 100.0
ki = 20.0

[reference]
steps = [[1.0, 2.0]]
"""


def axes(points: int) -> tuple[int, int]:
    """Sizes of the kp x ki grid of ``points`` points (400 x 250 for 1e5)."""
    n_ki = 250 if points % 250 == 0 else 1
    return points // n_ki, n_ki


def grid(points: int) -> list[str]:
    """``--param`` arguments of the kp x ki grid of ``points`` points."""
    n_kp, n_ki = axes(points)
    return ["--param", f"kp=20:200:{n_kp}", "--param", f"ki=0:50:{n_ki}"]


def run(folder: Path, points: int, threads: int, csv: bool = True) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    # The child may use only ``threads`` CPUs: with 1, the CSV writing that
    # overlaps the compiled blocks shares their core, so "1 thread" is the
    # program on one core and the ratio is what a second core buys.
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    csv_file = folder / f"sweep-{points}-{threads}.csv"
    table = folder / f"table-{points}-{threads}.txt"
    cmd = [sys.executable, "-m", "ctrlsim", "sweep", str(folder / "bench.toml"),
           *grid(points)] + (["--csv", str(csv_file)] if csv else [])
    start = time.perf_counter()
    with open(table, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    # Table: a title, a header and a rule above the rows.
    rows = (csv_file.read_text().count("\n") - 1 if csv
            else table.read_text().count("\n") - 3)
    csv_file.unlink(missing_ok=True)
    table.unlink()
    return {"points": points, "threads": threads, "wall": wall, "rows": rows,
            "rss_mb": usage.ru_maxrss / 1024, "csv": csv}


# A child that runs one small sweep (numba's first call: registries, cached
# kernels), then times the benchmark's sweep with its CSV, through the API.
WARM_CHILD = """
import json, sys, time, warnings
import numpy as np
import ctrlsim
warnings.simplefilter("ignore")  # the grid's ki = 0 rows warn that the speed drifts
toml, csv, n_kp, n_ki = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sc = ctrlsim.load_scenario(toml)
ctrlsim.sweep(sc, {"kp": [20.0, 200.0], "ki": [0.0, 50.0]})
params = {"kp": np.linspace(20, 200, n_kp), "ki": np.linspace(0, 50, n_ki)}
start = time.perf_counter()
res = ctrlsim.sweep(sc, params, csv=csv)
print(json.dumps({"wall": time.perf_counter() - start, "rows": int(res.diverged.size)}))
"""


def run_warm(folder: Path, points: int, threads: int) -> dict:
    """The sweep timed in a process whose kernels are loaded (see the module docstring)."""
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    csv_file = folder / f"warm-{points}-{threads}.csv"
    out = subprocess.run([sys.executable, "-c", WARM_CHILD, str(folder / "bench.toml"),
                          str(csv_file), *map(str, axes(points))],
                         env=env, capture_output=True, text=True, check=False,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if out.returncode != 0:
        raise SystemExit(f"the in-process sweep failed:\n{out.stderr}")
    result = json.loads(out.stdout)
    assert result["rows"] == points and \
        csv_file.read_text().count("\n") - 1 == points, result
    csv_file.unlink()
    return {"threads": threads, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--threads", default="2,1", help="NUMBA_NUM_THREADS values to compare")
    ap.add_argument("--repeat", type=int, default=3, help="runs per thread count (best kept)")
    args = ap.parse_args()
    byte_compile()
    threads = [int(t) for t in args.threads.split(",")]
    substeps_per_run = 2001 * 5
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench.toml").write_text(SCENARIO)
        run(folder, 250, threads[0])  # warm the numba cache
        # Interleaved, best of ``--repeat`` per thread count: a slow spell of the
        # shared machine then hits both.
        runs = [run(folder, args.points, t, csv) for _ in range(args.repeat)
                for csv in (True, False) for t in threads]
        best = {(t, csv): min((r for r in runs if (r["threads"], r["csv"]) == (t, csv)),
                              key=lambda r: r["wall"]) for t in threads for csv in (True, False)}
        results = [best[t, True] for t in threads]
        small = run(folder, max(args.points // 10, 250), threads[0])
        warm = [run_warm(folder, args.points, t) for _ in range(args.repeat) for t in threads]
    print(f"### Sweep through the CLI: {args.points:,} points, 20 s robot scenario, "
          "10 ms, 5 substeps\n")
    print("All runs with --csv, s: " + ", ".join(
        f"{r['threads']} thr {r['wall']:.1f}" for r in runs if r["csv"])
        + f" (best of {args.repeat} below)\n")
    print("| points | NUMBA_NUM_THREADS (= CPUs) | wall [s] | runs/s | M substeps/s | "
          "peak RSS [MB] |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results + [small]:
        assert r["rows"] == r["points"], r
        print(f"| {r['points']:,} | {r['threads']} | {r['wall']:.1f} | "
              f"{r['points'] / r['wall']:,.0f} | "
              f"{r['points'] * substeps_per_run / r['wall'] / 1e6:.1f} | {r['rss_mb']:.0f} |")
    for r in best.values():
        assert r["rows"] == r["points"], r
    if 1 in threads and 2 in threads:
        ratio = best[1, True]["wall"] / best[2, True]["wall"]
        print(f"\n1 -> 2 threads (1 -> 2 CPUs): {ratio:.2f}x with --csv")
        print(f"1 -> 2 threads without --csv (table only): {best[1, False]['wall']:.1f} s -> "
              f"{best[2, False]['wall']:.1f} s, "
              f"{best[1, False]['wall'] / best[2, False]['wall']:.2f}x (all runs: "
              + ", ".join(f"{r['threads']} thr {r['wall']:.1f}" for r in runs if not r["csv"])
              + ")")
    if 1 in threads and 2 in threads:
        w = {t: min(r["wall"] for r in warm if r["threads"] == t) for t in (1, 2)}
        print(f"1 -> 2 threads, the sweep in a process that has run one before "
              f"(ctrlsim.sweep with csv, best of {args.repeat}): {w[1]:.2f} s -> {w[2]:.2f} s, "
              f"{w[1] / w[2]:.2f}x (all runs: "
              + ", ".join(f"{r['threads']} thr {r['wall']:.2f}" for r in warm) + ")")
    print(f"Peak memory, {small['points']:,} vs {args.points:,} points: "
          f"{small['rss_mb']:.0f} vs {results[0]['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()

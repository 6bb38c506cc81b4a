"""How often the vector env's 2-thread step is slow, per OpenMP wait policy.

Each process builds ctrlsim's vector env with 4096 envs (as ``bench_env.py``), steps it
with pre-drawn random actions and reports its env-steps/s in ``--windows`` windows of
0.3 s; the process's median counts as slow under 24 M env-steps/s (normal: 28-33 M,
one thread: ~21 M). The policies alternate, one process each per round:
``OMP_WAIT_POLICY`` unset (libgomp's default: the second thread spins a while between
steps, then sleeps), ``active`` (it spins without limit) and ``passive`` (it sleeps
after each step, so that every step must wake it). Not part of ``run_all.py``.

Usage: python benchmarks/probe_env_wait.py [--rounds 8] [--windows 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
import bench_env
venv, step = bench_env._vector_step(bench_env.ENV_ID, 4096)
step()
rates = []
for _ in range(int(sys.argv[1])):
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.3:
        step()
        n += 1
    rates.append(n * 4096 / (time.perf_counter() - start) / 1e6)
print(" ".join(f"{r:.2f}" for r in rates))
"""

POLICIES = (None, "active", "passive")
SLOW = 24.0   # M env-steps/s


def run(policy: str | None, windows: int) -> list[float]:
    """Env-steps/s (M) of one fresh process's windows under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(windows),
                          str(Path(__file__).resolve().parent)],
                         env=env, capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="processes per policy")
    ap.add_argument("--windows", type=int, default=8, help="0.3 s windows per process")
    args = ap.parse_args()
    medians: dict[str | None, list[float]] = {p: [] for p in POLICIES}
    for _ in range(args.rounds):
        for policy in POLICIES:
            medians[policy].append(statistics.median(run(policy, args.windows)))
    print("| OMP_WAIT_POLICY | processes | slow (median < 24 M) | medians, M env-steps/s |")
    print("|---|---:|---:|---|")
    for policy, meds in medians.items():
        print(f"| {policy or '(unset)'} | {len(meds)} | {sum(m < SLOW for m in meds)} | "
              + " ".join(f"{m:.1f}" for m in meds) + " |")


if __name__ == "__main__":
    main()

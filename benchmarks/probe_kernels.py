"""Per-core probes behind the kernel work (not part of ``run_all.py``).

1. ``kernels.advance_batch`` alone, on one thread, inside one njit loop (no
   Python between calls): 256 robots x 400 control periods x 5 RK4 substeps,
   on the hilly road of ``bench_batch_vs_c.py``, on a flat road, on a flat
   road without events, and on a flat road at 3 m/s (past 1.91 m/s the loops
   skip the rolling resistance's tanh, exactly +-1 there). Millions of RK4
   substeps per second.
2. The vector env's step at 4096 envs on one thread, split into its parts:
   ``kernels.step_batch`` with one block, the plant (``advance_batch``) and
   observations/rewards (``_env_finish``), each in its own njit loop; then
   ``step_batch`` with one block per core on 2 threads.
3. The sweep's compiled part alone: five 4096-row blocks of the benchmark
   sweep (``bench_sweep.py``) through ``fastmetrics.rollout_metrics``, in
   this process, on 1 and on 2 threads (no start-up, CSV or table).

Single-thread figures move little on the shared machine; use them to compare
kernel changes one after the other. Run: ``python benchmarks/probe_kernels.py``
"""

from __future__ import annotations

import time

import gymnasium as gym
import numba
import numpy as np
from bench_batch_vs_c import make_workload
from numba import njit

import ctrlsim  # registers the env
from ctrlsim import kernels as K

ROWS, PERIODS, REPEATS = 256, 400, 7


@njit
def _advance_loop(p, v, f, a, plant, prof, work, periods):
    for k in range(periods):
        K.advance_batch(p, v, f, a, k * prof.ts, prof.ts, prof.substeps, plant, prof, work)


@njit
def _step_loop(args, reps, part, blocks=1):
    (act, mode, state, k, plant, cbase, use_base, start, ref, noise, prof, work, weights,
     scales, obs, reward, terminated, truncated) = args
    nb = act.shape[0]
    for _ in range(reps):
        for i in range(nb):          # keep every episode away from its end
            if k[i] >= ref.shape[0] - 2:
                k[i] = 0
        if part == 0:
            K.step_batch(act, mode, state, k, plant, cbase, use_base, start, ref, noise,
                         prof, work, weights, scales, obs, reward, terminated, truncated,
                         blocks)
        elif part == 1:
            K.advance_batch(state[0], state[1], state[2], state[7], 0.0, prof.ts,
                            prof.substeps, plant, prof, work)
        else:
            K._env_finish(0, nb, mode, state, k, plant, start, ref, noise, prof, work,
                          weights, scales, obs, reward, terminated, truncated)


def _best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def advance() -> None:
    from ctrlsim import Road

    _, pp, _, hilly = make_workload(20.0, ts=0.05, substeps=5)
    _, _, _, flat = make_workload(20.0, ts=0.05, substeps=5, road=Road())
    plant = np.ascontiguousarray(np.repeat(pp[:1], ROWS, 0).T)
    # (profiles, start speed m/s, force and command N); 3 m/s with the force
    # that holds it: past 1.91 m/s the loops skip the sign function (tanh = +-1).
    cases = {"hilly road": (hilly, 1.0, 5.0), "flat road": (flat, 1.0, 5.0),
             "flat road, no events": (flat._replace(events=np.empty((0, 4))), 1.0, 5.0),
             "flat road, 3 m/s (tanh saturated)":
                 (flat, 3.0, K.equilibrium_command(3.0, pp[0], flat)[0])}
    print(f"advance_batch, 1 thread, {ROWS} robots x {PERIODS} periods x 5 substeps\n")
    print("| road | best ms | M RK4 substeps/s |")
    print("|---|---:|---:|")
    for name, (prof, v0, f0) in cases.items():
        def run(prof=prof, v0=v0, f0=f0):
            _advance_loop(np.zeros(ROWS), np.full(ROWS, v0), np.full(ROWS, f0),
                          np.full(ROWS, f0), plant, prof, K.batch_work(ROWS), PERIODS)
        run()
        t = _best(run)
        print(f"| {name} | {t * 1e3:.2f} | {ROWS * PERIODS * 5 / t / 1e6:.1f} |")


def env_step(n: int = 4096, reps: int = 200) -> None:
    venv = gym.make_vec("ctrlsim/CruiseControl-v0", num_envs=n,
                        vectorization_mode="vector_entry_point")
    venv.reset(seed=0)
    c = venv.unwrapped._core
    act = np.random.default_rng(0).uniform(-1, 1, n)
    args = (act, np.zeros(n, np.int8), c.state, c.k, c.plant, c.cbase, c.use_base, c.start,
            c.ref, c.noise, c.prof, c.work, c.weights, c.scales, c.obs, c.reward,
            c.terminated, c.truncated)
    print(f"\nvector env step at {n} envs (µs per step; 1 thread unless the row says)\n")
    print("| part | µs |")
    print("|---|---:|")
    for part, name in enumerate(("step_batch, one block", "plant (advance_batch)",
                                 "observations and rewards (_env_finish)")):
        _step_loop(args, 1, part)
        t = _best(lambda part=part: _step_loop(args, reps, part))
        print(f"| {name} | {t / reps * 1e6:.0f} |")
    # The same step with one block per core on 2 threads (the env's setting there).
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    blocks = numba.get_num_threads()
    _step_loop(args, 1, 0, blocks)
    t = _best(lambda: _step_loop(args, reps, 0, blocks))
    numba.set_num_threads(1)
    print(f"| step_batch, {blocks} blocks on {blocks} threads | {t / reps * 1e6:.0f} |")
    venv.close()


def sweep_blocks(blocks: int = 5) -> None:
    import importlib
    import tempfile
    from pathlib import Path

    from bench_sweep import SCENARIO

    S = importlib.import_module("ctrlsim.sweep")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.toml").write_text(SCENARIO)
        sc = ctrlsim.load_scenario(Path(tmp) / "bench.toml")
    axes = (np.linspace(20.0, 200.0, 400), np.linspace(0.0, 50.0, 250))
    plan = S._make_plan(sc, ("kp", "ki"), axes, np.array([sc.plant.pack()]),
                        sc.resolved_controller())
    times = {}
    for threads in (2, 1, 2, 1, 2, 1):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        out = S._scratch(plan, plan.block)
        t0 = time.perf_counter()
        for lo in range(0, blocks * plan.block, plan.block):
            S._simulate_block(S._block_args(plan, lo, lo + plan.block, out, False), None)
        times.setdefault(threads, []).append(time.perf_counter() - t0)
    numba.set_num_threads(1)
    print(f"\nsweep blocks alone: {blocks} x {plan.block} rows of bench_sweep.py's sweep "
          "(rollout_metrics, in process; best of 3, the first includes the cache load)\n")
    print("| threads | best s | all runs s |")
    print("|---:|---:|---|")
    for threads, ts in times.items():
        print(f"| {threads} | {min(ts):.3f} | {' '.join(f'{t:.3f}' for t in ts)} |")
    print(f"\n1 -> 2 threads: {min(times[1]) / min(times[2]):.2f}x")


if __name__ == "__main__":
    numba.set_num_threads(1)
    advance()
    env_step()
    sweep_blocks()

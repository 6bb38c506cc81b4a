"""ES throughput: closed-loop episodes per second, MLP controllers in the kernel vs the PI.

The evolution strategy of ``ctrlsim.learn`` evaluates a population with one
``rollout_batch`` call per scenario variant. This script times exactly that
(``ctrlsim.learn.evaluate``) for a population of 24 controllers on 8 randomised
``decel`` variants (40 s, Ts = 10 ms), with the built-in Leaky ReLU PI and with
MLPs of several sizes, at the scenario's 10 RK4 substeps and at the 1 substep
training uses. It also times one ``kernels.rollout`` of the PI (40 s at 1 ms),
the hot loop that the MLP dispatch must not slow down.

Run from the repository root: ``python benchmarks/bench_mlp.py``
"""

from __future__ import annotations

import time

import numpy as np

import ctrlsim
from ctrlsim import kernels as K
from ctrlsim import learn as L
from ctrlsim.scenario import Reference, Scenario

POP, N_VARIANTS, REPEATS = 24, 8, 3


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    sc = ctrlsim.load_scenario("decel")
    pi = sc.resolved_controller()
    nets = {f"MLP {a} {'x'.join(map(str, h))}": L.init_mlp(h, a, 0.1, output_scale=20.0)
            for a, h in (("leaky", (16, 16)), ("tanh", (16, 16)), ("leaky", (32, 32)))}
    rows = []
    for substeps in (10, 1):
        vs = L.variants(sc, N_VARIANTS, seed=0, substeps=substeps)
        L.evaluate([pi], vs[:1])  # load the kernels
        base = None
        for name, ctl in {"PI (leaky:0.1)": pi, **nets}.items():
            t = best_of(lambda c=ctl, v=vs: L.evaluate([c] * POP, v), REPEATS)
            rate = POP * N_VARIANTS / t
            base = base or rate
            rows.append((substeps, name, rate, rate / base))
    print(f"population {POP} x {N_VARIANTS} decel variants (40 s, Ts = 10 ms), "
          f"best of {REPEATS}, both cores")
    print()
    print("| RK4 substeps | controller | episodes/s | vs PI |")
    print("|---:|---|---:|---:|")
    for substeps, name, rate, rel in rows:
        print(f"| {substeps} | {name} | {rate:.0f} | {rel:.2f} |")
    single = Scenario(reference=Reference([(5.0, 1.0)]), duration=40.0, control_period=0.001,
                      initial_speed=2.0)
    prof, pp, cp = single.pack(), single.plant.pack(), single.resolved_controller().pack()
    out = np.empty((prof.ref.size, 5))
    K.rollout(pp, cp, prof, out)
    t = best_of(lambda: K.rollout(pp, cp, prof, out), 15)
    print()
    print(f"PI hot loop: kernels.rollout, robot 40 s at 1 ms (10 substeps): {t * 1e3:.1f} ms "
          "(best of 15)")


if __name__ == "__main__":
    main()

"""Train a SAC cruise controller on the vector env, then compare it with the built-ins.

Stable-baselines3 SAC learns on ``CruiseControlVectorEnv`` (through
:func:`ctrlsim.envs.sb3_vec_env`, which adapts its NEXT_STEP autoreset to
SB3's same-step convention). The trained policy then drives a single env on
the scenario, its speeds are collected and the step metrics
(:func:`ctrlsim.step_info` over the scenario's step window, as
``Trajectory.metrics`` does) are printed next to relu / leaky:0.1 / linear
from :func:`ctrlsim.simulate` at the same control period and substeps.

Needs the ``rl`` extra (``pip install -e ".[rl]"``). Smoke run (seconds):
``python examples/train_sac.py``; a few CPU minutes:
``python examples/train_sac.py --timesteps 60000``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import VecMonitor

import ctrlsim
from ctrlsim.envs import CruiseControlEnv, CruiseControlVectorEnv, sb3_vec_env

KEYS = ("rise_time", "settling_time", "overshoot")


def step_metrics(sc, t: np.ndarray, speed: np.ndarray) -> dict[str, float]:
    """Step metrics over the scenario's first set-speed change, plus tracking error."""
    out = dict.fromkeys(KEYS, math.nan)
    window = sc.step_window()
    ref = sc.pack().ref
    if window is not None and np.all(np.isfinite(speed)):
        t0, t1 = window
        tol = 1e-9 * sc.control_period
        sel = (t >= t0 - tol) & ((t < t1 - tol) | (t[-1] <= t1 + tol))
        info = ctrlsim.step_info(t[sel], speed[sel], initial=speed[sel][0],
                                 final=float(ref[sel][-1]))
        out.update({k: info[k] for k in KEYS})
    out["final_speed"] = float(speed[-1])
    out["rms_error"] = float(np.sqrt(np.mean((ref - speed) ** 2)))
    return out


def run_policy(model, env: CruiseControlEnv) -> np.ndarray:
    obs, info = env.reset(seed=0)
    speeds = [info["speed"]]
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, term, trunc, info = env.step(action)
        speeds.append(info["speed"])
        if term or trunc:
            break
    return np.array(speeds + [np.nan] * (env.scenario.n_steps + 1 - len(speeds)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=2000,
                    help="total env steps of training (default: a smoke run)")
    ap.add_argument("--scenario", default="step")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--gradient-steps", type=int, default=-1,
                    help="SAC gradient steps per vector step (-1: one per env step)")
    ap.add_argument("--randomize", action="store_true",
                    help="train on randomised episodes (evaluation stays nominal)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    venv = CruiseControlVectorEnv(args.num_envs, scenario=args.scenario,
                                  randomize=args.randomize)
    sc = venv.scenario
    print(f"scenario {sc.name!r}: Ts = {sc.control_period} s, {sc.substeps} substeps, "
          f"{sc.n_steps} steps per episode; training {args.timesteps} steps on "
          f"{args.num_envs} envs")
    model = SAC("MlpPolicy", VecMonitor(sb3_vec_env(venv)), learning_starts=500,
                batch_size=256, gamma=0.98, gradient_steps=args.gradient_steps,
                seed=args.seed, verbose=0)
    model.learn(args.timesteps)

    rows = {"SAC": step_metrics(sc, sc.time, run_policy(model, CruiseControlEnv(
        scenario=sc)))}
    for spec in ("relu", "leaky:0.1", "linear"):
        tr = ctrlsim.simulate(sc, spec)
        rows[spec] = step_metrics(sc, tr.t, tr.speed)

    cols = KEYS + ("final_speed", "rms_error")
    print("\n| controller | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.3g}" for c in cols) + " |")


if __name__ == "__main__":
    main()

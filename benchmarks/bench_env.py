"""Gymnasium env throughput: ctrlsim vs gymnasium's classic-control envs.

Single env: ``step()`` of ``gymnasium.make("ctrlsim/CruiseControl-v0")``
(default wrappers: order enforcing and the passive env checker) vs
``gymnasium.make("Pendulum-v1")``; both get a fixed in-box action and reset
when an episode ends, timed in alternating rounds, best round of each.
Vector env: ``make_vec(..., vectorization_mode="vector_entry_point")`` of
ctrlsim's vector env vs gymnasium's ``CartPoleVectorEnv`` (a NumPy vector
env) at the same sizes, random actions pre-drawn, env-steps/s = num_envs *
steps/s; the two vector envs are timed in alternating rounds, best round of
each. ctrlsim runs the "step" robot scenario at Ts = 0.05 s with 5 RK4
substeps (h = 10 ms) per step; CartPole and Pendulum do one Euler step. Warm
numba cache, best of a few short rounds (the machine is shared).

Run: ``python benchmarks/bench_env.py [--seconds 0.3]``
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import ctrlsim  # noqa: F401  (registers ctrlsim/CruiseControl-v0)

ENV_ID = "ctrlsim/CruiseControl-v0"
SIZES = (1, 64, 1024, 4096)
ROUNDS = 5   # alternating timing rounds per env and size


def _rate(step, seconds: float, rounds: int = 3) -> float:
    """Best calls/s of ``step`` over ``rounds`` rounds of about ``seconds`` each."""
    step()
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(50):
                step()
            n += 50
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        best = max(best, n / dt)
    return best


def _single_step(env_id: str, action, **kwargs):
    """A single env and a function stepping it with ``action`` (resetting at episode ends)."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)

    def step():
        _, _, term, trunc, _ = env.step(action)
        if term or trunc:
            env.reset()

    return env, step


def _alternating(pair, seconds: float, rounds: int) -> tuple[float, float]:
    """Calls/s of the two ``(env, step)`` of ``pair``, timed in alternating rounds (a slow
    spell of the shared machine hits both), best round of each; closes the envs."""
    best = [0.0, 0.0]
    for _ in range(rounds):
        for j, (_, step) in enumerate(pair):
            best[j] = max(best[j], _rate(step, seconds, rounds=1))
    for env, _ in pair:
        env.close()
    return best[0], best[1]


def single_pair(action, seconds: float, rounds: int = ROUNDS) -> tuple[float, float]:
    """Steps/s of ctrlsim's single env and ``Pendulum-v1``."""
    return _alternating((_single_step(ENV_ID, action), _single_step("Pendulum-v1", action)),
                        seconds, rounds)


def _vector_step(env_id: str, n: int, **kwargs):
    """A vector env and a function stepping it with pre-drawn random actions."""
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                        **kwargs)
    venv.reset(seed=0)
    venv.action_space.seed(0)
    acts = [venv.action_space.sample() for _ in range(16)]
    i = [0]

    def step():
        venv.step(acts[i[0] & 15])
        i[0] += 1

    return venv, step


def vector_pair(n: int, seconds: float, rounds: int = ROUNDS) -> tuple[float, float]:
    """Env-steps/s of ctrlsim's and CartPole's vector envs at ``n`` envs."""
    ours, cart = _alternating((_vector_step(ENV_ID, n), _vector_step("CartPole-v1", n)),
                              seconds, rounds)
    return ours * n, cart * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="length of one timing round")
    args = ap.parse_args()
    env = gym.make(ENV_ID)
    sc = env.unwrapped.scenario
    print(f"ctrlsim scenario {sc.name!r}: Ts = {sc.control_period} s, "
          f"{sc.substeps} RK4 substeps per env step\n")
    env.close()

    a = np.zeros(1, np.float32)
    ours, pend = single_pair(a, args.seconds)
    print("| single env (gymnasium.make) | steps/s | ratio |")
    print("|---|---:|---:|")
    print(f"| ctrlsim/CruiseControl-v0 | {ours:,.0f} | {ours / pend:.2f} |")
    print(f"| Pendulum-v1 | {pend:,.0f} | 1.00 |\n")

    print("| num_envs | ctrlsim env-steps/s | CartPoleVectorEnv env-steps/s | ratio |")
    print("|---:|---:|---:|---:|")
    for n in SIZES:
        ours, cart = vector_pair(n, args.seconds)
        print(f"| {n} | {ours:,.0f} | {cart:,.0f} | {ours / cart:.2f} |")


if __name__ == "__main__":
    main()

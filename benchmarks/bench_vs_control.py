"""``ctrlsim.simulate`` vs python-control ``input_output_response`` on one robot loop.

The loop: the robot preset (speed v and actuator force F, docs/model.md) under a
Leaky ReLU PI controller (alpha 0.1, kp 7 N/(m/s), ki 3 N/m, no anti-windup),
a 0 -> 2 m/s step, 40 s at a 1 ms control period with one RK4 substep. These
gains keep the command below the 20 N actuator limit (peak 17.6 N), so the
comparison is not dominated by saturation; the clip is modelled anyway.

python-control is given the same loop twice, each as a ``control.nlsys``
plant (v, F) interconnected with a ``control.nlsys`` controller (z):

* sampled-data: both blocks discrete-time with dt = Ts; the plant update
  integrates [t_k, t_k+1] with the command held, by the same RK4 as ctrlsim.
  This is the same model, so the trajectories agree to round-off.
* continuous: a continuous-time PI (dz/dt = e) and plant, solved by
  ``solve_ivp`` (RK45, python-control's defaults). This is a different model
  (no sampling), so they agree only to the effect of a 1 ms sample period.

A third form is python-control's fastest way to write the loop: one
continuous-time ``control.nlsys`` holding plant and PI (states v, F, z), no
interconnection, ``input_output_response`` with its defaults and ``T`` at the
samples (0..40 s at 1 ms). Same model as *continuous*.

Times are warm (ctrlsim's kernel compiled or loaded from the cache by a
first call) and best-of-N with ``time.perf_counter``.

Run: ``python benchmarks/bench_vs_control.py``
"""

from __future__ import annotations

import math
import time

import control as ct
import numba
import numpy as np

import ctrlsim
from ctrlsim import LeakyReLUController, Reference, Scenario, make_plant

TS = 0.001            # control period, s
DURATION = 40.0       # s
V_REF = 2.0           # m/s, step from 0 at t = 0
CONTROLLER = LeakyReLUController(alpha=0.1, kp=7.0, ki=3.0, kd=0.0, kaw=0.0,
                                 feedforward=0.0)
TOL = 1e-2            # m/s, required agreement
TARGET = 200.0        # required speed-up of ctrlsim
V_ROLL = 0.1          # m/s, rolling-resistance smoothing speed (docs/model.md)
TARGET_ONE = 150.0    # required speed-up vs the single continuous nlsys (the issue)


def scenario() -> Scenario:
    return Scenario(reference=Reference([(0.0, V_REF)]), duration=DURATION,
                    control_period=TS, substeps=1, initial_speed=0.0,
                    plant=make_plant("robot"), controller=CONTROLLER)


# --------------------------------------------------------------------------
# The same loop in python-control
# --------------------------------------------------------------------------
def plant_rhs(plant):
    """(dv/dt, dF/dt) of the robot on the flat for a held command ``a`` (N)."""
    m, g, cr = plant.mass, plant.gravity, plant.rolling_resistance
    dlin, dquad, tau = plant.drag_linear, plant.drag_quadratic, plant.actuator_tau
    lo, hi = plant.command_limits

    def rhs(v, f, a):
        a = min(max(a, lo), hi)
        resist = cr * m * g * math.tanh(v * (1.0 / V_ROLL)) + dlin * v + dquad * v * abs(v)
        return (f - resist) / m, (a - f) / tau

    return rhs


def controller_law(ctl):
    """Pre-activation ``s``, output ``u = phi(s)`` and ``phi_inv`` of the PI controller."""
    kp, ki, alpha = ctl.kp, ctl.ki, ctl.slope

    def law(e, z):
        s = kp * e + ki * z
        return s, (s if s >= 0.0 else alpha * s)

    return law


def phi_inv(ctl):
    """Pre-activation that produces command ``a`` (anti-windup in the s domain)."""
    alpha = ctl.slope

    def inv(a):
        return a / alpha if (a < 0.0 and alpha > 0.0) else a

    return inv


def sampled_data_loop(plant, ctl, ts: float, substeps: int, calls: list[int]):
    """Discrete-time plant (RK4 over each period, command held) + digital PI.

    ``calls[0]`` counts plant updates (one per control period).
    """
    rhs, law, inv = plant_rhs(plant), controller_law(ctl), phi_inv(ctl)
    lo, hi = plant.command_limits
    kaw_ki = ctl.kaw / ctl.ki

    def plant_update(t, x, u, params):
        calls[0] += 1
        v, f = x
        a = u[0]
        h = ts / substeps
        for _ in range(substeps):
            k1v, k1f = rhs(v, f, a)
            k2v, k2f = rhs(v + 0.5 * h * k1v, f + 0.5 * h * k1f, a)
            k3v, k3f = rhs(v + 0.5 * h * k2v, f + 0.5 * h * k2f, a)
            k4v, k4f = rhs(v + h * k3v, f + h * k3f, a)
            v += h / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v)
            f += h / 6.0 * (k1f + 2.0 * k2f + 2.0 * k3f + k4f)
        return [v, f]

    def ctl_output(t, x, u, params):
        return [law(u[1] - u[0], x[0])[1]]

    def ctl_update(t, x, u, params):
        e = u[1] - u[0]
        s, out = law(e, x[0])
        return [x[0] + ts * (e + kaw_ki * (inv(min(max(out, lo), hi)) - s))]

    return _interconnect(plant_update, ctl_output, ctl_update, dt=ts)


def continuous_loop(plant, ctl, calls: list[int]):
    """Continuous-time plant + continuous PI with the same activation and clip.

    ``calls[0]`` counts right-hand-side evaluations of the plant.
    """
    rhs, law, inv = plant_rhs(plant), controller_law(ctl), phi_inv(ctl)
    lo, hi = plant.command_limits
    kaw_ki = ctl.kaw / ctl.ki

    def plant_update(t, x, u, params):
        calls[0] += 1
        return list(rhs(x[0], x[1], u[0]))

    def ctl_output(t, x, u, params):
        return [law(u[1] - u[0], x[0])[1]]

    def ctl_update(t, x, u, params):
        e = u[1] - u[0]
        s, out = law(e, x[0])
        return [e + kaw_ki * (inv(min(max(out, lo), hi)) - s)]

    return _interconnect(plant_update, ctl_output, ctl_update, dt=0)


def one_system(plant, ctl, calls: list[int]):
    """python-control's fastest form of the loop: ONE continuous-time ``nlsys``
    holding plant and PI (states v, F, z; input vref; output v), no interconnect.

    ``calls[0]`` counts right-hand-side evaluations.
    """
    rhs, law, inv = plant_rhs(plant), controller_law(ctl), phi_inv(ctl)
    lo, hi = plant.command_limits
    kaw_ki = ctl.kaw / ctl.ki

    def update(t, x, u, params):
        calls[0] += 1
        v, f, z = x
        e = u[0] - v
        s, out = law(e, z)
        a = min(max(out, lo), hi)
        dv, df = rhs(v, f, a)
        return [dv, df, e + kaw_ki * (inv(a) - s)]

    return ct.nlsys(update, lambda t, x, u, params: x[:1], inputs=["vref"],
                    outputs=["v"], states=["v", "F", "z"], name="loop1", dt=0)


def _interconnect(plant_update, ctl_output, ctl_update, dt):
    robot = ct.nlsys(plant_update, lambda t, x, u, params: x[:1], inputs=["a"],
                     outputs=["v"], states=["v", "F"], name="robot", dt=dt)
    pi = ct.nlsys(ctl_update, ctl_output, inputs=["v", "vref"], outputs=["u"],
                  states=["z"], name="pi", dt=dt)
    return ct.interconnect([robot, pi], inplist=["pi.vref"], outlist=["robot.v"],
                           connections=[["robot.a", "pi.u"], ["pi.v", "robot.v"]],
                           name="loop")


def python_control_speed(loop, t: np.ndarray) -> np.ndarray:
    # Initial state: at rest, zero force and integrator (ctrlsim's equilibrium
    # preload at v0 = 0 on the flat is also all zeros).
    resp = ct.input_output_response(loop, t, np.full_like(t, V_REF), [0.0, 0.0, 0.0])
    return np.asarray(resp.outputs)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
ONE = "python-control one nlsys (v, F, z), continuous"
ROUNDS = 3            # rounds; each times every variant, so load hits all alike
SIM_CALLS = 10        # ctrlsim.simulate calls per round


def timed(fn):
    """(seconds, result) of one call of ``fn``."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    print(f"ctrlsim {ctrlsim.__version__}, numba {numba.__version__}, "
          f"numpy {np.__version__}, control {ct.__version__}")
    sc = scenario()
    t = sc.time

    first_call, first = timed(lambda: ctrlsim.simulate(sc))
    assert not first.diverged
    peak = float(np.max(np.abs(first.applied)))
    lo, hi = sc.plant.command_limits
    print(f"scenario: robot, 0 -> {V_REF} m/s at t = 0, {DURATION:g} s, Ts = {TS * 1e3:g} ms, "
          f"{sc.substeps} RK4 substep, {sc.n_steps} control periods, "
          f"controller {CONTROLLER.spec}")
    print(f"peak |command| {peak:.2f} N (limits {lo:g}..{hi:g} N, "
          f"{'saturates' if peak >= hi else 'never saturates'}); "
          f"final speed {first.speed[-1]:.4f} m/s; "
          f"first simulate() call (compile or cache load) {first_call:.2f} s")

    sampled_calls, cont_calls, one_calls = [0], [0], [0]
    cases = {
        "python-control sampled-data (dt = Ts, RK4 update)":
            (sampled_data_loop(sc.plant, CONTROLLER, TS, sc.substeps, sampled_calls),
             sampled_calls, "plant updates"),
        "python-control continuous PI (solve_ivp RK45)":
            (continuous_loop(sc.plant, CONTROLLER, cont_calls), cont_calls,
             "plant RHS evaluations"),
        ONE: (one_system(sc.plant, CONTROLLER, one_calls), one_calls, "RHS evaluations"),
    }
    sim_name = "ctrlsim.simulate"
    times: dict[str, list[float]] = {sim_name: [], **{name: [] for name in cases}}
    diffs: dict[str, float] = {}
    for _ in range(ROUNDS):
        for _ in range(SIM_CALLS):
            dt, tr = timed(lambda: ctrlsim.simulate(sc))
            times[sim_name].append(dt)
        for name, (loop, _, _) in cases.items():
            dt, speed = timed(lambda loop=loop: python_control_speed(loop, t))
            times[name].append(dt)
            # A fast wrong answer is no benchmark.
            diffs[name] = max(diffs.get(name, 0.0), float(np.max(np.abs(speed - tr.speed))))
            assert diffs[name] <= TOL, f"{name}: max |speed difference| {diffs[name]:.3g} > {TOL}"

    sim_best = min(times[sim_name])
    print(f"\n## ctrlsim.simulate vs python-control: robot, {DURATION:g} s at "
          f"{TS * 1e3:g} ms, {sc.substeps} RK4 substep\n")
    print("| variant | best s | runs | max abs dv m/s | work per run | ctrlsim faster |")
    print("|---|---:|---:|---:|---|---:|")
    for name, runs in times.items():
        diff_s = f"{diffs[name]:.2e}" if name in diffs else "-"
        what = (f"{cases[name][1][0] // ROUNDS} {cases[name][2]}" if name in cases
                else f"{sc.n_steps * sc.substeps * 4} RHS evaluations")
        best = min(runs)
        print(f"| {name} | {best:.4f} | {len(runs)} | {diff_s} | {what} | "
              f"{best / sim_best:.0f}x |")
    print(f"\nEvery python-control variant returns outputs at all {t.size} samples.\n")
    for name in cases:
        target = TARGET_ONE if name == ONE else TARGET
        ratio = min(times[name]) / sim_best
        verdict = "met" if ratio >= target else "NOT met"
        print(f"- speed-up vs {name}: {ratio:.0f}x (target >= {target:g}x: {verdict})")

if __name__ == "__main__":
    main()

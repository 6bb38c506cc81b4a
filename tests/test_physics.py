"""Kernel vs an independent scipy reference (docs/model.md: plant and controller).

The reference below re-implements the plant and the digital controller from
the model description in plain Python and integrates each control interval with
``solve_ivp`` (DOP853, rtol 1e-11), splitting at event switching times. It
shares no code with ``ctrlsim.kernels``.
"""

import math
import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import ctrlsim
from ctrlsim import Event, Reference, Road, Scenario, Sensor, make_plant


# --------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------
def _grade(x, pts):
    if not pts:
        return 0.0
    xs, gs = zip(*pts)
    return math.radians(np.interp(x, xs, gs))


def _actuator(plant, a, v):
    if plant.preset == "robot":
        return a
    if a < 0:  # brakes oppose motion (smoothed sign, as rolling resistance)
        return plant.brake_force_max * a * math.tanh(v / 0.1)
    ratio = plant.gear_ratios[plant.gear - 1]
    w = ratio * v
    torque = max(plant.torque_max * (1 - plant.torque_beta * (w / plant.omega_max - 1) ** 2), 0)
    return ratio * torque * a


def _resist(plant, v, theta, m):
    return (plant.rolling_resistance * m * plant.gravity * math.cos(theta) * math.tanh(v / 0.1)
            + plant.drag_linear * v + plant.drag_quadratic * v * abs(v))


def _active(sc, t):
    payload = sum(e.payload for e in sc.events if e.at <= t < e.until)
    force = sum(e.force for e in sc.events if e.at <= t < e.until)
    return payload, force


def _rhs(sc, a, t_mid):
    """Plant right-hand side; events are evaluated at t_mid (inside the piece)."""
    plant = sc.plant
    payload, f_ext = _active(sc, t_mid)
    m = plant.mass + payload

    def f(t, x):
        p, v, force = x
        theta = _grade(t if sc.road.by == "time" else p, sc.road.grade_deg)
        target = _actuator(plant, a, v)
        if plant.actuator_tau > 0:
            dforce = (target - force) / plant.actuator_tau
        else:
            force, dforce = target, 0.0
        dv = (force - _resist(plant, v, theta, m) - m * plant.gravity * math.sin(theta)
              + f_ext) / m
        return [v, dv, dforce]
    return f


def reference_simulation(sc, ctl):
    plant, ts = sc.plant, sc.control_period
    n = sc.n_steps
    lo, hi = plant.command_limits
    alpha = ctl.slope
    phi = lambda s: s if s >= 0 else alpha * s  # noqa: E731
    t = np.arange(n + 1) * ts
    r = sc.reference.sample(t, sc.initial_speed)
    noise = np.zeros(n + 1)
    if sc.sensor.speed_noise_std > 0:
        noise = sc.sensor.speed_noise_std * np.random.default_rng(
            sc.sensor.seed).standard_normal(n + 1)
    # Equilibrium start.
    v0 = sc.initial_speed
    theta0 = _grade(0.0, sc.road.grade_deg)
    payload0, f0 = _active(sc, 0.0)
    m0 = plant.mass + payload0
    f_req = _resist(plant, v0, theta0, m0) + m0 * plant.gravity * math.sin(theta0) - f0
    if plant.preset == "robot":
        a0 = f_req
    elif f_req >= 0:
        a0 = f_req / _actuator(plant, 1.0, v0)
    else:
        a0 = f_req / (plant.brake_force_max * math.tanh(v0 / 0.1))
    a0 = min(max(a0, lo), hi)
    s0 = a0 / alpha if (a0 < 0 and alpha > 0) else a0
    z = (s0 - ctl.feedforward * v0) / ctl.ki if ctl.ki else 0.0
    x = np.array([0.0, v0, _actuator(plant, min(max(phi(s0), lo), hi), v0)])
    speeds = np.empty(n + 1)
    e_prev = 0.0
    switch_times = sorted({e.at for e in sc.events} | {e.until for e in sc.events})
    for k in range(n + 1):
        speeds[k] = x[1]
        e = r[k] - (x[1] + noise[k])
        d = (e - e_prev) / ts if k else 0.0
        s = ctl.kp * e + ctl.ki * z + ctl.kd * d + ctl.feedforward * r[k]
        a = min(max(phi(s), lo), hi)
        if ctl.ki:  # anti-windup in the pre-activation domain
            a_pre = a / alpha if (a < 0 and alpha > 0) else a
            z += ts * (e + ctl.kaw / ctl.ki * (a_pre - s))
        e_prev = e
        if k == n:
            break
        t0, t1 = k * ts, (k + 1) * ts
        cuts = [t0] + [c for c in switch_times if t0 < c < t1] + [t1]
        for ta, tb in zip(cuts, cuts[1:]):
            sol = solve_ivp(_rhs(sc, a, 0.5 * (ta + tb)), (ta, tb), x, method="DOP853",
                            rtol=1e-11, atol=1e-12)
            x = sol.y[:, -1]
        if plant.actuator_tau == 0:
            x[2] = 0.0
    return t, speeds


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
def _robot_case():
    return Scenario(
        name="robot-mixed", reference=Reference([(0.5, 2.5), (5.0, 1.0)]),
        duration=8.0, control_period=0.02, substeps=10, initial_speed=1.5,
        plant=make_plant("robot", mass=22),
        controller=ctrlsim.LeakyReLUController(alpha=0.2, kp=60, ki=25, kd=2, kaw=0.5,
                                               feedforward=3),
        road=Road(((1.0, 0.0), (4.0, 2.5), (9.0, -4.0)), by="position"),
        events=(Event(at=2.0, payload=6.0), Event(at=3.0, until=4.5, force=-15.0)),
        sensor=Sensor(speed_noise_std=0.02, seed=3))


def _car_case():
    return Scenario(
        name="car-hill", reference=Reference([(1.0, 24.0), (6.0, 18.0)]),
        duration=10.0, control_period=0.05, substeps=5, initial_speed=20.0,
        plant=make_plant("car"),
        controller=ctrlsim.LinearController(kp=0.5, ki=0.1, kaw=2.0),
        road=Road(((0.0, 0.0), (3.0, 4.0), (8.0, -2.0)), by="time"),
        events=(Event(at=2.0, until=7.0, payload=300.0),),
        sensor=Sensor(speed_noise_std=0.05, seed=1))


@pytest.mark.parametrize("make", [_robot_case, _car_case], ids=["robot", "car"])
def test_kernel_matches_scipy_reference(make):
    sc = make()
    tr = ctrlsim.simulate(sc)
    t, v_ref = reference_simulation(sc, tr.controller)
    assert not tr.diverged
    # The case must exercise saturation, or it proves little about the limits.
    lo, hi = sc.plant.command_limits
    assert np.any((tr.command > hi) | (tr.command < lo))
    assert np.max(np.abs(tr.speed - v_ref)) <= 1e-5


def test_relu_equilibrium_start_needing_brake_starts_coasting():
    # On a steep descent the equilibrium needs braking; ReLU was applying 0.
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=1.0, initial_speed=2.0,
                  road=Road(((0.0, -5.0),)))
    tr = ctrlsim.simulate(sc, ctrlsim.ReLUController())
    assert tr.force[0] == 0.0
    lin = ctrlsim.simulate(sc, ctrlsim.LinearController())
    assert lin.force[0] < 0
    # Linear starts in equilibrium: speed stays put.
    assert np.max(np.abs(lin.speed - 2.0)) < 1e-9


def test_a_controller_without_integral_action_warns_that_it_does_not_hold_the_start():
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=5.0, initial_speed=2.0)
    with pytest.warns(ctrlsim.StartWarning, match=r"no integral action \(ki = 0\)"):
        tr = ctrlsim.simulate(sc, ctrlsim.controller("linear,ki=0"))
    assert tr.speed[-1] < 1.99  # the warned drift: P action alone holds a lower speed
    with warnings.catch_warnings():
        warnings.simplefilter("error", ctrlsim.StartWarning)
        held = ctrlsim.simulate(sc, ctrlsim.controller("linear"))  # integral action: silent
        # ki = 0, but the feedforward commands the holding force itself: silent too.
        a0 = float(held.applied[0])
        ctrlsim.simulate(sc, ctrlsim.controller(f"linear,ki=0,feedforward={a0 / 2.0!r}"))
    assert np.max(np.abs(held.speed - 2.0)) < 1e-9


def test_infeasible_start_warns():
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=1.0, initial_speed=2.0,
                  road=Road(((0.0, 8.0),)))
    with pytest.warns(ctrlsim.StartWarning, match="cannot hold"):
        ctrlsim.simulate(sc)

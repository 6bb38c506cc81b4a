"""ctrlsim.analysis: linearisation, modes vs simulation, circle-criterion soundness, noise bound."""

import json
import math
import warnings
from dataclasses import replace

import control
import numpy as np
import pytest
from scipy.optimize import minimize

import ctrlsim
from ctrlsim import kernels as K
from ctrlsim.analysis import (
    analyze,
    certify,
    close_loop,
    linearize_plant,
    lipschitz,
    lure_loop,
    operating_point,
    stability_map,
)
from ctrlsim.cli import main
from ctrlsim.scenario import Event, Reference, Road, Scenario
from ctrlsim.validation import ParameterError


# --------------------------------------------------------------------------
# Linearisation vs control.linearize on an independent nlsys of the same plant
# --------------------------------------------------------------------------
def _plant_nlsys(plant, grade_deg, payload, f_ext):
    """The plant of docs/model.md as a python-control nlsys, states [v, F] (or [v])."""
    th = math.radians(grade_deg)
    m = plant.mass + payload
    g = plant.gravity
    car = plant.preset == "car"

    def f_target(a, v):
        if not car:
            return a
        if a >= 0:
            n = plant.gear_ratios[plant.gear - 1]
            torque = plant.torque_max * (1 - plant.torque_beta * (n * v / plant.omega_max - 1) ** 2)
            return n * max(torque, 0.0) * a
        return plant.brake_force_max * a * np.tanh(v / 0.1)

    def accel(v, force):
        res = (plant.rolling_resistance * m * g * np.cos(th) * np.tanh(v / 0.1)
               + plant.drag_linear * v + plant.drag_quadratic * v * abs(v))
        return (force - res - m * g * np.sin(th) + f_ext) / m

    tau = plant.actuator_tau
    if tau > 0:
        def update(t, x, u, params):
            return [accel(x[0], x[1]), (f_target(u[0], x[0]) - x[1]) / tau]
        return control.nlsys(update, lambda t, x, u, params: x[0:1], states=2, inputs=1,
                             outputs=1)

    def update1(t, x, u, params):
        return [accel(x[0], f_target(u[0], x[0]))]
    return control.nlsys(update1, lambda t, x, u, params: x[0:1], states=1, inputs=1,
                         outputs=1)


@pytest.mark.parametrize("preset, speed, grade, payload, force", [
    ("robot", 2.0, 0.0, 0.0, 0.0),
    ("robot", 1.2, -3.0, 10.0, -2.0),
    ("car", 20.0, 4.0, 0.0, 0.0),
    ("car", 25.0, -8.0, 200.0, 0.0),    # downhill: the car brakes
])
def test_linearisation_matches_control_linearize(preset, speed, grade, payload, force):
    sc = Scenario(reference=Reference(((0.0, speed),)), duration=10.0, initial_speed=speed,
                  plant=ctrlsim.make_plant(preset), road=Road(((0.0, grade),)),
                  events=(Event(at=0.0, payload=payload, force=force),))
    an = analyze(sc, "leaky:0.5", simulate=False)
    op = an.operating_point
    assert op.feasible
    sys = _plant_nlsys(sc.plant, grade, payload, force)
    x0 = [op.speed, op.force] if sc.plant.actuator_tau > 0 else [op.speed]
    # The operating point is an equilibrium of the independent model.
    assert np.allclose(sys._rhs(0.0, np.array(x0), np.array([op.command])), 0.0, atol=1e-9)
    lin = control.linearize(sys, x0, [op.command], eps=1e-7)
    for name in "ABCD":
        ours, ref = np.asarray(getattr(an.plant, name)), np.asarray(getattr(lin, name))
        assert np.allclose(ours, ref, rtol=1e-6, atol=1e-6), (name, ours, ref)
    if preset == "car" and grade < 0:
        assert op.command < 0


# --------------------------------------------------------------------------
# Modes vs simulation on small steps that never change mode
# --------------------------------------------------------------------------
@pytest.mark.parametrize("grade, spec, step", [
    (0.0, "linear", 0.01),
    (0.0, "leaky:0.1", -0.01),                     # slope-1 mode (s* > 0)
    (-3.0, "leaky:0.1", 0.01),                     # slope-alpha mode (braking downhill)
    (-3.0, "leaky:0.3,kp=60,ki=40", -0.01),        # underdamped alpha mode
    (0.0, "linear,kp=300,ki=100,kd=5", 0.01),      # with derivative action
])
def test_mode_predictions_match_simulation(grade, spec, step):
    sc = Scenario(reference=Reference(((1.0, 2.0 + step),)), duration=30.0, initial_speed=2.0,
                  road=Road(((0.0, grade),)))
    an = analyze(sc, spec)
    tr = ctrlsim.simulate(sc, spec)
    signs = np.sign(tr.command[tr.command != 0])
    assert signs.size and np.all(signs == signs[0])          # the run never changes mode
    active = [m for m in an.modes if m.active]
    assert len(active) == 1 and (active[0].slope == 1.0) == (signs[0] > 0)
    m, sim = active[0], an.simulated
    assert abs(m.overshoot - sim["overshoot"]) <= 1.0
    assert abs(m.settling_time - sim["settling_time"]) <= 0.05 * sim["settling_time"]


def test_car_mode_prediction():
    sc = Scenario(reference=Reference(((1.0, 20.2),)), duration=50.0, initial_speed=20.0,
                  plant=ctrlsim.make_plant("car"), substeps=2)
    an = analyze(sc, "relu,kp=0.5,ki=0.1,kaw=2")
    m = an.modes[0]
    assert m.active and m.slope == 1.0
    assert abs(m.overshoot - an.simulated["overshoot"]) <= 1.0
    assert abs(m.settling_time - an.simulated["settling_time"]) <= 0.05 * m.settling_time


# --------------------------------------------------------------------------
# Circle criterion
# --------------------------------------------------------------------------
def test_downhill_relu_is_not_certified_and_leaky_is():
    relu = analyze("downhill", "relu")
    assert not relu.circle.certified
    assert not relu.operating_point.feasible
    assert relu.simulated_ok is False               # it does run away
    leaky = analyze("downhill")
    assert leaky.circle.certified and leaky.circle.margin > 0
    assert leaky.simulated_ok
    assert [m.active for m in leaky.modes] == [False, True]


def test_relu_with_integrator_and_no_antiwindup_is_never_certified():
    op, circ = certify("decel", "relu")
    assert op.feasible and not circ.certified and circ.margin == pytest.approx(0.0, abs=1e-9)


def test_certificate_implies_both_modes_stable():
    for spec in ("leaky:0.1", "leaky:0.5,kp=2000", "leaky:0.05,kp=15", "linear,kp=8000"):
        an = analyze("decel", spec, simulate=False)
        if an.circle.certified:
            assert all(m.stable for m in an.modes)
    assert not analyze("decel", "linear,kp=8000", simulate=False).circle.certified


def test_soundness_on_a_sweep_grid():
    """No certified grid point diverges or fails to settle in simulation."""
    sc = replace(ctrlsim.load_scenario("decel"), duration=60.0, substeps=2)
    smap = stability_map(sc, [8.0, 40.0, 300.0, 2500.0, 9000.0], [0.0, 0.05, 0.3, 1.0])
    assert smap.unsound == 0
    assert not (smap.popov & ~smap.simulated_ok).any()       # nor the Jury-Lee test
    assert (smap.popov >= smap.certified).all()
    assert smap.certified.any() and (~smap.certified & smap.simulated_ok).any()
    assert (~smap.simulated_ok).any()                # the grid reaches unstable gains
    assert 0 < smap.certified_share < 1
    down = replace(ctrlsim.load_scenario("downhill"), duration=30.0, substeps=2)
    dmap = stability_map(down, [20.0, 40.0], [0.0, 0.2, 1.0], gain="ki")
    assert dmap.unsound == 0
    assert not dmap.certified[:, 0].any()            # ReLU runs away: never certified


# --------------------------------------------------------------------------
# Noise sensitivity: the one-sample Lipschitz bound
# --------------------------------------------------------------------------
def _two_samples(cp, ts, lo, hi, y1, y2, r, e0, z0):
    """u_k and a_k after samples k-1 (measurement y1) and k (y2), through the kernel."""
    e1, _, _, z1 = K.control_step(y1, r, e0, z0, False, ts, lo, hi, cp)
    _, u2, a2, _ = K.control_step(y2, r, e1, z1, False, ts, lo, hi, cp)
    return u2, a2


@pytest.mark.parametrize("spec", ["relu", "leaky:0.1", "leaky:0.6", "linear",
                                  "leaky:0.2,kp=80,ki=30,kd=4,kaw=2",
                                  "relu,kp=0.5,ki=0.1,kaw=2", "linear,kd=0.3,ki=0"])
def test_lipschitz_bound_never_exceeded(spec):
    ts, lo, hi = 0.01, -20.0, 20.0
    ctl = ctrlsim.load_scenario("decel").resolved_controller(ctrlsim.controller(spec))
    cp = ctl.pack()
    L = lipschitz(ctl, ts)
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(40):
        r = rng.uniform(0.5, 3.0)
        y1, y2 = r + rng.normal(0, 0.1, 2)
        state = (r, rng.normal(0, 0.1), rng.normal(0, 0.3))   # reference, e_{k-2}, z_{k-1}
        eps = 10 ** rng.uniform(-4, -1)
        base = np.array(_two_samples(cp, ts, lo, hi, y1, y2, *state))

        def dev(d, which, y1=y1, y2=y2, state=state, base=base):
            out = _two_samples(cp, ts, lo, hi, y1 + d[0], y2 + d[1], *state)
            return abs(out[which] - base[which])

        cands = [rng.uniform(-eps, eps, 2) for _ in range(20)]
        cands += [np.array([sx, sy]) * eps for sx in (-1, 1) for sy in (-1, 1)]
        for which in (0, 1):   # unclipped command u and applied command a
            for x0 in cands[-6:]:
                res = minimize(lambda d, w=which: -dev(d, w), x0, method="L-BFGS-B",
                               bounds=[(-eps, eps)] * 2)
                cands.append(res.x)
            for d in cands:
                ratio = dev(d, which) / eps
                worst = max(worst, ratio)
                assert ratio <= L * (1 + 1e-9), (spec, d, ratio, L)
    assert worst >= 0.5 * L        # and the bound is not loose by orders of magnitude


@pytest.mark.parametrize("activation, out_act", [("relu", "linear"), ("leaky", "tanh"),
                                                  ("tanh", "tanh")])
def test_lipschitz_bound_never_exceeded_by_an_mlp(activation, out_act):
    from ctrlsim.mlp import MLPController

    rng = np.random.default_rng(3)
    ws = [rng.normal(0, 0.8, (8, 5)), rng.normal(0, 0.5, (8, 8)), rng.normal(0, 0.5, (1, 8))]
    bs = [rng.normal(0, 0.3, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.3, 1)]
    net = MLPController(weights=ws, biases=bs, activation=activation, alpha=0.1,
                        input_scale=np.array([2.0, 0.5, 0.05, 0.5, 0.5]),
                        output_activation=out_act, output_scale=20.0, kaw=0.5)
    ts, lo, hi = 0.05, -20.0, 20.0
    cp = net.pack()
    L = lipschitz(net, ts)
    assert L == net.lipschitz(ts)
    worst = 0.0
    for _ in range(25):
        r = rng.uniform(0.5, 3.0)
        y1, y2 = r + rng.normal(0, 0.3, 2)
        state = (r, rng.normal(0, 0.3), rng.normal(0, 1.0))
        eps = 10 ** rng.uniform(-4, -1)
        base = np.array(_two_samples(cp.copy(), ts, lo, hi, y1, y2, *state))

        def dev(d, y1=y1, y2=y2, state=state, base=base):
            out = _two_samples(cp.copy(), ts, lo, hi, y1 + d[0], y2 + d[1], *state)
            return abs(out[0] - base[0])

        cands = [rng.uniform(-eps, eps, 2) for _ in range(20)]
        cands += [np.array([sx, sy]) * eps for sx in (-1, 1) for sy in (-1, 1)]
        for x0 in cands[-4:]:
            res = minimize(lambda d: -dev(d), x0, method="L-BFGS-B", bounds=[(-eps, eps)] * 2)
            cands.append(res.x)
        for d in cands:
            ratio = dev(d) / eps
            worst = max(worst, ratio)
            assert ratio <= L * (1 + 1e-9), (d, ratio, L)
    assert worst > 0.0


def test_lipschitz_uses_the_controllers_own_method():
    class Net:
        def lipschitz(self):
            return 12.5
    assert lipschitz(Net(), 0.01) == 12.5
    with pytest.raises(ValueError):
        lipschitz(object(), 0.01)


# --------------------------------------------------------------------------
# CLI and JSON
# --------------------------------------------------------------------------
def test_cli_json_schema(capsys, tmp_path):
    plot = tmp_path / "nyq.png"
    assert main(["analyze", "decel", "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"scenario", "controller", "operating_speed", "feasible", "reason",
                         "locally_stable", "plant", "modes", "circle", "lipschitz", "rest"}
    assert data["rest"] is None
    assert data["scenario"] == "decel" and data["operating_speed"] == 1.0
    assert data["feasible"] is True and data["reason"] == ""
    assert data["locally_stable"] is True
    assert set(data["plant"]) == {"A", "B", "C", "D"}
    assert np.asarray(data["plant"]["A"]).shape == (2, 2)
    assert [m["slope"] for m in data["modes"]] == [1.0, 0.1]
    for m in data["modes"]:
        assert set(m) == {"slope", "poles", "damping", "wn", "stable"}
        assert all(len(p) == 2 for p in m["poles"]) and m["stable"] is True
    assert set(data["circle"]) == {"sector", "certified", "margin", "reason", "jury_lee"}
    assert data["circle"]["sector"] == [0.1, 1.0] and data["circle"]["certified"] is True
    assert set(data["circle"]["jury_lee"]) == {"certified", "margin", "q"}
    assert data["circle"]["jury_lee"]["certified"] is True
    assert data["lipschitz"] == pytest.approx(100.2)
    assert plot.stat().st_size > 10_000


def test_cli_report_and_errors(capsys):
    assert main(["analyze", "downhill", "-c", "relu"]) == 0
    out = capsys.readouterr().out
    assert "not certified" in out and "NO EQUILIBRIUM" in out and "Lipschitz" in out
    assert main(["analyze", "decel", "-c", "nope"]) == 2
    assert main(["analyze", "no-such-scenario"]) == 2


# --------------------------------------------------------------------------
# Operating points the linear modes do not describe, and robustness
# --------------------------------------------------------------------------
def test_ki0_equilibrium_on_the_actuator_limit_is_not_analysed():
    """With ki = 0 the speed can settle with the command clipped: the loop is open there,
    so the slope-1 mode (and a certificate of it) would describe the wrong loop."""
    sc = Scenario(reference=Reference([(0.0, 4.0)]), initial_speed=4.0, duration=60.0,
                  road=Road(((0.0, 2.0),)))
    with pytest.warns(ctrlsim.StartWarning):   # 4 m/s up 2 deg is beyond the actuator
        an = analyze(sc, "linear,kp=50,ki=0")
        tr = ctrlsim.simulate(sc, "linear,kp=50,ki=0")
    op = an.operating_point
    assert not op.feasible and "limit" in op.reason
    lo, hi = sc.plant.command_limits
    assert tr.applied[-1] == hi and tr.command[-1] > hi       # the clip holds it
    assert op.speed == pytest.approx(tr.speed[-1], abs=1e-3)  # where it settles
    assert not an.circle.certified and an.locally_stable is None


def test_with_antiwindup_the_rest_point_is_found_where_the_simulation_rests(capsys):
    """ReLU that would have to brake coasts; a climb beyond the actuator holds the limit.
    Either way the anti-windup keeps the integrator bounded and the loop rests there."""
    down = replace(ctrlsim.load_scenario("downhill"), duration=120.0)
    climb = Scenario(reference=Reference([(0.0, 2.0)]), initial_speed=2.0, duration=120.0,
                     road=Road(((0.0, 3.0),)))
    for sc, spec, kind, command in ((down, "relu,kaw=2", "coasting", 0.0),
                                    (climb, "leaky:0.1,kaw=2", "on the upper limit", 20.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctrlsim.StartWarning)
            an = analyze(sc, spec)
            tr = ctrlsim.simulate(sc, spec)
        assert not an.operating_point.feasible
        assert "another speed" in an.operating_point.reason
        rest = an.rest
        assert rest.kind == kind and rest.command == command and rest.locally_stable
        tail = tr.speed[-len(tr.speed) // 10:]
        assert np.ptp(tail) < 1e-4 and tr.applied[-1] == command      # it rests there
        assert rest.speed == pytest.approx(tail[-1], abs=1e-5)
        # The integrator's pole at rest is 1 - Ts*kaw (the command is constant).
        assert np.min(np.abs(rest.mode.poles - (1 - sc.control_period * 2.0))) < 1e-12
        # Without anti-windup the integrator winds up: no rest point.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctrlsim.StartWarning)
            wound = analyze(sc, spec.replace("kaw=2", "kaw=0"), simulate=False)
        assert wound.rest is None and "another speed" not in wound.operating_point.reason
    assert main(["analyze", "downhill", "-c", "relu,kaw=2"]) == 0
    out = capsys.readouterr().out
    assert "NO EQUILIBRIUM AT THE SET SPEED" in out and "rests at 3.12 m/s" in out


@pytest.mark.parametrize("name, spec, grade", [
    ("downhill", "relu,kp=100,ki=20,kaw=2", -10.0),     # braking needed beyond the limit
    ("fbs-hill", "relu,kp=0.5,ki=0.1,kaw=2", -10.0),    # a car that coasts to ~72 m/s
])
def test_rest_points_far_from_the_set_speed_or_beyond_the_limit(name, spec, grade):
    sc = replace(ctrlsim.load_scenario(name), duration=600.0, road=Road(((0.0, grade),)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctrlsim.StartWarning)
        an = analyze(sc, spec, simulate=False)
        tr = ctrlsim.simulate(sc, spec)
    assert an.rest is not None and an.rest.kind == "coasting" and an.rest.locally_stable
    assert an.rest.speed == pytest.approx(tr.speed[-1], abs=1e-4)
    assert np.all(tr.applied[-len(tr.applied) // 10:] == 0.0)


def test_close_loop_matches_control_feedback_and_survives_huge_gains():
    sc = ctrlsim.load_scenario("decel")
    for spec in ("leaky:0.1", "linear,kd=2", "relu,kaw=2"):
        ctl = sc.resolved_controller(ctrlsim.controller(spec))
        op = operating_point(sc, ctl)
        loop = lure_loop(linearize_plant(sc, op), ctl, sc.control_period)
        for slope in (1.0, ctl.slope):
            ref = control.feedback(loop, np.array([[slope, 0.0], [0.0, 0.0]]), sign=1)
            got = close_loop(loop, slope)
            for name in "ABCD":
                np.testing.assert_allclose(getattr(got, name), getattr(ref, name),
                                           rtol=1e-12, atol=1e-12)
    an = analyze("decel", "linear,kp=1e8", simulate=False)
    assert not an.modes[0].stable and an.locally_stable is False


def test_locally_stable_from_the_active_mode_where_the_certificate_fails():
    an = analyze("fbs-windup", simulate=False)
    assert not an.circle.certified and an.circle.popov_certified is False
    assert an.locally_stable is True
    relu0 = analyze("downhill", "relu,kaw=2", simulate=False)
    assert math.isnan(relu0.modes[1].overshoot)     # the reference never reaches the speed


def test_bad_arguments_are_parameter_errors():
    with pytest.raises(ParameterError, match="simulate"):
        analyze("decel", simulate="no")
    an = analyze("decel", simulate=False)
    with pytest.raises(ParameterError, match="eps"):
        an.noise_bound(-0.1)

"""Metrics against python-control's ``step_info``, analytic formulas and invariants."""

import math

import control as ct
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ctrlsim
from ctrlsim import Reference, Road, Scenario
from ctrlsim.metrics import METRIC_KEYS, tracking_metrics


def _systems():
    """22 second- and third-order systems: under/over-damped, NMP, extra poles."""
    out = []
    for wn in (0.5, 2.0, 5.0):
        for zeta in (0.1, 0.3, 0.6, 0.9, 1.3):
            out.append((f"2nd wn={wn} z={zeta}", ct.tf([wn**2], [1, 2 * zeta * wn, wn**2])))
    for p, zeta in ((0.5, 0.3), (2.0, 0.5), (5.0, 0.2), (1.0, 0.7)):
        out.append((f"3rd p={p} z={zeta}",
                    ct.tf([p * 4.0], np.polymul([1, p], [1, 2 * zeta * 2.0, 4.0]))))
    for zero in (1.0, 3.0, 0.5):  # right-half-plane zero: undershoot
        out.append((f"nmp zero={zero}",
                    ct.tf([-4.0 / zero, 4.0], np.polymul([1, 1.0], [1, 1.4, 4.0]))))
    return out


SYSTEMS = _systems()


@pytest.mark.parametrize("name, sys", SYSTEMS, ids=[n for n, _ in SYSTEMS])
def test_step_info_matches_python_control(name, sys):
    t = np.linspace(0, 60, 6001)
    t, y = ct.step_response(sys, t)
    dt = t[1] - t[0]
    ours = ctrlsim.step_info(t, y)
    theirs = ct.step_info(y, t)
    assert ours["overshoot"] == pytest.approx(theirs["Overshoot"], abs=1e-9)
    assert ours["undershoot"] == pytest.approx(theirs["Undershoot"], abs=1e-9)
    assert ours["peak"] == pytest.approx(theirs["Peak"], abs=1e-12)
    assert ours["peak_time"] == pytest.approx(theirs["PeakTime"], abs=1e-12)
    assert ours["steady_state_value"] == theirs["SteadyStateValue"]
    assert ours["settling_min"] == pytest.approx(theirs["SettlingMin"], abs=1e-12)
    assert ours["settling_max"] == pytest.approx(theirs["SettlingMax"], abs=1e-12)
    assert abs(ours["rise_time"] - theirs["RiseTime"]) <= dt
    assert abs(ours["settling_time"] - theirs["SettlingTime"]) <= dt


def test_enough_systems():
    assert len(SYSTEMS) >= 20
    assert any(ctrlsim.step_info(*ct.step_response(s, np.linspace(0, 60, 601)))["undershoot"] > 1
               for _, s in SYSTEMS)


@pytest.mark.parametrize("zeta", [0.05, 0.2, 0.4, 0.6, 0.8])
def test_overshoot_matches_second_order_formula(zeta):
    wn = 2.0
    t = np.linspace(0, 40 / (zeta * wn), 200001)
    wd = wn * math.sqrt(1 - zeta**2)
    y = 1 - np.exp(-zeta * wn * t) * (np.cos(wd * t) + zeta / math.sqrt(1 - zeta**2)
                                      * np.sin(wd * t))
    info = ctrlsim.step_info(t, y, final=1.0)
    expected = 100 * math.exp(-math.pi * zeta / math.sqrt(1 - zeta**2))
    # A sampled peak sits below the true one by O((wd*dt)^2): ~1e-6 here.
    assert info["overshoot"] == pytest.approx(expected, rel=1e-5)
    assert info["peak_time"] == pytest.approx(math.pi / wd, abs=t[1])


def test_first_order_rise_time_is_ln9_tau():
    tau = 1.7
    t = np.linspace(0, 20, 2001)
    info = ctrlsim.step_info(t, 1 - np.exp(-t / tau), final=1.0)
    assert info["rise_time"] == pytest.approx(tau * math.log(9), abs=1e-4)
    assert info["settling_time"] == pytest.approx(-tau * math.log(0.02), abs=1e-4)
    assert info["overshoot"] == 0.0


def test_speed_change_measures_like_unit_step_where_python_control_does_not():
    sys = ct.tf([4.0], [1, 1.2, 4.0])
    t, y = ct.step_response(sys, np.linspace(0, 30, 3001))
    unit = ctrlsim.step_info(t, y)
    shifted = ctrlsim.step_info(t, 20 + y)  # a 20 -> 21 m/s change
    for key in ("rise_time", "settling_time", "overshoot", "undershoot", "peak_time"):
        assert shifted[key] == pytest.approx(unit[key], rel=1e-9, abs=1e-12)
    theirs = ct.step_info(20 + y, t)
    assert theirs["Overshoot"] < unit["overshoot"] / 10  # measured from 0: wrong


def test_decrease_measures_like_increase():
    t = np.linspace(0, 10, 1001)
    up = 1 - np.exp(-t) * np.cos(3 * t)
    a = ctrlsim.step_info(t, up)
    b = ctrlsim.step_info(t, 2 - up)  # 2 -> 1
    for key in ("rise_time", "settling_time", "overshoot", "peak_time"):
        assert b[key] == pytest.approx(a[key])
    assert b["peak"] == pytest.approx(2 - a["peak"])


def test_flat_and_unsettled_give_nan_not_exceptions():
    t = np.linspace(0, 1, 11)
    flat = ctrlsim.step_info(t, np.ones(11))
    assert math.isnan(flat["rise_time"]) and math.isnan(flat["overshoot"])
    ramp = ctrlsim.step_info(t, t, initial=0.0, final=2.0)  # still rising at the end
    assert math.isnan(ramp["settling_time"]) and math.isnan(ramp["rise_time"])
    osc = ctrlsim.step_info(t, 1 + 0.5 * (-1.0) ** np.arange(11), initial=0.0, final=1.0)
    assert math.isnan(osc["settling_time"])


finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(scale=st.floats(0.01, 100).flatmap(lambda s: st.sampled_from([s, -s])),
       offset=finite, t0=st.floats(0, 1e3), zeta=st.floats(0.05, 2.0))
def test_step_info_invariant_to_affine_output_and_time_shift(scale, offset, t0, zeta):
    sys = ct.tf([1.0], [1, 2 * zeta, 1.0])
    t, y = ct.step_response(sys, np.linspace(0, 40, 801))
    base = ctrlsim.step_info(t, y, initial=0.0, final=1.0)
    moved = ctrlsim.step_info(t + t0, offset + scale * y, initial=offset, final=offset + scale)
    for key in ("overshoot", "undershoot"):
        assert moved[key] == pytest.approx(base[key], rel=1e-6, abs=1e-6)
    # A monotone response has no real peak (its flat tail ties to rounding),
    # so peak_time is compared only when there is overshoot.
    keys = ("rise_time", "settling_time") + (("peak_time",) if base["overshoot"] > 0.1 else ())
    for key in keys:
        if math.isnan(base[key]):
            assert math.isnan(moved[key])
        else:  # a sample sitting on a band edge may round either way
            assert moved[key] == pytest.approx(base[key], abs=1.01 * t[1] + 1e-9 * t0)
    assert moved["peak"] == pytest.approx(offset + scale * base["peak"], rel=1e-9, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=50))
def test_step_info_never_raises_on_finite_data(values):
    y = np.array(values)
    info = ctrlsim.step_info(np.arange(y.size, dtype=float), y)
    assert set(info) >= {"rise_time", "overshoot", "settling_time"}
    if np.isfinite(info["overshoot"]):
        assert info["overshoot"] >= 0


def test_step_too_small_to_normalise_gives_no_step_metrics():
    # Found by hypothesis: a step from a subnormal start overflows (y - y0)/delta.
    info = ctrlsim.step_info(np.arange(3.0), np.array([2.2e-309, 1.0, 0.0]))
    assert all(math.isnan(info[k]) for k in ("rise_time", "overshoot", "peak"))
    assert info["steady_state_value"] == 0.0


def test_tracking_metrics_on_constant_error():
    t = np.linspace(0, 10, 101)
    m = tracking_metrics(t, np.full_like(t, -2.0), np.full_like(t, 3.0),
                         np.full_like(t, 5.0), np.full_like(t, 2.0))
    assert m["iae"] == pytest.approx(20.0)
    assert m["ise"] == pytest.approx(40.0)
    assert m["itae"] == pytest.approx(100.0)
    assert m["rms_error"] == pytest.approx(2.0)
    assert m["max_abs_error"] == 2.0
    assert m["control_effort"] == pytest.approx(30.0)
    assert m["energy"] == pytest.approx(100.0)


def _decel(duration=40.0):
    return Scenario(reference=Reference([(5.0, 1.0)]), duration=duration, initial_speed=2.0)


def test_trajectory_metrics_measure_from_the_set_speed_change():
    tr = ctrlsim.simulate(_decel(), ctrlsim.LinearController())
    m = tr.metrics()
    assert set(m) == set(METRIC_KEYS)
    win = tr.t >= 5.0
    direct = ctrlsim.step_info(tr.t[win], tr.speed[win], final=1.0)
    for key in ("rise_time", "settling_time", "overshoot", "peak_time"):
        assert m[key] == pytest.approx(direct[key])
    assert m["steady_state_value"] == tr.speed[-1]


def test_times_count_from_a_change_between_samples():
    on_grid = ctrlsim.simulate(_decel(), ctrlsim.LinearController()).metrics()
    sc = Scenario(reference=Reference([(4.995, 1.0)]), duration=40.0, initial_speed=2.0)
    off_grid = ctrlsim.simulate(sc, ctrlsim.LinearController()).metrics()
    # The set speed changes at sample 500 (t = 5.0) in both runs; the second
    # one's change is 5 ms earlier, so its times are 5 ms longer.
    assert off_grid["settling_time"] == pytest.approx(on_grid["settling_time"] + 0.005)
    assert off_grid["peak_time"] == pytest.approx(on_grid["peak_time"] + 0.005)


def test_unsettled_run_reports_nan_settling_time():
    tr = ctrlsim.simulate(_decel(duration=7.0), ctrlsim.ReLUController())
    assert math.isnan(tr.metrics()["settling_time"])


def test_holding_reference_has_tracking_but_no_step_metrics():
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=20.0, initial_speed=2.0,
                  road=Road(((0.0, 0.0), (5.0, -3.0))))
    m = ctrlsim.simulate(sc, ctrlsim.ReLUController()).metrics()
    assert math.isnan(m["overshoot"]) and math.isnan(m["rise_time"])
    assert m["max_abs_error"] > 0.5 and m["iae"] > 0

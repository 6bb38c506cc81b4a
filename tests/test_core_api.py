"""Plant and controller validation, spec parsing, custom laws, batch == single."""

import math
import warnings

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctrlsim
from ctrlsim import Event, Reference, Road, Scenario, Sensor, make_plant
from ctrlsim.metrics import TRACKING_KEYS


def test_car_preset_is_the_books():
    car = make_plant("car")
    assert (car.mass, car.gravity, car.rolling_resistance) == (1600.0, 9.8, 0.01)
    assert car.drag_quadratic == 0.5 * 1.3 * 0.32 * 2.4 and car.drag_linear == 0.0
    assert car.gear_ratios == (40.0, 25.0, 16.0, 12.0, 10.0) and car.gear == 4
    assert (car.torque_max, car.omega_max, car.torque_beta) == (190.0, 420.0, 0.4)
    assert car.actuator_tau == 0.0 and car.command_limits == (-1.0, 1.0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(mass=-1), "mass"), (dict(mass=0), "mass"), (dict(mass=math.nan), "mass"),
    (dict(drag_linear=math.inf), "drag_linear"), (dict(force_min=30), "force_min"),
    (dict(actuator_tau=-0.1), "actuator_tau"), (dict(gear=2), "gear"),
    (dict(wheels=4), "wheels"), (dict(mass=True), "mass"), (dict(mass="25"), "mass"),
])
def test_invalid_robot_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_plant("robot", **kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gear=6), "gear"), (dict(gear=2.5), "gear"), (dict(gear_ratios=[]), "gear_ratios"),
    (dict(torque_max=0), "torque_max"), (dict(force_max=10), "force_max"),
])
def test_invalid_car_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_plant("car", **kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        make_plant("truck")


def test_integers_accepted_as_floats():
    assert make_plant("robot", mass=20).mass == 20.0


@pytest.mark.parametrize("spec, expected", [
    ("relu", ctrlsim.ReLUController()),
    ("leaky:0.05,kp=80", ctrlsim.LeakyReLUController(alpha=0.05, kp=80)),
    ("linear,ki=0", ctrlsim.LinearController(ki=0)),
    ("leaky, alpha=0.2 , ff=1", ctrlsim.LeakyReLUController(alpha=0.2, feedforward=1)),
])
def test_controller_spec(spec, expected):
    assert ctrlsim.controller(spec) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("pid", "unknown type"), ("relu:0.1", "only leaky"), ("leaky:abc", "alpha"),
    ("linear,kp", "bad setting"), ("linear,gain=3", "bad setting"),
    ("leaky:2", "alpha"), ("linear,kp=nan", "finite"), ("", "non-empty"),
    ("mlp:ctrl.npz", "cannot read"), ("mlp", "weights file"),
])
def test_bad_controller_specs(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        ctrlsim.controller(spec)


def test_unset_gains_come_from_the_scenario_controller():
    sc = Scenario(reference=Reference([(1.0, 1.0)]), duration=5.0, initial_speed=2.0,
                  controller=ctrlsim.LeakyReLUController(alpha=0.3, kp=70, ki=15, kd=1))
    used = ctrlsim.simulate(sc, ctrlsim.controller("relu,kp=50")).controller
    assert (used.kp, used.ki, used.kd) == (50.0, 15.0, 1.0)
    assert ctrlsim.simulate(sc, ctrlsim.controller("leaky")).controller.alpha == 0.3


def _scenario(**kw):
    base = dict(reference=Reference([(0.5, 2.5), (6.0, 1.0)]), duration=10.0,
                initial_speed=1.0, road=Road(((0.0, 0.0), (5.0, 2.0), (12.0, -3.0))),
                events=(Event(at=3.0, until=4.0, force=-10.0),),
                sensor=Sensor(speed_noise_std=0.01, seed=5))
    base.update(kw)
    return Scenario(**base)


@numba.njit
def _pi_law(e, z, d, y, r):
    return 60.0 * e + 25.0 * z


def test_custom_law_runs_in_the_kernel_and_matches_the_builtin():
    # From rest on the flat the equilibrium command is 0, so the builtin's
    # preloaded integrator is 0 too and the two loops must agree exactly.
    sc = _scenario(initial_speed=0.0, road=Road())
    builtin = ctrlsim.simulate(sc, ctrlsim.LinearController(kp=60, ki=25, kd=0, kaw=0,
                                                            feedforward=0))
    custom = ctrlsim.simulate(sc, ctrlsim.CustomController(_pi_law))
    assert np.abs(builtin.speed).max() > 1.0
    assert np.array_equal(custom.speed, builtin.speed)
    assert custom.controller.spec == "custom"


def test_custom_law_must_be_jitted():
    with pytest.raises(TypeError, match="numba"):
        ctrlsim.CustomController(lambda e, z, d, y, r: e)


def test_custom_law_must_take_the_five_loop_signals():
    with pytest.raises(TypeError, match=r"law: .*five arguments \(e, z, d, y, r\)"):
        ctrlsim.CustomController(numba.njit(lambda e, z: e))
    ctrlsim.CustomController(numba.njit(lambda e, z, d, y, r, k=1.0: k * e))  # defaults: fine


def test_batch_rows_equal_single_runs():
    sc = _scenario()
    res = ctrlsim.sweep(sc, {"kp": [20.0, 60.0], "mass": [20.0, 35.0]}, keep_trajectories=True)
    assert res.shape == (2, 2)
    for i, (kp, mass) in enumerate([(20, 20), (20, 35), (60, 20), (60, 35)]):
        sc_i = _scenario(plant=make_plant("robot", mass=mass))
        single = ctrlsim.simulate(sc_i, ctrlsim.controller(f"leaky,kp={kp}"))
        assert np.array_equal(res.trajectories[i].speed, single.speed)
        # Compiled metrics (compensated sums) vs numpy's pairwise sums: 1e-12.
        assert res.metrics["iae"][i] == pytest.approx(single.metrics()["iae"], rel=1e-12)


def test_divergence_is_flagged_not_nan():
    # A lag far shorter than the substep makes RK4 unstable.
    sc = _scenario(plant=make_plant("robot", actuator_tau=1e-4), substeps=1)
    with pytest.warns(ctrlsim.SetupWarning, match="unstable beyond"):
        tr = ctrlsim.simulate(sc, ctrlsim.LinearController())
    assert tr.diverged and tr.diverged_at is not None
    assert all(math.isnan(v) for v in tr.metrics().values())


plant_values = st.fixed_dictionaries({
    "mass": st.floats(1.0, 200.0), "actuator_tau": st.floats(0.0, 1.0),
    "drag_linear": st.floats(0.0, 50.0), "force_max": st.floats(1.0, 500.0),
})
gains = st.fixed_dictionaries({
    "kp": st.floats(0.0, 1e4), "ki": st.floats(0.0, 1e4), "kd": st.floats(0.0, 100.0),
    "kaw": st.floats(0.0, 100.0), "alpha": st.floats(0.0, 1.0),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plant=plant_values, gains=gains, substeps=st.integers(1, 4),
       period=st.sampled_from([0.001, 0.01, 0.05, 0.2]), grade=st.floats(-30.0, 30.0),
       noise=st.floats(0.0, 1.0))
def test_kernel_output_is_finite_unless_flagged(plant, gains, substeps, period, grade, noise):
    sc = Scenario(reference=Reference([(0.0, 3.0)]), duration=4.0, control_period=period,
                  substeps=substeps, initial_speed=1.0,
                  plant=make_plant("robot", force_min=-plant["force_max"], **plant),
                  road=Road(((0.0, grade),)), sensor=Sensor(speed_noise_std=noise))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctrlsim.StartWarning)
        warnings.simplefilter("ignore", ctrlsim.SetupWarning)
        tr = ctrlsim.simulate(sc, ctrlsim.LeakyReLUController(**gains))
    cols = np.stack([tr.position, tr.speed, tr.force, tr.command, tr.applied])
    metrics = tr.metrics()
    if tr.diverged:
        k = int(round(tr.diverged_at / period))
        assert np.all(np.isfinite(cols[:, :k])) and np.all(np.isnan(cols[:, k:]))
    else:
        assert np.all(np.isfinite(cols))
        assert all(math.isfinite(metrics[k]) for k in TRACKING_KEYS)


def test_subnormal_ki_is_flagged_not_a_warning():
    # Found by hypothesis: kaw/ki overflowed with a RuntimeWarning when packing.
    sc = Scenario(reference=Reference([(0.0, 3.0)]), duration=1.0, initial_speed=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctrlsim.StartWarning)
        tr = ctrlsim.simulate(sc, ctrlsim.LeakyReLUController(kp=0.0, ki=5e-324, kd=0.0,
                                                                kaw=1.0, alpha=0.0))
    cols = np.stack([tr.speed, tr.force, tr.applied])
    assert tr.diverged or np.all(np.isfinite(cols))


@pytest.mark.parametrize("ts", [0.001, 0.01, 0.02, 0.05, 0.1])
def test_few_step_reference_samples_like_the_general_rule(ts):
    """The bisection path for a few steps gives exactly the general rule's samples:
    step i holds where t + 1e-9 >= time_i, including steps that fall on a sample
    (where k*Ts may round just below the step time) and between samples."""
    rng = np.random.default_rng(1)
    t = np.arange(round(20.0 / ts) + 1) * ts
    on_grid = [k * ts for k in (1, 7, 150, 199)]
    between = list(rng.uniform(0.0, 20.0, 6))
    for times in (on_grid, sorted(between), sorted(on_grid[:2] + between[:3]), [0.0]):
        times = sorted(set(times))
        pts = tuple((float(w), float(s)) for w, s in zip(times, rng.uniform(0, 3, len(times))))
        got = Reference(pts).sample(t, 1.25)
        arr_t, arr_s = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        idx = np.searchsorted(arr_t, t + 1e-9, side="right") - 1
        want = np.where(idx >= 0, arr_s[np.maximum(idx, 0)], 1.25)
        np.testing.assert_array_equal(got, want)

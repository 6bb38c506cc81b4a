"""Kernel v2: building blocks, anti-windup per activation, batch == single, tanh, disk cache."""

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import njit
from numba.core.caching import FunctionCache

import ctrlsim
from ctrlsim import Event, Reference, Road, Scenario, Sensor, fastmetrics, jitcache, make_plant
from ctrlsim import kernels as K
from ctrlsim.sweep import pack_controllers


@njit
def _tanh_many(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = K._tanh(x[i])
    return out


def test_branch_free_tanh_is_within_a_few_ulp_of_libm():
    # -0.2043958...: a worst case found by a review (4 ulp from libm's, 3 from tanh).
    x = np.concatenate([np.linspace(-25, 25, 200_001), np.geomspace(1e-300, 25, 50_001),
                        -np.geomspace(1e-300, 25, 5_001), [0.0, -0.0, -0.204395815478694]])
    ours, ref = _tanh_many(x), np.tanh(x)
    ulp = np.abs(ours - ref) / np.spacing(np.abs(ref))
    assert ulp.max() <= 4
    big = _tanh_many(np.array([19.2, -19.2, 1e300, -np.inf]))
    assert big.tolist() == [1.0, -1.0, 1.0, -1.0]
    # Past 2|x| = _TANH_SAT the formula itself gives exactly +-1 (no test in it):
    # every double from there to the clamp and beyond.
    edge = K._TANH_SAT / 2 + np.arange(1, 3001) * np.spacing(K._TANH_SAT / 2)
    past = np.concatenate([edge, np.linspace(19.1, 40.0, 100_001)[1:],
                           np.geomspace(20, 1e308, 999)])
    assert np.all(_tanh_many(past) == 1.0) and np.all(_tanh_many(-past) == -1.0)
    assert np.isnan(_tanh_many(np.array([np.nan]))[0])


@njit
def _saturated_each(v):
    # K._saturated of each value alone, the sign function with the flag it gives,
    # and the sign function as scalar code (tested first) and vector code (never).
    sat, sign = np.empty(v.size, np.bool_), np.empty_like(v)
    tested, lanes = np.empty_like(v), np.empty_like(v)
    for i in range(v.size):
        sat[i] = K._saturated(v[i:i + 1])
        sign[i] = K._sign(v[i], K._SIGN_SAT) if sat[i] else K._sign(v[i], K._SIGN_LANES)
        tested[i] = K._sign(v[i], K._SIGN_TEST)
        lanes[i] = K._sign(v[i], K._SIGN_LANES)
    return sat, sign, tested, lanes


def test_the_saturated_sign_function_is_the_tanh_it_skips():
    # Speeds on both sides of the bound (|v| = 1.91 m/s), down to single ulps.
    edge = 1.91 + np.arange(-2000, 2001) * np.spacing(1.91)
    v = np.concatenate([edge, -edge, np.linspace(-30, 30, 20_001), [0.0, np.inf, -np.inf]])
    sat, sign, tested, lanes = _saturated_each(v)
    assert np.array_equal(sign, _tanh_many(v * K._INV_V_ROLL))
    assert np.array_equal(tested, sign) and np.array_equal(lanes, sign)
    assert sat.any() and not sat.all()
    assert np.all(np.abs(sign[sat]) == 1.0)
    assert not K._saturated(np.array([3.0, np.nan, 3.0]))   # NaN takes the full path
    assert K._saturated(np.array([3.0, -2.5, 40.0]))
    assert not K._saturated(np.array([3.0, 1.0, 40.0]))


def _batch(pp, cp, prof):
    """``rollout_batch`` of the rows: (outputs, diverged_at)."""
    out = np.empty((pp.shape[0], prof.ref.size, 5))
    div, feas = np.empty(pp.shape[0], np.int64), np.empty(pp.shape[0], np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    return out, div


def _assert_rows_are_single_runs(pp, cp, prof, out):
    for i in range(pp.shape[0]):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], cp[i], prof, single)
        assert np.array_equal(single, out[i]), i


_HILLS = Road(((0.0, 0.0), (8.0, 1.0), (20.0, -1.0), (30.0, 0.5)))


@pytest.mark.parametrize("preset, road", [("robot", Road()), ("robot", _HILLS),
                                           ("car", Road()), ("car", _HILLS)],
                         ids=["robot-flat", "robot-hills", "car-flat", "car-hills"])
def test_batch_equals_single_when_whole_tiles_pass_the_sign_functions_saturation(
        preset, road):
    # Set speeds above and below 1.91 m/s: periods in which every row of the
    # batch is past saturation (the loops skip tanh) alternate with periods in
    # which some or all are not. Flat road: held-input loops; hills: stage by stage
    # (held again past the last ramp).
    ref = [(0.0, 3.0), (4.0, 1.0), (8.0, 2.5)]
    sc = Scenario(reference=Reference(ref), duration=12.0, control_period=0.02, substeps=3,
                  initial_speed=1.0, plant=make_plant(preset), road=road)
    specs = ("relu", "leaky:0.2", "linear", "leaky:0.5,kp=2")
    ctls = [ctrlsim.controller(s).resolve(None, preset) for s in specs]
    pp = np.array([sc.plant.with_(mass=sc.plant.mass * k).pack() for k in (0.8, 1.0, 1.1, 1.3)])
    prof, cp = sc.pack(), pack_controllers(ctls)
    out, div = _batch(pp, cp, prof)
    assert (div < 0).all()
    slowest = np.abs(out[:, :, 1]).min(axis=0)
    assert (slowest > 1.95).any() and (slowest < 1.85).any()   # both paths ran
    _assert_rows_are_single_runs(pp, cp, prof, out)


@pytest.mark.parametrize("taus", [(0.2, 0.5, 0.1, 0.3), (0.2, 0.0, 0.5, 0.0)],
                         ids=["all-lag", "mixed-lag"])
def test_batch_equals_single_for_robots_with_and_without_the_actuator_lag(taus):
    # On a flat road the held loops have a copy for robots that all have the lag
    # (no per-row select) and a general one for the rest: both equal single runs.
    sc = Scenario(reference=Reference([(0.0, 2.5), (3.0, 1.0)]), duration=6.0,
                  control_period=0.02, substeps=3, initial_speed=1.0)
    ctls = [ctrlsim.controller(s).resolve(None, "robot")
            for s in ("relu", "leaky:0.2", "linear", "leaky:0.5,kp=2")]
    pp = np.array([sc.plant.with_(actuator_tau=t, mass=m).pack()
                   for t, m in zip(taus, (15.0, 20.0, 25.0, 35.0))])
    prof, cp = sc.pack(), pack_controllers(ctls)
    out, div = _batch(pp, cp, prof)
    assert (div < 0).all()
    _assert_rows_are_single_runs(pp, cp, prof, out)


@pytest.mark.parametrize("by", ["position", "time"])
def test_batch_equals_single_on_constant_grades_joined_by_short_ramps(by):
    # Long constant grades (the batch keeps their sin/cos instead of computing
    # them at every stage) joined by short ramps (computed at every stage).
    road = Road(((3.0, 0.0), (4.0, 3.0), (9.0, 3.0), (9.5, -2.0), (14.0, -2.0), (15.0, 1.0)),
                by=by)
    sc = Scenario(reference=Reference([(0.0, 2.0), (6.0, 1.2)]), duration=12.0,
                  control_period=0.02, substeps=3, initial_speed=1.0, road=road)
    ctls = [ctrlsim.controller(s).resolve(None, "robot")
            for s in ("relu", "leaky:0.2", "linear", "leaky:0.5,kp=2")]
    pp = np.array([sc.plant.with_(mass=m).pack() for m in (15.0, 20.0, 25.0, 35.0)])
    prof, cp = sc.pack(), pack_controllers(ctls)
    out, div = _batch(pp, cp, prof)
    assert (div < 0).all()
    _assert_rows_are_single_runs(pp, cp, prof, out)


def test_held_grade_intervals_that_may_leave_their_piece_are_undone():
    # Robots starting at rest next to grade steps, pushed hard over long control
    # periods: the batch tries each interval with the grades held (every vehicle
    # on a constant piece, slow for its distance to the piece's end) and must
    # undo it when a stage speed passes that bound.
    road = Road(((0.3, 0.0), (0.31, 4.0), (2.0, 4.0), (2.01, -3.0), (6.0, -3.0),
                 (6.05, 0.0)))
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=8.0, control_period=0.4,
                  substeps=8, initial_speed=0.0, road=road)
    prof = sc.pack()
    light = sc.plant.with_(mass=2.0).pack()          # 10 m/s^2 at 20 N
    plant = np.ascontiguousarray(np.array([light] * 2).T)
    p, v, f, a = np.zeros(2), np.zeros(2), np.array([20.0, 0.0]), np.array([20.0, 0.0])
    work = K.batch_work(2)
    kept = (p.copy(), v.copy(), f.copy())
    h = prof.ts / prof.substeps
    held = K._advance_held(0, 2, p, v, f, a, prof.ts, h, prof.substeps, plant, True, 0.0,
                           0.0, False, prof, work)
    assert not held
    assert all(np.array_equal(x, y) for x, y in zip((p, v, f), kept))
    # A slow enough interval is kept, with the values of the stage-by-stage path.
    a[:] = f[:] = 0.0
    assert K._advance_held(0, 2, p, v, f, a, prof.ts, h, prof.substeps, plant, True, 0.0,
                           0.0, False, prof, work)
    ctls = [ctrlsim.controller(s).resolve(None, "robot")
            for s in ("relu", "leaky:0.2,kp=40", "linear,kp=80", "leaky:0.5,kp=20")]
    pp = np.array([sc.plant.with_(mass=m).pack() for m in (2.0, 5.0, 8.0, 12.0)])
    cp = pack_controllers(ctls)
    out = np.empty((len(ctls), prof.ref.size, 5))
    div, feas = np.empty(len(ctls), np.int64), np.empty(len(ctls), np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    assert (div < 0).all() and (out[:, -1, 0] > 6.05).all()   # every row passed every step
    for i in range(len(ctls)):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], cp[i], prof, single)
        assert np.array_equal(single, out[i]), i


def test_a_vehicle_creeping_ulps_from_a_grade_step_is_not_held_across_it():
    # (from a review) A light robot 27 ulp before a step to 10 deg, creeping so
    # slowly that exact arithmetic would keep it before the step for the period:
    # the rounding of its positions over 50 substeps carries it across. The
    # held-grade path must leave this period to the stage-by-stage lookups.
    road = Road(((1.5, 0.0), (1.5 + 1e-9, 10.0), (3.0, 10.0)))
    sc = Scenario(reference=Reference([(0.0, 0.0)]), duration=1.0, control_period=0.1,
                  substeps=50, road=road,
                  plant=make_plant("robot", mass=0.01, actuator_tau=0.0))
    prof = sc.pack()
    plant = np.ascontiguousarray(np.array([sc.plant.pack()]).T)
    u = np.spacing(1.5)
    p0, v0 = 1.5 - 27 * u, 12.5 * u / 0.1
    a0 = 26 * u / 0.1 * (2 + 0.015 * 0.01 * 9.81 * 10)
    p, v, f, a = np.array([p0]), np.array([v0]), np.zeros(1), np.array([a0])
    K.advance_batch(p, v, f, a, 0.0, 0.1, 50, plant, prof, K.batch_work(1))
    ref = K.plant_interval(p0, v0, 0.0, a0, 0.0, 0.1, 50, plant[:, 0].copy(), prof,
                           K.input_cache())
    assert (p[0], v[0], f[0]) == ref[:3]


@njit
def _sincos_many(x):
    sn, cs = np.empty_like(x), np.empty_like(x)
    for i in range(x.size):
        sn[i], cs[i] = K._sincos(x[i])
    return sn, cs


def test_branch_free_sincos_is_within_an_ulp_of_libm_on_grades():
    # Grades are within +-90 degrees; both branches of the reduction (pi/4).
    half = np.pi / 2
    x = np.concatenate([np.linspace(-half, half, 400_001), np.geomspace(1e-300, half, 20_001),
                        -np.geomspace(1e-300, half, 2_001), [0.0, -0.0, np.pi / 4,
                                                            np.nextafter(np.pi / 4, 2.0)]])
    sn, cs = _sincos_many(x)
    ref_s, ref_c = np.sin(x), np.cos(x)
    ulp_s = np.abs(sn - ref_s) / np.spacing(np.abs(ref_s))
    assert ulp_s.max() <= 1
    # cos -> 0 at +-pi/2: compare in ulps of the result, absolutely near zero.
    ok = np.abs(cs - ref_c) <= np.maximum(np.spacing(np.abs(ref_c)), 1e-17)
    assert ok.all()
    assert np.signbit(_sincos_many(np.array([-0.0]))[0][0])


def test_layouts_are_one_tuple_of_names_each():
    assert K.PLANT_LAYOUT.index("mass") == K.P_MASS
    assert K.PLANT_LAYOUT.index("brake_force_max") == K.P_BRAKE == K.N_PLANT - 1
    assert K.PID_LAYOUT[:len(K.CTRL_HEADER)] == K.CTRL_HEADER
    assert K.PID_LAYOUT.index("feedforward") == K.C_FF == K.N_PID - 1
    cp = ctrlsim.LinearController(kp=1, ki=2, kd=3, kaw=4, feedforward=5).pack()
    assert cp[K.C_LAW] == K.LAW_PID and cp[K.C_AW_GAIN] == 2.0   # kaw / ki
    pp = make_plant("car", mass=1500).pack()
    assert pp[K.P_MASS] == 1500 and pp[K.P_KIND] == K.KIND_CAR


def _decel(**kw):
    return Scenario(reference=Reference([(0.0, 2.0), (2.0, 1.0)]), duration=30.0,
                    initial_speed=2.0, **kw)


def test_braking_leaky_relu_with_anti_windup_ends_at_the_set_speed():
    # Held on a descent, Leaky ReLU brakes without saturating: anti-windup in the
    # pre-activation domain is zero there, so the integral action removes the error.
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=60.0, initial_speed=2.0,
                  road=Road(((0.0, 0.0), (1.0, -4.0))))
    tr = ctrlsim.simulate(sc, ctrlsim.LeakyReLUController(alpha=0.5, kp=40, ki=20, kaw=2.0))
    assert np.all(tr.applied[-100:] < 0)                      # braking ...
    assert np.all(tr.applied[-100:] > sc.plant.force_min)     # ... without saturating
    assert abs(tr.speed[-1] - 2.0) < 1e-3


@pytest.mark.parametrize("spec", ["relu,kaw=3", "leaky:0.3,kaw=3", "linear,kaw=3"])
def test_saturation_still_drains_the_integrator(spec):
    # A step the 20 N actuator cannot follow at once: with anti-windup the overshoot
    # after the long saturation is smaller than without.
    sc = Scenario(reference=Reference([(0.0, 0.5), (1.0, 3.5)]), duration=40.0,
                  initial_speed=0.5)
    with_aw = ctrlsim.simulate(sc, ctrlsim.controller(spec + ",kp=100,ki=60"))
    without = ctrlsim.simulate(sc, ctrlsim.controller(spec.split(",")[0] + ",kp=100,ki=60,kaw=0"))
    assert np.any(with_aw.applied == sc.plant.force_max)
    assert with_aw.metrics()["overshoot"] < without.metrics()["overshoot"] - 1.0


def test_relu_and_linear_anti_windup_is_back_calculation_on_a_minus_s():
    # For slopes 0 and 1 phi_inv(a) = a, so the new rule is the old one: one kernel
    # step by hand.
    for ctl in (ctrlsim.ReLUController(kp=7, ki=3, kd=0, kaw=2, feedforward=0),
                ctrlsim.LinearController(kp=7, ki=3, kd=0, kaw=2, feedforward=0)):
        cp = ctl.pack()
        e, u, a, z = K.control_step(1.0, 5.0, 0.0, 0.1, True, 0.01, -20.0, 20.0, cp)
        s = 7 * 4.0 + 3 * 0.1
        assert (e, u, a) == (4.0, s, 20.0)
        assert z == 0.1 + 0.01 * (4.0 + (2 / 3) * (20.0 - s))


def _mixed_case():
    sc = Scenario(reference=Reference([(0.5, 2.5), (6.0, 1.0)]), duration=12.0,
                  control_period=0.02, substeps=4, initial_speed=1.5,
                  road=Road(((1.0, 0.0), (4.0, 2.5), (9.0, -4.0))),
                  events=(Event(at=2.0, payload=6.0), Event(at=3.0, until=4.5, force=-15.0)),
                  sensor=Sensor(speed_noise_std=0.02, seed=3))
    ctls = [ctrlsim.controller(s) for s in
            ("relu", "leaky:0.1,kaw=1", "linear,kd=2", "leaky:0.5,ff=3", "relu,ki=0")]
    ctls = [c.resolve(None, "robot") for c in ctls]
    masses = [18.0, 25.0, 40.0, 25.0, 30.0]
    taus = [0.2, 0.0, 0.05, 0.3, 0.2]
    plants = [sc.plant.with_(mass=m, actuator_tau=t) for m, t in zip(masses, taus)]
    return sc, ctls, plants


def test_batch_equals_single_bit_for_bit_with_mixed_controllers_and_plants():
    sc, ctls, plants = _mixed_case()
    prof = sc.pack()
    pp = np.array([p.pack() for p in plants])
    cp = pack_controllers(ctls)
    b, n1 = len(ctls), prof.ref.size
    out = np.empty((b, n1, 5))
    div = np.empty(b, np.int64)
    feas = np.empty(b, np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    for i in range(b):
        single = np.empty((n1, 5))
        d, f = K.rollout(pp[i], cp[i], prof, single)
        assert (d, f) == (div[i], feas[i])
        assert np.array_equal(single, out[i], equal_nan=True), i
        # The PID-only copy of the loop gives the very same numbers.
        fast = np.empty((n1, 5))
        assert K.rollout_pid(pp[i], cp[i], prof, fast) == (d, f)
        assert np.array_equal(fast, single, equal_nan=True), i


def test_batch_flags_divergence_per_row():
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=5.0, initial_speed=1.0,
                  substeps=1, plant=make_plant("robot", actuator_tau=0.0, force_min=-1e9,
                                                force_max=1e9))
    ctls = [ctrlsim.LinearController(kp=k, ki=0, kd=0, kaw=0, feedforward=0)
            for k in (10.0, 1e6)]
    pp = np.tile(sc.plant.pack(), (2, 1))
    prof = sc.pack()
    out = np.empty((2, prof.ref.size, 5))
    div = np.empty(2, np.int64)
    feas = np.empty(2, np.bool_)
    K.rollout_batch(pp, pack_controllers(ctls), prof, out, div, feas)
    assert div[0] == -1 and np.all(np.isfinite(out[0]))
    assert div[1] > 0 and np.all(np.isnan(out[1, div[1]:]))


def test_advance_batch_equals_plant_interval():
    sc, _, plants = _mixed_case()
    prof = sc.pack()
    plant = np.ascontiguousarray(np.array([p.pack() for p in plants]).T)
    nb = plant.shape[1]
    p, v, f = np.zeros(nb), np.full(nb, 1.5), np.full(nb, 3.0)
    a = np.linspace(-20, 20, nb)
    work = K.batch_work(nb)
    caches = [K.input_cache() for _ in range(nb)]
    ref = [(0.0, 1.5, 3.0)] * nb
    for k in range(100):
        K.advance_batch(p, v, f, a, k * 0.02, 0.02, 4, plant, prof, work)
        ref = [K.plant_interval(*ref[i], a[i], k * 0.02, 0.02, 4, plant[:, i].copy(), prof,
                                caches[i]) for i in range(nb)]
        assert np.array_equal(np.array(ref), np.column_stack([p, v, f]))


def test_kernels_load_from_the_disk_cache_in_a_fresh_process(tmp_path):
    # First process compiles and writes the cache; the second must load every
    # kernel it runs (simulate of a PID law, the parallel batch, and the sweep's
    # block kernel) without compiling.
    code = textwrap.dedent("""
        import numpy as np, ctrlsim
        from ctrlsim import fastmetrics, kernels as K
        sc = ctrlsim.load_scenario("decel")
        ctrlsim.simulate(sc)
        ctrlsim.sweep(sc, {"alpha": np.linspace(0, 1, 3)})
        prof, pp, cp = sc.pack(), sc.plant.pack()[None], sc.resolved_controller().pack()[None]
        K.rollout_batch(pp, cp, prof, np.empty((1, prof.ref.size, 5)), np.empty(1, np.int64),
                        np.empty(1, np.bool_))
        stats = [K.rollout_pid.stats, K.rollout_batch.stats, fastmetrics.rollout_metrics.stats]
        print(sum(len(s.cache_misses) for s in stats),
              sum(sum(s.cache_hits.values()) for s in stats))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True,  # noqa: E731
                                 capture_output=True, text=True).stdout.split()
    first_misses, _ = run()
    misses, hits = run()
    assert int(first_misses) > 0
    assert (int(misses), int(hits)) == (0, 3)


def _cache_true(tree: ast.AST) -> bool:
    """Whether a module has a ``...(cache=True)`` call (a cached kernel's decorator)."""
    return any(isinstance(node, ast.Call) and any(
        k.arg == "cache" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in node.keywords) for node in ast.walk(tree))


def _package_imports(tree: ast.AST) -> set[str]:
    """The ctrlsim modules (file names) a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0] + ".py"] if node.module
                         else [alias.name + ".py" for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctrlsim."):
            found.add(node.module.split(".")[1] + ".py")
    return found


def test_compiled_sources_are_the_cached_modules_and_all_they_import():
    package = Path(jitcache.__file__).parent
    trees = {p.name: ast.parse(p.read_text()) for p in package.glob("*.py")}
    cached = {name for name, tree in trees.items() if _cache_true(tree)}
    closure, todo = set(), sorted(cached)
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo.extend(_package_imports(trees[name]))
    assert {"kernels.py", "fastmetrics.py"} <= cached
    assert closure == set(jitcache.COMPILED_SOURCES)


def test_every_cached_kernel_is_keyed_on_all_compiled_sources():
    cached = [d for mod in (K, fastmetrics) for d in vars(mod).values()
              if isinstance(d, numba.core.dispatcher.Dispatcher)
              and isinstance(d._cache, FunctionCache)]
    assert len(cached) > 50
    for d in cached:
        locator = d._cache._impl.locator
        assert isinstance(locator, jitcache.PackageLocator), d
        assert locator.get_source_stamp()[1] == jitcache.sources_hash()


def test_an_edit_to_the_kernels_recompiles_functions_cached_in_other_files(tmp_path):
    # numba alone keys fastmetrics' cache on fastmetrics.py only, so after an
    # edit of kernels.py it would load code compiled with the old kernels.
    package = Path(jitcache.__file__).parent
    copy = tmp_path / "src" / "ctrlsim"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent(f"""
        import numpy as np, ctrlsim
        from ctrlsim import fastmetrics as F
        assert ctrlsim.__file__.startswith({str(copy)!r}), ctrlsim.__file__
        t = np.linspace(0.0, 1.0, 5)
        assert F._first_crossing(t, t, 0.5) == 0.5
        s = F._first_crossing.stats
        print(len(s.cache_misses), sum(s.cache_hits.values()))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(copy.parent))

    def run():
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert run() == ["1", "0"]          # compiled
    assert run() == ["0", "1"]          # loaded
    with open(copy / "cli.py", "a") as f:
        f.write("# not compiled in\n")
    assert run() == ["0", "1"]          # loaded: cli.py is no compiled source
    with open(copy / "kernels.py", "a") as f:
        f.write("# an edit\n")
    assert run() == ["1", "0"]          # compiled again, not loaded stale
    assert run() == ["0", "1"]


def test_batch_mixing_robot_and_car_rows_equals_single_runs():
    sc = Scenario(reference=Reference([(1.0, 2.5)]), duration=5.0, control_period=0.05,
                  substeps=5, initial_speed=2.0)
    robot, car = make_plant("robot"), make_plant("car")
    plants = [robot, car, robot, car, car, robot]
    ctls = [ctrlsim.controller(s).resolve(None, p.preset) for s, p in
            zip(["linear", "relu", "leaky:0.2", "linear", "leaky:0.5", "relu"], plants)]
    prof = sc.pack()
    pp = np.array([p.pack() for p in plants])
    cp = pack_controllers(ctls)
    out = np.empty((len(plants), prof.ref.size, 5))
    div = np.empty(len(plants), np.int64)
    feas = np.empty(len(plants), np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    for i in range(len(plants)):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], cp[i], prof, single)
        assert np.array_equal(single, out[i], equal_nan=True), i


def test_equilibrium_start_uses_the_grade_at_the_start_inside_a_ramp():
    # The road ramps from 0 to 4 degrees across x = 0: the grade there is 2 degrees.
    sc = Scenario(reference=Reference([(0.0, 1.0)]), duration=2.0, initial_speed=1.0,
                  road=Road(((-10.0, 0.0), (10.0, 4.0))))
    plain = Scenario(reference=Reference([(0.0, 1.0)]), duration=2.0, initial_speed=1.0,
                     road=Road(((0.0, 2.0),)))
    a0, ok = K.equilibrium_command(1.0, sc.plant.pack(), sc.pack())
    b0, _ = K.equilibrium_command(1.0, plain.plant.pack(), plain.pack())
    assert ok and a0 == pytest.approx(b0, rel=1e-12)


def test_batch_equals_single_on_a_time_graded_road_with_events():
    # Grade given in time (stage-by-stage path); an event ends inside a substep.
    sc = Scenario(reference=Reference([(1.0, 2.5)]), duration=8.0, control_period=0.02,
                  substeps=3, initial_speed=2.0,
                  road=Road(((0.0, 0.0), (3.0, 3.0), (6.0, -2.0)), by="time"),
                  events=(Event(at=2.0, until=5.013, payload=5.0, force=-3.0),))
    ctls = [ctrlsim.controller(s).resolve(None, "robot") for s in ("relu", "leaky:0.2", "linear")]
    pp = np.array([sc.plant.with_(mass=m).pack() for m in (20, 25, 30)])
    prof = sc.pack()
    out = np.empty((3, prof.ref.size, 5))
    div = np.empty(3, np.int64)
    feas = np.empty(3, np.bool_)
    K.rollout_batch(pp, pack_controllers(ctls), prof, out, div, feas)
    for i in range(3):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], pack_controllers(ctls)[i], prof, single)
        assert np.array_equal(single, out[i]), i


@pytest.mark.parametrize("preset", ["robot", "car"])
def test_batch_equals_single_on_a_flat_road_with_events_inside_periods(preset):
    # Flat road: periods with held inputs take the batch's held-input loops, the
    # two periods in which an event switches mid-period go stage by stage.
    plant = make_plant(preset)
    v0, v1 = (1.0, 2.0) if preset == "robot" else (20.0, 15.0)   # car: throttle, then brake
    sc = Scenario(reference=Reference([(0.0, v0), (2.0, v1)]), duration=6.0,
                  control_period=0.02, substeps=3, initial_speed=v0, plant=plant,
                  events=(Event(at=2.013, until=5.013, payload=5.0, force=-3.0),))
    ctls = [ctrlsim.controller(s).resolve(None, preset) for s in ("relu", "leaky:0.2", "linear")]
    pp = np.array([plant.with_(mass=plant.mass * k, actuator_tau=t).pack()
                   for k, t in ((0.8, 0.0), (1.0, 0.2), (1.2, 0.05))])
    prof = sc.pack()
    cp = pack_controllers(ctls)
    out = np.empty((3, prof.ref.size, 5))
    div = np.empty(3, np.int64)
    feas = np.empty(3, np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    assert (div < 0).all()
    for i in range(3):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], cp[i], prof, single)
        assert np.array_equal(single, out[i]), i


def test_pinned_per_row_grades_are_used_on_a_flat_road():
    # The env gives each sub-env its own constant grade (preset_grade); on a flat
    # road the batch's held-input path must use them, as plant_interval on that grade.
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=1.0, initial_speed=2.0)
    prof = sc.pack()
    thetas = np.radians([-3.0, 0.0, 2.5, 5.0])
    nb = thetas.size
    plant = np.ascontiguousarray(np.tile(sc.plant.pack(), (nb, 1)).T)
    p, v, f, a = np.zeros(nb), np.full(nb, 2.0), np.full(nb, 5.0), np.full(nb, 8.0)
    work = K.batch_work(nb)
    for i, th in enumerate(thetas):
        K.preset_grade(work, i, th)
    for k in range(20):
        K.advance_batch(p, v, f, a, k * 0.05, 0.05, 5, plant, prof, work)
    for i, th in enumerate(thetas):
        graded = prof._replace(grade_x=np.zeros(1), grade_th=np.array([th]))
        state, cache = (0.0, 2.0, 5.0), K.input_cache()
        for k in range(20):
            state = K.plant_interval(*state, 8.0, k * 0.05, 0.05, 5, plant[:, i].copy(), graded,
                                     cache)
        assert state == (p[i], v[i], f[i]), i
    assert len(set(v.tolist())) == nb


@pytest.mark.parametrize("nb", [1, 7, 8, 255, 256, 504, 512, 4096, 4097])
def test_aligned_rows_start_on_cache_lines_and_do_not_alias_4k(nb):
    a = K.aligned_rows(5, nb)
    assert a.shape[0] == 5 and a.shape[1] >= nb and a.flags.c_contiguous
    assert not a.any()
    stride = a.strides[0]
    assert a.ctypes.data % 64 == 0 and stride % 64 == 0 and stride % 4096 != 0
    assert K.batch_work(nb).ctypes.data % 64 == 0


def test_claim_hands_out_each_block_once_across_threads():
    @njit(parallel=True)
    def claim_all(n, workers):
        claimed = np.zeros(1, dtype=np.int64)
        owner = np.full(n, -1)
        taken = np.zeros(workers, dtype=np.int64)
        for w in numba.prange(workers):
            blk = K._claim(claimed)
            while blk < n:
                owner[blk] = w
                taken[w] += 1
                blk = K._claim(claimed)
        return owner, taken

    owner, taken = claim_all(1000, 4)
    # Every block taken, and 1000 claims in all: none was handed out twice.
    assert (owner >= 0).all() and taken.sum() == 1000

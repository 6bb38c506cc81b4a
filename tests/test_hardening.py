"""Hardening, in process: limits, impossible states, error types, cycle CSVs, API arguments."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctrlsim
import ctrlsim.kernels as K
from ctrlsim import Event, Reference, Road, Scenario, Sensor, make_plant
from ctrlsim.cli import main
from ctrlsim.limits import (
    MAX_BLOCK_SAMPLES,
    MAX_CHUNK_WORK,
    MAX_RUN_WORK,
    MAX_SAMPLES,
    MAX_SWEEP_RUNS,
    MAX_SWEEP_WORK,
    RUN_OVERHEAD,
    check_sweep,
    run_work,
    sweep_block,
)
from ctrlsim.loader import ScenarioError, load_scenario
from ctrlsim.validation import ParameterError, finite_float, safe_text

REF = Reference([(0.0, 2.0)])


def scenario(**kw):
    kw.setdefault("reference", REF)
    kw.setdefault("duration", 2.0)
    return Scenario(**kw)


# --------------------------------------------------------------------------
# 1. Size guards: Python integers, work budgeted before anything runs
# --------------------------------------------------------------------------
def test_four_axes_of_65536_are_2_to_the_64_runs_not_0(monkeypatch):
    monkeypatch.setattr(K, "rollout_batch", _must_not_run)
    axes = {n: np.linspace(0, 1, 65536) for n in ("alpha", "kp", "ki", "kd")}
    with pytest.raises(ParameterError, match=str(2**64)) as err:
        ctrlsim.sweep(scenario(), axes)
    assert err.value.key == "sweep"


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 2**40), min_size=1, max_size=6),
       samples=st.integers(2, MAX_SAMPLES), substeps=st.integers(1, 10_000))
def test_sweep_guard_is_exact_in_python_integers(sizes, samples, substeps):
    work = run_work(samples, substeps)
    rows = math.prod(sizes)
    ok = rows <= MAX_SWEEP_RUNS and rows * (work + RUN_OVERHEAD) <= MAX_SWEEP_WORK
    if ok:
        assert check_sweep(sizes, samples, work) == rows
    else:
        with pytest.raises(ParameterError):
            check_sweep(sizes, samples, work)
    # Keeping trajectories also caps the samples of all runs together.
    if ok and rows * samples > MAX_SAMPLES:
        with pytest.raises(ParameterError, match="keep the trajectories"):
            check_sweep(sizes, samples, work, trajectories=True)
    # A block is one compiled call: bounded work and buffer, at least one row.
    block = sweep_block(samples, work)
    assert block >= 1
    assert block == 1 or block * work <= MAX_CHUNK_WORK
    whole = sweep_block(samples, work, whole=True)  # a user law's kernel holds a block whole
    assert 1 <= whole <= block
    assert whole == 1 or (whole * work <= MAX_CHUNK_WORK and whole * samples <= MAX_BLOCK_SAMPLES)


@pytest.mark.parametrize("kw", [
    dict(duration=20000.0, control_period=0.001, substeps=1000),   # the example
    dict(duration=2000.0, control_period=0.001, substeps=1000),
    dict(duration=600.0, control_period=0.01, substeps=10_000),
    dict(duration=5000.0, control_period=0.01, substeps=10),
    dict(duration=400.0, control_period=0.01, substeps=100,
         events=[Event(at=float(i), payload=0.0) for i in 1 + np.arange(200)]),
])
def test_a_run_over_the_work_budget_is_refused_up_front(kw):
    with pytest.raises(ParameterError, match="at most") as err:
        scenario(**kw)
    assert err.value.key == "duration"


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3 * 10**6), substeps=st.integers(1, 10_000))
def test_run_budget_matches_samples_times_substeps(n, substeps):
    kw = dict(duration=n * 0.01, control_period=0.01, substeps=substeps)
    if (n + 1) * substeps <= MAX_RUN_WORK:
        assert scenario(**kw).work == (n + 1) * substeps
    else:
        with pytest.raises(ParameterError, match="duration"):
            scenario(**kw)


def test_sweep_work_budget_counts_rows_and_their_overhead(monkeypatch):
    monkeypatch.setattr(K, "rollout_batch", _must_not_run)
    sc = scenario(duration=1000.0, substeps=20)       # 2 000 020 substeps per run
    with pytest.raises(ParameterError, match="units of work"):
        ctrlsim.sweep(sc, {"kp": np.linspace(1, 2, 100), "ki": np.linspace(1, 2, 50)})
    with pytest.raises(ParameterError, match="units of work"):
        ctrlsim.sweep(scenario(duration=10.0, substeps=1000),
                      {"kp": np.linspace(1, 2, 1000), "ki": np.linspace(1, 2, 1000)})
    with pytest.raises(ParameterError, match="keep the trajectories"):
        ctrlsim.sweep(scenario(duration=100.0), {"kp": np.linspace(1, 2, 3000)},
                      keep_trajectories=True)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the kernel ran although the input should have been refused")


# --------------------------------------------------------------------------
# 2. Physically impossible states: the whole payload timeline
# --------------------------------------------------------------------------
@pytest.mark.parametrize("events, t, cause", [
    # A removal that outlives an addition: negative mass after the first event ends.
    ([Event(at=0.5, until=1.0, payload=30.0), Event(at=0.6, payload=-40.0)], 1.0,
     "events[0] ends"),
    # Exactly zero (was ZeroDivisionError).
    ([Event(at=0.2, until=1.5, payload=-5.0), Event(at=0.8, payload=-20.0)], 0.8,
     "events[1] starts"),
    ([Event(at=0.0, payload=-25.0)], 0.0, "the start"),
    ([Event(at=1.0, until=1.2, payload=-10.0)] * 3, 1.0, "events[0] starts"),
])
def test_mass_timeline_rejects_non_positive_mass_with_event_and_time(events, t, cause):
    with pytest.raises(ParameterError) as err:
        scenario(events=events)
    assert err.value.key == "events.payload"
    assert f"t = {t:g} s" in err.value.reason and cause in err.value.reason


def test_events_after_the_run_do_not_matter():
    sc = scenario(duration=2.0, events=[Event(at=1.0, until=2.0, payload=10.0),
                                        Event(at=1.5, until=3.0, payload=-30.0)])
    assert len(sc.events) == 2


event_st = st.builds(
    lambda at, length, payload: Event(at=float(at), until=at + length, payload=float(payload)),
    st.integers(0, 6), st.sampled_from([0, 1, 2, 3, math.inf]), st.integers(-30, 30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(event_st, max_size=6), mass=st.integers(1, 40),
       duration=st.sampled_from([1.0, 3.0, 5.0, 8.0]))
def test_mass_timeline_agrees_with_the_kernel_at_every_instant(events, mass, duration):
    arr = np.array([(e.at, e.until, e.force, e.payload) for e in events],
                   dtype=float).reshape(-1, 4)
    # The kernel's own event sum, on a grid finer than any event boundary.
    times = np.arange(0.0, duration, 0.25) + 1e-9
    possible = all(mass + K.event_window(t, arr)[2] > 0 for t in times)
    plant = make_plant("robot", mass=mass)
    if possible:
        scenario(plant=plant, duration=duration, events=events)
    else:
        with pytest.raises(ParameterError, match="mass must stay positive"):
            scenario(plant=plant, duration=duration, events=events)


def test_sweeping_mass_low_is_refused_per_row_before_simulating(monkeypatch):
    monkeypatch.setattr(K, "rollout_batch", _must_not_run)
    sc = scenario(events=[Event(at=0.5, payload=-10.0)])
    with pytest.raises(ParameterError, match=r"mass = 10\b") as err:
        ctrlsim.sweep(sc, {"mass": [30.0, 10.0, 50.0], "kp": [50.0, 100.0]})
    assert err.value.key == "events.payload"
    with pytest.raises(ParameterError, match="mass"):
        ctrlsim.sweep(scenario(), {"mass": [25.0, 0.0]})
    with pytest.raises(ParameterError, match="force_min"):
        ctrlsim.sweep(scenario(), {"force_min": [-5.0], "force_max": [-10.0]})


# --------------------------------------------------------------------------
# 3. One error type; user input never reaches an internal error
# --------------------------------------------------------------------------
def test_one_error_type_carries_key_and_reason():
    with pytest.raises(ParameterError) as err:
        finite_float("plant.mass", "heavy")
    assert (err.value.key, isinstance(err.value, TypeError)) == ("plant.mass", True)
    assert issubclass(ScenarioError, ParameterError)
    with pytest.raises(ParameterError) as err:
        make_plant("robot", mass=-1)
    assert err.value.key == "mass" and "positive" in err.value.reason


@pytest.mark.parametrize("plant, key, value", [
    ("force_max = -5", "force_max", "-5.0"), ("force_min = 5", "force_min", "5.0"),
    ("force_max = -30", "force_max", "-30.0"),       # also below force_min = -20
    ("force_min = 0\nforce_max = 0", "force_min", "0.0"),
])
def test_a_bad_force_range_names_the_bound_the_file_set(tmp_path, plant, key, value):
    path = tmp_path / "f.toml"
    path.write_text(f"[plant]\n{plant}\n[reference]\nsteps = [[0.0, 1.0]]\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.key == f"plant.{key}" and str(err.value).endswith(f"got {value}")


def test_a_gear_past_the_gear_ratios_names_both():
    with pytest.raises(ParameterError, match="gear: .*number of gear_ratios.*got 4"):
        make_plant("car", gear_ratios=[40.0, 25.0])


@pytest.mark.parametrize("text, key", [
    ("a = " + "[" * 3000 + "]" * 3000, "(file)"),                 # RecursionError in tomllib
    ("name = " + "[" * 400 + "]" * 400 + "\nduration = 1.0\n[reference]\nsteps = [[0.0, 1.0]]",
     "name"),                                                    # repr of a deep value
    ('name = "' + "n" * 300 + '"\nduration = 1.0\n[reference]\nsteps = [[0.0, 1.0]]', "name"),
    ("x = 1\n" * 200_000, "(file)"),                             # over the size bound
    (b"duration = 1.0 # \xff\xfe\n", "(file)"),                  # not UTF-8
    ("duration = 1.0\n[reference]\nsteps = [[0.0, 1.0]]\n" + "[[events]]\nat = 0.1\nforce = 1.0\n"
     * 1001, "events"),
    ("duration = 1.0\n[reference]\nsteps = [" + ", ".join(f"[{i}.0, 1.0]" for i in
                                                           range(100_001)) + "]",
     "(file)"),
])
def test_hostile_scenario_files_are_scenario_errors(tmp_path, capsys, text, key):
    path = tmp_path / "h.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.key == key
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("name", ["x" * 300, "a\0b.toml", "x" * 5000 + ".toml",
                                  "/" + "d" * 300 + "/s.toml"])
def test_unusable_scenario_names_are_scenario_errors(name):
    with pytest.raises(ScenarioError, match=r"\(file\)"):
        load_scenario(name)


def test_a_genuine_internal_bug_stays_exit_1(monkeypatch, capsys):
    import ctrlsim.cli as cli

    def bug(*args, **kwargs):
        raise ValueError("internal invariant broken")
    monkeypatch.setattr(cli, "simulate", bug)
    assert main(["run", "decel"]) == 1
    assert "internal error" in capsys.readouterr().err
    with pytest.raises(ValueError, match="invariant"):
        main(["run", "decel", "--debug"])


# --------------------------------------------------------------------------
# 5. Cycle CSVs: columns by header name
# --------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "speed_mps,time_s\n0,0\n1,10\n1,20\n",
    "time_s,speed_mps\n0,0\n10,1\n20,1\n",
    "\ufeff time_s , speed_mps \n0,0\n10,1\n20,1\n\n",
    "note,speed_mps,time_s\na,0,0\nb,1,10\nc,1,20\n",
])
def test_cycle_columns_are_read_by_name(tmp_path, text):
    path = tmp_path / "c.csv"
    path.write_text(text, encoding="utf-8")
    ref = ctrlsim.load_cycle(path)
    assert ref.points == ((0.0, 0.0), (10.0, 1.0), (20.0, 1.0))


@pytest.mark.parametrize("text, fragment", [
    ("0,0\n10,1\n20,1\n", "header"),                              # no header: was one row lost
    ("time,speed\n0,0\n10,1\n", "header"),
    ("time_s,time_s,speed_mps\n0,0,0\n1,1,1\n", "header"),
    ("time_s,speed_mps\n0,0\n10\n", "line 3 has 1 fields"),
    ("time_s,speed_mps\n0,0\n10,fast\n", "line 3: speed_mps 'fast'"),
    ("time_s,speed_mps\n0,0\n10,nan\n", "not a finite number"),
    ("time_s,speed_mps\n10,0\n5,1\n", "increasing"),
    ("time_s,speed_mps\n0,0\n", "two rows"),
    ("", "header"),
])
def test_malformed_cycles_are_named(tmp_path, text, fragment):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(ParameterError, match=fragment) as err:
        ctrlsim.load_cycle(path)
    assert err.value.key == "cycle"


def test_cycle_file_size_is_bounded_before_reading(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write("time_s,speed_mps\n")
        fh.write("1,1\n" * 1_100_000)
    with pytest.raises(ParameterError, match="larger than"):
        ctrlsim.load_cycle(path)


@settings(max_examples=40, deadline=None)
@given(order=st.permutations(["time_s", "speed_mps", "grade", "note"]))
def test_any_column_order_gives_the_same_cycle(tmp_path_factory, order):
    rows = {"time_s": ["0", "5", "9"], "speed_mps": ["1", "2", "0.5"], "grade": ["0"] * 3,
            "note": ["a", "b", "c"]}
    path = tmp_path_factory.mktemp("cyc") / "c.csv"
    path.write_text(",".join(order) + "\n" + "".join(
        ",".join(rows[c][i] for c in order) + "\n" for i in range(3)))
    assert ctrlsim.load_cycle(path).points == ((0.0, 1.0), (5.0, 2.0), (9.0, 0.5))


# --------------------------------------------------------------------------
# 6. The Python API checks its arguments at the door
# --------------------------------------------------------------------------
def _custom():
    import numba
    return ctrlsim.CustomController(numba.njit(lambda e, z, d, y, r: 0.0))


SC = scenario()
T = np.linspace(0, 10, 101)
Y = 1 - np.exp(-T)
API_MISUSE = [  # (call, exception type, parameter named)
    (lambda: ctrlsim.simulate(5), TypeError, "scenario"),
    (lambda: ctrlsim.simulate(SC, 5), TypeError, "controller"),
    (lambda: ctrlsim.simulate(SC, "pid"), ValueError, "controller"),
    (lambda: ctrlsim.simulate("no-such-scenario"), ValueError, "(file)"),
    (lambda: ctrlsim.sweep(SC, [("kp", [1])]), TypeError, "params"),
    (lambda: ctrlsim.sweep(SC, {"kp": "12"}), TypeError, "kp"),
    (lambda: ctrlsim.sweep(SC, {"kp": [True, False]}), TypeError, "kp"),
    (lambda: ctrlsim.sweep(SC, {"kp": [[1, 2], [3, 4]]}), ValueError, "kp"),
    (lambda: ctrlsim.sweep(SC, {"kp": [1.0]}, progress=3), TypeError, "progress"),
    (lambda: ctrlsim.sweep(SC, {"kp": [1.0]}, controller=3.0), TypeError, "controller"),
    (lambda: scenario(duration=True), TypeError, "duration"),
    (lambda: scenario(control_period=True), TypeError, "control_period"),
    (lambda: scenario(duration="10"), TypeError, "duration"),
    (lambda: scenario(substeps=2.0), TypeError, "substeps"),
    (lambda: scenario(initial_speed=None), TypeError, "initial_speed"),
    (lambda: scenario(reference=None, plant="robot"), TypeError, "reference"),
    (lambda: scenario(plant="robot"), TypeError, "plant"),
    (lambda: scenario(controller="relu"), TypeError, "controller"),
    (lambda: scenario(road=[(0, 1)]), TypeError, "road"),
    (lambda: scenario(sensor=0.1), TypeError, "sensor"),
    (lambda: scenario(events=Event(at=1.0, payload=1.0)), TypeError, "events"),
    (lambda: scenario(events=[{"at": 1.0}]), TypeError, "events[0]"),
    (lambda: scenario(name=None), TypeError, "name"),
    (lambda: scenario(description="d" * 5000), ValueError, "description"),
    (lambda: Event(at="1"), TypeError, "events.at"),
    (lambda: Event(at=1.0, until="2"), TypeError, "events.until"),
    (lambda: Event(at=1.0, until=math.nan), ValueError, "events.until"),
    (lambda: Event(at=1.0, payload=None), TypeError, "events.payload"),
    (lambda: Reference(None), TypeError, "reference.steps"),
    (lambda: Reference([(0, "2")]), TypeError, "reference.steps"),
    (lambda: Reference([(0, 1, 2)]), ValueError, "reference.steps[0]"),
    (lambda: Reference([(0, 1)], kind="ramp"), ValueError, "reference.kind"),
    (lambda: Road([(0, math.inf)]), ValueError, "road.grade_deg"),
    (lambda: Road("steep"), TypeError, "road.grade_deg"),
    (lambda: Sensor(speed_noise_std=True), TypeError, "sensor.speed_noise_std"),
    (lambda: Sensor(seed=1.5), TypeError, "sensor.seed"),
    (lambda: make_plant(["robot"]), ValueError, "preset"),
    (lambda: ctrlsim.Plant(preset="robot", mass="25", gravity=9.81, rolling_resistance=0.0,
                           drag_linear=0.0, drag_quadratic=0.0, actuator_tau=0.0,
                           force_min=-1.0, force_max=1.0), TypeError, "mass"),
    (lambda: ctrlsim.controller(None), TypeError, "controller"),
    (lambda: ctrlsim.controller("relu," + "kp=1," * 300), ValueError, "controller"),
    (lambda: ctrlsim.LinearController(kp="1"), TypeError, "kp"),
    (lambda: ctrlsim.CustomController(print), TypeError, "law"),
    (lambda: ctrlsim.load_cycle("udds", scale=-1), ValueError, "cycle_scale"),
    (lambda: ctrlsim.load_cycle(None), TypeError, "cycle"),
    (lambda: ctrlsim.load_scenario(None), TypeError, "name_or_path"),
    (lambda: ctrlsim.step_info(T[::-1], Y), ValueError, "t"),
    (lambda: ctrlsim.step_info(np.r_[T[:-1], np.nan], Y), ValueError, "t"),
    (lambda: ctrlsim.step_info(T, Y[:-1]), ValueError, "y"),
    (lambda: ctrlsim.step_info(T, Y, settling_threshold=math.nan), ValueError,
     "settling_threshold"),
    (lambda: ctrlsim.step_info(T, Y, settling_threshold=0.0), ValueError, "settling_threshold"),
    (lambda: ctrlsim.step_info(T, Y, rise_limits=(0.9, 0.1)), ValueError, "rise_limits"),
    (lambda: ctrlsim.step_info(T, Y, rise_limits=0.5), TypeError, "rise_limits"),
    (lambda: ctrlsim.step_info(T, Y, final=math.inf), ValueError, "final"),
    (lambda: ctrlsim.step_info(["a", "b"], [1, 2]), TypeError, "t"),
]


@pytest.mark.parametrize("call, exc, key", API_MISUSE, ids=[str(i) for i in range(len(API_MISUSE))])
def test_public_api_names_the_bad_argument(call, exc, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as err:
            call()
    assert isinstance(err.value, ParameterError)
    assert err.value.key == key


def test_strings_are_accepted_as_scenario_names_and_controller_specs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = ctrlsim.simulate("decel", "relu")
        res = ctrlsim.sweep("decel", {"alpha": [0.0, 1.0]}, controller="leaky,kp=80",
                            keep_trajectories=True)
    assert tr.scenario.name == "decel" and tr.controller.kind == "relu"
    assert res.trajectories[0].controller.kp == 80.0


def test_validated_values_are_stored_as_floats():
    sc = scenario(duration=2, control_period=np.float32(0.5), initial_speed=np.int64(1))
    assert type(sc.duration) is float and type(sc.initial_speed) is float
    assert Event(at=np.int64(1), payload=2).at == 1.0


# --------------------------------------------------------------------------
# 7. Text from user files is escaped before it reaches a terminal
# --------------------------------------------------------------------------
@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J\x1b[H", r"\x1b[2J\x1b[H"),            # clear screen
    ("\x1b]0;pwned\x07", r"\x1b]0;pwned\x07"),      # window title
    ("a\u202eb", r"a\u202eb"),                       # bidi override
    ("line\nbreak\r", r"line\nbreak\r"),
    ("\x9b31m", r"\x9b31m"),                         # 8-bit CSI
    ("caf\u00e9 \u2713", "caf\u00e9 \u2713"),         # printable text untouched
])
def test_safe_text_escapes_control_characters(raw, shown):
    assert safe_text(raw) == shown


def test_names_with_escape_sequences_are_printed_escaped(tmp_path, capsys):
    path = tmp_path / "evil.toml"
    path.write_text('name = "x\\u001b]0;owned\\u0007\\u001b[2J"\n'
                    'description = "d\\u001b[31m\\u202e"\nduration = 1.0\n'
                    "[reference]\nsteps = [[0.0, 1.0]]\n")
    assert main(["run", str(path), "-c", "relu"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert r"x\x1b]0;owned\x07\x1b[2J: d\x1b[31m\u202e" in out


def test_error_messages_are_escaped(tmp_path, capsys):
    assert main(["run", str(tmp_path / "\x1b[2Jno.toml")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and r"\x1b[2Jno.toml" in err

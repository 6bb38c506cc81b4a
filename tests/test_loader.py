"""Scenario files: every shipped one works, malformed ones fail clearly."""

import math
import tomllib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctrlsim
from ctrlsim.cli import main
from ctrlsim.loader import ScenarioError, load_scenario, shipped_scenarios

REQUIRED = {"step", "decel", "downhill", "uphill", "payload", "gust", "noisy", "udds-robot",
            "hwfet-car", "fbs-hill", "fbs-windup"}

VALID = """
name = "t"
description = "test"
duration = 2.0
control_period = 0.01
substeps = 4
initial_speed = 1.0

[plant]
preset = "robot"
mass = 20

[controller]
type = "leaky"
alpha = 0.1
kp = 60.0
ki = 30.0

[reference]
steps = [[0.0, 2.0], [1.0, 1.0]]

[road]
by = "position"
grade_deg = [[0.0, 0.0], [5.0, -3.0]]

[[events]]
at = 0.5
payload = 5.0

[[events]]
at = 1.0
until = 1.5
force = -30.0

[sensor]
speed_noise_std = 0.01
seed = 0
"""


def test_all_required_scenarios_ship_with_descriptions():
    shipped = shipped_scenarios()
    assert REQUIRED <= set(shipped)
    assert all(len(d) > 20 for d in shipped.values())


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("spec", ["relu", "leaky:0.1", "linear"])
def test_shipped_scenario_runs_without_divergence(name, spec):
    sc = load_scenario(name)
    assert sc.name == name
    with warnings.catch_warnings():
        # No shipped scenario may start infeasibly.
        warnings.simplefilter("error", ctrlsim.StartWarning)
        tr = ctrlsim.simulate(sc, ctrlsim.controller(spec))
    assert not tr.diverged
    assert np.all(np.isfinite(tr.speed))


def test_valid_file_loads_with_every_section(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(VALID)
    sc = load_scenario(path)
    assert sc.plant.mass == 20.0 and isinstance(sc.plant.mass, float)
    assert sc.controller == ctrlsim.LeakyReLUController(alpha=0.1, kp=60, ki=30)
    assert len(sc.events) == 2 and sc.events[1].until == 1.5
    assert sc.road.grade_deg[-1] == (5.0, -3.0)


def test_cycle_reference_from_csv_path_relative_to_the_file(tmp_path):
    (tmp_path / "mine.csv").write_text("time_s,speed_mps\n0,0\n10,1\n20,0\n")
    path = tmp_path / "c.toml"
    path.write_text('duration = 20.0\n[reference]\ncycle = "mine.csv"\ncycle_scale = 2.0\n')
    sc = load_scenario(path)
    assert sc.reference.kind == "cycle" and sc.reference.points[1] == (10.0, 2.0)


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


MALFORMED = [  # (description, old, new, key named in the message)
    ("unknown top key", 'name = "t"', 'name = "t"\nspeed = 3', "speed"),
    ("unknown plant key", "mass = 20", "mass = 20\nwheels = 4", "plant.wheels"),
    ("negative mass", "mass = 20", "mass = -20", "plant.mass"),
    ("mass as string", "mass = 20", 'mass = "20"', "plant.mass"),
    ("boolean number", "duration = 2.0", "duration = true", "duration"),
    ("non-finite", "duration = 2.0", "duration = inf", "duration"),
    ("zero duration", "duration = 2.0", "duration = 0.0", "duration"),
    ("negative period", "control_period = 0.01", "control_period = -0.01", "control_period"),
    ("zero substeps", "substeps = 4", "substeps = 0", "substeps"),
    ("float substeps", "substeps = 4", "substeps = 4.5", "substeps"),
    ("unknown preset", 'preset = "robot"', 'preset = "truck"', "plant.preset"),
    ("car field on robot", "mass = 20", "mass = 20\ngear = 3", "plant.gear"),
    ("force range", "mass = 20", "mass = 20\nforce_min = 50.0", "plant.force_min"),
    ("unknown controller", 'type = "leaky"', 'type = "pid"', "controller.type"),
    ("alpha on relu", 'type = "leaky"', 'type = "relu"', "controller.alpha"),
    ("alpha out of range", "alpha = 0.1", "alpha = 1.5", "controller.alpha"),
    ("unknown gain", "kp = 60.0", "kp = 60.0\nkx = 1.0", "controller.kx"),
    ("steps and cycle", "steps = [[0.0, 2.0], [1.0, 1.0]]",
     'steps = [[0.0, 2.0]]\ncycle = "udds"', "reference"),
    ("empty steps", "steps = [[0.0, 2.0], [1.0, 1.0]]", "steps = []", "reference.steps"),
    ("malformed pair", "steps = [[0.0, 2.0], [1.0, 1.0]]", "steps = [[0.0, 2.0, 3.0]]",
     "reference.steps[0]"),
    ("decreasing steps", "steps = [[0.0, 2.0], [1.0, 1.0]]", "steps = [[1.0, 2.0], [0.5, 1.0]]",
     "reference.steps"),
    ("unknown cycle", "steps = [[0.0, 2.0], [1.0, 1.0]]", 'cycle = "nyc"', "reference.cycle"),
    ("missing cycle file", "steps = [[0.0, 2.0], [1.0, 1.0]]", 'cycle = "nope.csv"',
     "reference.cycle"),
    ("scale without cycle", "steps = [[0.0, 2.0], [1.0, 1.0]]",
     "steps = [[0.0, 2.0]]\ncycle_scale = 0.1", "reference.cycle_scale"),
    ("bad road.by", 'by = "position"', 'by = "distance"', "road.by"),
    ("grade not pairs", "grade_deg = [[0.0, 0.0], [5.0, -3.0]]", "grade_deg = [1.0, 2.0]",
     "road.grade_deg[0]"),
    ("until before at", "until = 1.5", "until = 0.5", "events[1].until"),
    ("event without effect", "payload = 5.0", "", "events[0]"),
    ("event without at", "at = 0.5\n", "", "events[0].at"),
    ("negative noise", "speed_noise_std = 0.01", "speed_noise_std = -0.01",
     "sensor.speed_noise_std"),
    ("float seed", "seed = 0", "seed = 0.5", "sensor.seed"),
    ("payload leaves no mass", "payload = 5.0", "payload = -25.0", "events.payload"),
    ("duration not a multiple", "duration = 2.0", "duration = 2.005", "duration"),
    ("invalid toml", "[sensor]", "[sensor", "(file)"),
    ("duplicate step time", "steps = [[0.0, 2.0], [1.0, 1.0]]",
     "steps = [[1.0, 2.0], [1.0, 1.0]]", "reference.steps"),
    ("overlapping payloads", "payload = 5.0", "payload = -12.0\nuntil = 9.0\n"
     "[[events]]\nat = 0.8\npayload = -12.0", "events.payload"),
    ("integer beyond float", "duration = 2.0", "duration = 1" + "0" * 400, "duration"),
    ("run too long", "duration = 2.0", "duration = 1e9", "duration"),
    ("too many substeps", "substeps = 4", "substeps = 9223372036854775807", "substeps"),
]


@pytest.mark.parametrize("what, old, new, key", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_exits_2_naming_the_key(tmp_path, capsys, what, old, new, key):
    path = tmp_path / "bad.toml"
    path.write_text(_mutate(VALID, old, new))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.key == key
    assert main(["run", str(path)]) == 2
    msg = capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 and "Traceback" not in msg
    assert str(path) in msg and key in msg


def test_package_data_globs_match_the_shipped_files():
    # A wheel only ships what these globs match (an editable install hides a typo).
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["ctrlsim"]
    matched = {p.resolve() for g in globs for p in (root / "ctrlsim").glob(g)}
    shipped = {p.resolve() for p in (root / "ctrlsim" / "scenarios").glob("*.toml")}
    assert shipped and shipped <= matched
    assert {p.name for p in matched} >= {"udds.csv", "hwfet.csv"}


def test_missing_file_and_unknown_name():
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario("/nonexistent/x.toml")
    with pytest.raises(ScenarioError, match="shipped"):
        load_scenario("no-such-scenario")


def test_a_directory_is_not_a_scenario_file(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ScenarioError, match=r"dir\.toml: \(file\): is a directory"):
        load_scenario(tmp_path / "dir.toml")


toml_values = st.recursive(
    st.booleans() | st.integers(-10**6, 10**6) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_toml_only_ever_raises_scenario_error(tmp_path_factory, data):
    doc = tomllib.loads(VALID)
    section = data.draw(st.sampled_from([None, "plant", "controller", "reference", "road",
                                         "sensor"]))
    target = doc if section is None else doc[section]
    key = data.draw(st.sampled_from(sorted(target) + ["bogus"]))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(toml_values)
    path = tmp_path_factory.mktemp("fuzz") / "f.toml"
    path.write_text(_dump(doc) + data.draw(st.sampled_from(["", "\n[", "x = ]"])))
    try:
        sc = load_scenario(path)
    except ScenarioError:
        return
    assert sc.duration > 0 and math.isfinite(sc.duration)


def _dump(doc: dict) -> str:
    """Minimal TOML writer for the fuzz test (the stdlib only reads TOML)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                                "-inf" if v == -math.inf else repr(v))
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        return "[" + ", ".join(value(x) for x in v) + "]"

    events = doc.pop("events", [])
    if not (isinstance(events, list) and all(isinstance(e, dict) for e in events)):
        doc["events"], events = events, []
    lines = [f"{k} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {value(vv)}" for kk, vv in v.items()]
    for ev in events:
        lines.append("[[events]]")
        lines += [f"{kk} = {value(vv)}" for kk, vv in ev.items()]
    return "\n".join(lines) + "\n"

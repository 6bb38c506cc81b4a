"""The real ``ctrlsim`` console script, run through subprocess."""

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlsim.metrics import METRIC_KEYS

# The console script installed beside this interpreter (the venv need not be on PATH).
_BESIDE = Path(sys.executable).parent / "ctrlsim"
EXE = str(_BESIDE) if _BESIDE.is_file() else shutil.which("ctrlsim")


def ctrlsim(*args, cwd=None):
    cmd = [EXE] if EXE else [sys.executable, "-m", "ctrlsim"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _strict_json(text):
    def bad(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=bad)


def test_console_script_is_installed():
    assert EXE is not None


def test_scenarios_lists_name_then_description():
    out = ctrlsim("scenarios")
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert {"decel", "downhill", "fbs-windup", "udds-robot"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


def test_compare_json_is_strict_and_complete():
    out = ctrlsim("compare", "decel", "-c", "relu", "-c", "leaky:0.1", "-c", "linear", "--json")
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert doc["scenario"] == "decel"
    assert [r["controller"] for r in doc["results"]] == ["relu", "leaky:0.1", "linear"]
    for r in doc["results"]:
        assert r["diverged"] is False
        assert set(r["metrics"]) == set(METRIC_KEYS)
    relu, leaky = doc["results"][0]["metrics"], doc["results"][1]["metrics"]
    assert relu["settling_time"] > leaky["settling_time"]


def test_json_gives_the_divergence_time_the_table_shows(tmp_path):
    scen = tmp_path / "div.toml"
    scen.write_text("duration = 2.0\ninitial_speed = 1.0\nsubsteps = 1\n[plant]\n"
                    "actuator_tau = 0.0001\n[reference]\nsteps = [[0.0, 2.0]]\n")
    out = ctrlsim("run", str(scen), "-c", "linear", "--json")
    assert out.returncode == 0, out.stderr
    diverged = _strict_json(out.stdout)["results"][0]
    assert diverged["diverged"] is True and diverged["diverged_at"] > 0
    calm = _strict_json(ctrlsim("run", "decel", "-c", "linear", "--json").stdout)["results"][0]
    assert calm["diverged"] is False and calm["diverged_at"] is None
    table = ctrlsim("run", str(scen), "-c", "linear")
    assert f"DIVERGED at {diverged['diverged_at']:.2f} s" in table.stdout


def test_unsettled_run_gives_null_settling_time(tmp_path):
    scen = tmp_path / "short.toml"
    scen.write_text('duration = 7.0\ninitial_speed = 2.0\n[reference]\nsteps = [[5.0, 1.0]]\n')
    out = ctrlsim("run", str(scen), "-c", "relu", "--json")
    assert out.returncode == 0, out.stderr
    metrics = _strict_json(out.stdout)["results"][0]["metrics"]
    assert metrics["settling_time"] is None and metrics["overshoot"] is not None
    table = ctrlsim("run", str(scen), "-c", "relu")
    assert "not settled" in table.stdout


def test_run_writes_plot_and_csv(tmp_path):
    out = ctrlsim("run", "downhill", "-c", "relu", "--plot", str(tmp_path / "p.png"),
                  "--csv", str(tmp_path / "t.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 4001 and float(rows[-1]["speed_mps"]) > 3.0
    assert "plot written to" in out.stdout


def test_default_plot_path_and_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ctrlsim", "compare", "fbs-windup", "--plot"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "plots" / "fbs-windup-compare.png").is_file()


def test_sweep_table_csv_json_and_heatmap(tmp_path):
    out = ctrlsim("sweep", "decel", "--param", "alpha=0:1:3", "--param", "kp=50,100",
                  "--csv", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "h.png"), "--json")
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert doc["params"] == ["alpha", "kp"] and len(doc["results"]) == 6
    assert doc["results"][0]["controller"].startswith("leaky")
    assert doc["results"][0]["params"] == {"alpha": 0.0, "kp": 50.0}
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 6 and set(METRIC_KEYS) <= set(rows[0])
    assert (tmp_path / "h.png").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["run", "nope"], "no such file or shipped scenario"),
    (["run", "decel", "-c", "pid"], "unknown type"),
    (["compare", "decel", "-c", "leaky:abc"], "alpha"),
    (["sweep", "decel", "--param", "alpha=0:1"], "--param"),
    (["sweep", "decel", "--param", "wheels=1:2:2"], "cannot sweep"),
    (["sweep", "decel", "--param", "alpha=0:1:3", "--plot", "x.png", "--metric", "zzz"],
     "unknown metric"),
    (["frobnicate"], "invalid choice"),
    (["run", "decel", "--plot", "out"], "file name ending in"),
    (["run", "decel", "--csv", "."], "is a directory"),
    (["sweep", "decel", "--param", "alpha=0:1:3", "--param", "alpha=1"], "given twice"),
    (["sweep", "decel", "--param", "alpha=0:1:2", "--param", "kp=1,2", "--param", "ki=1",
      "--plot"], "at most two"),
    (["sweep", "fbs-hill", "--param", "gear=1.5,2"], "whole numbers"),
    (["run", "decel", "-c", "relu,kp=1,kp=2"], "given twice"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, args, fragment):
    out = ctrlsim(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr


def test_run_refuses_a_second_controller_instead_of_keeping_the_last(tmp_path, capsys):
    from ctrlsim.cli import main

    out = ctrlsim("run", "decel", "-c", "relu", "-c", "linear", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "use `ctrlsim compare`" in out.stderr
    for argv in (["sweep", "decel", "--param", "kp=1,2", "-c", "relu", "--controller", "relu"],
                 ["analyze", "decel", "-c", "relu", "-c", "linear"]):
        assert main(argv) == 2
        assert "takes one controller" in capsys.readouterr().err


def test_sweep_metric_without_plot_is_a_usage_error(tmp_path):
    out = ctrlsim("sweep", "decel", "--param", "kp=1,2", "--metric", "control_effort",
                  cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert "--metric chooses what --plot draws" in out.stderr


def test_diverged_controller_is_reported_not_a_crash(tmp_path):
    scen = tmp_path / "stiff.toml"
    scen.write_text('duration = 2.0\nsubsteps = 1\ninitial_speed = 1.0\n'
                    '[plant]\nactuator_tau = 0.0001\n[reference]\nsteps = [[0.0, 2.0]]\n')
    out = ctrlsim("compare", str(scen), "-c", "linear", "-c", "relu", "--json")
    assert out.returncode == 0, out.stderr
    results = _strict_json(out.stdout)["results"]
    assert results[0]["diverged"] is True
    assert all(v is None for v in results[0]["metrics"].values())
    table = ctrlsim("compare", str(scen), "-c", "linear")
    assert "DIVERGED" in table.stdout


def test_debug_flag_after_the_subcommand_shows_the_traceback(tmp_path):
    out = ctrlsim("run", "nope", "--debug", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_cycle_scenario_table_has_dashes_for_step_metrics():
    out = ctrlsim("run", "udds-robot")
    assert out.returncode == 0, out.stderr
    row = out.stdout.strip().splitlines()[-1]
    assert "-" in row.split() and "not settled" not in row
    assert not math.isnan(float(row.split()[-3]))  # max |e| is always measured


def test_first_compile_is_announced_on_stderr_only_when_the_cache_is_cold(monkeypatch, capsys,
                                                                          tmp_path):
    from ctrlsim import cli, kernels

    for cached, told in ((False, True), (True, False)):
        monkeypatch.setattr(cli, "_cached", lambda kernel, c=cached: c)
        for argv in (["compare", "decel", "-c", "relu"],
                     ["sweep", "decel", "--param", "alpha=0:1:2"]):
            assert cli.main(argv) == 0
            out, err = capsys.readouterr()
            assert ("compiling the" in err) == told, argv
            assert "compiling" not in out and "decel" in out
    monkeypatch.undo()
    # The cache check itself: the kernel compare just ran is on disk; a
    # never-compiled cached function is not.
    assert cli._cached(kernels.rollout_pid)
    (tmp_path / "never_compiled.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import never_compiled

    assert not cli._cached(never_compiled.f)


def test_entry_freezes_the_collector_around_main(monkeypatch):
    from ctrlsim import cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(cli.gc, "freeze", lambda: calls.append("freeze"))
    assert cli.entry() == 3 and calls == ["freeze", "main", "freeze"]

"""Hardening through the real console script: exit codes, outputs, signals, closed pipes."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).parent / "ctrlsim"
EXE = [str(_BESIDE)] if _BESIDE.is_file() else [sys.executable, "-m", "ctrlsim"]


def ctrlsim(*args, cwd=None, **kw):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=120, **kw)


def _one_line_error(out, code, *fragments):
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or "probe" in p.name]


NEG_PAYLOAD = ("duration = 20.0\ninitial_speed = 1.0\n[reference]\nsteps = [[0.0, 1.0]]\n"
               "[[events]]\nat = 1.0\nuntil = 5.0\npayload = 20.0\n"
               "[[events]]\nat = 2.0\npayload = -40.0\n")


def test_user_errors_exit_2_before_any_work(tmp_path):
    """Size guards, impossible states, internal-error-prone input and bad outputs: one
    console process each would be slow, so each case is a separate invocation of the
    real script only where it matters; all must exit 2 with one named line."""
    (tmp_path / "neg.toml").write_text(NEG_PAYLOAD)
    (tmp_path / "heavy.toml").write_text(NEG_PAYLOAD.replace("[reference]",
                                                             "[plant]\nmass = 100\n[reference]"))
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000)
    (tmp_path / "file").write_text("x")
    (tmp_path / "long.toml").write_text("duration = 20000.0\ncontrol_period = 0.001\n"
                                        "substeps = 1000\n[reference]\nsteps = [[0.0, 1.0]]\n")
    cases = [
        (["sweep", "decel"] + sum((["--param", f"{n}=0:1:65536"] for n in
                                   ("alpha", "kp", "ki", "kd")), []), ["18446744073709551616"]),
        (["sweep", "decel", "--param", "alpha=0:1:10000000000"], ["--param", "NUM"]),
        (["run", "long.toml"], ["duration", "at most"]),
        (["run", "neg.toml"], ["events.payload", "t = 5 s", "events[0] ends"]),
        (["sweep", "heavy.toml", "--param", "mass=100,1"], ["mass = 1", "t = 2 s"]),
        (["run", "deep.toml"], ["deep.toml: (file): nested too deeply"]),
        (["run", "s" * 300], ["(file)"]),
        (["run", "decel", "--csv", "file/out.csv"], ["--csv file/out.csv", "not a folder"]),
        (["run", "decel", "--plot", "file/p.png"], ["--plot file/p.png", "not a folder"]),
        (["run", "decel", "--csv", "/dev/full"], ["--csv /dev/full", "not a regular file"]),
        (["run", "decel", "--csv", "/proc/out.csv"], ["--csv /proc/out.csv", "cannot write"]),
        (["run", "decel", "--csv", "same.png", "--plot", "same.png"], ["same file"]),
        (["gallery", "--out", "file"], ["--out file", "not a folder"]),
    ]
    for args, fragments in cases:
        out = ctrlsim(*args, cwd=tmp_path)
        _one_line_error(out, 2, *fragments)
        assert out.stdout == "", args  # nothing simulated, nothing printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.toml", "file", "heavy.toml",
                                                          "long.toml", "neg.toml"]


def test_a_long_scenario_name_gets_a_short_default_plot_name(tmp_path):
    (tmp_path / "n.toml").write_text('name = "' + "n" * 190 + '"\nduration = 2.0\n'
                                     "[reference]\nsteps = [[0.0, 1.0]]\n")
    out = ctrlsim("run", "n.toml", "-c", "relu", "--plot", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["n" * 80 + "-run.png"]


def _no_fsize_limit_signal():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_keeps_the_old_file_and_names_the_flag(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("previous contents\n")
    out = ctrlsim("run", "downhill", "-c", "relu", "--csv", str(target), cwd=tmp_path,
                  preexec_fn=_no_fsize_limit_signal)  # ~600 kB of CSV: over the limit
    _one_line_error(out, 1, f"--csv {target}", "nothing was written")
    assert target.read_text() == "previous contents\n"
    assert _leftovers(tmp_path) == []


def test_outputs_replace_files_atomically_with_normal_permissions(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    out = ctrlsim("run", "decel", "-c", "relu", "--csv", str(target), "--plot",
                  str(tmp_path / "p.png"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert target.read_text().startswith("t_s,") and oct(target.stat().st_mode)[-3:] == "640"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert _leftovers(tmp_path) == []


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even if this test run ignores SIGINT
    (a background job of a non-interactive shell starts with SIGINT ignored, and
    children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(args, cwd, after):
    """Start the console script, wait until it is simulating, send SIGINT."""
    proc = subprocess.Popen(EXE + args, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    time.sleep(after)
    assert proc.poll() is None, "finished before the interrupt"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    return proc.returncode, time.monotonic() - sent, out, err


def test_ctrl_c_during_a_sweep_exits_130_promptly_leaving_a_valid_csv(tmp_path):
    target = tmp_path / "s.csv"
    target.write_text("keep\n")
    code, latency, out, err = _interrupt(
        ["sweep", "decel", "--param", "alpha=0:1:3000", "--param", "kp=50:150:10",
         "--csv", str(target)], tmp_path, 4.0)
    assert code == 130 and latency < 3.0, (code, latency, err)
    assert err.rstrip().endswith("ctrlsim: interrupted") and "Traceback" not in err
    # The CSV holds the header and whole finished blocks, and is marked unfinished.
    rows = target.read_text().splitlines()
    assert rows[0].startswith("alpha,kp,diverged,") and 1 <= len(rows) < 30001
    assert all(r.count(",") == rows[0].count(",") for r in rows)
    assert (tmp_path / "s.csv.sweep-state").is_file()
    assert _leftovers(tmp_path) == []


def test_ctrl_c_between_long_single_runs_exits_130_within_a_run(tmp_path):
    # Each run is just under the per-run budget (~1 s); Ctrl-C is seen between runs.
    (tmp_path / "l.toml").write_text("duration = 4900.0\ninitial_speed = 1.0\n"
                                     "[reference]\nsteps = [[0.0, 1.0]]\n")
    code, latency, out, err = _interrupt(["compare", "l.toml"] + ["-c", "relu"] * 30,
                                         tmp_path, 3.0)
    assert code == 130 and latency < 3.0, (code, latency, err)
    assert err.strip() == "ctrlsim: interrupted"


def test_a_closed_stdout_exits_quietly(tmp_path):
    proc = subprocess.Popen(EXE + ["sweep", "decel", "--param", "alpha=0:1:40"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` having read what it wanted
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["run", "decel", "--json"],
                                  ["sweep", "decel", "--param", "alpha=0:1:40"]])
def test_a_full_stdout_is_named_not_an_internal_error(tmp_path, args):
    with open("/dev/full", "w") as full:
        out = subprocess.run(EXE + args, stdout=full, stderr=subprocess.PIPE, text=True,
                             cwd=tmp_path, timeout=120)
    _one_line_error(out, 1, "ctrlsim: error: cannot write the output: No space left on device")
    assert "internal" not in out.stderr


def test_an_io_error_on_stdout_is_named_and_a_closed_pipe_stays_141(monkeypatch, capsys):
    import errno

    from ctrlsim import cli

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def write(self, text):
            raise self.exc

        def flush(self):
            pass

    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)  # keep pytest's stdout
    monkeypatch.setattr(sys, "stdout", Failing(OSError(errno.EIO, os.strerror(errno.EIO))))
    assert cli.main(["scenarios"]) == 1
    assert capsys.readouterr().err == ("ctrlsim: error: cannot write the output: "
                                       f"{os.strerror(errno.EIO)}\n")
    monkeypatch.setattr(sys, "stdout", Failing(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert cli.main(["scenarios"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a shell")
def test_pipe_into_head(tmp_path):
    out = subprocess.run(" ".join(EXE) + " sweep decel --param alpha=0:1:60 | head -n 1",
                         shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.startswith("decel: sweep of alpha") and out.stderr == ""


def test_escape_sequences_from_a_file_never_reach_the_terminal(tmp_path):
    (tmp_path / "e.toml").write_text(
        'name = "e\\u001b]0;owned\\u0007"\ndescription = "\\u001b[2J\\u009b1m\\u202e"\n'
        "duration = 2.0\n[reference]\nsteps = [[1.0, 1.0]]\n")
    out = ctrlsim("compare", "e.toml", "-c", "relu", "--plot", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for text in (out.stdout, out.stderr):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e")
    assert r"e\x1b]0;owned\x07: \x1b[2J\x9b1m\u202e" in out.stdout

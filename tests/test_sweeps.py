"""Sweeps at scale: compiled metrics, blocks, CSV resume, Dask, unstable corners, RK4 accuracy."""

import dataclasses
import importlib
import math
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import ctrlsim
from ctrlsim import Event, Reference, Road, Scenario, make_plant
from ctrlsim.metrics import METRIC_KEYS
from ctrlsim.validation import ParameterError


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even if this test run ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

EXE = [sys.executable, "-m", "ctrlsim"]
S = importlib.import_module("ctrlsim.sweep")  # the module, not the function


def _same(a: S.SweepResult, b: S.SweepResult) -> bool:
    return (a.names == b.names and np.array_equal(a.diverged, b.diverged)
            and all(np.array_equal(a.values[n], b.values[n]) for n in a.names)
            and all(np.array_equal(a.metrics[k], b.metrics[k], equal_nan=True)
                    for k in METRIC_KEYS))


def _close(ref: float, got: float) -> bool:
    if np.isnan(ref) or np.isnan(got):
        return bool(np.isnan(ref) and np.isnan(got))
    return abs(got - ref) <= 1e-12 * max(abs(ref), 1.0)


# --------------------------------------------------------------------------
# Compiled metrics == Trajectory.metrics()
# --------------------------------------------------------------------------
CASES = {
    # A step at t = 0.503 (between samples), decreasing and increasing.
    "step": (Scenario(reference=Reference([(0.503, 2.5), (6.0, 1.0)]), duration=9.0,
                      initial_speed=1.5, control_period=0.02, substeps=4,
                      plant=make_plant("robot", force_min=-1e9, force_max=1e9)),
             {"kp": [0.0, 1.0, 30.0, 300.0, 1e6], "ki": [0.0, 5.0, 40.0],
              "actuator_tau": [0.0, 0.3]}),
    # A tiny gain never settles; flat: reference equal to the start (no step).
    "hold": (Scenario(reference=Reference([(0.0, 2.0)]), duration=4.0, initial_speed=2.0,
                      road=Road(((1.0, 0.0), (2.0, 3.0)), by="position"),
                      events=(Event(at=1.0, until=2.0, force=-20.0),)),
             {"alpha": [0.0, 0.5, 1.0], "kp": [1.0, 80.0]}),
    "cycle": (ctrlsim.load_scenario("udds-robot"), {"kp": [40.0, 120.0]}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_metrics_equal_the_python_reference_on_every_key(name):
    sc, grid = CASES[name]
    if name == "cycle":
        sc = dataclasses.replace(sc, duration=60.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ctrlsim.sweep(sc, grid, keep_trajectories=True)
    kinds = set()
    for i, tr in enumerate(res.trajectories):
        ref = tr.metrics()
        for k in METRIC_KEYS:
            assert _close(ref[k], res.metrics[k][i]), (name, i, k, ref[k], res.metrics[k][i])
        kinds.add("diverged" if tr.diverged else "not settled"
                  if np.isnan(ref["settling_time"]) else "ok")
    if name == "step":
        assert kinds == {"diverged", "not settled", "ok"}


@pytest.mark.parametrize("threads, piece", [(1, 128), (2, 128), (2, 1), (2, 5)])
def test_metrics_kept_or_measured_piece_by_piece_are_the_same(threads, piece, monkeypatch):
    """Without kept trajectories each thread measures its rows in scratch
    (PIECE_ROWS rows per thread): same bits as measuring the kept outputs,
    diverged rows included, whatever the threads and piece size."""
    import numba

    sc, grid = CASES["step"]
    monkeypatch.setattr(S, "PIECE_ROWS", piece)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept = ctrlsim.sweep(sc, grid, keep_trajectories=True)
            measured = ctrlsim.sweep(sc, grid)
    finally:
        numba.set_num_threads(before)
    assert kept.diverged.any() and _same(kept, measured)


def test_the_scratch_is_one_piece_per_thread_and_bounded():
    """The kernel writes only its workers' pieces of the scratch, and a piece of
    long runs shrinks so the scratch stays within MAX_BLOCK_SAMPLES samples."""
    import numba

    from ctrlsim import fastmetrics, limits

    sc = ctrlsim.load_scenario("decel")
    plan = S._make_plan(sc, ("kp",), (np.linspace(20, 200, 7),),
                        np.array([sc.plant.pack()]), sc.resolved_controller())
    workers, piece = 2, 3
    scratch = np.full((workers * piece + 2, plan.prof.ref.size, 5), 7.0)
    args = list(S._block_args(plan, 0, 7, scratch, keep=False))
    args[-2:] = workers, piece
    fastmetrics.rollout_metrics(*args)
    assert np.all(scratch[workers * piece:] == 7.0)      # rows past the pieces: untouched
    assert not np.any(scratch[:workers * piece] == 7.0)
    long = dataclasses.replace(sc, duration=2000.0)
    plan = S._make_plan(long, ("kp",), (np.linspace(20, 200, 7),),
                        np.array([long.plant.pack()]), long.resolved_controller())
    rows = S._scratch(plan, 4096).shape[0]
    assert rows % numba.get_num_threads() == 0
    assert rows * plan.prof.ref.size <= max(limits.MAX_BLOCK_SAMPLES,
                                            numba.get_num_threads() * plan.prof.ref.size)


def test_rows_are_packed_like_the_controller_and_plant_objects():
    sc = ctrlsim.load_scenario("decel")
    grid = {"alpha": [0.0, 0.3], "ki": [0.0, 2.0], "kaw": [0.0, 1.5], "mass": [20.0, 30.0],
            "kd": [0.5]}
    names, axes, table = S._check_params(sc, grid)
    base = sc.resolved_controller()
    plan = S._make_plan(sc, names, axes, table, base)
    pp, cp = S._block_inputs(plan, 0, plan.rows)
    for i, row in enumerate(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 5)):
        setting = dict(zip(names, row.tolist()))
        ctl = S._set_controller(base, setting, "robot")
        assert np.array_equal(cp[i], ctl.pack())
        assert np.array_equal(pp[i], sc.plant.with_(mass=setting["mass"]).pack())


def test_the_table_does_not_depend_on_the_block_size(monkeypatch):
    grid = {"alpha": np.linspace(0, 1, 7), "kp": [50.0, 150.0]}
    whole = ctrlsim.sweep("decel", grid)
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 3)
    seen = []
    small = ctrlsim.sweep("decel", grid, progress=lambda d, n: seen.append(d))
    assert seen == [3, 6, 9, 12, 14] and _same(whole, small)
    # Blocks compute while earlier ones are handed on: kept trajectories must
    # not share (and overwrite) one buffer.
    kept = ctrlsim.sweep("decel", grid, keep_trajectories=True)
    assert _same(whole, kept)
    for i, tr in enumerate(kept.trajectories):
        assert tr.metrics()["iae"] == pytest.approx(whole.metrics["iae"][i], rel=1e-12)
    assert whole.trajectories is None


def test_blocks_run_on_the_callers_numba_thread_count(monkeypatch):
    import numba

    seen = []
    monkeypatch.setattr(S, "_simulate_block", lambda *a, f=S._simulate_block, **k:
                        (seen.append(numba.get_num_threads()), f(*a, **k))[1])
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        ctrlsim.sweep("decel", {"kp": [50.0, 150.0]})
    finally:
        numba.set_num_threads(before)
    assert seen == [1]


# --------------------------------------------------------------------------
# CSV block by block, resume
# --------------------------------------------------------------------------
GRID = {"alpha": np.linspace(0, 1, 5), "kp": [60.0, 100.0, 140.0]}


class _Stop(Exception):
    pass


def _interrupted(path, after_rows, monkeypatch):
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 4)

    def stop(done, total):
        if done >= after_rows:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ctrlsim.sweep("decel", GRID, csv=path, progress=stop)


def test_an_interrupted_csv_is_valid_and_resume_completes_it(tmp_path, monkeypatch):
    whole = ctrlsim.sweep("decel", GRID, csv=tmp_path / "whole.csv")
    assert not (tmp_path / "whole.csv.sweep-state").exists()
    part = tmp_path / "part.csv"
    _interrupted(part, 8, monkeypatch)
    lines = part.read_text().splitlines()
    assert len(lines) == 1 + 8 and (tmp_path / "part.csv.sweep-state").exists()
    # A block cut in the middle of writing is dropped on resume.
    with open(part, "a") as fh:
        fh.write("1.0,60.0,Fal")
    ran = []
    monkeypatch.setattr(S, "_block_args", lambda plan, lo, hi, *a, f=S._block_args:
                        ran.append(lo) or f(plan, lo, hi, *a))
    res = ctrlsim.sweep("decel", GRID, csv=part, resume=True)
    assert ran == [8, 12] and _same(whole, res)
    assert part.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not (tmp_path / "part.csv.sweep-state").exists()


def _streamed(blocks: list, names) -> S.SweepResult:
    """The rows handed to ``on_block``, checked contiguous, as one result."""
    assert [b[0] for b in blocks] == [0] + [b[1] for b in blocks[:-1]]
    cat = lambda k: {n: np.concatenate([b[k][n] for b in blocks]) for n in blocks[0][k]}  # noqa: E731
    return S.SweepResult(names=tuple(names), axes=(), values=cat(2), metrics=cat(3),
                         diverged=np.concatenate([b[4] for b in blocks]))


def test_on_block_streams_every_row_in_grid_order_also_on_resume(tmp_path, monkeypatch):
    whole = ctrlsim.sweep("decel", GRID)
    blocks = []
    keep = lambda lo, hi, v, m, d: blocks.append(  # noqa: E731
        (lo, hi, {k: x.copy() for k, x in v.items()}, {k: x.copy() for k, x in m.items()},
         d.copy()))
    _interrupted(tmp_path / "part.csv", 8, monkeypatch)
    ctrlsim.sweep("decel", GRID, csv=tmp_path / "part.csv", resume=True, on_block=keep)
    assert [b[:2] for b in blocks] == [(0, 8), (8, 12), (12, 15)]  # 0-8 read from the CSV
    assert _same(whole, _streamed(blocks, whole.names))
    with pytest.raises(ParameterError, match="on_block"):
        ctrlsim.sweep("decel", GRID, on_block=3)


def test_cli_sweep_table_widths_from_the_streamed_blocks_equal_two_passes(tmp_path, capsys,
                                                                       monkeypatch):
    from ctrlsim import cli

    # A huge gain with actuator lag diverges: a wider status column, in the last block only.
    (tmp_path / "lag.toml").write_text(
        "duration = 5.0\ninitial_speed = 1.0\n[plant]\npreset = \"robot\"\n"
        "force_min = -1e9\nforce_max = 1e9\nactuator_tau = 0.5\n"
        "[reference]\nsteps = [[0.5, 2.0]]\n")
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 4)
    made = []

    class Spy(cli._SweepTable):
        def __init__(self, names):
            super().__init__(names)
            made.append(self)

    monkeypatch.setattr(cli, "_SweepTable", Spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["sweep", str(tmp_path / "lag.toml"), "--param", "kp=20,60,1e5",
                         "--param", "kd=0,50"]) == 0
        res = ctrlsim.sweep(str(tmp_path / "lag.toml"), {"kp": [20.0, 60.0, 1e5],
                                                          "kd": [0.0, 50.0]})
    table = capsys.readouterr().out.splitlines()[1:]
    assert res.diverged[4:].any() and not res.diverged[:4].any()
    assert table == list(cli._sweep_table_lines(res, ["kp", "kd"]))
    # Rendered while the sweep ran: rows 0-4 again (the last block widened the
    # status column), rows 4-6 copied as rendered.
    assert [p[:2] for p in made[0].parts] == [(0, 4), (4, 6)] and made[0].copied == 1
    # Rows that never passed through on_block are measured and rendered at the end.
    unseen = cli._SweepTable(["kp", "kd"])
    assert "\n".join(unseen.lines(res)).split("\n") == table and unseen.copied == 0


def test_resume_refuses_another_sweeps_csv(tmp_path, monkeypatch):
    part = tmp_path / "p.csv"
    _interrupted(part, 4, monkeypatch)
    with pytest.raises(ParameterError, match="different sweep"):
        ctrlsim.sweep("decel", {**GRID, "kp": [60.0, 100.0, 141.0]}, csv=part, resume=True)
    with pytest.raises(ParameterError, match="different sweep"):
        ctrlsim.sweep("decel", GRID, controller="linear", csv=part, resume=True)
    (tmp_path / "p.csv.sweep-state").unlink()
    with pytest.raises(ParameterError, match="not an unfinished sweep"):
        ctrlsim.sweep("decel", GRID, csv=part, resume=True)


def test_an_unfinished_csv_is_only_continued_never_overwritten(tmp_path, monkeypatch):
    part = tmp_path / "p.csv"
    _interrupted(part, 4, monkeypatch)
    before = part.read_bytes()
    with pytest.raises(ParameterError, match="unfinished sweep.*--resume"):
        ctrlsim.sweep("decel", {"kp": [1.0, 2.0]}, csv=part)
    from ctrlsim.cli import main
    assert main(["sweep", "decel", "--param", "kp=1,2", "--csv", str(part)]) == 2
    assert part.read_bytes() == before


def test_a_csv_another_sweep_is_writing_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "busy.csv"
    with open(path, "a") as other:        # as a running sweep holds it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ParameterError, match="another sweep"):
            ctrlsim.sweep("decel", GRID, csv=path)
        with pytest.raises(ParameterError, match="another sweep"):
            ctrlsim.sweep("decel", GRID, csv=path, resume=True)
    assert path.read_bytes() == b""
    ctrlsim.sweep("decel", GRID, csv=path)   # free again


def test_resume_reports_the_damaged_row_of_a_later_block(tmp_path, monkeypatch):
    part = tmp_path / "p.csv"
    _interrupted(part, 8, monkeypatch)
    lines = part.read_text().splitlines(keepends=True)
    for row, damage in ((6, lambda t: t.replace(",", ";", 1)),       # fields run together
                        (7, lambda t: t.replace("False", "Maybe")),   # not a flag
                        (5, lambda t: "9" + t)):                     # another grid point
        bad = lines.copy()
        bad[row] = damage(bad[row])
        part.write_text("".join(bad))
        with pytest.raises(ParameterError, match=f"row {row} is not"):
            ctrlsim.sweep("decel", GRID, csv=part, resume=True)


def _silent_server(reply: bytes | None):
    """A TCP server that accepts and then says ``reply`` (or nothing) forever."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_a_scheduler_address_that_is_not_dask_is_a_parameter_error(reply, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(S, "CONNECT_DEADLINE", 3.0)
    srv = _silent_server(reply)
    address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    t0 = time.perf_counter()
    try:
        with pytest.raises(ParameterError, match="scheduler"):
            ctrlsim.sweep("decel", {"alpha": [0.0]}, scheduler=address)
    finally:
        srv.close()
    assert time.perf_counter() - t0 < 15


def test_ctrl_c_then_resume_in_a_child_process_gives_the_uninterrupted_table(tmp_path):
    # 5 s runs: 12 000 points in 4 blocks of ~3200 rows, ~2 s in all.
    (tmp_path / "short.toml").write_text("duration = 5.0\ninitial_speed = 2.0\n"
                                         "[reference]\nsteps = [[1.0, 1.0]]\n")
    args = ["sweep", "short.toml", "--param", "alpha=0:1:6000", "--param", "kp=60,120"]
    full = tmp_path / "full.csv"
    done = subprocess.run(EXE + args + ["--csv", str(full)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    part = tmp_path / "part.csv"
    proc = subprocess.Popen(EXE + args + ["--csv", str(part)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the first finished block
        if part.exists() and part.read_text().count("\n") > 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "finished before the interrupt"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    n_part = part.read_text().count("\n") - 1
    assert 0 < n_part < 12000
    resumed = subprocess.run(EXE + args + ["--csv", str(part), "--resume", "--json"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert part.read_bytes() == full.read_bytes()


# --------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------
def test_a_local_cluster_of_two_worker_processes_gives_the_same_table(tmp_path, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    grid = {"alpha": np.linspace(0, 1, 9), "mass": [20.0, 30.0]}
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 5)  # several blocks, out of order
    local = ctrlsim.sweep("decel", grid, csv=tmp_path / "local.csv")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = ctrlsim.sweep("decel", grid, scheduler=client, csv=tmp_path / "dask.csv")
        by_address = ctrlsim.sweep("decel", grid, scheduler=cluster.scheduler_address)
        from ctrlsim.cli import main
        code = main(["sweep", "decel", "--param", "alpha=0:1:9", "--param", "mass=20,30",
                     "--scheduler", cluster.scheduler_address, "--csv",
                     str(tmp_path / "cli.csv"), "--json"])
    assert _same(local, remote) and _same(local, by_address) and code == 0
    for name in ("dask.csv", "cli.csv"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_a_failed_dask_task_is_one_line_and_leaves_nothing_on_the_cluster(tmp_path,
                                                                        monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    grid = {"alpha": np.linspace(0, 1, 9), "mass": [20.0, 30.0]}
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 5)
    local = ctrlsim.sweep("decel", grid)
    run_block = S.run_block

    def failing(plan, lo, hi):
        if lo == 5:
            raise RuntimeError("boom\nsecond line")
        return run_block(plan, lo, hi)

    csv = tmp_path / "d.csv"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        monkeypatch.setattr(S, "run_block", failing)
        with pytest.raises(S.OutputError) as err:
            ctrlsim.sweep("decel", grid, scheduler=client, csv=csv)
        assert "\n" not in str(err.value) and "boom" in str(err.value)
        assert "rows 5-10" in str(err.value) and str(csv) in str(err.value)
        del err
        monkeypatch.setattr(S, "run_block", run_block)
        resumed = ctrlsim.sweep("decel", grid, scheduler=client, csv=csv, resume=True)
        assert _same(local, resumed)
        import gc
        gc.collect()
        deadline = time.time() + 10
        while time.time() < deadline and (client.futures or client.run_on_scheduler(
                lambda dask_scheduler: list(dask_scheduler.tasks))):
            time.sleep(0.2)
        assert not client.futures
        assert not client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))


def test_a_bad_scheduler_is_a_parameter_error():
    with pytest.raises(TypeError, match="scheduler"):
        ctrlsim.sweep("decel", {"alpha": [0.0]}, scheduler=3)


# --------------------------------------------------------------------------
# Unstable corner
# --------------------------------------------------------------------------
def test_an_unstable_corner_is_flagged_diverged_and_the_rest_completes():
    sc = Scenario(reference=Reference([(0.5, 2.0)]), duration=5.0, initial_speed=1.0,
                  plant=make_plant("robot", force_min=-1e9, force_max=1e9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ctrlsim.sweep(sc, {"kp": [20.0, 100.0, 1e5], "kd": [0.0, 50.0],
                                 "actuator_tau": [0.0, 0.05, 0.5]})
    div = res.diverged.reshape(res.shape)
    assert div[2].any() and not div[:2].any()      # the huge gain with lag, only
    ok = ~res.diverged
    assert np.all(np.isfinite(res.metrics["iae"][ok]))
    assert np.all(np.isnan(res.metrics["iae"][res.diverged]))
    rows = res.rows()
    assert sum(r["diverged"] for r in rows) == int(res.diverged.sum())


# --------------------------------------------------------------------------
# RK4 accuracy: speed error vs substeps, against the scipy reference
# --------------------------------------------------------------------------
def test_rk4_speed_error_converges_and_the_defaults_stay_below_1e6():
    """Max speed error vs the DOP853 reference (rtol 1e-11) at Ts = 10 ms (docs/sweeps.md).

    Measured: robot (lag 0.2 s, road kinks, events, noise) 5.8e-7, 2.9e-7, 5.3e-8,
    8.6e-9 m/s at 1, 2, 4, 10 substeps; the same robot on a smooth road 4.9e-9,
    3.0e-10, 1.9e-11, 4.7e-13 (fourth order); the car (no lag) ~1e-13 throughout.
    """
    from test_physics import _car_case, _robot_case, reference_simulation

    from ctrlsim import Road, Sensor

    def smooth():
        return dataclasses.replace(_robot_case(), road=Road(), events=(), sensor=Sensor())

    errs = {}
    for name, make in (("robot", _robot_case), ("smooth", smooth), ("car", _car_case)):
        sc = dataclasses.replace(make(), control_period=0.01)
        _, v_ref = reference_simulation(sc, sc.resolved_controller())
        errs[name] = {n: float(np.max(np.abs(
            ctrlsim.simulate(dataclasses.replace(sc, substeps=n)).speed - v_ref)))
            for n in (1, 2, 4, 10)}
    robot, smooth_, car = errs["robot"], errs["smooth"], errs["car"]
    assert robot[1] > robot[2] > robot[4] > robot[10], robot
    assert smooth_[1] / smooth_[4] > 100 and smooth_[4] / smooth_[10] > 20, smooth_  # 4th order
    # The defaults (10 substeps; the benchmark's 5; the car scenarios' 2) stay below 1e-6.
    assert max(robot[4], robot[10], car[2]) < 1e-6 and max(car.values()) < 1e-9, errs


def test_a_custom_law_sweeps_over_plant_fields_like_single_runs(monkeypatch):
    from numba import njit

    @njit
    def law(e, z, d, y, r):
        return 60.0 * e + 25.0 * z

    ctl = ctrlsim.CustomController(law)
    sc = Scenario(reference=Reference([(0.5, 2.0)]), duration=4.0, initial_speed=1.0)
    # Blocks of 2, 2 and 1 rows: the last, shorter block reuses the whole-block scratch.
    monkeypatch.setattr("ctrlsim.limits.MAX_BLOCK_ROWS", 2)
    masses = [20.0, 30.0, 25.0, 35.0, 40.0]
    res = ctrlsim.sweep(sc, {"mass": masses}, controller=ctl)
    for i, mass in enumerate(masses):
        one = ctrlsim.simulate(dataclasses.replace(sc, plant=make_plant("robot", mass=mass)),
                               ctl).metrics()
        assert all(_close(one[k], res.metrics[k][i]) for k in METRIC_KEYS)
    with pytest.raises(ValueError, match="custom controller"):
        ctrlsim.sweep(sc, {"kp": [1.0]}, controller=ctl)


def test_csv_rows_keep_every_value_in_the_shortest_digits():
    from decimal import Decimal

    from ctrlsim.sweep import _csv_rows

    rng = np.random.default_rng(3)
    m = rng.standard_normal((300, 17)) * 10.0 ** rng.integers(-300, 300, (300, 17))
    special = [np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e-5, 1e16, 0.1]
    m.flat[rng.choice(m.size, 400, replace=False)] = rng.choice(special, 400)
    params = [rng.uniform(-5, 5, 300), np.arange(300.0)]
    div = rng.random(300) < 0.3
    rows = [line.split(",") for line in _csv_rows(params, div, m).split("\n")]
    assert len(rows) == 300 and {len(r) for r in rows} == {20}
    for i, row in enumerate(rows):
        assert [float(x) for x in row[:2]] == [params[0][i], params[1][i]]
        assert row[2] == str(bool(div[i]))
        for token, x in zip(row[3:], m[i].tolist()):
            if x != x or abs(x) == np.inf:
                assert token == repr(x)  # nan, inf, -inf as Python writes them
            else:  # the value back bit for bit, in the digits of Python's repr
                assert float(token) == x and str(float(token)) == repr(x)
                assert Decimal(token) == Decimal(repr(x))
    assert _csv_rows([np.empty(0)], np.empty(0, bool), np.empty((0, 17))) == ""


def test_sweep_table_renders_a_large_range_a_chunk_at_a_time():
    # A resume hands on_block every row read back from the CSV at once: the table
    # renders them in chunks (flat memory) and still equals two passes.
    from types import SimpleNamespace

    from ctrlsim import cli

    n = 10_000
    rng = np.random.default_rng(5)
    metrics = {k: rng.uniform(0, 10, n) for k in METRIC_KEYS}
    metrics["settling_time"][::97] = np.nan
    kp = np.linspace(1, 2, n)
    kp[9000] = -1.5e-300  # a wider cell, in the last chunk only
    res = SimpleNamespace(names=("kp",), values={"kp": kp}, metrics=metrics,
                          diverged=rng.random(n) < 0.01)
    table = cli._SweepTable(["kp"])
    table(0, n, res.values, res.metrics, res.diverged)
    assert [p[:2] for p in table.parts] == [(0, 4096), (4096, 8192), (8192, n)]
    lines = "\n".join(table.lines(res)).split("\n")
    assert lines == list(cli._sweep_table_lines(res, ["kp"])) and table.copied == 1
    table.close()


def test_sweep_start_and_setup_warnings_name_the_rows_they_concern():
    sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=2.0, initial_speed=2.0,
                  road=Road(((0.0, 1.0),)))
    # force_max = 10 N cannot hold 2 m/s up 1 degree; 20 N can.
    with pytest.warns(ctrlsim.StartWarning) as caught:
        ctrlsim.sweep(sc, {"force_max": [10.0, 20.0]})
    assert [str(w.message) for w in caught] == [
        "scenario 'scenario' (in 1 of 2 rows, first: force_max=10): the robot actuator cannot "
        "hold the initial speed 2.0 m/s (limits (-20.0, 10.0)); starting from the saturated "
        "command"]
    with pytest.warns(ctrlsim.StartWarning, match=r"in 2 of 6 rows, first: kp=1, ki=0\)"):
        ctrlsim.sweep(sc, {"kp": [1.0, 2.0], "ki": [0.0, 1.0, 2.0]})
    with pytest.warns(ctrlsim.SetupWarning, match=r"\(in 1 of 2 rows\).*actuator_tau \(0.0001 s\)"):
        ctrlsim.sweep(dataclasses.replace(sc, road=Road()), {"actuator_tau": [0.0, 1e-4]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrlsim.sweep(sc, {"force_max": [20.0, 30.0], "ki": [1.0, 2.0]})


def test_sweep_output_arguments_are_checked_before_it_runs(tmp_path):
    sc = ctrlsim.load_scenario("decel")
    with pytest.raises(ParameterError, match="csv .*: is a directory"):
        ctrlsim.sweep(sc, {"kp": [1.0]}, csv=tmp_path)
    with pytest.raises(ParameterError, match="resume: needs csv"):
        ctrlsim.sweep(sc, {"kp": [1.0]}, resume=True)
    with pytest.raises(ParameterError, match="resume"):
        ctrlsim.sweep(sc, {"kp": [1.0]}, csv=tmp_path / "a.csv", resume="yes")


def test_undershoot_of_a_response_from_rest_is_plus_zero_in_both_implementations():
    # A step from 0 whose speed never dips below 0: -min(y) is -0.0, which
    # tables and JSON printed as "-0".
    sc = ctrlsim.load_scenario("step")
    single = ctrlsim.simulate(sc, "linear").metrics()["undershoot"]
    swept = ctrlsim.sweep(sc, {"kp": [ctrlsim.controller("linear").resolve(
        sc.resolved_controller(), "robot").kp]}).metrics["undershoot"][0]
    assert single == swept == 0.0
    assert math.copysign(1.0, single) == math.copysign(1.0, swept) == 1.0

"""Parameter sweeps: many closed-loop runs of one scenario, in blocks.

The grid (C order) is cut into blocks of rows (:func:`ctrlsim.limits.sweep_block`).
Each block is one compiled call (:func:`ctrlsim.fastmetrics.rollout_metrics`)
that simulates pieces of rows on all cores and measures each piece as it
finishes; a worker thread runs the blocks while the calling thread writes the
finished ones. Only the metrics are kept, so memory does not grow with the
number of points. With
``csv=`` the table is appended block by block (valid after an interrupt) and
``resume=True`` continues it; with ``scheduler=`` the blocks are Dask tasks.
Every path gives the same table bit for bit (see ``docs/sweeps.md``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numba
import numpy as np
import orjson

from . import kernels as K
from .controllers import (
    GAIN_NAMES,
    Controller,
    CustomController,
    LeakyReLUController,
    as_controller,
    pid_vectors,
)
from .fastmetrics import (
    N_METRICS,
    PIECE_ROWS,
    block_metrics,
    metric_settings,
    rollout_metrics,
    step_start,
)
from .files import OutputError, check_output
from .limits import MAX_BLOCK_SAMPLES
from .metrics import METRIC_KEYS
from .plant import PRESET_FIELDS
from .scenario import Scenario, as_scenario
from .simulate import (
    Trajectory,
    check_setup,
    make_trajectory,
    warn_infeasible_start,
    warn_unheld_start,
)
from .validation import ParameterError, ParameterTypeError

__all__ = ["sweep", "SweepResult", "sweepable", "run_block"]

CONTROLLER_PARAMS = GAIN_NAMES + ("alpha",)


def sweepable(preset: str) -> tuple[str, ...]:
    """Names :func:`sweep` accepts for a plant preset."""
    plant = PRESET_FIELDS[preset]
    return CONTROLLER_PARAMS + tuple(n for n in plant if n != "gear_ratios")


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Outcome of :func:`sweep`, one row per grid point (C order).

    Attributes
    ----------
    names : tuple of str
        Swept parameters, in grid-axis order.
    axes : tuple of ndarray
        Values along each axis; the grid has shape ``tuple(map(len, axes))``.
    values : dict of str to ndarray
        Each parameter's value per row, shape (B,).
    metrics : dict of str to ndarray
        Each metric per row (NaN where diverged), shape (B,).
    diverged : ndarray of bool
        Per row.
    trajectories : list of Trajectory, or None
        Only with ``sweep(..., keep_trajectories=True)``.
    """

    names: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    values: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    diverged: np.ndarray
    trajectories: list[Trajectory] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    def grid(self, metric: str) -> np.ndarray:
        """A metric reshaped to the grid."""
        return self.metrics[metric].reshape(self.shape)

    def rows(self) -> list[dict[str, float]]:
        """One dict per grid point: parameters, ``diverged`` and metrics."""
        return list(self.iter_rows())

    def iter_rows(self) -> Iterator[dict[str, float]]:
        """:meth:`rows` one at a time (a dict is ~1.5 kB: big sweeps should stream)."""
        values = [self.values[n].tolist() for n in self.names]
        metrics = [self.metrics[m].tolist() for m in METRIC_KEYS]
        for i, div in enumerate(self.diverged.tolist()):
            yield {**{n: float(v[i]) for n, v in zip(self.names, values)},
                   "diverged": div, **{m: c[i] for m, c in zip(METRIC_KEYS, metrics)}}


def sweep(scenario: Scenario, params: Mapping[str, Sequence[float]],
          controller: Controller | CustomController | None = None,
          progress: Callable[[int, int], None] | None = None, *,
          scheduler=None, csv: str | os.PathLike | None = None, resume: bool = False,
          keep_trajectories: bool = False,
          on_block: Callable[[int, int, dict, dict, np.ndarray], None] | None = None,
          ) -> SweepResult:
    """Simulate a scenario over the grid product of parameter values.

    Parameters
    ----------
    scenario : Scenario, or str
        A string is a shipped scenario name or TOML path.
    params : mapping of name to values
        Controller gains (``kp, ki, kd, kaw, feedforward, alpha``) or plant
        fields (``mass``, ``actuator_tau``, ...). Sweeping ``alpha`` turns the
        controller into a Leaky ReLU with that slope, so alpha = 0 is ReLU and
        alpha = 1 is linear.
    controller : Controller or str, optional
        Base controller (default: the scenario's) or spec, resolved as in
        :func:`ctrlsim.simulate`.
    progress : callable(done, total), optional
        Called after each block of rows.
    scheduler : str or dask.distributed.Client, optional
        Run the blocks as Dask tasks: a scheduler address (``tcp://HOST:PORT``)
        or a client. Needs the ``dask`` extra. The result equals the local
        one bit for bit.
    csv : path, optional
        Append the table to this CSV file block by block (header first), so an
        interrupted sweep leaves a valid CSV of its finished blocks. While the
        sweep is unfinished, ``<csv>.sweep-state`` records which sweep it is.
    resume : bool
        With ``csv``: keep the finished blocks of an interrupted run of the
        same sweep (checked by a fingerprint of the scenario, controller and
        grid) and compute only the rest. Without an unfinished file, starts afresh.
    keep_trajectories : bool
        Also return every run's :class:`~ctrlsim.Trajectory` (memory grows
        with the grid; local runs only).
    on_block : callable(lo, hi, values, metrics, diverged), optional
        Called with each finished range of rows ``[lo, hi)`` in grid order
        (on a resume, first with the rows taken from the CSV): dicts of the
        rows' parameter values and metrics, and their diverged flags
        (read-only arrays). Locally it runs while the next block computes, so
        streaming the rows (to a database, a live plot, a table's column
        widths) overlaps the computation. It must not run ctrlsim kernels
        itself (one is busy on the worker thread).

    Returns
    -------
    SweepResult

    Raises
    ------
    TypeError, ValueError
        (:class:`~ctrlsim.validation.ParameterError`) for bad arguments, a
        grid or work over the limits of :mod:`ctrlsim.limits`, or a row whose
        plant is impossible (e.g. a mass the payload events leave <= 0);
        all checked before anything is allocated or simulated.

    Examples
    --------
    >>> import numpy as np, ctrlsim
    >>> from ctrlsim.scenario import Scenario, Reference
    >>> sc = Scenario(reference=Reference([(1.0, 1.0)]), duration=10.0, initial_speed=2.0)
    >>> res = ctrlsim.sweep(sc, {"alpha": np.linspace(0, 1, 3)})
    >>> res.shape
    (3,)
    """
    scenario, controller = as_scenario(scenario), as_controller(controller)
    if not isinstance(keep_trajectories, bool):
        raise ParameterTypeError("keep_trajectories", "must be True or False")
    if keep_trajectories and scheduler is not None:
        raise ParameterError("keep_trajectories", "only for local sweeps (scheduler=None)")
    if keep_trajectories and resume:
        raise ParameterError("keep_trajectories", "cannot be combined with resume")
    names, axes, plant_table = _check_params(scenario, params, progress, keep_trajectories)
    if on_block is not None and not callable(on_block):
        raise ParameterTypeError("on_block", "must be callable(lo, hi, values, metrics, "
                                 "diverged) or None")
    base = scenario.resolved_controller(controller)
    for name, axis in zip(names, axes):  # every controller value is valid on its own
        if name in CONTROLLER_PARAMS:
            for v in axis.tolist():
                _set_controller(base, {name: v}, scenario.plant.preset)
    if not isinstance(resume, bool):
        raise ParameterTypeError("resume", "must be True or False")
    if resume and csv is None:
        raise ParameterError("resume", "needs csv: the file of the sweep to resume")
    if csv is not None:
        check_output("csv", csv)
    plan = _make_plan(scenario, names, axes, plant_table, base)
    total = plan.rows
    check_setup(scenario, [base], plant_table[:, K.P_TAU], total // len(plant_table))
    # Column-major: each metric of the result is a view of one column, not a copy.
    metrics = np.empty((total, N_METRICS), order="F")
    div_at = np.empty(total, dtype=np.int64)
    client, own = _connect(scheduler) if scheduler is not None else (None, False)
    sink = None
    trajs: list[Trajectory] | None = [] if keep_trajectories else None
    n_infeasible, first_infeasible = 0, -1  # rows that cannot hold the initial speed
    try:
        sink = _CsvSink(csv, plan, resume) if csv is not None else None
        start = 0
        if sink is not None:
            start = sink.open(metrics, div_at)
            if on_block is not None and start:
                on_block(*_block_rows(plan, 0, start, metrics, div_at))
            if progress is not None and start:
                progress(start, total)
        blocks = [(lo, min(lo + plan.block, total)) for lo in range(start, total, plan.block)]

        def done(lo, hi, m, d, f):
            nonlocal n_infeasible, first_infeasible
            metrics[lo:hi], div_at[lo:hi] = m, d
            bad = np.flatnonzero(~f)
            if bad.size:
                n_infeasible += bad.size
                if first_infeasible < 0:
                    first_infeasible = lo + int(bad[0])
            if on_block is not None:
                on_block(*_block_rows(plan, lo, hi, metrics, div_at))
            if progress is not None:
                progress(hi, total)

        if client is not None:
            _run_dask(plan, client, blocks, done, sink)
        else:
            def finished(lo, hi, out, m, d, f):
                if sink is not None:
                    sink.write(lo, hi, m, d)
                if trajs is not None:
                    trajs.extend(_trajectories(scenario, base, plan, lo, hi, out, d))
                done(lo, hi, m, d, f)

            _run_local(plan, blocks, finished, keep=trajs is not None)
        if sink is not None:
            sink.finish()
    finally:
        if sink is not None:
            sink.close()
        if own:
            client.close()
    _warn_start(scenario, base, plan, n_infeasible, first_infeasible)
    idx = np.unravel_index(np.arange(total), plan.shape) if total else ()
    return SweepResult(
        names=names, axes=tuple(np.asarray(a, dtype=float) for a in axes),
        values={n: np.asarray(a, dtype=float)[i] for n, a, i in zip(names, axes, idx)},
        metrics={m: metrics[:, j] for j, m in enumerate(METRIC_KEYS)},
        diverged=div_at >= 0, trajectories=trajs)


def _row_label(plan: _Plan, row: int) -> str:
    """``name=value, ...`` of one grid row."""
    idx = np.unravel_index(row, plan.shape)
    return ", ".join(f"{n}={float(a[i]):g}" for n, a, i in zip(plan.names, plan.axes, idx))


def _warn_start(scenario: Scenario, base, plan: _Plan, n_infeasible: int, first: int) -> None:
    """The StartWarnings of :func:`ctrlsim.simulate`, naming how many rows they
    concern and the first.

    ``n_infeasible`` rows (the first at ``first``) could not hold the start.
    Rows with ki = 0 are checked at the first of them only (a Python call
    per row would cost more than the sweep).
    """
    total = plan.rows
    if n_infeasible:
        pp, _ = _block_inputs(plan, first, first + 1)
        warn_infeasible_start(scenario, f" (in {n_infeasible} of {total} rows, first: "
                              f"{_row_label(plan, first)})",
                              (pp[0, K.P_CMD_LO], pp[0, K.P_CMD_HI]))
    if plan.custom is not None or not isinstance(base, Controller):
        return
    if "ki" in plan.names:
        j = plan.names.index("ki")
        zeros = np.flatnonzero(plan.axes[j] == 0.0)
        if not zeros.size:
            return
        at = [0] * len(plan.shape)
        at[j] = int(zeros[0])
        row, count = int(np.ravel_multi_index(at, plan.shape)), total // plan.shape[j] * zeros.size
    elif base.ki == 0.0:
        row, count = 0, total
    else:
        return
    pp, cp = _block_inputs(plan, row, row + 1)
    warn_unheld_start(scenario, pp[0], cp[0], plan.prof,
                      f" (in {count} of {total} rows, first: {_row_label(plan, row)})")


@dataclass(frozen=True, eq=False)
class _Plan:
    """Everything a block needs, picklable (it travels to Dask workers once)."""

    names: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    shape: tuple[int, ...]
    cp0: np.ndarray                 # base controller vector
    gains: dict[str, float]         # base gains (PID family; else empty: cp0 for all rows)
    alpha_axis: int                 # axis of alpha, or -1
    plant_axes: tuple[int, ...]
    plant_table: np.ndarray         # (P, N_PLANT), C order over the plant axes
    prof: K.Profiles
    t: np.ndarray
    i0: int
    i1: int
    t0: float
    block: int
    custom: CustomController | None
    fingerprint: str

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _make_plan(scenario, names, axes, plant_table, base) -> _Plan:
    from .limits import sweep_block

    alpha_axis = names.index("alpha") if "alpha" in names else -1
    custom = base if isinstance(base, CustomController) else None
    prof = scenario.pack()
    t, i0, i1 = metric_settings(scenario)
    samples = prof.ref.size
    block = sweep_block(samples, scenario.work, whole=custom is not None)
    cp0 = base.pack()
    h = hashlib.sha256()
    from . import __version__
    law = "" if custom is None else getattr(custom.law, "__qualname__", repr(custom.law))
    h.update(json.dumps([__version__, type(base).__name__, law, list(names),
                         [a.dtype.str for a in axes], block, i0, i1, prof.v0, prof.ts,
                         prof.substeps, bool(prof.grade_by_time), prof.v_limit,
                         step_start(scenario)]).encode())
    for arr in (cp0, plant_table, t, prof.ref, prof.noise, prof.grade_x, prof.grade_th,
                prof.events, *axes):
        h.update(np.ascontiguousarray(arr).tobytes())
    return _Plan(names=tuple(names), axes=tuple(axes), shape=tuple(a.size for a in axes),
                 cp0=cp0,
                 gains=({n: float(getattr(base, n)) for n in GAIN_NAMES}
                        if isinstance(base, Controller) else {}),
                 alpha_axis=alpha_axis,
                 plant_axes=tuple(j for j, n in enumerate(names) if n not in CONTROLLER_PARAMS),
                 plant_table=plant_table, prof=prof, t=t, i0=i0, i1=i1,
                 t0=step_start(scenario), block=block, custom=custom,
                 fingerprint=h.hexdigest())


def _block_inputs(plan: _Plan, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Plant and controller vectors of rows ``[lo, hi)``, packed without Python per row.

    Equal to packing ``plant.with_(...)`` and the swept controller row by row
    (tested): controllers go through the same :func:`~ctrlsim.controllers.pid_vectors`.
    """
    idx = np.unravel_index(np.arange(lo, hi), plan.shape)
    n = hi - lo
    if not plan.gains or not any(n in CONTROLLER_PARAMS for n in plan.names):
        cp = np.tile(plan.cp0, (n, 1))
    else:
        g = {name: np.full(n, value) for name, value in plan.gains.items()}
        for j, name in enumerate(plan.names):
            if name in g:
                g[name] = plan.axes[j][idx[j]]
        slope = (plan.axes[plan.alpha_axis][idx[plan.alpha_axis]]
                 if plan.alpha_axis >= 0 else np.full(n, plan.cp0[K.C_SLOPE]))
        cp = pid_vectors(slope=slope, **g)
    if plan.plant_axes:
        sub = tuple(plan.shape[a] for a in plan.plant_axes)
        pidx = np.ravel_multi_index(tuple(idx[a] for a in plan.plant_axes), sub)
        pp = plan.plant_table[pidx]
    else:
        pp = np.tile(plan.plant_table[0], (n, 1))
    return pp, cp


def run_block(plan: _Plan, lo: int, hi: int, out: np.ndarray | None = None):
    """Simulate rows ``[lo, hi)`` of a sweep and measure them.

    ``out``, a buffer of at least ``hi - lo`` rows, receives the rows' outputs;
    without it they are not kept. Returns ``(metrics (n, 17), diverged_at (n,),
    feasible (n,))``. This is the function a Dask task runs.
    """
    keep = out is not None
    if out is None:
        out = _scratch(plan, hi - lo)
    return _simulate_block(_block_args(plan, lo, hi, out, keep), plan.custom)


def _piece(plan: _Plan, rows: int) -> int:
    """Rows per piece of a block of ``rows`` rows, for numba's thread count now."""
    workers = numba.get_num_threads()
    return max(1, min(PIECE_ROWS, -(-rows // workers),
                      MAX_BLOCK_SAMPLES // (workers * plan.prof.ref.size)))


def _scratch(plan: _Plan, rows: int) -> np.ndarray:
    """Output scratch for blocks of up to ``rows`` rows whose outputs are not kept.

    The built-in kernel measures each piece of rows as soon as it has simulated
    it, so it needs one piece per thread (at most MAX_BLOCK_SAMPLES samples in
    all); a user law's kernel needs the whole block.
    """
    if plan.custom is None:
        rows = numba.get_num_threads() * _piece(plan, rows)
    return np.empty((rows, plan.prof.ref.size, len(K.OUT_FIELDS)))


def _block_args(plan: _Plan, lo: int, hi: int, out: np.ndarray, keep: bool) -> tuple:
    """Arguments of :func:`~ctrlsim.fastmetrics.rollout_metrics` for rows
    ``[lo, hi)`` (the Python part of a block, which holds the GIL)."""
    n = hi - lo
    workers = numba.get_num_threads()
    piece = _piece(plan, n) if keep else out.shape[0] // workers
    pp, cp = _block_inputs(plan, lo, hi)
    return (pp, cp, plan.prof, out[:n] if keep else out, keep, np.empty(n, dtype=np.int64),
            np.empty(n, dtype=np.bool_), plan.t, plan.i0, plan.i1, plan.t0,
            np.empty((n, N_METRICS)), workers, piece)


def _simulate_block(args: tuple, custom: CustomController | None):
    """Run a block from its :func:`_block_args`: ``(metrics, diverged_at, feasible)``."""
    pp, cp, prof, out, keep, div, feas, t, i0, i1, t0, res, _, _ = args
    if custom is None:  # one compiled call: the worker thread takes the GIL once a block
        rollout_metrics(*args)
    else:  # a user law has its own batch kernel, on the whole block
        custom.kernels()[1](pp, cp, prof, out[:pp.shape[0]], div, feas)
        block_metrics(t, out, prof.ref, div, i0, i1, t0, res)
    return res, div, feas


def _block_rows(plan: _Plan, lo: int, hi: int, metrics: np.ndarray, div_at: np.ndarray):
    """The arguments of ``sweep(on_block=...)`` for rows ``[lo, hi)``."""
    idx = np.unravel_index(np.arange(lo, hi), plan.shape)
    values = {n: np.asarray(a, dtype=float)[i] for n, a, i in zip(plan.names, plan.axes, idx)}
    cols = {m: metrics[lo:hi, j] for j, m in enumerate(METRIC_KEYS)}
    for view in cols.values():  # views of the result: a callback must not change it
        view.flags.writeable = False
    return lo, hi, values, cols, div_at[lo:hi] >= 0


# Blocks queued ahead for the worker thread. With one, the worker slept
# between blocks until this thread handed it the next (~10 ms a block when the
# CSV writing kept this thread's core busy and the wake-up waited for it).
_IN_FLIGHT = 2


def _run_local(plan: _Plan, blocks: list[tuple[int, int]], finished, keep: bool) -> None:
    """Run the blocks here, the next ones computing while finished ones are handed on.

    The compiled kernels release the GIL, so a worker thread simulates blocks
    while this thread passes each finished one to ``finished(lo, hi, out,
    metrics, diverged_at, feasible)`` (CSV, progress). The next
    ``_IN_FLIGHT`` blocks are always queued, so the worker never waits for
    this thread to hand it work. With ``keep`` every block gets its own output
    array (``finished`` keeps it); without, one scratch array serves all blocks
    (``out`` is then None).
    """
    if not blocks:
        return
    scratch = None if keep else _scratch(plan, max(hi - lo for lo, hi in blocks))

    def submit(pool, lo, hi):
        out = scratch if scratch is not None else np.empty(
            (hi - lo, plan.prof.ref.size, len(K.OUT_FIELDS)))
        # The inputs are made here: the worker then runs compiled code only.
        job = pool.submit(_simulate_block, _block_args(plan, lo, hi, out, keep), plan.custom)
        return None if scratch is not None else out, job

    # numba's thread count is per calling thread: the worker takes the caller's.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrlsim-sweep",
                            initializer=numba.set_num_threads,
                            initargs=(numba.get_num_threads(),)) as pool:
        jobs = deque(submit(pool, *blocks[k]) for k in range(min(_IN_FLIGHT, len(blocks))))
        try:
            for k, (lo, hi) in enumerate(blocks):
                out, job = jobs.popleft()
                m, d, f = job.result()
                if k + _IN_FLIGHT < len(blocks):
                    jobs.append(submit(pool, *blocks[k + _IN_FLIGHT]))
                finished(lo, hi, out, m, d, f)
        except BaseException:
            for _, job in jobs:
                job.cancel()  # an interrupt waits only for the block already running
            raise


def _trajectories(scenario, base, plan, lo, hi, out, div):
    """Trajectory objects of a block (``keep_trajectories``), built row by row."""
    idx = np.unravel_index(np.arange(lo, hi), plan.shape)
    trajs = []
    for r in range(hi - lo):
        setting = {n: plan.axes[j][idx[j][r]].item() for j, n in enumerate(plan.names)}
        ctl = _set_controller(base, setting, scenario.plant.preset)
        changes = {n: v for n, v in setting.items() if n not in CONTROLLER_PARAMS}
        plant = scenario.plant.with_(**changes) if changes else scenario.plant
        trajs.append(make_trajectory(replace(scenario, plant=plant), ctl, plan.prof.ref,
                                     out[r], int(div[r])))
    return trajs


# Seconds for connecting to a scheduler address, handshake included (Dask's own
# timeout covers the TCP connect only: a port that accepts and never answers,
# e.g. a dashboard, would hang the sweep).
CONNECT_DEADLINE = 20.0


def _connect(scheduler):
    """``(client, owned)`` for a scheduler address or client, checked before any work."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ParameterError("scheduler", "needs Dask: pip install 'ctrlsim[dask]'") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if not isinstance(scheduler, str):
        raise ParameterTypeError("scheduler", "must be an address such as tcp://HOST:PORT, "
                                 f"or a dask.distributed.Client, got "
                                 f"{type(scheduler).__name__}")
    outcome: list = []

    def connect() -> None:
        try:
            outcome.append(Client(scheduler, timeout="10s"))
        except BaseException as exc:  # noqa: BLE001 - reported below, whatever it is
            outcome.append(exc)

    # A daemon thread: if the handshake never ends, it must not keep the process alive.
    worker = threading.Thread(target=connect, name="ctrlsim-dask-connect", daemon=True)
    worker.start()
    worker.join(CONNECT_DEADLINE)
    hint = " (a Dask scheduler address such as tcp://HOST:8786?"
    hint += " tls:// needs scheduler=Client(ADDRESS, security=...))" \
        if scheduler.startswith("tls://") else ")"
    if not outcome:
        raise ParameterError("scheduler", f"no Dask scheduler answered at {scheduler} "
                             f"within {CONNECT_DEADLINE:g} s{hint}")
    if isinstance(outcome[0], BaseException):
        exc = outcome[0]
        raise ParameterError("scheduler", f"cannot connect to {scheduler}: "
                             f"{type(exc).__name__}: {exc}{hint}") from None
    return outcome[0], True


def _identity(x):
    return x


def _run_dask(plan, client, blocks, done, sink) -> None:
    """Run the blocks as Dask tasks; hand them to ``done``/``sink`` in grid order."""
    from dask.distributed import as_completed

    futures = []
    try:
        # Unique per call: a cancelled earlier run on the same client keeps no claim on keys.
        key = f"{plan.fingerprint[:12]}-{uuid.uuid4().hex[:8]}"
        # The plan as a task, not scattered data: if every worker holding it dies,
        # the scheduler computes it again (scattered data would be lost for good).
        plan_f = client.submit(_identity, plan, key=f"ctrlsim-plan-{key}")
        futures = [client.submit(run_block, plan_f, lo, hi, key=f"ctrlsim-block-{key}-{lo}")
                   for lo, hi in blocks]
        bounds = dict(blocks)
        waiting: dict[int, tuple] = {}
        order = [lo for lo, _ in blocks]
        nxt = 0
        for fut in as_completed(futures):
            lo = int(fut.key.rsplit("-", 1)[1])
            try:
                waiting[lo] = fut.result()
            except Exception as exc:  # a task or the cluster failed: no partial table
                first = (str(exc).splitlines() or [""])[0]
                failed = OutputError(
                    f"the Dask sweep failed at rows {lo}-{bounds[lo]}: "
                    f"{type(exc).__name__}: {first}" + (
                        f"; {sink.path} holds the finished blocks (--resume, or "
                        "resume=True, continues it)" if sink is not None else ""))
                exc.__traceback__ = None  # it holds this frame, and so the futures
                raise failed from None
            fut.release()
            # In grid order, so the CSV is always a prefix of the table.
            while nxt < len(order) and order[nxt] in waiting:
                lo = order[nxt]
                m, d, f = waiting.pop(lo)
                if sink is not None:
                    sink.write(lo, bounds[lo], m, d)
                done(lo, bounds[lo], m, d, f)
                nxt += 1
    finally:
        for fut in futures:   # nothing of this sweep stays pinned on the cluster
            if not fut.done():
                fut.cancel()
            fut.release()
        if futures:
            plan_f.release()


def _csv_rows(params: list[np.ndarray], diverged: np.ndarray, metrics: np.ndarray) -> str:
    """CSV lines ``params..., diverged, metrics...`` (no final newline): floats
    in their shortest round-trip form, flags ``True``/``False``.

    orjson (Ryu) formats the floats ~17x faster than Python's ``repr``, which
    took ~1.2 s of a 100 000-row sweep on the thread that also feeds the
    kernel. Its text differs from ``repr`` only in notation (``0.00001`` for
    ``1e-05``), and it writes non-finite floats as ``null``: those are put back
    as ``nan``, ``inf``, ``-inf``, in order.
    """
    if not diverged.size:
        return ""
    lead, tail = (_csv_floats(np.column_stack(params)), _csv_floats(metrics))
    flags = ["True" if d else "False" for d in diverged.tolist()]
    return "\n".join(map(",".join, zip(lead, flags, tail)))


def _csv_floats(x: np.ndarray) -> list[str]:
    """The rows of the 2-D float array ``x`` as CSV lines (see :func:`_csv_rows`)."""
    # A JSON array of arrays laid out as CSV: no token contains a comma or bracket.
    text = orjson.dumps(np.ascontiguousarray(x, dtype=np.float64),
                        option=orjson.OPT_SERIALIZE_NUMPY).decode()[2:-2]
    bad = x[~np.isfinite(x)].tolist()  # row by row, as the nulls appear
    if bad:
        tokens = ["nan" if v != v else ("inf" if v > 0 else "-inf") for v in bad]
        text = "".join(itertools.chain.from_iterable(zip(text.split("null"), tokens + [""])))
    return text.split("],[")


def _lock(fh, path: Path) -> None:
    """Hold an exclusive advisory lock on the open file ``fh`` until it is closed
    (POSIX ``flock``; where there is none, e.g. Windows or some NFS mounts, no lock)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ParameterError("--csv", f"{path} is being written by another sweep (locked); "
                             "wait for it or use another file") from None
    except OSError:
        return


class _CsvSink:
    """The sweep table as a CSV that grows by finished blocks, in grid order.

    Next to it, ``<csv>.sweep-state`` (JSON: fingerprint, rows, block) marks it
    unfinished; it is removed when the sweep completes.
    """

    def __init__(self, path, plan: _Plan, resume: bool) -> None:
        self.path = Path(path)
        self.state = Path(str(self.path) + ".sweep-state")
        self.plan, self.resume, self.fh = plan, resume, None
        self.header = list(plan.names) + ["diverged"] + list(METRIC_KEYS)

    def _state(self) -> dict:
        return {"fingerprint": self.plan.fingerprint, "rows": self.plan.rows,
                "block": self.plan.block}

    def open(self, metrics: np.ndarray, div_at: np.ndarray) -> int:
        """Start the file (or continue it); returns the first row still to compute.

        The file stays locked (``flock``, POSIX) while the sweep runs, so a second
        sweep on it (a requeued job, a job array) is refused instead of interleaving
        rows; an unfinished sweep's file is only ever continued (``--resume``).
        """
        from .files import atomic_write

        if not self.resume and self.state.exists():  # before the file is touched
            raise ParameterError("--csv", f"{self.path} holds an unfinished sweep "
                                 f"({self.state.name} is next to it): give --resume to "
                                 "continue it, or delete both files to start over")
        self.fh = self._open("a")
        _lock(self.fh, self.path)
        if self.resume and self.path.stat().st_size > 0:
            return self._read_finished(metrics, div_at)
        with atomic_write(self.state, "--csv", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self._state()))
        try:
            self.fh.truncate(0)
        except OSError as exc:
            raise self._failed(exc) from None
        self._write(",".join(self.header) + "\n")
        return 0

    def _open(self, mode: str):
        try:
            return open(self.path, mode, newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise self._failed(exc) from None

    def _write(self, text: str) -> None:
        try:
            self.fh.write(text)
            self.fh.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(f"--csv {self.path}: cannot write ({exc.strerror or exc})")

    def _read_finished(self, metrics, div_at) -> int:
        """Check the finished blocks against the sweep and load them; returns their rows.

        Reads block by block (memory stays flat in the file's size) and cuts the
        file after the last complete block.
        """
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ParameterError("--resume", f"{self.path} is not an unfinished sweep "
                                 f"(no {self.state.name} next to it)") from None
        except (OSError, ValueError) as exc:
            raise ParameterError("--resume", f"cannot read {self.state}: {exc}") from None
        if state != self._state():
            raise ParameterError("--resume", f"{self.path} belongs to a different sweep "
                                 "(scenario, controller, grid or version differ)")
        plan, done = self.plan, 0
        with open(self.path, "rb") as fh:
            head = fh.readline()
            if head.rstrip(b"\n").decode("utf-8", "replace") != ",".join(self.header) \
                    or not head.endswith(b"\n"):
                raise ParameterError("--resume", f"{self.path}: the header does not match")
            keep = len(head)
            while done < plan.rows:
                n = min(plan.block, plan.rows - done)
                lines = list(itertools.islice(fh, n))
                if len(lines) < n or not lines[-1].endswith(b"\n"):
                    break  # an unfinished block: computed again
                self._load_block(lines, done, metrics, div_at)
                done += n
                keep += sum(map(len, lines))
        with open(self.path, "r+b") as fh:
            fh.truncate(keep)
        return done

    def _load_block(self, lines: list[bytes], lo: int, metrics, div_at) -> None:
        """Parse the CSV lines of rows ``lo...`` into ``metrics``/``div_at``, checking that
        each row is whole and is the sweep's grid point."""
        plan, k, width = self.plan, len(self.plan.names), len(self.header)
        hi = lo + len(lines)
        ok = np.array([line.count(b",") == width - 1 for line in lines])
        words = [line.split(b",", k + 1)[k:k + 1] for line in lines]  # the diverged flags
        ok &= np.array([w in ([b"True"], [b"False"]) for w in words])
        text = b"".join(lines)
        for word in (b"True", b"False"):  # the flag column as a number for the parser
            text = text.replace(b"," + word + b",", b",0,")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy warns on text it cannot parse
                values = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=float, ndmin=2)
        except (ValueError, DeprecationWarning, UserWarning):
            values = None
        if values is None or values.shape != (hi - lo, width):
            bad = int(np.argmin(ok)) if not ok.all() else self._first_unparsable(lines)
            raise ParameterError("--resume", f"{self.path}: row {lo + bad + 1} is not the "
                                 "sweep's grid point or is damaged")
        idx = np.unravel_index(np.arange(lo, hi), plan.shape)
        for j in range(k):
            ok &= values[:, j] == plan.axes[j][idx[j]]
        if not ok.all():
            raise ParameterError("--resume", f"{self.path}: row {lo + int(np.argmin(ok)) + 1}"
                                 " is not the sweep's grid point or is damaged")
        metrics[lo:hi] = values[:, k + 1:]
        div_at[lo:hi] = np.where([w == [b"True"] for w in words], 0, -1)

    @staticmethod
    def _first_unparsable(lines: list[bytes]) -> int:
        """Index of the first line with a field that is neither a float nor a flag."""
        for i, line in enumerate(lines):
            try:
                [float(x) for x in line.split(b",") if x not in (b"True", b"False")]
            except ValueError:
                return i
        return 0

    def write(self, lo: int, hi: int, metrics: np.ndarray, div_at: np.ndarray) -> None:
        idx = np.unravel_index(np.arange(lo, hi), self.plan.shape)
        params = [self.plan.axes[j][idx[j]].astype(float)
                  for j in range(len(self.plan.names))]
        self._write(_csv_rows(params, div_at >= 0, metrics) + "\n")

    def finish(self) -> None:
        self.fh.close()
        self.state.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fh is not None and not self.fh.closed:
            self.fh.close()


def pack_controllers(controllers) -> np.ndarray:
    """Controller vectors of several controllers as one (B, L) array.

    Rows are padded with zeros to the longest layout, so one batch can mix
    controllers of different laws.
    """
    rows = [c.pack() for c in controllers]
    width = max(r.size for r in rows)
    out = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, :r.size] = r
    return out


def _check_params(scenario: Scenario, params: Mapping[str, Sequence[float]], progress=None,
                  keep_trajectories: bool = False):
    """Validate the grid and its rows and budget its work, before anything is allocated.

    Returns the names, the axes and the packed plant of every combination of
    the plant axes (C order), shape (P, N_PLANT).
    """
    from .limits import MAX_SWEEP_RUNS, check_sweep

    if not isinstance(params, Mapping):
        raise ParameterTypeError("params", "must be a mapping of parameter name to values, "
                                 f"got {type(params).__name__}")
    if progress is not None and not callable(progress):
        raise ParameterTypeError("progress", "must be callable(done, total) or None")
    if not params:
        raise ParameterError("sweep", "give at least one parameter")
    allowed = sweepable(scenario.plant.preset)
    names, axes = [], []
    for name, values in params.items():
        if name not in allowed:
            raise ParameterError("sweep", f"cannot sweep {name!r} "
                                 f"(sweepable: {', '.join(allowed)})")
        if isinstance(values, (str, bytes)):
            raise ParameterTypeError(name, "needs a list of numbers, not a string")
        if hasattr(values, "__len__") and len(values) > MAX_SWEEP_RUNS:
            raise ParameterError(name, f"at most {MAX_SWEEP_RUNS} values")
        arr = np.atleast_1d(np.asarray(values))
        if arr.dtype.kind not in "iuf":
            raise ParameterTypeError(name, f"needs numbers, got {arr.dtype} values")
        arr = arr.astype(float)
        if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ParameterError(name, "needs a non-empty list of finite numbers")
        if name == "gear":
            if np.any(arr != np.round(arr)):
                raise ParameterError(name, f"takes whole numbers, got {arr.tolist()}")
            arr = arr.astype(int)
        names.append(name)
        axes.append(arr)
    # Python integers: 65536**4 rows is 2**64, not a wrapped 0.
    check_sweep([a.size for a in axes], scenario.n_steps + 1, scenario.work, keep_trajectories)
    # Every plant a row will use, validated (with the payload timeline) before running.
    plant_axes = [(n, a) for n, a in zip(names, axes) if n not in CONTROLLER_PARAMS]
    packed = []
    for row in itertools.product(*(a.tolist() for _, a in plant_axes)):
        setting = dict(zip((n for n, _ in plant_axes), row))
        try:
            plant = scenario.plant.with_(**setting) if setting else scenario.plant
            scenario.check_mass(plant.mass)
        except ParameterError as exc:
            where = ", ".join(f"{n} = {v:g}" for n, v in setting.items())
            raise ParameterError(exc.key, f"{exc.reason} (in the sweep row {where})") from None
        packed.append(plant.pack())
    return tuple(names), tuple(axes), np.array(packed)


def _set_controller(base, setting: dict, preset: str):
    gains = {n: float(v) for n, v in setting.items() if n in GAIN_NAMES}
    if isinstance(base, CustomController) or getattr(base, "kind", "") == "mlp":
        if gains or "alpha" in setting:
            raise ParameterError("sweep", f"a {base.kind} controller has no gains to sweep")
        return base
    if "alpha" in setting:
        values = {n: getattr(base, n) for n in GAIN_NAMES}
        base = LeakyReLUController(alpha=float(setting["alpha"]), **values)
    return replace(base, **gains) if gains else base

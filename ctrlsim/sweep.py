"""Parameter sweeps: many closed-loop runs of one scenario on all cores."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import kernels as K
from .controllers import (
    GAIN_NAMES,
    Controller,
    CustomController,
    LeakyReLUController,
    as_controller,
)
from .metrics import METRIC_KEYS
from .plant import PRESET_FIELDS
from .scenario import Scenario, as_scenario
from .simulate import Trajectory, check_setup, make_trajectory, warn_infeasible_start
from .validation import ParameterError

__all__ = ["sweep", "SweepResult", "sweepable"]

CONTROLLER_PARAMS = GAIN_NAMES + ("alpha",)
# Rows per kernel call: large enough to keep both cores busy, small enough
# for a progress bar to move.
_CHUNK = 16


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
    trajectories : list of Trajectory
    """

    names: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    values: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    diverged: np.ndarray
    trajectories: list[Trajectory]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    def grid(self, metric: str) -> np.ndarray:
        """A metric reshaped to the grid."""
        return self.metrics[metric].reshape(self.shape)

    def rows(self) -> list[dict[str, float]]:
        """One dict per grid point: parameters, ``diverged`` and metrics."""
        return [{**{n: float(self.values[n][i]) for n in self.names},
                 "diverged": bool(self.diverged[i]),
                 **{m: float(self.metrics[m][i]) for m in METRIC_KEYS}}
                for i in range(self.diverged.size)]


def sweep(scenario: Scenario, params: Mapping[str, Sequence[float]],
          controller: Controller | CustomController | None = None,
          progress: Callable[[int, int], None] | None = None) -> SweepResult:
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
        Called after each chunk of rows.

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
    names, axes = _check_params(scenario, params, progress)
    base = scenario.resolved_controller(controller)
    rows = list(itertools.product(*axes))
    ctls, plants = [], []
    for row in rows:
        setting = dict(zip(names, row))
        ctls.append(_set_controller(base, setting, scenario.plant.preset))
        plant_changes = {n: v for n, v in setting.items() if n not in CONTROLLER_PARAMS}
        plants.append(scenario.plant.with_(**plant_changes) if plant_changes
                      else scenario.plant)
    check_setup(scenario, ctls)
    prof = scenario.pack()
    pp = np.array([p.pack() for p in plants])
    cp = pack_controllers(ctls)
    b, n1 = len(rows), prof.ref.size
    out = np.empty((b, n1, len(K.OUT_FIELDS)))
    div = np.empty(b, dtype=np.int64)
    feas = np.empty(b, dtype=np.bool_)
    batch = base.kernels()[1]
    for lo in range(0, b, _CHUNK):
        hi = min(lo + _CHUNK, b)
        batch(pp[lo:hi], cp[lo:hi], prof, out[lo:hi], div[lo:hi], feas[lo:hi])
        if progress is not None:
            progress(hi, b)
    if not feas.all():
        warn_infeasible_start(scenario)
    trajs = [make_trajectory(replace(scenario, plant=plants[i]), ctls[i], prof.ref,
                             out[i], int(div[i])) for i in range(b)]
    per_row = [tr.metrics() for tr in trajs]
    return SweepResult(
        names=names, axes=tuple(np.asarray(a, dtype=float) for a in axes),
        values={n: np.array([r[j] for r in rows], dtype=float) for j, n in enumerate(names)},
        metrics={m: np.array([r[m] for r in per_row]) for m in METRIC_KEYS},
        diverged=div >= 0, trajectories=trajs)


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


def _check_params(scenario: Scenario, params: Mapping[str, Sequence[float]], progress=None):
    """Validate the grid and its rows and budget its work, before anything is allocated."""
    from .limits import MAX_SWEEP_RUNS, check_sweep
    from .validation import ParameterError, ParameterTypeError

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
    check_sweep([a.size for a in axes], scenario.n_steps + 1, scenario.work, _CHUNK)
    # Every plant a row will use, validated (with the payload timeline) before running.
    plant_axes = [(n, a) for n, a in zip(names, axes) if n not in CONTROLLER_PARAMS]
    for row in itertools.product(*(a.tolist() for _, a in plant_axes)):
        setting = dict(zip((n for n, _ in plant_axes), row))
        try:
            plant = scenario.plant.with_(**setting)
            scenario.check_mass(plant.mass)
        except ParameterError as exc:
            where = ", ".join(f"{n} = {v:g}" for n, v in setting.items())
            raise ParameterError(exc.key, f"{exc.reason} (in the sweep row {where})") from None
    return tuple(names), tuple(axes)


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

"""Step-response and tracking metrics.

Step metrics are computed on the normalised response
``yn = (y - initial) / (final - initial)``, so a change from 20 to 21 m/s
measures like one from 0 to 1, and a decrease like an increase. Crossing
times are interpolated linearly between samples. Anything that cannot be
measured (flat response, never settled, never rose) is NaN, never an
exception.
"""

from __future__ import annotations

import math

import numpy as np

from .validation import ParameterError, ParameterTypeError, finite_float

__all__ = ["step_info", "tracking_metrics", "run_metrics", "metric_label", "METRIC_INFO",
           "STEP_KEYS", "TRACKING_KEYS", "METRIC_KEYS"]

STEP_KEYS = ("rise_time", "settling_time", "settling_min", "settling_max",
             "overshoot", "undershoot", "peak", "peak_time",
             "steady_state_value", "steady_state_error")
TRACKING_KEYS = ("iae", "ise", "itae", "rms_error", "max_abs_error",
                 "control_effort", "energy")
METRIC_KEYS = STEP_KEYS + TRACKING_KEYS

# The one table of names and units, for CLI tables and plot axes:
# key -> (short name, long name, unit).
METRIC_INFO = {
    "rise_time": ("rise", "rise time", "s"),
    "settling_time": ("settling", "settling time", "s"),
    "settling_min": ("settling min", "settling min", "m/s"),
    "settling_max": ("settling max", "settling max", "m/s"),
    "overshoot": ("overshoot", "overshoot", "%"),
    "undershoot": ("undershoot", "undershoot", "%"),
    "peak": ("peak", "peak speed", "m/s"),
    "peak_time": ("peak time", "peak time", "s"),
    "steady_state_value": ("final", "final speed", "m/s"),
    "steady_state_error": ("final err", "steady-state error", "m/s"),
    "iae": ("IAE", "IAE", "m"),
    "ise": ("ISE", "ISE", "m²/s"),
    "itae": ("ITAE", "ITAE", "m·s"),
    "rms_error": ("RMS err", "RMS error", "m/s"),
    "max_abs_error": ("max|e|", "max |error|", "m/s"),
    "control_effort": ("effort", "control effort", "command·s"),
    "energy": ("energy", "traction energy", "J"),
}


def metric_label(key: str, short: bool = False) -> str:
    """``"settling time [s]"`` (or ``"settling [s]"`` when ``short``) for a metric key."""
    if key not in METRIC_INFO:
        return key
    brief, full, unit = METRIC_INFO[key]
    return f"{brief if short else full} [{unit}]"


def step_info(t, y, initial: float | None = None, final: float | None = None,
              settling_threshold: float = 0.02,
              rise_limits: tuple[float, float] = (0.1, 0.9)) -> dict[str, float]:
    """Step-response characteristics of sampled data.

    Parameters
    ----------
    t, y : array_like
        Sample times (s, increasing) and response.
    initial : float, optional
        Value before the step (default ``y[0]``).
    final : float, optional
        Target value (default: the last sample, python-control's convention).
    settling_threshold : float
        Half-width of the settling band as a fraction of the step size.
    rise_limits : (float, float)
        Fractions of the step between which the rise time is measured.

    Returns
    -------
    dict
        ``rise_time``: from the first crossing of ``rise_limits[0]`` to the
        first of ``rise_limits[1]``; ``settling_time``: last entry into the
        band (NaN if outside it at the end); ``settling_min``/``max``: extremes
        of ``y`` from the end of the rise on, band target included;
        ``overshoot``/``undershoot``: percent of the step beyond the target /
        against the step direction; ``peak``/``peak_time``: ``y`` at its
        largest excursion in the step direction; ``steady_state_value``:
        ``final``; ``steady_state_error``: ``final - y[-1]``. Times are
        measured from ``t[0]``.

    Notes
    -----
    For a step starting at 0 this agrees with ``control.step_info``
    (overshoot, peak and steady state exactly; rise and settling time within
    one sample, ours being interpolated). For a step that does not start at 0
    python-control's numbers are relative to 0 and ours to the step.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 10, 1001)
    >>> info = step_info(t, 20 + 1 - np.exp(-t))       # 20 -> 21 m/s
    >>> round(info["rise_time"], 3)                    # ln(9), like 0 -> 1
    2.197
    """
    t, y = _samples(t, y)
    threshold = finite_float("settling_threshold", settling_threshold)
    if not 0 < threshold < 1:
        raise ParameterError("settling_threshold", f"must be in (0, 1), got {threshold}")
    if isinstance(rise_limits, (str, bytes)) or not hasattr(rise_limits, "__len__") \
            or len(rise_limits) != 2:
        raise ParameterTypeError("rise_limits", f"must be a pair (low, high), "
                                 f"got {rise_limits!r}")
    lo, hi = (finite_float("rise_limits", x) for x in rise_limits)
    if not 0 <= lo < hi <= 1:
        raise ParameterError("rise_limits", f"must satisfy 0 <= low < high <= 1, "
                             f"got ({lo}, {hi})")
    y0 = float(y[0]) if initial is None else finite_float("initial", initial)
    yf = float(y[-1]) if final is None else finite_float("final", final)
    out = dict.fromkeys(STEP_KEYS, math.nan)
    out["steady_state_value"] = yf
    out["steady_state_error"] = yf - float(y[-1])
    delta = yf - y0
    if not (np.all(np.isfinite(y)) and math.isfinite(delta)) or delta == 0:
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        yn = (y - y0) / delta
    if not np.all(np.isfinite(yn)):
        return out  # a step too small to normalise (e.g. subnormal): no step metrics
    tt = t - t[0]
    t_lo, t_hi = _first_crossing(tt, yn, lo), _first_crossing(tt, yn, hi)
    out["rise_time"] = t_hi - t_lo
    out["settling_time"] = _settling_time(tt, yn, threshold)
    i_hi = int(np.argmax(yn >= hi)) if np.any(yn >= hi) else None
    if i_hi is not None:
        tail = y[i_hi:]
        out["settling_min"] = min(float(tail.min()), yf)
        out["settling_max"] = max(float(tail.max()), yf)
    i_pk = int(np.argmax(yn))
    out["overshoot"] = 100.0 * max(float(yn[i_pk]) - 1.0, 0.0)
    out["undershoot"] = 100.0 * max(-float(yn.min()), 0.0) + 0.0  # + 0.0: never -0.0
    out["peak"] = float(y[i_pk])
    out["peak_time"] = float(tt[i_pk])
    return out


def tracking_metrics(t, error, applied, force, speed) -> dict[str, float]:
    """Whole-run tracking metrics.

    Parameters
    ----------
    t : array_like
        Sample times, s (uniform).
    error : array_like
        Reference minus speed, m/s.
    applied : array_like
        Command held over each sample interval (zero-order hold).
    force, speed : array_like
        Actuator force (N) and speed (m/s).

    Returns
    -------
    dict
        ``iae`` (m), ``ise`` (m^2/s), ``itae`` (m s): integrals of ``|e|``,
        ``e^2`` and ``(t - t0)|e|`` (trapezoidal); ``rms_error`` and
        ``max_abs_error`` (m/s); ``control_effort``: integral of ``|applied|``
        over the held intervals (command units times s); ``energy``: integral
        of the positive traction power ``max(F v, 0)``, J.
    """
    t, e = _samples(t, error, "error")
    a, f, v = (_samples(t, x, name)[1] for x, name in ((applied, "applied"), (force, "force"),
                                                          (speed, "speed")))
    span = t[-1] - t[0]
    abs_e = np.abs(e)
    ise = _trapezoid(e * e, t)
    return {
        "iae": _trapezoid(abs_e, t),
        "ise": ise,
        "itae": _trapezoid((t - t[0]) * abs_e, t),
        "rms_error": math.sqrt(ise / span) if span > 0 else math.nan,
        "max_abs_error": float(abs_e.max()),
        "control_effort": float(np.sum(np.abs(a[:-1]) * np.diff(t))),
        "energy": _trapezoid(np.maximum(f * v, 0.0), t),
    }


def run_metrics(t: np.ndarray, speed: np.ndarray, reference: np.ndarray,
                applied: np.ndarray, force: np.ndarray,
                window: tuple[float, float] | None, control_period: float,
                diverged: bool = False) -> dict[str, float]:
    """Metrics of a simulated run against its set speed (docs/metrics.md).

    Step metrics are taken over ``window`` = ``(t_change, t_end)`` of the first
    set-speed change (``Scenario.step_window``), with ``initial`` the speed at
    the change and ``final`` the new set speed, times from the change; they
    are NaN for ``window=None`` (a holding or cycle reference).
    ``steady_state_value`` is the last speed sample and ``steady_state_error``
    the reference minus it. Tracking metrics cover the whole run. A diverged
    run gives NaN throughout.
    """
    out = dict.fromkeys(METRIC_KEYS, math.nan)
    if diverged:
        return out
    if window is not None:
        t0, t1 = window
        tol = 1e-9 * control_period
        sel = (t >= t0 - tol) & ((t < t1 - tol) | (t[-1] <= t1 + tol))
        if np.count_nonzero(sel) >= 2:
            ref = float(reference[sel][-1])
            out.update(step_info(t[sel], speed[sel], initial=speed[sel][0], final=ref))
            # Times count from the change, which may fall between samples.
            lag = float(t[sel][0]) - t0
            out["settling_time"] += lag
            out["peak_time"] += lag
    out["steady_state_value"] = float(speed[-1])
    out["steady_state_error"] = float(reference[-1] - speed[-1])
    out.update(tracking_metrics(t, reference - speed, applied, force, speed))
    return out


def _samples(t, y, y_name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``t`` (finite, strictly increasing, >= 2 samples) and ``y`` of the same shape."""
    try:
        t = np.asarray(t, dtype=float)
    except (TypeError, ValueError):
        raise ParameterTypeError("t", "must be an array of numbers") from None
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise ParameterTypeError(y_name, "must be an array of numbers") from None
    if t.ndim != 1 or t.size < 2:
        raise ParameterError("t", f"must be a 1-D array of >= 2 samples, got shape {t.shape}")
    if y.shape != t.shape:
        raise ParameterError(y_name, f"must have the shape of t {t.shape}, got {y.shape}")
    if not np.all(np.isfinite(t)):
        raise ParameterError("t", "must be finite")
    if np.any(np.diff(t) <= 0):
        raise ParameterError("t", "must be strictly increasing")
    return t, y


def _trapezoid(y: np.ndarray, t: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(t)))


def _first_crossing(t: np.ndarray, yn: np.ndarray, level: float) -> float:
    """Interpolated time at which ``yn`` first reaches ``level`` (NaN if never)."""
    above = yn >= level
    if not above.any():
        return math.nan
    i = int(np.argmax(above))
    if i == 0:
        return float(t[0])
    return _lerp_time(t, yn, i - 1, level)


def _settling_time(t: np.ndarray, yn: np.ndarray, threshold: float) -> float:
    """Interpolated time of the last entry into ``|yn - 1| < threshold``."""
    outside = np.abs(yn - 1.0) >= threshold
    if not outside.any():
        return float(t[0])
    i = int(np.flatnonzero(outside)[-1])
    if i == yn.size - 1:
        return math.nan
    edge = 1.0 + threshold if yn[i] > 1.0 else 1.0 - threshold
    return _lerp_time(t, yn, i, edge)


def _lerp_time(t: np.ndarray, yn: np.ndarray, i: int, level: float) -> float:
    """Time in [t[i], t[i+1]] where the segment of ``yn`` meets ``level``."""
    dy = yn[i + 1] - yn[i]
    w = 0.0 if dy == 0 else (level - yn[i]) / dy
    return float(t[i] + min(max(w, 0.0), 1.0) * (t[i + 1] - t[i]))

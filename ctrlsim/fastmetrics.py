"""Run metrics in compiled code, for many runs at once (sweeps).

:func:`block_metrics` computes, for every row of a kernel output block
(B, N + 1, 5), the same numbers as :func:`ctrlsim.metrics.run_metrics`
(``Trajectory.metrics()``), which stays the reference implementation. The
steps are the same floating-point operations in the same order; only the
sums differ: numpy adds pairwise, this module with Neumaier's compensated
sum, so the two agree to ~1e-15 relative (tested to 1e-12 on every key).

:func:`rollout_metrics` is a sweep block in one call: the lockstep batch
kernel and these metrics, piece by piece on every core.

Columns of the result are :data:`ctrlsim.metrics.METRIC_KEYS`, in order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import jitcache
from .kernels import _claim, _lockstep
from .metrics import METRIC_KEYS

jitcache.install()  # key this module's cache on the kernels it compiles in, too

__all__ = ["block_metrics", "rollout_metrics", "metric_settings", "N_METRICS", "PIECE_ROWS"]

N_METRICS = len(METRIC_KEYS)
(_RISE, _SETTLE, _SMIN, _SMAX, _OVER, _UNDER, _PEAK, _PEAK_T, _SSV, _SSE, _IAE, _ISE,
 _ITAE, _RMS, _MAXE, _EFFORT, _ENERGY) = range(N_METRICS)
assert METRIC_KEYS == ("rise_time", "settling_time", "settling_min", "settling_max",
                       "overshoot", "undershoot", "peak", "peak_time",
                       "steady_state_value", "steady_state_error", "iae", "ise", "itae",
                       "rms_error", "max_abs_error", "control_effort", "energy")

# Columns of the kernel output (kernels.OUT_FIELDS).
_SPEED, _FORCE, _APPLIED = 1, 2, 4
_THRESHOLD, _RISE_LO, _RISE_HI = 0.02, 0.1, 0.9  # run_metrics uses step_info's defaults


def metric_settings(scenario) -> tuple[np.ndarray, int, int]:
    """``(t, i0, i1)``: sample times and the samples ``[i0, i1)`` of the step window.

    ``i1 - i0 < 2`` (or no window) means no step metrics, as in ``run_metrics``;
    ``t0`` for the times is returned by :func:`step_start`.
    """
    t = scenario.time
    window = scenario.step_window()
    if window is None:
        return t, 0, 0
    t0, t1 = window
    tol = 1e-9 * scenario.control_period
    sel = (t >= t0 - tol) & ((t < t1 - tol) | (t[-1] <= t1 + tol))
    idx = np.flatnonzero(sel)
    if idx.size < 2:
        return t, 0, 0
    # t is increasing, so the selection is one contiguous range.
    return t, int(idx[0]), int(idx[-1]) + 1


def step_start(scenario) -> float:
    window = scenario.step_window()
    return 0.0 if window is None else float(window[0])


@njit(cache=True, inline="always")
def _add(s, c, x):
    """Neumaier's compensated sum: returns the new (sum, compensation)."""
    t = s + x
    if abs(s) >= abs(x):
        c += (s - t) + x
    else:
        c += (x - t) + s
    return t, c


@njit(cache=True)
def _lerp_time(tt, yn, i, level):
    dy = yn[i + 1] - yn[i]
    w = 0.0 if dy == 0 else (level - yn[i]) / dy
    return tt[i] + min(max(w, 0.0), 1.0) * (tt[i + 1] - tt[i])


@njit(cache=True)
def _first_crossing(tt, yn, level):
    for i in range(yn.shape[0]):
        if yn[i] >= level:
            if i == 0:
                return tt[0]
            return _lerp_time(tt, yn, i - 1, level)
    return math.nan


@njit(cache=True)
def _settling_time(tt, yn, threshold):
    n = yn.shape[0]
    last = -1
    for i in range(n - 1, -1, -1):
        if abs(yn[i] - 1.0) >= threshold:
            last = i
            break
    if last < 0:
        return tt[0]
    if last == n - 1:
        return math.nan
    edge = 1.0 + threshold if yn[last] > 1.0 else 1.0 - threshold
    return _lerp_time(tt, yn, last, edge)


@njit(cache=True)
def _step_metrics(t, y, yf, t0, res):
    """``step_info(t, y, initial=y[0], final=yf)`` plus the lag shift of run_metrics."""
    n = y.shape[0]
    y0 = y[0]
    delta = yf - y0
    if not math.isfinite(delta) or delta == 0:
        return
    for i in range(n):
        if not math.isfinite(y[i]):
            return
    yn = np.empty(n)
    tt = np.empty(n)
    for i in range(n):
        yn[i] = (y[i] - y0) / delta
        tt[i] = t[i] - t[0]
        if not math.isfinite(yn[i]):
            return  # a step too small to normalise: no step metrics (as metrics.step_info)
    res[_RISE] = _first_crossing(tt, yn, _RISE_HI) - _first_crossing(tt, yn, _RISE_LO)
    settle = _settling_time(tt, yn, _THRESHOLD)
    i_hi = -1
    for i in range(n):
        if yn[i] >= _RISE_HI:
            i_hi = i
            break
    if i_hi >= 0:
        lo = hi = y[i_hi]
        for i in range(i_hi + 1, n):
            lo = min(lo, y[i])
            hi = max(hi, y[i])
        res[_SMIN] = min(lo, yf)
        res[_SMAX] = max(hi, yf)
    i_pk = 0
    y_min = yn[0]
    for i in range(1, n):
        if yn[i] > yn[i_pk]:
            i_pk = i
        y_min = min(y_min, yn[i])
    res[_OVER] = 100.0 * max(yn[i_pk] - 1.0, 0.0)
    res[_UNDER] = 100.0 * max(-y_min, 0.0) + 0.0  # + 0.0: never -0.0
    res[_PEAK] = y[i_pk]
    lag = t[0] - t0
    res[_SETTLE] = settle + lag
    res[_PEAK_T] = tt[i_pk] + lag


@njit(cache=True)
def _row_metrics(t, out, ref, diverged, i0, i1, t0, res):
    res[:] = math.nan
    if diverged:
        return
    v = out[:, _SPEED]
    n = v.shape[0]
    if i1 - i0 >= 2:
        _step_metrics(t[i0:i1], v[i0:i1], ref[i1 - 1], t0, res)
    res[_SSV] = v[n - 1]
    res[_SSE] = ref[n - 1] - v[n - 1]
    # Tracking metrics, trapezoids as 0.5*(y[i+1] + y[i]) * (t[i+1] - t[i]).
    iae = ciae = ise = cise = itae = citae = eff = ceff = en = cen = 0.0
    e_prev = ref[0] - v[0]
    pw_prev = max(out[0, _FORCE] * v[0], 0.0)
    max_e = abs(e_prev)
    for i in range(1, n):
        dt = t[i] - t[i - 1]
        e = ref[i] - v[i]
        ae, ae_prev = abs(e), abs(e_prev)
        iae, ciae = _add(iae, ciae, 0.5 * (ae + ae_prev) * dt)
        ise, cise = _add(ise, cise, 0.5 * (e * e + e_prev * e_prev) * dt)
        itae, citae = _add(itae, citae, 0.5 * ((t[i] - t[0]) * ae + (t[i - 1] - t[0]) * ae_prev)
                           * dt)
        eff, ceff = _add(eff, ceff, abs(out[i - 1, _APPLIED]) * dt)
        pw = max(out[i, _FORCE] * v[i], 0.0)
        en, cen = _add(en, cen, 0.5 * (pw + pw_prev) * dt)
        max_e = max(max_e, ae) if not math.isnan(ae) else ae
        e_prev, pw_prev = e, pw
    span = t[n - 1] - t[0]
    res[_IAE] = iae + ciae
    res[_ISE] = ise + cise
    res[_ITAE] = itae + citae
    res[_RMS] = math.sqrt(res[_ISE] / span) if span > 0 else math.nan
    res[_MAXE] = max_e
    res[_EFFORT] = eff + ceff
    res[_ENERGY] = en + cen


@njit(cache=True, parallel=True, nogil=True)
def block_metrics(t, out, ref, diverged_at, i0, i1, t0, res):
    """Metrics of every row of a rollout block into ``res`` (B, N_METRICS).

    ``t`` (N + 1,) sample times; ``out`` (B', N + 1, 5) kernel output (only the
    first B rows are read); ``ref`` (N + 1,) set speed; ``diverged_at`` (B,)
    from the kernel; ``[i0, i1)`` the samples of the step window (fewer than
    2: no step metrics) and ``t0`` its start (see :func:`metric_settings`).
    """
    # Rows on all cores: single-threaded, this pass was 15 % of a sweep's time.
    for b in prange(res.shape[0]):
        _row_metrics(t, out[b], ref, diverged_at[b] >= 0, i0, i1, t0, res[b])


# Rows per piece of :func:`rollout_metrics` (at most): the rows a thread
# simulates and then measures while their outputs are still in its cache. 128
# keeps the lockstep's fixed cost per period small and leaves many pieces to
# share out, so the threads finish a call close together.
PIECE_ROWS = 128


@njit(cache=True, parallel=True, nogil=True)
def rollout_metrics(pp, cp, prof, out, keep, diverged_at, feasible, t, i0, i1, t0, res,
                    workers, piece):
    """``kernels.rollout_batch`` and then :func:`block_metrics` of its rows, in
    pieces of ``piece`` rows: each piece is measured by the thread that
    simulated it, straight after (one parallel region per block, not two, and
    the outputs are read back from cache).

    With ``keep``, ``out`` (B, N + 1, 5) receives every row's output; without,
    ``out`` is scratch of ``workers * piece`` rows and only the metrics ``res``
    (B, N_METRICS), ``diverged_at`` and ``feasible`` are kept, so memory does
    not grow with B. ``workers`` is numba's thread count: one worker per
    thread, each with its own scratch rows, taking pieces as it frees up.
    Every row equals :func:`ctrlsim.kernels.rollout` of it, bit for bit.
    """
    b = pp.shape[0]
    pieces = (b + piece - 1) // piece
    claimed = np.zeros(1, dtype=np.int64)
    for w in prange(workers):
        k = _claim(claimed)
        while k < pieces:
            lo = k * piece
            hi = min(lo + piece, b)
            o = out[lo:hi] if keep else out[w * piece:w * piece + hi - lo]
            _lockstep(pp[lo:hi], cp[lo:hi], prof, o, diverged_at[lo:hi], feasible[lo:hi])
            for r in range(hi - lo):
                _row_metrics(t, o[r], prof.ref, diverged_at[lo + r] >= 0, i0, i1, t0,
                             res[lo + r])
            k = _claim(claimed)

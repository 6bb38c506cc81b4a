"""Compiled kernels: the plant dynamics and the digital control loop.

This module is the ground floor of ctrlsim: it imports nothing from the rest of
the package, and it is the only place where the equations of motion and the
control laws are written. Everything else (``simulate``, ``sweep``, the
benchmarks) packs its inputs into plain float64 arrays and calls these kernels.

Array layouts
-------------
plant vector ``pp`` (see the ``P_*`` indices), controller vector ``cp`` (the
``C_*`` indices), road profile ``grade_x``/``grade_th`` (breakpoints and grade
in radians, piecewise linear, constant beyond the ends), ``events`` with one row
``(at, until, force, payload)`` per event, and per-sample arrays ``ref`` and
``noise`` of length N + 1.

Built-in laws are the piecewise-linear family ``phi(s) = s`` for ``s >= 0`` and
``alpha * s`` otherwise (ReLU: alpha = 0, linear: alpha = 1). A user law is
compiled into specialised copies of the same loop by :func:`specialise`.
"""

import math
import types

import numpy as np
from numba import njit, prange

__all__ = [
    "N_PLANT", "N_CTRL", "KIND_ROBOT", "KIND_CAR", "OUT_FIELDS",
    "actuator_force", "plant_interval", "equilibrium_command",
    "rollout", "rollout_batch", "specialise",
]

# Plant vector indices.
P_KIND, P_MASS, P_G, P_CR, P_DLIN, P_DQUAD, P_TAU = 0, 1, 2, 3, 4, 5, 6
P_CMD_LO, P_CMD_HI, P_GEAR_RATIO, P_TMAX, P_WMAX, P_BETA, P_BRAKE = (
    7, 8, 9, 10, 11, 12, 13)
N_PLANT = 14
KIND_ROBOT, KIND_CAR = 0.0, 1.0

# Controller vector indices.
C_ALPHA, C_KP, C_KI, C_KD, C_KAW, C_FF = 0, 1, 2, 3, 4, 5
N_CTRL = 6

# Columns of a rollout's output array.
OUT_FIELDS = ("position", "speed", "force", "command", "applied")

# Smoothing speed of the rolling-resistance sign function, m/s (DESIGN 3).
V_ROLL = 0.1
# Stage times are nudged this fraction of a substep inside the open substep,
# so an input that switches exactly on a substep boundary is seen as the value
# that holds during the substep (exact), not the one after it.
_STAGE_EPS = 1e-9


# --------------------------------------------------------------------------
# Plant
# --------------------------------------------------------------------------
# The right-hand side and its helpers are inlined into plant_interval: out of
# line, numba passes every array as a full struct on each of the 4 calls per
# substep (measured: ~1.3x faster per core; cold compile +1.5 s).
@njit(cache=True, inline="always")
def _interp_clamped(x, xp, fp):
    """Piecewise-linear interpolation, constant beyond the ends; 0 if empty."""
    n = xp.shape[0]
    if n == 0:
        return 0.0
    if math.isnan(x):  # a diverging state: propagate, so it gets flagged
        return x
    if x <= xp[0]:
        return fp[0]
    if x >= xp[n - 1]:
        return fp[n - 1]
    i = 1
    while xp[i] < x:
        i += 1
    w = (x - xp[i - 1]) / (xp[i] - xp[i - 1])
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


@njit(cache=True, inline="always")
def _events_at(t, events):
    """Total (payload kg, external force N) of the events active at time t."""
    payload = 0.0
    force = 0.0
    for j in range(events.shape[0]):
        if events[j, 0] <= t < events[j, 1]:
            force += events[j, 2]
            payload += events[j, 3]
    return payload, force


@njit(cache=True, inline="always")
def _smooth_sign(v):
    """``tanh(v / V_ROLL)``: the sign of v, smoothed over a few cm/s."""
    x = v / V_ROLL
    # Beyond |x| = 19.1 the correctly rounded tanh is exactly +-1: skip the call.
    if abs(x) > 19.1:
        return math.copysign(1.0, x)
    return math.tanh(x)


@njit(cache=True, inline="always")
def _motor_torque(omega, pp):
    """Engine torque curve of Astrom & Murray, N m, never negative."""
    x = omega / pp[P_WMAX] - 1.0
    return max(pp[P_TMAX] * (1.0 - pp[P_BETA] * x * x), 0.0)


@njit(cache=True, inline="always")
def actuator_force(a, v, pp):
    """Force target (N) the actuator produces for command ``a`` at speed ``v``."""
    if pp[P_KIND] == KIND_CAR:
        if a >= 0.0:
            gr = pp[P_GEAR_RATIO]
            return gr * _motor_torque(gr * v, pp) * a
        # Brakes oppose motion and cannot push a stopped car backwards: the
        # same smoothed sign as rolling resistance (exactly 1 above ~2 m/s).
        return pp[P_BRAKE] * a * _smooth_sign(v)
    return a


@njit(cache=True, inline="always")
def _resistance(v, theta, m, pp):
    """Rolling resistance plus linear and quadratic drag, N."""
    roll = pp[P_CR] * m * pp[P_G] * math.cos(theta) * _smooth_sign(v)
    return roll + pp[P_DLIN] * v + pp[P_DQUAD] * v * abs(v)


@njit(cache=True, inline="always")
def _derivatives(p, v, f, t, a, pp, grade_x, grade_th, grade_by_time, events):
    """Right-hand side (dp/dt, dv/dt, dF/dt) of the plant at time t."""
    theta = _interp_clamped(t if grade_by_time else p, grade_x, grade_th)
    payload, f_ext = _events_at(t, events)
    m = pp[P_MASS] + payload
    f_target = actuator_force(a, v, pp)
    if pp[P_TAU] > 0.0:
        df = (f_target - f) / pp[P_TAU]
    else:
        df = 0.0
        f = f_target
    dv = (f - _resistance(v, theta, m, pp) - m * pp[P_G] * math.sin(theta)
          + f_ext) / m
    return v, dv, df


@njit(cache=True)
def plant_interval(p, v, f, a, t0, dt, substeps, pp, grade_x, grade_th,
                   grade_by_time, events):
    """Integrate the plant over ``[t0, t0 + dt]`` with command ``a`` held.

    Classical RK4 with ``substeps`` equal substeps. Returns the new
    (position, speed, actuator force).
    """
    h = dt / substeps
    lo = _STAGE_EPS * h
    for j in range(substeps):
        ta = t0 + j * h
        k1p, k1v, k1f = _derivatives(p, v, f, ta + lo, a, pp, grade_x,
                                     grade_th, grade_by_time, events)
        k2p, k2v, k2f = _derivatives(p + 0.5 * h * k1p, v + 0.5 * h * k1v,
                                     f + 0.5 * h * k1f, ta + 0.5 * h, a, pp,
                                     grade_x, grade_th, grade_by_time, events)
        k3p, k3v, k3f = _derivatives(p + 0.5 * h * k2p, v + 0.5 * h * k2v,
                                     f + 0.5 * h * k2f, ta + 0.5 * h, a, pp,
                                     grade_x, grade_th, grade_by_time, events)
        k4p, k4v, k4f = _derivatives(p + h * k3p, v + h * k3v, f + h * k3f,
                                     ta + h - lo, a, pp, grade_x, grade_th,
                                     grade_by_time, events)
        p += h / 6.0 * (k1p + 2.0 * k2p + 2.0 * k3p + k4p)
        v += h / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v)
        f += h / 6.0 * (k1f + 2.0 * k2f + 2.0 * k3f + k4f)
    return p, v, f


@njit(cache=True)
def equilibrium_command(v0, pp, grade_x, grade_th, events):
    """Command that holds speed ``v0`` at t = 0, p = 0, and whether it is feasible.

    It balances resistance, gravity and the external force in effect at the
    start. The returned command is clipped to the actuator's range; the flag
    says whether clipping (or a dead engine) was needed.
    """
    theta = _interp_clamped(0.0, grade_x, grade_th)
    payload, f_ext = _events_at(0.0, events)
    m = pp[P_MASS] + payload
    f_req = _resistance(v0, theta, m, pp) + m * pp[P_G] * math.sin(theta) - f_ext
    # The actuator is linear in the command on each side of zero.
    unit = 1.0 if f_req >= 0.0 else -1.0
    gain = unit * actuator_force(unit, v0, pp)
    if gain > 0.0:
        a0 = f_req / gain
    else:
        a0 = 0.0 if f_req == 0.0 else unit * np.inf
    lo, hi = pp[P_CMD_LO], pp[P_CMD_HI]
    feasible = lo <= a0 <= hi
    return min(max(a0, lo), hi), feasible


# --------------------------------------------------------------------------
# Controller: built-in piecewise-linear family
# --------------------------------------------------------------------------
@njit(cache=True)
def controller_output(e, z, d, y, r, cp):
    """Pre-activation ``s`` and controller output ``u = phi(s)``."""
    s = cp[C_KP] * e + cp[C_KI] * z + cp[C_KD] * d + cp[C_FF] * r
    u = s if s >= 0.0 else cp[C_ALPHA] * s
    return s, u


@njit(cache=True)
def controller_preload(a0, v0, cp):
    """Integrator state and output of a controller that was holding ``a0``.

    ``z0 = (phi_inv(a0) - feedforward * v0) / ki`` (0 when ki = 0) and the
    output ``phi(phi_inv(a0))`` it was producing (DESIGN 4).
    """
    alpha = cp[C_ALPHA]
    s0 = a0 / alpha if (a0 < 0.0 and alpha > 0.0) else a0
    z0 = (s0 - cp[C_FF] * v0) / cp[C_KI] if cp[C_KI] != 0.0 else 0.0
    u0 = s0 if s0 >= 0.0 else alpha * s0
    return z0, u0


# --------------------------------------------------------------------------
# Closed loop
# --------------------------------------------------------------------------
@njit(cache=True)
def _finite_and_bounded(p, v, f, v_limit):
    return (math.isfinite(p) and math.isfinite(v) and math.isfinite(f)
            and abs(v) <= v_limit)


@njit(cache=True)
def rollout(pp, cp, v0, ref, noise, ts, substeps, grade_x, grade_th,
            grade_by_time, events, v_limit, out):
    """Simulate the sampled-data loop for ``len(ref) - 1`` control periods.

    Fills ``out`` (shape (N + 1, 5), columns :data:`OUT_FIELDS`) at the
    control instants. Returns ``(diverged_at, feasible_start)``: the index of
    the first sample whose plant state or controller output is non-finite, or
    whose speed exceeds ``v_limit``
    (-1 if none; from there on ``out`` holds NaN), and whether the actuator
    could hold the initial equilibrium.
    """
    n = ref.shape[0] - 1
    lo, hi = pp[P_CMD_LO], pp[P_CMD_HI]
    ki, kaw = cp[C_KI], cp[C_KAW]
    has_lag = pp[P_TAU] > 0.0
    a0, feasible = equilibrium_command(v0, pp, grade_x, grade_th, events)
    z, u0 = controller_preload(a0, v0, cp)
    p, v = 0.0, v0
    f = actuator_force(min(max(u0, lo), hi), v0, pp)
    e_prev = 0.0
    for k in range(n + 1):
        y = v + noise[k]
        e = ref[k] - y
        d = (e - e_prev) / ts if k > 0 else 0.0
        s, u = controller_output(e, z, d, y, ref[k], cp)
        if not (math.isfinite(u) and math.isfinite(z)):
            out[k:, :] = np.nan
            return k, feasible
        a = min(max(u, lo), hi)
        if ki != 0.0:
            z += ts * (e + (kaw / ki) * (a - s))
        out[k, 0] = p
        out[k, 1] = v
        out[k, 2] = f if has_lag else actuator_force(a, v, pp)
        out[k, 3] = u
        out[k, 4] = a
        if k == n:
            break
        p, v, f = plant_interval(p, v, f, a, k * ts, ts, substeps, pp,
                                 grade_x, grade_th, grade_by_time, events)
        if not _finite_and_bounded(p, v, f, v_limit):
            out[k + 1:, :] = np.nan
            return k + 1, feasible
        e_prev = e
    return -1, feasible


@njit(cache=True, parallel=True)
def rollout_batch(pp, cp, v0, ref, noise, ts, substeps, grade_x, grade_th,
                  grade_by_time, events, v_limit, out, diverged_at, feasible):
    """:func:`rollout` for each row of ``pp`` and ``cp`` (shape (B, ...)), in parallel.

    Fills ``out`` (B, N + 1, 5), ``diverged_at`` (B,) and ``feasible`` (B,).
    """
    for i in prange(pp.shape[0]):
        diverged_at[i], feasible[i] = rollout(
            pp[i], cp[i], v0, ref, noise, ts, substeps, grade_x, grade_th,
            grade_by_time, events, v_limit, out[i])


# --------------------------------------------------------------------------
# User-defined laws
# --------------------------------------------------------------------------
def specialise(law):
    """Compile ``(rollout, rollout_batch)`` with a user law in the loop.

    ``law(e, z, d, y, r) -> u`` must be a numba-jitted function of five
    floats: error, integrator state, error derivative, measured speed and
    reference. The loop body is the very same Python source as the built-in
    kernels; only the two controller hooks are rebound, so the physics is not
    written twice. These specialisations are compiled once per law and are not
    cached on disk (numba cannot cache closures).
    """

    @njit
    def output(e, z, d, y, r, cp):
        u = law(e, z, d, y, r)
        return u, u

    @njit
    def preload(a0, v0, cp):
        return 0.0, law(0.0, 0.0, 0.0, v0, v0)

    single = _rebind(rollout, controller_output=output,
                     controller_preload=preload)
    batch = _rebind(rollout_batch, rollout=single)
    return single, batch


_n_specialised = 0


def _rebind(dispatcher, **names):
    """Re-jit a kernel's Python source with some of its globals replaced."""
    py = dispatcher.py_func
    scope = dict(py.__globals__)
    scope.update(names)
    # A fresh name per specialisation: compiled symbols are named after the
    # function, and a cached built-in kernel loaded later must not link
    # against a user specialisation of the same name.
    global _n_specialised
    _n_specialised += 1
    name = f"{py.__name__}_user{_n_specialised}"
    code = py.__code__.replace(co_name=name, co_qualname=name)
    func = types.FunctionType(code, scope, name, py.__defaults__, py.__closure__)
    return njit(parallel=bool(dispatcher.targetoptions.get("parallel")))(func)

"""Compiled kernels: the plant dynamics and the digital control loop.

This module is the ground floor of ctrlsim: it imports nothing from the rest of
the package but :mod:`ctrlsim.jitcache` (which keys its disk cache), and it is
the only place where the equations of motion and the
control laws are written (the model is described in ``docs/model.md``).
Everything else (``simulate``, ``sweep``, the gymnasium env, the benchmarks)
packs its inputs into plain float64 arrays and calls these kernels.

Building blocks
---------------
- :func:`control_step`: one sample of the digital controller (error,
  derivative, law, clip, integrator with anti-windup).
- :func:`plant_interval`: the plant over one control period with the command
  held (classical RK4, equal substeps).
- :func:`rollout`: a closed-loop run, a loop over the two.
- :func:`rollout_batch`: many closed-loop runs in lockstep on all cores, as
  struct-of-arrays with the vehicle loop innermost so that the RK4 stages
  vectorise; bit-identical to :func:`rollout` row by row. A control period
  whose inputs are held (each vehicle's grade constant, no event switching)
  takes :func:`_advance_held`: load terms and 1/m once per period, then one short
  loop per RK4 stage (one loop over whole substeps waits on the stages'
  dependency chain); any other period goes stage by stage with the road
  looked up at every stage.
- :func:`advance_batch` / :func:`advance_rows`: the plant part of the
  lockstep batch alone (for all rows, or a range of them so that threads can
  share one set of arrays), for open-loop callers (the vector env) that supply
  the commands themselves.

The hot loops hold what does not change in scalars (``_plant_scalars``, the
input cache as a tuple) and give PID-family laws their own copy of the loop
(``_control_step`` with a constant flag, ``_pid_rows`` in the batch): a call
into the MLP law compiled into a loop slows all of it down.

All of them evaluate the right-hand side through the same inlined scalar
helpers (``_load_terms``/``_accel_terms``, ``_actuator``, ``_tanh``), so the
equations exist once and every path agrees bit for bit.

Array layouts
-------------
Plant vector ``pp``: one float per name in :data:`PLANT_LAYOUT` (``P_*``).
Controller vector ``cp``: variable length; a header (:data:`CTRL_HEADER`, law
code first) followed by the law's own parameters (:data:`PID_LAYOUT` for the
piecewise-linear family). Batches pad rows to a common length, so one batch
can mix controllers. Scenario inputs travel as one :class:`Profiles`.
"""

import math
import types
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import literally, njit, prange
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic

from . import jitcache

jitcache.install()  # before the decorators below: numba picks their cache locator then

__all__ = [
    "PLANT_LAYOUT", "N_PLANT", "CTRL_HEADER", "PID_LAYOUT", "N_PID", "LAW_PID",
    "LAW_MLP", "MLP_LAYOUT", "N_MLP_HEADER", "ACT_RELU", "ACT_LEAKY", "ACT_TANH", "ACT_LINEAR",
    "KIND_ROBOT", "KIND_CAR", "OUT_FIELDS", "Profiles", "control_step",
    "plant_interval", "equilibrium_command", "rollout", "rollout_pid", "rollout_batch",
    "advance_batch", "advance_rows", "batch_work", "input_cache", "law_inputs", "specialise",
]

# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------
PLANT_LAYOUT = ("kind", "mass", "gravity", "rolling_resistance", "drag_linear",
                "drag_quadratic", "actuator_tau", "command_min", "command_max",
                "gear_ratio", "torque_max", "omega_max", "torque_beta",
                "brake_force_max")
(P_KIND, P_MASS, P_G, P_CR, P_DLIN, P_DQUAD, P_TAU, P_CMD_LO, P_CMD_HI,
 P_GEAR_RATIO, P_TMAX, P_WMAX, P_BETA, P_BRAKE) = range(len(PLANT_LAYOUT))
N_PLANT = len(PLANT_LAYOUT)
KIND_ROBOT, KIND_CAR = 0.0, 1.0

# Controller header, shared by every law: the law code; whether the integrator
# runs; the anti-windup gain g and negative-side slope alpha of the activation
# in ``z += Ts*(e + g*(phi_inv(a) - s))``, phi_inv(a) = a/alpha for a < 0 and
# alpha > 0, else a (built-ins: g = kaw/ki; laws without an activation: alpha=1).
CTRL_HEADER = ("law", "integrate", "aw_gain", "aw_slope")
# Piecewise-linear PID family: header, then its gains (alpha is aw_slope).
PID_LAYOUT = CTRL_HEADER + ("kp", "ki", "kd", "feedforward")
(C_LAW, C_INTEGRATE, C_AW_GAIN, C_SLOPE, C_KP, C_KI, C_KD,
 C_FF) = range(len(PID_LAYOUT))
N_PID = len(PID_LAYOUT)
LAW_PID = 0.0
# Multilayer perceptron: header, then its own header (MLP_LAYOUT), then each
# layer as ``n_out, n_in, W (n_out*n_in, row-major), b (n_out)``, then scratch
# space for the forward pass (two buffers of ``width`` floats) at the tail, so
# the forward pass allocates nothing. The network's output is the command
# ``u = out_offset + out_scale*out_act(last layer)``; for the integrator header
# the law uses integrate = 1, aw_gain = kaw, aw_slope = 1 (``dz = e + kaw*(a-u)``).
LAW_MLP = 1.0
# ``start_hold`` = 1: the run starts with the actuator holding the initial speed
# (as the gymnasium env starts), not at the network's output at zero error.
MLP_LAYOUT = CTRL_HEADER + ("n_weight_layers", "activation", "alpha", "out_activation",
                            "out_scale", "out_offset", "scratch", "width", "start_hold",
                            "in_scale_e", "in_scale_z", "in_scale_d", "in_scale_y",
                            "in_scale_r")
(M_NLAYERS, M_ACT, M_ALPHA, M_OUT_ACT, M_OUT_SCALE, M_OUT_OFFSET, M_SCRATCH,
 M_WIDTH, M_START_HOLD, M_IN_SCALE) = range(len(CTRL_HEADER), len(CTRL_HEADER) + 10)
N_MLP_HEADER = len(MLP_LAYOUT)
# Activation codes (hidden: relu/leaky/tanh; output: linear/tanh).
ACT_RELU, ACT_LEAKY, ACT_TANH, ACT_LINEAR = 0.0, 1.0, 2.0, 3.0

# Columns of a rollout's output array.
OUT_FIELDS = ("position", "speed", "force", "command", "applied")

# Smoothing speed of the rolling-resistance (and brake) sign function, m/s.
V_ROLL = 0.1
# Multiplying by its inverse instead of dividing: within 1 ulp, and it takes a
# division off the latency chain of every RK4 stage.
_INV_V_ROLL = 1.0 / V_ROLL
# Stage times are nudged this fraction of a substep inside the open substep,
# so an input that switches exactly on a substep boundary is seen as the value
# that holds during the substep (exact), not the one after it.
_STAGE_EPS = 1e-9
_INF = math.inf


class Profiles(NamedTuple):
    """Scenario inputs as the kernels take them.

    ``ref`` and ``noise`` are sampled at the control instants (length N + 1);
    ``grade_x``/``grade_th`` are the road's breakpoints (m or s) and grades
    (rad), piecewise linear and constant beyond the ends; ``events`` has one
    row ``(at, until, force, payload)`` per event.
    """

    v0: float
    ref: np.ndarray
    noise: np.ndarray
    ts: float
    substeps: int
    grade_x: np.ndarray
    grade_th: np.ndarray
    grade_by_time: bool
    events: np.ndarray
    v_limit: float


# --------------------------------------------------------------------------
# Scalar physics: written once, inlined into every path
# --------------------------------------------------------------------------
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.0 / math.log(2.0)
# tanh(x) is +-1 in double precision once 2|x| exceeds this.
_TANH_SAT = 38.2
# _tanh's clamp on 2|x|: k = 58 there, so 2^k +- 1 round to 2^k and the quotient is 1.
_TANH_CLAMP = 40.0
# How :func:`_sign` evaluates tanh (a constant at each call site): test for
# saturation first (scalar code), known saturated, or always the branch-free
# formula (vectorised loops, where a test would become a select).
_SIGN_TEST, _SIGN_SAT, _SIGN_LANES = 0, 1, 2


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (llvm.fma: the FMA instruction)."""
    sig = nbtypes.float64(nbtypes.float64, nbtypes.float64, nbtypes.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]),
                                            "llvm.fma.f64")
        return builder.call(fn, args)
    return sig, codegen


@intrinsic
def _claim(typingctx, counter):
    """Atomically ``counter[0] += 1``, returning the old value: the next block
    of rows for the thread that claims it (threads take blocks as they finish,
    so a core the shared machine slows down takes fewer)."""
    if not (isinstance(counter, nbtypes.Array) and counter.dtype == nbtypes.int64):
        return None
    sig = nbtypes.int64(counter)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", ary.data, one, "monotonic")
    return sig, codegen


@intrinsic
def _prefetch_write(typingctx, out, i, k):
    """Hint that ``out[i, k, -1]`` (a C-contiguous 3-D array) will be written
    soon (llvm.prefetch: no fault on any address, no effect on results)."""
    if not (isinstance(out, nbtypes.Array) and out.ndim == 3 and out.layout == "C"):
        return None
    sig = nbtypes.void(out, nbtypes.intp, nbtypes.intp)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        last = builder.sub(cgutils.unpack_tuple(builder, ary.shape, 3)[2],
                           context.get_constant(nbtypes.intp, 1))
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary,
                                       [args[1], args[2], last], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        # write, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return sig, codegen


# Even and odd parts of the [6/6] Pade approximant of exp(r) = (E + O)/(E - O):
# E = 1 + P2 r^2 + P4 r^4 + P6 r^6, O = r (P1 + P3 r^2 + P5 r^4); relative error
# < 2e-19 on |r| <= ln2/2.
_P1, _P2, _P3 = 1.0 / 2, 5.0 / 44, 1.0 / 66
_P4, _P5, _P6 = 1.0 / 792, 1.0 / 15840, 1.0 / 665280


@njit(cache=True, inline="always", error_model="numpy")
def _tanh(x):
    """``tanh(x)`` in branch-free arithmetic, so loops over vehicles vectorise.

    ``y = 2|x| = k ln2 + r`` by Cody-Waite reduction, ``exp(r) = (E + O)/(E - O)``
    by its [6/6] Pade approximant, and then ``tanh = (e^y - 1)/(e^y + 1)``
    written out as ``((2^k - 1) E + (2^k + 1) O) / ((2^k + 1) E + (2^k - 1) O)``:
    one division, no cancellation at small ``x`` (k = 0 leaves ``2 O / 2 E``),
    fused multiply-adds on the larger products. Within 4 ulp of libm (tested),
    NaN in, NaN out. Half the multiply-adds of a Taylor polynomial for
    ``expm1``. Every path uses this function, so single runs, batches and the
    env agree bit for bit.

    Exactly +-1 beyond |x| = 19.1 without a test: ``y`` is clamped to
    :data:`_TANH_CLAMP`, where ``2^k - 1 == 2^k + 1`` in double precision
    and the quotient is 1 (a select on ``y`` cost ~6 % of a vectorised stage).
    Scalar code skips the work past that bound in :func:`_sign` instead.
    """
    y = min(2.0 * abs(x), _TANH_CLAMP)
    k = np.floor(_fma(y, _INV_LN2, 0.5))   # a float: -k below needs no conversion
    r = _fma(-k, _LN2_LO, _fma(-k, _LN2_HI, y))
    z = r * r
    e1 = z * _fma(z, _fma(z, _P6, _P4), _P2)          # E - 1
    o = r * _fma(z, _fma(z, _P5, _P3), _P1)           # O
    two_k = float(np.int64(1) << np.int64(k))
    km1, kp1 = two_k - 1.0, two_k + 1.0
    t = (km1 + _fma(kp1, o, km1 * e1)) / (kp1 + _fma(km1, o, kp1 * e1))
    t = math.copysign(t, x)
    return t if x == x else x


# fdlibm's __kernel_sin / __kernel_cos coefficients (|r| <= pi/4, < 1 ulp).
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11
_PIO2_HI = 1.57079632673412561417e+00   # first 33 bits of pi/2
_PIO2_LO = 6.07710050650619224932e-11   # pi/2 - _PIO2_HI
_PIO4 = 0.7853981633974483


@njit(cache=True, inline="always", error_model="numpy")
def _sincos(x):
    """``(sin(x), cos(x))`` of a road grade (|x| <= pi/2) in branch-free arithmetic.

    fdlibm's kernel polynomials on ``r = |x|``, or on ``pi/2 - |x|`` (with
    sine and cosine swapped) above pi/4: within 1 ulp of libm (tested), so
    loops over vehicles on sloped road vectorise. Every path uses it, so
    single runs, batches and the env agree bit for bit.
    """
    ax = abs(x)
    swap = ax > _PIO4
    r = (_PIO2_HI - ax) + _PIO2_LO if swap else ax
    z = r * r
    s = r + (z * r) * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    q = z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    hz = 0.5 * z
    w = 1.0 - hz
    c = w + (((1.0 - w) - hz) + z * q)
    return math.copysign(c if swap else s, x), s if swap else c


@njit(cache=True, inline="always", error_model="numpy")
def _actuator(a, v, car, gear_ratio, torque_max, omega_max, beta, brake, sat=_SIGN_TEST):
    """Force target (N) the actuator produces for command ``a`` at speed ``v``.

    Robot: ``a`` is the force. Car: throttle through the engine torque curve
    of Astrom & Murray for a >= 0; for a < 0 brakes that oppose motion and
    cannot push a stopped car backwards (``tanh(v/0.1)``).
    """
    x = gear_ratio * v / omega_max - 1.0
    torque = max(torque_max * (1.0 - beta * x * x), 0.0)
    throttle = gear_ratio * torque * a
    braking = brake * a * _sign(v, sat)
    force = throttle if a >= 0.0 else braking
    return force if car else a


@njit(cache=True, inline="always", error_model="numpy")
def _resistance(v, m, cos_th, g, cr, dlin, dquad):
    """Rolling resistance plus linear and quadratic drag, N."""
    return _resistance_terms(v, cr * m * g * cos_th, dlin, dquad)


@njit(cache=True, inline="always", error_model="numpy")
def _resistance_terms(v, rolling, dlin, dquad, sat=_SIGN_TEST):
    """:func:`_resistance` with the rolling force ``cr m g cos(theta)`` given."""
    return rolling * _sign(v, sat) + dlin * v + dquad * v * abs(v)


@njit(cache=True, inline="always", error_model="numpy")
def _sign(v, sat):
    """The smoothed sign of the speed, ``tanh(v / V_ROLL)``.

    ``sat`` (a constant at each call site): ``_SIGN_SAT`` says that ``v`` is
    known to be past :func:`_saturated`'s bound, where :func:`_tanh` returns
    exactly +-1, so that value is returned without computing it;
    ``_SIGN_TEST`` tests for it first (scalar code); ``_SIGN_LANES`` always
    computes :func:`_tanh` (vectorised loops). The same bits every way.
    """
    if sat == _SIGN_SAT or (sat == _SIGN_TEST and _past_saturation(v)):
        return math.copysign(1.0, v)
    return _tanh(v * _INV_V_ROLL)


@njit(cache=True, inline="always", error_model="numpy")
def _past_saturation(v):
    """1 if ``tanh(v / V_ROLL)`` is exactly +-1 in :func:`_tanh` (|v| > 1.91
    m/s; NaN is not), else 0."""
    return 1 if 2.0 * abs(v * _INV_V_ROLL) > _TANH_SAT else 0


@njit(cache=True, inline="always", error_model="numpy")
def _saturated(v):
    """Every speed in ``v`` is where ``tanh(v / V_ROLL)`` is exactly +-1
    (|v| > 1.91 m/s; NaN is not).

    The test :func:`_tanh` makes, counted over the array (an integer count
    vectorises; a boolean or float reduction would not), so that a loop over
    vehicles can skip the sign function's ~30 operations: a car at any speed
    but a crawl, a robot past 1.91 m/s.
    """
    n = 0
    for i in range(v.shape[0]):
        n += _past_saturation(v[i])
    return n == v.shape[0]


@njit(cache=True, inline="always", error_model="numpy")
def _load_terms(m, sin_th, cos_th, f_ext, g, cr):
    """The parts of dv/dt that do not depend on the state: the external
    force less gravity along the road, and the rolling force (N).

    Constant while the mass, grade and events are, so the batch computes them
    once per control period instead of at every stage.
    """
    return f_ext - m * g * sin_th, cr * m * g * cos_th


@njit(cache=True, inline="always", error_model="numpy")
def _accel(v, force, m, inv_m, sin_th, cos_th, f_ext, g, cr, dlin, dquad):
    """dv/dt: Newton's law along the road."""
    pull, rolling = _load_terms(m, sin_th, cos_th, f_ext, g, cr)
    return _accel_terms(v, force, pull, rolling, inv_m, dlin, dquad)


@njit(cache=True, inline="always", error_model="numpy")
def _accel_terms(v, force, pull, rolling, inv_m, dlin, dquad, sat=_SIGN_TEST):
    """:func:`_accel` with the terms of :func:`_load_terms` given.

    Summed so that the terms that do not depend on the speed are combined
    while the resistance is computed: the chain from speed to acceleration is
    one subtraction and one multiplication by ``inv_m = 1/m`` after the
    resistance.
    """
    return ((force + pull) - _resistance_terms(v, rolling, dlin, dquad, sat)) * inv_m


@njit(cache=True, inline="always", error_model="numpy")
def _force_rates(f, f_target, lag, inv_tau):
    """Force acting now and dF/dt: first-order lag, or none (F = target)."""
    force = f if lag else f_target
    df = (f_target - f) * inv_tau if lag else 0.0
    return force, df


# _slopes and _vehicle_stage are compiled once and inlined by LLVM, not by numba:
# numba's inline="always" copies the callee's IR into every call site, and with
# two copies of each stage loop (saturated or not) that took the batch's first
# compile from 30 to 67 s. They take scalars only, so a call carries no reference
# counting, and the loops they are inlined into still vectorise (measured).
@njit(cache=True, error_model="numpy")
def _slopes(sv, sf, a, m, inv_m, sn, cs, f_ext, car, lag, inv_tau, g, cr, dlin, dquad,
            gr, tmax, wmax, beta, brake, sat=_SIGN_TEST):
    """(dv/dt, dF/dt) at one RK4 stage: the right-hand side every path evaluates
    (``sat`` as in :func:`_sign`)."""
    pull, rolling = _load_terms(m, sn, cs, f_ext, g, cr)
    return _slopes_terms(sv, sf, a, pull, rolling, inv_m, car, lag, inv_tau, dlin, dquad,
                         gr, tmax, wmax, beta, brake, sat)


@njit(cache=True, inline="always", error_model="numpy")
def _slopes_terms(sv, sf, a, pull, rolling, inv_m, car, lag, inv_tau, dlin, dquad,
                  gr, tmax, wmax, beta, brake, sat=_SIGN_TEST):
    """:func:`_slopes` with the terms of :func:`_load_terms` given."""
    f_target = _actuator(a, sv, car, gr, tmax, wmax, beta, brake, sat)
    force, dfv = _force_rates(sf, f_target, lag, inv_tau)
    return _accel_terms(sv, force, pull, rolling, inv_m, dlin, dquad, sat), dfv


@njit(cache=True, inline="always", error_model="numpy")
def _theta(x, seg_lo, th_lo, slope):
    """Grade (rad) at ``x`` on the linear road piece starting at ``seg_lo``."""
    return th_lo if slope == 0.0 else th_lo + slope * (x - seg_lo)


@njit(cache=True, inline="always", error_model="numpy")
def _stage_time(ta, c, h):
    """Time of RK4 stage ``c`` of the substep starting at ``ta``, nudged inside it.

    The end stages sit ``_STAGE_EPS * h`` inside the open substep, so an input
    that switches exactly on a substep boundary is seen as the value that holds
    during the substep.
    """
    if c == 0:
        return ta + _STAGE_EPS * h
    if c == 3:
        return ta + h - _STAGE_EPS * h
    return ta + 0.5 * h


@njit(cache=True, inline="always", error_model="numpy")
def _rk4_combine(c, h, x0, k, acc):
    """Classical RK4 bookkeeping for one state component at stage ``c``.

    Adds the stage slope ``k`` to the weighted sum ``acc`` (weights 1, 2, 2, 1;
    the substep ends with ``x0 + h/6 * acc``) and returns the state the next
    stage is evaluated at (``x0 + h/2 * k``, twice, then ``x0 + h * k``).
    """
    acc = k if c == 0 else acc + (1.0 if c == 3 else 2.0) * k
    return acc, x0 + (h if c == 2 else 0.5 * h) * k


# Road and events: looked up rarely (when a stage leaves the current piece),
# so the hot loop only compares against cached bounds.
@njit(cache=True, error_model="numpy")
def road_segment(x, grade_x, grade_th):
    """The linear piece of the road containing ``x``.

    Returns ``(lo, hi, theta_lo, slope)`` valid on ``lo <= x < hi``; beyond
    the ends the grade is constant. A NaN ``x`` gives a NaN grade.
    """
    n = grade_x.shape[0]
    if n == 0:
        return -_INF, _INF, 0.0, 0.0
    if math.isnan(x):
        return x, x, x, 0.0
    if x < grade_x[0]:
        return -_INF, grade_x[0], grade_th[0], 0.0
    if x >= grade_x[n - 1]:
        return grade_x[n - 1], _INF, grade_th[n - 1], 0.0
    i = 1
    while grade_x[i] <= x:
        i += 1
    x0, x1 = grade_x[i - 1], grade_x[i]
    return x0, x1, grade_th[i - 1], (grade_th[i] - grade_th[i - 1]) / (x1 - x0)


@njit(cache=True, error_model="numpy")
def event_window(t, events):
    """Payload (kg) and external force (N) active at ``t``, and where that holds.

    Returns ``(lo, hi, payload, force)``: the same events are active on
    ``lo <= t < hi``.
    """
    lo, hi, payload, force = -_INF, _INF, 0.0, 0.0
    for j in range(events.shape[0]):
        at, until = events[j, 0], events[j, 1]
        if at <= t < until:
            force += events[j, 2]
            payload += events[j, 3]
            lo, hi = max(lo, at), min(hi, until)
        elif t < at:
            hi = min(hi, at)
        else:
            lo = max(lo, until)
    return lo, hi, payload, force


# --------------------------------------------------------------------------
# Plant over one control period (one vehicle)
# --------------------------------------------------------------------------
# The input cache: road piece (lo, hi, theta_lo, slope, sin, cos of theta_lo),
# then event window (lo, hi, payload, force). Empty (hi = -inf) to start with,
# so the first stage looks both up.
_EMPTY_CACHE = (0.0, -_INF, 0.0, 0.0, 0.0, 0.0, 0.0, -_INF, 0.0, 0.0)
# Rows of the batch scratch array (see batch_work).
_N_WORK = 21


@njit(cache=True)
def input_cache():
    """Fresh cache of the road piece and event window for :func:`plant_interval`."""
    cache = np.empty(len(_EMPTY_CACHE))
    for i in range(cache.shape[0]):
        cache[i] = _EMPTY_CACHE[i]
    return cache


@njit(cache=True, inline="always", error_model="numpy")
def _plant_scalars(pp):
    """The plant vector as a tuple of scalars for :func:`_interval`.

    Taken once before a time loop: the compiler cannot keep array entries in
    registers across the loop's stores to other arrays (they might alias).
    """
    lag = pp[P_TAU] > 0.0
    return (pp[P_KIND] == KIND_CAR, pp[P_MASS], lag, 1.0 / pp[P_TAU] if lag else 0.0,
            pp[P_G], pp[P_CR], pp[P_DLIN], pp[P_DQUAD], pp[P_GEAR_RATIO], pp[P_TMAX],
            pp[P_WMAX], pp[P_BETA], pp[P_BRAKE])



@njit(cache=True, inline="always", error_model="numpy")
def _interval(p, v, f, a, t0, h, substeps, par, prof, cache):
    """:func:`plant_interval` on scalars: substep ``h``, the plant ``par`` from
    :func:`_plant_scalars` and the cache as a tuple. Returns ``(p, v, f, cache)``."""
    car, mass, lag, inv_tau, g, cr, dlin, dquad, gr, tmax, wmax, beta, brake = par
    by_time = prof.grade_by_time
    gx, gth, events = prof.grade_x, prof.grade_th, prof.events
    h6 = h / 6.0
    r_lo, r_hi, th_lo, slope, sn0, cs0, e_lo, e_hi, payload, f_ext = cache
    for j in range(substeps):
        ta = t0 + j * h
        sp, sv, sf = p, v, f
        acc_p = acc_v = acc_f = 0.0
        for c in range(4):
            ts = _stage_time(ta, c, h)
            x = ts if by_time else sp
            if not (r_lo <= x < r_hi):
                r_lo, r_hi, th_lo, slope = road_segment(x, gx, gth)
                sn0, cs0 = _sincos(th_lo)
            if slope == 0.0:
                sn, cs = sn0, cs0
            else:
                th = _theta(x, r_lo, th_lo, slope)
                sn, cs = _sincos(th)
            if not (e_lo <= ts < e_hi):
                e_lo, e_hi, payload, f_ext = event_window(ts, events)
            m = mass + payload
            inv_m = 1.0 / m
            # Specialised at the call site, so the robot's loop skips the engine.
            if car:
                dvv, dfv = _slopes(sv, sf, a, m, inv_m, sn, cs, f_ext, True, lag, inv_tau,
                                   g, cr, dlin, dquad, gr, tmax, wmax, beta, brake)
            else:
                dvv, dfv = _slopes(sv, sf, a, m, inv_m, sn, cs, f_ext, False, lag, inv_tau,
                                   g, cr, dlin, dquad, gr, tmax, wmax, beta, brake)
            acc_p, sp = _rk4_combine(c, h, p, sv, acc_p)
            acc_v, sv = _rk4_combine(c, h, v, dvv, acc_v)
            acc_f, sf = _rk4_combine(c, h, f, dfv, acc_f)
        p += h6 * acc_p
        v += h6 * acc_v
        f += h6 * acc_f
    return p, v, f, (r_lo, r_hi, th_lo, slope, sn0, cs0, e_lo, e_hi, payload, f_ext)


@njit(cache=True, error_model="numpy")
def plant_interval(p, v, f, a, t0, dt, substeps, pp, prof, cache):
    """Integrate the plant over ``[t0, t0 + dt]`` with command ``a`` held.

    Classical RK4 with ``substeps`` equal substeps; inputs (grade, payload,
    external force) are evaluated at the stage times and looked up only when
    a stage leaves the road piece or event window held in ``cache`` (from
    :func:`input_cache`, kept between calls). Returns the new (position,
    speed, actuator force).
    """
    c = (cache[0], cache[1], cache[2], cache[3], cache[4], cache[5], cache[6], cache[7],
         cache[8], cache[9])
    p, v, f, c = _interval(p, v, f, a, t0, dt / substeps, substeps, _plant_scalars(pp),
                           prof, c)
    (cache[0], cache[1], cache[2], cache[3], cache[4], cache[5], cache[6], cache[7],
     cache[8], cache[9]) = c
    return p, v, f


@njit(cache=True, error_model="numpy")
def equilibrium_command(v0, pp, prof):
    """Command that holds speed ``v0`` at t = 0, p = 0, and whether it is feasible.

    It balances resistance, gravity and the external force in effect at the
    start. The returned command is clipped to the actuator's range; the flag
    says whether clipping (or a dead engine) was needed.
    """
    r_lo, _, th_lo, slope = road_segment(0.0, prof.grade_x, prof.grade_th)
    th = _theta(0.0, r_lo, th_lo, slope)
    _, _, payload, f_ext = event_window(0.0, prof.events)
    m = pp[P_MASS] + payload
    sn, cs = _sincos(th)
    f_req = (_resistance(v0, m, cs, pp[P_G], pp[P_CR], pp[P_DLIN], pp[P_DQUAD])
             + m * pp[P_G] * sn - f_ext)
    # The actuator is linear in the command on each side of zero.
    unit = 1.0 if f_req >= 0.0 else -1.0
    gain = unit * _plant_actuator(unit, v0, pp)
    if gain > 0.0:
        a0 = f_req / gain
    else:
        a0 = 0.0 if f_req == 0.0 else unit * np.inf
    lo, hi = pp[P_CMD_LO], pp[P_CMD_HI]
    feasible = lo <= a0 <= hi
    return min(max(a0, lo), hi), feasible


@njit(cache=True, error_model="numpy")
def _plant_actuator(a, v, pp):
    """:func:`_actuator` with its parameters taken from a plant vector."""
    return _actuator(a, v, pp[P_KIND] == KIND_CAR, pp[P_GEAR_RATIO], pp[P_TMAX],
                     pp[P_WMAX], pp[P_BETA], pp[P_BRAKE])


# --------------------------------------------------------------------------
# Controller
# --------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def control_law(e, z, d, y, r, cp):
    """Pre-activation ``s`` and output ``u = phi(s)`` of the law coded in ``cp``.

    Inputs: error, integrator state, error derivative, measured speed and
    reference. Built-in: the piecewise-linear PID family, and the multilayer
    perceptron (:data:`LAW_MLP`, output ``u`` with ``s = u``).
    """
    if cp[C_LAW] == LAW_MLP:
        u = mlp_forward(e, z, d, y, r, cp)
        return u, u
    return _pid_law(e, z, d, r, cp)


@njit(cache=True, inline="always", error_model="numpy")
def _pid_law(e, z, d, r, cp):
    """:func:`_pid` with the gains of the PID-family vector ``cp``."""
    return _pid(e, z, d, r, cp[C_KP], cp[C_KI], cp[C_KD], cp[C_FF], cp[C_SLOPE])


@njit(cache=True, inline="always", error_model="numpy")
def _pid(e, z, d, r, kp, ki, kd, ff, slope):
    """Pre-activation ``s`` and output of the PID family: identity above zero,
    ``slope * s`` below (ReLU: 0, Leaky ReLU: alpha, linear: 1)."""
    s = kp * e + ki * z + kd * d + ff * r
    return s, (s if s >= 0.0 else slope * s)


@njit(cache=True, error_model="numpy")
def controller_preload(a0, v0, cp):
    """Integrator state and output of a controller that was holding ``a0``.

    ``z0 = (phi_inv(a0) - feedforward * v0) / ki`` (0 when ki = 0) and the
    output ``phi(phi_inv(a0))`` it was producing. An MLP starts from
    ``z0 = 0`` and its output at ``(0, 0, 0, v0, v0)``, or with ``start_hold``
    from ``a0`` (the gymnasium env's start, for policies trained there).
    """
    if cp[C_LAW] == LAW_MLP:
        if cp[M_START_HOLD] != 0.0:
            return 0.0, a0
        return 0.0, mlp_forward(0.0, 0.0, 0.0, v0, v0, cp)
    s0 = _phi_inv(a0, cp[C_SLOPE])
    z0 = (s0 - cp[C_FF] * v0) / cp[C_KI] if cp[C_KI] != 0.0 else 0.0
    u0 = s0 if s0 >= 0.0 else cp[C_SLOPE] * s0
    return z0, u0


@njit(cache=True, inline="always", error_model="numpy")
def _phi_inv(a, alpha):
    """Pre-activation that produces ``a``: a/alpha on the negative side."""
    return a / alpha if (a < 0.0 and alpha > 0.0) else a


@njit(cache=True, inline="always", error_model="numpy")
def _measure(y, r, e_prev, first, ts):
    """Error ``e = r - y`` and its difference quotient (0 at the first sample)."""
    e = r - y
    # Times 1/Ts (hoisted out of loops) rather than / Ts: a division less on
    # the latency chain from speed to command.
    return e, 0.0 if first else (e - e_prev) * (1.0 / ts)


@njit(cache=True, inline="always", error_model="numpy")
def _integrate(z, e, s, a, ts, cp):
    """Next integrator state ``z + Ts*(e + g*(phi_inv(a) - s))`` (header of ``cp``)."""
    return _integrator(z, e, s, a, ts, cp[C_INTEGRATE], cp[C_AW_GAIN], cp[C_SLOPE])


@njit(cache=True, inline="always", error_model="numpy")
def _integrator(z, e, s, a, ts, integrate, aw_gain, slope):
    """:func:`_integrate` with the header entries as scalars."""
    if integrate != 0.0:
        return z + ts * (e + aw_gain * (_phi_inv(a, slope) - s))
    return z


@njit(cache=True, inline="always", error_model="numpy")
def control_step(y, r, e_prev, z, first, ts, lo, hi, cp):
    """One sample of the digital controller.

    Measurement ``y`` and reference ``r`` in; returns the error ``e``, the
    output ``u``, the applied (clipped) command ``a`` and the next integrator
    state ``z + Ts*(e + g*(phi_inv(a) - s))`` (unchanged if the law has no
    integrator).
    """
    return _control_step(y, r, e_prev, z, first, ts, lo, hi, cp, False)


@njit(cache=True, inline="always", error_model="numpy")
def _control_step(y, r, e_prev, z, first, ts, lo, hi, cp, pid):
    """:func:`control_step`; with ``pid`` (a compile-time constant) the law is
    known to be of the PID family, so no MLP branch is compiled in."""
    e, d = _measure(y, r, e_prev, first, ts)
    if pid:
        s, u = _pid_law(e, z, d, r, cp)
    else:
        s, u = control_law(e, z, d, y, r, cp)
    a = min(max(u, lo), hi)
    return e, u, a, _integrate(z, e, s, a, ts, cp)


@njit(cache=True, error_model="numpy")
def law_inputs(speed, u, a, prof, cp):
    """The law inputs ``(e, z, d, y, r)`` (n, 5) a controller with header ``cp``
    would have seen along a run with true speeds ``speed``, outputs ``u`` and
    applied commands ``a`` (n,): the same measurement and integrator as
    :func:`control_step`, replayed (e.g. an MLP's inputs along an expert's run).
    """
    n = speed.shape[0]
    x = np.empty((n, 5))
    e, z = 0.0, 0.0
    for k in range(n):
        y, r = speed[k] + prof.noise[k], prof.ref[k]
        e, d = _measure(y, r, e, k == 0, prof.ts)
        x[k, 0], x[k, 1], x[k, 2], x[k, 3], x[k, 4] = e, z, d, y, r
        z = _integrate(z, e, u[k], a[k], prof.ts, cp)
    return x


# --------------------------------------------------------------------------
# Closed loop, one vehicle
# --------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def _bounded(p, v, f, v_limit):
    return (math.isfinite(p) and math.isfinite(v) and math.isfinite(f)
            and abs(v) <= v_limit)


@njit(cache=True, error_model="numpy")
def initial_state(pp, cp, prof):
    """Start of a run: ``(z0, F0, feasible)`` of the equilibrium at ``v0``.

    The integrator is preloaded so the controller was producing the holding
    command, and the actuator starts at the force of the command the
    controller was actually applying.
    """
    a0, feasible = equilibrium_command(prof.v0, pp, prof)
    z, u0 = controller_preload(a0, prof.v0, cp)
    f = _plant_actuator(min(max(u0, pp[P_CMD_LO]), pp[P_CMD_HI]), prof.v0, pp)
    return z, f, feasible


# Whether _lockstep may run built-in PID-family laws as one vector pass (False
# in user-law specialisations, whose control_step is rebound).
_VECTOR_LAWS = True


@njit(cache=True, error_model="numpy")
def rollout(pp, cp, prof, out):
    """Simulate the sampled-data loop for ``len(prof.ref) - 1`` control periods.

    Fills ``out`` (shape (N + 1, 5), columns :data:`OUT_FIELDS`) at the
    control instants. Returns ``(diverged_at, feasible_start)``: the index of
    the first sample whose plant state or controller output is non-finite, or
    whose speed exceeds ``prof.v_limit`` (-1 if none; from there on ``out``
    holds NaN), and whether the actuator could hold the initial equilibrium.
    """
    return _rollout(pp, cp, prof, out, False)


@njit(cache=True, error_model="numpy")
def rollout_pid(pp, cp, prof, out):
    """:func:`rollout` for a PID-family controller vector (law code
    :data:`LAW_PID`), the same numbers ~18 % faster: its loop has no call into
    the MLP law compiled in (such a call slows the whole loop down). Compiled
    separately, so a run of a built-in law does not compile the general loop.
    """
    return _rollout(pp, cp, prof, out, True)


@njit(cache=True, error_model="numpy")
def _rollout(pp, cp, prof, out, pid):
    """The loop of :func:`rollout`; ``pid`` as in :func:`_control_step`.

    Compiled once per value of ``pid`` (a literal), with the other branch
    pruned: each copy of the loop holds one controller path.
    """
    literally(pid)
    n = prof.ref.shape[0] - 1
    ts, lo, hi = prof.ts, pp[P_CMD_LO], pp[P_CMD_HI]
    lag = pp[P_TAU] > 0.0
    z, f, feasible = initial_state(pp, cp, prof)
    p, v, e = 0.0, prof.v0, 0.0
    par, cache, h = _plant_scalars(pp), _EMPTY_CACHE, ts / prof.substeps
    for k in range(n + 1):
        if pid:
            e, u, a, z = _control_step(v + prof.noise[k], prof.ref[k], e, z, k == 0,
                                       ts, lo, hi, cp, True)
        else:
            e, u, a, z = control_step(v + prof.noise[k], prof.ref[k], e, z, k == 0,
                                      ts, lo, hi, cp)
        if not (math.isfinite(u) and math.isfinite(z)):
            out[k:, :] = np.nan
            return k, feasible
        out[k, 0] = p
        out[k, 1] = v
        out[k, 2] = f if lag else _plant_actuator(a, v, pp)
        out[k, 3] = u
        out[k, 4] = a
        if k == n:
            break
        p, v, f, cache = _interval(p, v, f, a, k * ts, h, prof.substeps, par, prof, cache)
        if not _bounded(p, v, f, prof.v_limit):
            out[k + 1:, :] = np.nan
            return k + 1, feasible
    return -1, feasible


# --------------------------------------------------------------------------
# Many vehicles in lockstep (struct of arrays, vehicle loop innermost)
# --------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _road_pass(x_of, sp, t, seg, sn, cs, gx, gth, r0, r1):
    """Grade of vehicles ``r0 <= i < r1`` at stage positions ``sp``: refresh
    pieces, then sin/cos.

    ``seg`` (4, nb) caches each vehicle's road piece (lo, hi, theta_lo,
    slope); ``sn``/``cs`` receive sin/cos of the grade. Without ``x_of``
    every vehicle is looked up at the time ``t`` instead.

    ``sn``/``cs`` always hold the sin/cos of each vehicle's cached piece at
    its last lookup (the only other writers, :func:`preset_grade` and
    :func:`_advance_group`, keep them with the pieces). So when no vehicle
    changed piece and every piece has a constant grade, they are already
    right and the sin/cos loop is skipped: the common case on real roads,
    which are mostly constant grades joined by short ramps.
    """
    lo, hi, th_lo, slope = seg[0], seg[1], seg[2], seg[3]
    # Count the vehicles that left their piece and those on a ramp in a loop
    # without branches (it vectorises: it runs at every stage), then look the
    # leavers up (rare) in a scalar loop of their own.
    n_out = n_ramp = 0
    for i in range(r0, r1):
        x = sp[i] if x_of else t
        n_out += 0 if lo[i] <= x < hi[i] else 1
        n_ramp += 1 if slope[i] != 0.0 else 0
    if n_out > 0:
        for i in range(r0, r1):
            x = sp[i] if x_of else t
            if not (lo[i] <= x < hi[i]):
                lo[i], hi[i], th_lo[i], slope[i] = road_segment(x, gx, gth)
    elif n_ramp == 0:
        return
    if x_of:
        for i in range(r0, r1):
            sn[i], cs[i] = _sincos(_theta(sp[i], lo[i], th_lo[i], slope[i]))
    else:
        for i in range(r0, r1):
            sn[i], cs[i] = _sincos(_theta(t, lo[i], th_lo[i], slope[i]))


@njit(cache=True, inline="always", error_model="numpy")
def _stage_loop(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, car, sat):
    """RK4 stage ``c`` for every vehicle: the loop that vectorises.

    Reads the stage state ``sp, sv, sf``, accumulates the weighted slopes in
    ``ap, av, af`` and overwrites the stage state with the next stage's. Every
    argument is its own 1-D array, so LLVM can vectorise across vehicles;
    ``mass``/``inv_m`` are each vehicle's mass with the payload and its
    inverse, ``car`` a constant at each call site.
    """
    for i in range(p.shape[0]):
        vi = sv[i]
        dvv, dfv = _slopes(vi, sf[i], a[i], mass[i], inv_m[i], sn[i], cs[i], f_ext, car,
                           tau[i] > 0.0, inv_tau[i], g[i], cr[i], dlin[i], dquad[i],
                           gr[i], tmax[i], wmax[i], beta[i], brake[i], sat)
        ap[i], sp[i] = _rk4_combine(c, h, p[i], vi, ap[i])
        av[i], sv[i] = _rk4_combine(c, h, v[i], dvv, av[i])
        af[i], sf[i] = _rk4_combine(c, h, f[i], dfv, af[i])


@njit(cache=True, error_model="numpy")
def _stage_rows(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, car):
    """:func:`_stage_loop` with ``car`` made a constant (the robot's loop then
    carries no engine arithmetic), without the sign function if every
    vehicle's stage speed is past saturation (:func:`_sign`)."""
    if car:
        _stage_pick(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                    f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, True)
    else:
        _stage_pick(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                    f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, False)


@njit(cache=True, inline="always", error_model="numpy")
def _stage_pick(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, car):
    """:func:`_stage_rows` for one value of ``car``: the copy of the stage loop
    without the sign function if every stage speed is past saturation."""
    if _saturated(sv):
        _stage_loop(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                    f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, car, _SIGN_SAT)
    else:
        _stage_loop(c, h, p, v, f, a, sp, sv, sf, ap, av, af, sn, cs, inv_tau, mass, inv_m,
                    f_ext, g, cr, dlin, dquad, tau, gr, tmax, wmax, beta, brake, car, _SIGN_LANES)


@njit(cache=True, error_model="numpy")
def _vehicle_stage(c, h, st, pull, rolling, inv_m, pv, sat):
    """Stage ``c`` of one vehicle's RK4 substep, all in registers (not
    numba-inlined: see :func:`_slopes`).

    ``st`` = (stage speed, stage force, and the three weighted sums); ``pull,
    rolling, inv_m`` the stage's :func:`_load_terms` and 1/m; ``pv`` the
    vehicle's substep-start state and parameters (scalars only).
    """
    sv, sf, acc_p, acc_v, acc_f = st
    pi, vi, fi, ai, car, lag, it, dl, dq, ri, ti, wi, bi, ki = pv
    kv, kf = _slopes_terms(sv, sf, ai, pull, rolling, inv_m, car, lag, it, dl, dq,
                           ri, ti, wi, bi, ki, sat)
    acc_p, _ = _rk4_combine(c, h, pi, sv, acc_p)
    acc_v, sv = _rk4_combine(c, h, vi, kv, acc_v)
    acc_f, sf = _rk4_combine(c, h, fi, kf, acc_f)
    return sv, sf, acc_p, acc_v, acc_f


@njit(cache=True, inline="always", error_model="numpy")
def _held_stage_loop(c, h, p, v, f, a, par, st, car, sat, bounded, lagged):
    """RK4 stage ``c`` for every vehicle of :func:`_held_substeps`; ``sat`` as
    in :func:`_sign`. With ``_SIGN_SAT``, returns how many of the speeds the next
    stage starts from are still past saturation (else 0: the loop that
    computes the sign function is right for any speed, and a count in it made
    it ~15 % slower, so a tile that drops below saturation keeps that loop to
    the end of the interval).

    One short loop per stage rather than one loop over whole substeps: a
    substep is a chain of four dependent stages that leaves the core waiting
    on latency, while iterations of a short loop are independent and overlap.
    ``st`` holds the stage state and weighted sums (five arrays) between
    stages; the last stage ends the substep (``p, v, f`` updated in place).
    The actuator lag is on where ``1/tau > 0`` (the same as ``tau > 0`` for
    the finite ``tau`` a plant allows; one array fewer to load). With
    ``bounded``, ``top`` keeps each vehicle's largest |stage speed| (see
    :func:`_advance_held`; a running maximum per vehicle, because a count
    across vehicles costs as much as the saturation count).
    """
    inv_tau, inv_m, pull, rolling, dlin, dquad, gr, tmax, wmax, beta, brake, top = par
    sv, sf, ap, av, af = st
    h6 = h / 6.0
    n_sat = 0
    for i in range(p.shape[0]):
        pi, vi, fi, it = p[i], v[i], f[i], inv_tau[i]
        pv = (pi, vi, fi, a[i], car, lagged or it > 0.0, it, dlin[i], dquad[i],
              gr[i], tmax[i], wmax[i], beta[i], brake[i])
        x = (vi, fi, 0.0, 0.0, 0.0) if c == 0 else (sv[i], sf[i], ap[i], av[i], af[i])
        y = _vehicle_stage(c, h, x, pull[i], rolling[i], inv_m[i], pv, sat)
        if c == 3:
            p[i] = pi + h6 * y[2]
            v_next = vi + h6 * y[3]
            v[i] = v_next
            f[i] = fi + h6 * y[4]
        else:
            sv[i], sf[i], ap[i], av[i], af[i] = y
            v_next = y[0]
        if sat == _SIGN_SAT:
            n_sat += _past_saturation(v_next)
        if bounded:   # NaN (a diverged row) leaves it
            speed = abs(v_next)
            top[i] = speed if speed > top[i] else top[i]
    return n_sat


@njit(cache=True, inline="always", error_model="numpy")
def _held_stage(c, h, p, v, f, a, par, st, car, bounded, lagged, n_sat):
    """:func:`_held_stage_loop`, without the sign function if every vehicle's
    stage speed is past saturation (``n_sat`` of them are: same bits, ~1.5x
    faster)."""
    if n_sat == p.shape[0]:
        return _held_stage_loop(c, h, p, v, f, a, par, st, car, _SIGN_SAT, bounded, lagged)
    return _held_stage_loop(c, h, p, v, f, a, par, st, car, _SIGN_LANES, bounded, lagged)


@njit(cache=True, inline="always", error_model="numpy")
def _held_substeps(h, substeps, p, v, f, a, par, st, car, bounded, lagged):
    """``substeps`` RK4 substeps of every vehicle over an interval in which the
    payload, external force and each vehicle's grade are held.

    The load terms and 1/m come precomputed per vehicle in ``par`` (the values
    the stages would compute: same bits). ``car`` is a run-time flag in the
    general copy (these loops vectorise with it; a copy per preset would
    double the first-use compile time) and False in the copy for lagged
    robots. ``lagged``: every row has the actuator lag (no per-row test).
    """
    n_sat = 0
    for i in range(v.shape[0]):
        n_sat += _past_saturation(v[i])
    for _ in range(substeps):
        n_sat = _held_stage(0, h, p, v, f, a, par, st, car, bounded, lagged, n_sat)
        n_sat = _held_stage(1, h, p, v, f, a, par, st, car, bounded, lagged, n_sat)
        n_sat = _held_stage(2, h, p, v, f, a, par, st, car, bounded, lagged, n_sat)
        n_sat = _held_stage(3, h, p, v, f, a, par, st, car, bounded, lagged, n_sat)


# Rows per tile of :func:`_held_rows`: the tile's state, parameters and stage
# arrays (about 17 x 8 B a row) stay in L1 through all substeps of an interval.
_TILE = 192


@njit(cache=True, inline="always", error_model="numpy")
def _all_positive(x):
    """Every ``x[i] > 0`` (an integer count: it vectorises)."""
    n = 0
    for i in range(x.shape[0]):
        n += 1 if x[i] > 0.0 else 0
    return n == x.shape[0]


@njit(cache=True, error_model="numpy")
def _held_rows(h, substeps, p, v, f, a, par, st, car, bounded):
    """:func:`_held_substeps`, a tile of rows at a time."""
    n = p.shape[0]
    for lo in range(0, n, _TILE):
        hi = min(lo + _TILE, n)
        tp = (par[0][lo:hi], par[1][lo:hi], par[2][lo:hi], par[3][lo:hi], par[4][lo:hi],
              par[5][lo:hi], par[6][lo:hi], par[7][lo:hi], par[8][lo:hi], par[9][lo:hi],
              par[10][lo:hi], par[11][lo:hi])
        ts = (st[0][lo:hi], st[1][lo:hi], st[2][lo:hi], st[3][lo:hi], st[4][lo:hi])
        pt, vt, ft, at = p[lo:hi], v[lo:hi], f[lo:hi], a[lo:hi]
        # Two copies: the robot with the actuator lag on a flat road (the env's
        # and most sweeps' case: no engine code, no per-row select between the
        # lag state and the force target, no speed maxima; ~8 % faster than
        # the general copy, 1.3x when saturated), and the general one, which
        # also keeps the speed maxima (needed on roads with pieces only).
        if not bounded and not car and _all_positive(tp[0]):
            _held_substeps(h, substeps, pt, vt, ft, at, tp, ts, False, False, True)
        else:
            _held_substeps(h, substeps, pt, vt, ft, at, tp, ts, car, True, False)


@njit(cache=True, inline="always", error_model="numpy")
def _stage_events(ts, window, events):
    """Payload and external force at stage time ``ts``, exactly as
    :func:`plant_interval` takes them; ``window`` = (lo, hi, payload, force)
    from the previous stage, looked up again only when ``ts`` leaves it."""
    if not (window[0] <= ts < window[1]):
        window = event_window(ts, events)
    return window


@njit(cache=True, error_model="numpy")
def _events_held(t0, h, substeps, events):
    """``(held, payload, force)``: whether payload and external force are the
    same at every RK4 stage time of an interval, and their values at the first."""
    w = _stage_events(_stage_time(t0, 0, h), (-_INF, -_INF, 0.0, 0.0), events)
    payload, force = w[2], w[3]
    for j in range(substeps):
        for c in range(4):
            w = _stage_events(_stage_time(t0 + j * h, c, h), w, events)
            if w[2] != payload or w[3] != force:
                return False, payload, force
    return True, payload, force


@njit(cache=True, inline="always", error_model="numpy")
def _all_equal(x, r0, r1):
    """``x[r0:r1]`` all equal (no temporary array: this runs every period)."""
    for i in range(r0 + 1, r1):
        if x[i] != x[r0]:
            return False
    return True


@njit(cache=True, error_model="numpy")
def _held_span(lo, hi, car, bounded, p, v, f, a, h, substeps, plant, work):
    """:func:`_held_rows` of the rows ``lo <= i < hi`` (all one preset)."""
    # The row views made once per interval, not at every substep (views cost
    # reference counting).
    par = (work[8, lo:hi], work[13, lo:hi], work[14, lo:hi],
           work[15, lo:hi], plant[P_DLIN, lo:hi], plant[P_DQUAD, lo:hi],
           plant[P_GEAR_RATIO, lo:hi], plant[P_TMAX, lo:hi], plant[P_WMAX, lo:hi],
           plant[P_BETA, lo:hi], plant[P_BRAKE, lo:hi], work[20, lo:hi])
    st = (work[1, lo:hi], work[2, lo:hi], work[3, lo:hi], work[4, lo:hi], work[5, lo:hi])
    _held_rows(h, substeps, p[lo:hi], v[lo:hi], f[lo:hi], a[lo:hi], par, st, car, bounded)


# Share of the distance to the end of its road piece that a vehicle may cover
# in an interval of the held-grade path, and the rounding allowed for per
# substep and unit of |position| (twice the worst case: the position and each
# stage position are rounded to half an ulp, <= 1.2e-16 |p|).
_PIECE_SHARE = 0.999
_ROUNDING = 4.5e-16


@njit(cache=True, error_model="numpy")
def _advance_held(r0, r1, p, v, f, a, dt, h, substeps, plant, uniform, payload, f_ext,
                  flat, prof, work):
    """:func:`advance_rows` over an interval in which the events hold ``payload``
    and ``f_ext`` throughout and each vehicle's grade is constant: the road
    by position is flat, or every vehicle stays on a piece of constant grade.
    Then each vehicle's load terms and 1/m are the same at every stage,
    computed here once. Returns False, with the vehicles untouched, where
    that does not hold.

    On a road with pieces (not ``flat``), a vehicle at ``p`` on the piece
    ``[lo, hi)`` stays on it for the interval if no stage speed exceeds
    ``vmax = 0.999 (min(p - lo, hi - p) - (substeps + 2) 4.5e-16 |p|) / dt``:
    in exact arithmetic a stage position is the start position plus at most
    ``dt`` times a stage speed, and the second term bounds the rounding of
    the positions computed on the way (a vehicle creeping within a few
    hundred ulps of a piece's end would otherwise cross it unseen). The stage
    loops keep each vehicle's largest stage speed: if any is over its
    ``vmax``, the interval is undone and run stage by stage. It is not tried
    where a vehicle is on a ramp, or where half of ``vmax`` is already below
    its speed (it would probably be undone). The held path then computes
    what the stage-by-stage path would: the same bits.
    """
    sn, cs = work[6], work[7]
    _road_pass(True, p, 0.0, work[9:13], sn, cs, prof.grade_x, prof.grade_th, r0, r1)
    lo, hi, slope, vmax, top = work[9], work[10], work[12], work[16], work[20]
    if not flat:
        n_off = 0
        for i in range(r0, r1):   # NaN (never over) for a diverged row
            room = min(p[i] - lo[i], hi[i] - p[i]) - (substeps + 2) * _ROUNDING * abs(p[i])
            vmax[i] = _PIECE_SHARE * room / dt   # < 0 (never held) if within rounding
            top[i] = abs(v[i])
            n_off += 1 if slope[i] != 0.0 or 2.0 * top[i] > vmax[i] else 0
        if n_off > 0:
            return False
    inv_m, pull, rolling = work[13], work[14], work[15]
    for i in range(r0, r1):
        m = plant[P_MASS, i] + payload
        inv_m[i] = 1.0 / m
        pull[i], rolling[i] = _load_terms(m, sn[i], cs[i], f_ext, plant[P_G, i],
                                          plant[P_CR, i])
        if not flat:
            work[17, i], work[18, i], work[19, i] = p[i], v[i], f[i]
    if uniform:
        _held_span(r0, r1, plant[P_KIND, r0] == KIND_CAR, not flat, p, v, f, a, h, substeps,
                   plant, work)
    else:  # a block mixing presets (rare) runs one row at a time
        for i in range(r0, r1):
            _held_span(i, i + 1, plant[P_KIND, i] == KIND_CAR, not flat, p, v, f, a, h,
                       substeps, plant, work)
    n_fast = 0
    if not flat:
        for i in range(r0, r1):
            n_fast += 1 if top[i] > vmax[i] else 0
    if n_fast == 0:
        return True
    for i in range(r0, r1):   # a vehicle may have left its piece: undo
        p[i], v[i], f[i] = work[17, i], work[18, i], work[19, i]
    return False


@njit(cache=True, error_model="numpy")
def advance_batch(p, v, f, a, t0, dt, substeps, plant, prof, work):
    """Advance every vehicle by one control period with its command held.

    The lockstep counterpart of :func:`plant_interval`, bit-identical to it
    row by row. ``plant`` is the transposed plant matrix (N_PLANT, nb),
    ``work`` a scratch array from :func:`batch_work` (it also caches road
    pieces between calls). ``p, v, f`` (nb,) are updated in place. Plant
    columns come from :meth:`Plant.pack` (finite, ``tau >= 0``): the loops
    take the actuator lag as on where ``1/tau > 0``.
    """
    advance_rows(0, p.shape[0], p, v, f, a, t0, dt, substeps, plant, prof, work)


@njit(cache=True, error_model="numpy")
def advance_rows(r0, r1, p, v, f, a, t0, dt, substeps, plant, prof, work):
    """:func:`advance_batch` of the vehicles ``r0 <= i < r1`` only (the rest
    untouched), so that threads can share the arrays without copying them.

    Allocates nothing: it runs once per control period and block, and with a
    few hundred rows a block, allocations were a tenth of the time.
    """
    gx, gth = prof.grade_x, prof.grade_th
    # A road with one grade everywhere needs no per-stage lookups.
    flat = gx.shape[0] <= 1 or _all_equal(gth, 0, gth.shape[0])
    by_time = prof.grade_by_time
    tau, inv_tau = plant[P_TAU], work[8]
    for i in range(r0, r1):
        inv_tau[i] = 1.0 / tau[i] if tau[i] > 0.0 else 0.0
    uniform = _all_equal(plant[P_KIND], r0, r1)
    h = dt / substeps
    if not by_time:
        held, payload, f_ext = _events_held(t0, h, substeps, prof.events)
        if held and _advance_held(r0, r1, p, v, f, a, dt, h, substeps, plant, uniform,
                                  payload, f_ext, flat, prof, work):
            return
    # ``car`` must be loop-invariant for the stage loop to vectorise, so a
    # block mixing presets (rare) runs one row at a time.
    if uniform:
        _stage_interval(r0, r1, plant[P_KIND, r0] == KIND_CAR, p, v, f, a, t0, h, substeps,
                        flat, by_time, plant, prof, work)
    else:
        for i in range(r0, r1):
            _stage_interval(i, i + 1, plant[P_KIND, i] == KIND_CAR, p, v, f, a, t0, h,
                            substeps, flat, by_time, plant, prof, work)


@njit(cache=True, error_model="numpy")
def _stage_interval(lo, hi, car, p, v, f, a, t0, h, substeps, flat, by_time, plant, prof,
                    work):
    """:func:`advance_rows` of the rows ``lo <= i < hi`` (one preset), stage by
    stage: the grade at each stage's position (or time) and the events at each
    stage's time.

    The ~30 row views are made once per interval, not at every stage (a view
    costs reference counting; this saved 5-10 % of the grade workload).
    """
    gx, gth, n = prof.grade_x, prof.grade_th, hi - lo
    pv, vv, fv, av = p[lo:hi], v[lo:hi], f[lo:hi], a[lo:hi]
    sp, sv, sf = work[0, lo:hi], work[1, lo:hi], work[2, lo:hi]
    ap, avv, af = work[3, lo:hi], work[4, lo:hi], work[5, lo:hi]
    sn, cs, inv_tau = work[6, lo:hi], work[7, lo:hi], work[8, lo:hi]
    inv_m, m_pay, mass = work[13, lo:hi], work[14, lo:hi], plant[P_MASS, lo:hi]
    g, cr, dlin, dquad = (plant[P_G, lo:hi], plant[P_CR, lo:hi], plant[P_DLIN, lo:hi],
                          plant[P_DQUAD, lo:hi])
    tau, gr, tmax = plant[P_TAU, lo:hi], plant[P_GEAR_RATIO, lo:hi], plant[P_TMAX, lo:hi]
    wmax, beta, brake = plant[P_WMAX, lo:hi], plant[P_BETA, lo:hi], plant[P_BRAKE, lo:hi]
    seg, sp_all, sn_all, cs_all = work[9:13], work[0], work[6], work[7]
    h6 = h / 6.0
    # Each vehicle's mass with the payload and its inverse, recomputed only when
    # the payload changes (the same values a stage would compute).
    payload = np.nan
    window = (-_INF, -_INF, 0.0, 0.0)
    for j in range(substeps):
        ta = t0 + j * h
        sp[:] = pv
        sv[:] = vv
        sf[:] = fv
        for c in range(4):
            ts = _stage_time(ta, c, h)
            if not flat or j + c == 0:
                _road_pass(not by_time, sp_all, ts, seg, sn_all, cs_all, gx, gth, lo, hi)
            window = _stage_events(ts, window, prof.events)
            if window[2] != payload:
                payload = window[2]
                for i in range(n):
                    m_pay[i] = mass[i] + payload
                    inv_m[i] = 1.0 / m_pay[i]
            _stage_rows(c, h, pv, vv, fv, av, sp, sv, sf, ap, avv, af, sn, cs, inv_tau,
                        m_pay, inv_m, window[3], g, cr, dlin, dquad, tau, gr, tmax, wmax,
                        beta, brake, car)
        for i in range(n):
            pv[i] += h6 * ap[i]
            vv[i] += h6 * avv[i]
            fv[i] += h6 * af[i]


@njit(cache=True)
def aligned_rows(rows, nb):
    """Zeros of shape ``(rows, cols)``, ``cols >= nb``, every row 64-byte aligned.

    ``cols`` is ``nb`` rounded up to a multiple of 8 values, plus 8 if that
    made rows a multiple of 4 kB apart. So vector loads of a row never straddle
    two cache lines (numba aligns arrays to 32 bytes only, and a row of ``nb``
    values would start anywhere), threads writing neighbouring blocks of rows
    that start at multiples of 8 never share a line, and rows do not alias in
    the cache's 4 kB sets. Measured at 4096 envs, the env's compiled step went
    from 245-300 to ~225 us on one thread and from ~200 to ~155 us on two (the
    blocks' edges had shared cache lines).
    """
    cols = (nb + 7) // 8 * 8
    cols += 8 if cols % 512 == 0 else 0
    buf = np.zeros(rows * cols + 8)
    skip = (-buf.ctypes.data) % 64 // 8
    return buf[skip:skip + rows * cols].reshape((rows, cols))


@njit(cache=True)
def batch_work(nb):
    """Scratch space for :func:`advance_batch` over ``nb`` vehicles.

    Rows 0-5 stage state and weighted sums, 6-7 sin and cos of each vehicle's
    grade, 8 1/tau, 9-12 each vehicle's cached road piece (lo, hi, theta_lo,
    slope), 13 each vehicle's 1/m (with the payload), 14-15 the held-input
    path's load terms (the stage-by-stage path keeps the mass with the payload
    in 14), 16 the held path's speed bounds, 17-19 its saved ``p, v, f``, 20
    each vehicle's largest stage speed in it.
    See :func:`aligned_rows` for the layout.
    """
    work = aligned_rows(_N_WORK, nb)
    work[9, :] = _INF   # road-piece cache starts invalid (lo = inf > any x)
    work[10, :] = -_INF
    return work


@njit(cache=True, error_model="numpy")
def _pid_rows(noise_k, r, first, ts, v, e, z, a, u, lo, hi, g):
    """:func:`control_step` of every row at one instant, for PID-family laws.

    One loop over rows with the gains ``g`` (7, nb) = kp, ki, kd,
    feedforward, slope, integrate flag, anti-windup gain as rows, so it
    vectorises; the same operations as :func:`control_step`. Updates ``e, z``
    and fills the outputs ``u`` and commands ``a``.
    """
    kp, ki, kd, ff, slope, integ, aw = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    for i in range(v.shape[0]):
        ei, d = _measure(v[i] + noise_k, r, e[i], first, ts)
        s, ui = _pid(ei, z[i], d, r, kp[i], ki[i], kd[i], ff[i], slope[i])
        ai = min(max(ui, lo[i]), hi[i])
        z[i] = _integrator(z[i], ei, s, ai, ts, integ[i], aw[i], slope[i])
        e[i], u[i], a[i] = ei, ui, ai


@njit(cache=True, error_model="numpy")
def _pid_gains(cp):
    """The rows' PID-family gains as rows (for :func:`_pid_rows`), or an empty
    array if any row has another law."""
    nb = cp.shape[0]
    g = np.empty((7, nb))
    for i in range(nb):
        if cp[i, C_LAW] != LAW_PID:
            return np.empty((7, 0))
        g[0, i], g[1, i], g[2, i], g[3, i] = cp[i, C_KP], cp[i, C_KI], cp[i, C_KD], cp[i, C_FF]
        g[4, i], g[5, i], g[6, i] = cp[i, C_SLOPE], cp[i, C_INTEGRATE], cp[i, C_AW_GAIN]
    return g


# Control periods ahead that the output rows are prefetched: one row's
# samples are 16 kB apart in ``out`` (B, N + 1, 5), so each row's store misses
# the cache at the start of a new line and no hardware prefetcher follows.
_OUT_AHEAD = 2


@njit(cache=True, error_model="numpy")
def _all_finite(u, z):
    """True if every ``u[i]`` and ``z[i]`` is finite (one branch-free pass)."""
    bad = 0
    for i in range(u.shape[0]):
        bad |= not (math.isfinite(u[i]) and math.isfinite(z[i]))
    return bad == 0


@njit(cache=True, error_model="numpy")
def _store_outputs(out, k, p, v, f, u, a):
    """``out[i, k] = (p, v, f, u, a)[i]`` for every row (rows with the actuator
    lag, none diverged), prefetching each row's sample ``_OUT_AHEAD`` later."""
    ahead = min(k + _OUT_AHEAD, out.shape[1] - 1)
    for i in range(p.shape[0]):
        _prefetch_write(out, i, ahead)
        out[i, k, 0] = p[i]
        out[i, k, 1] = v[i]
        out[i, k, 2] = f[i]
        out[i, k, 3] = u[i]
        out[i, k, 4] = a[i]


@njit(cache=True, error_model="numpy")
def _lockstep(pp, cp, prof, out, diverged_at, feasible):
    """Closed-loop runs of all rows of ``pp``/``cp`` in lockstep (one thread)."""
    nb = pp.shape[0]
    n = prof.ref.shape[0] - 1
    ts = prof.ts
    plant = aligned_rows(pp.shape[1], nb)  # rows of the block's plant columns
    plant[:, :nb] = pp.T
    p = np.zeros(nb)
    v = np.full(nb, prof.v0)
    f = np.empty(nb)
    a = np.empty(nb)
    z = np.empty(nb)
    e = np.zeros(nb)
    work = batch_work(nb)
    for i in range(nb):
        z[i], f[i], feasible[i] = initial_state(pp[i], cp[i], prof)
        diverged_at[i] = -1
    # Every row's force output is its lag state (else the actuator's map).
    lag = _all_positive(plant[P_TAU, :nb])
    g = _pid_gains(cp) if _VECTOR_LAWS else np.empty((7, 0))
    vector = g.shape[1] == nb
    ubuf = np.empty(nb)
    n_div = 0    # rows diverged so far
    for k in range(n + 1):
        if vector:
            _pid_rows(prof.noise[k], prof.ref[k], k == 0, ts, v, e, z, a, ubuf,
                      plant[P_CMD_LO], plant[P_CMD_HI], g)
        if vector and lag and n_div == 0 and _all_finite(ubuf, z):
            _store_outputs(out, k, p, v, f, ubuf, a)  # _outputs_rows, without branches
        else:
            n_div += _outputs_rows(k, pp, cp, prof, plant, vector, ubuf, p, v, f, a, e, z,
                                   out, diverged_at)
        if k == n:
            break
        advance_batch(p, v, f, a, k * ts, ts, prof.substeps, plant, prof, work)
        for i in range(nb):
            if diverged_at[i] < 0 and not _bounded(p[i], v[i], f[i], prof.v_limit):
                diverged_at[i] = k + 1
                p[i] = v[i] = f[i] = np.nan
                n_div += 1


@njit(cache=True, error_model="numpy")
def _outputs_rows(k, pp, cp, prof, plant, vector, ubuf, p, v, f, a, e, z, out, diverged_at):
    """Sample ``k`` of every row of :func:`_lockstep` (the control step too if
    the laws are not all PID-family), marking rows whose law output or
    integrator is not finite as diverged. Returns how many it marked."""
    marked = 0
    ts = prof.ts
    for i in range(p.shape[0]):
        if diverged_at[i] >= 0:
            out[i, k, :] = np.nan
            a[i] = 0.0
            continue
        if vector:
            u = ubuf[i]
        else:
            e[i], u, a[i], z[i] = control_step(
                v[i] + prof.noise[k], prof.ref[k], e[i], z[i], k == 0, ts,
                plant[P_CMD_LO, i], plant[P_CMD_HI, i], cp[i])
        if not (math.isfinite(u) and math.isfinite(z[i])):
            diverged_at[i] = k
            marked += 1
            out[i, k, :] = np.nan
            p[i] = v[i] = f[i] = np.nan
            a[i] = 0.0
            continue
        out[i, k, 0] = p[i]
        out[i, k, 1] = v[i]
        out[i, k, 2] = f[i] if plant[P_TAU, i] > 0.0 else _plant_actuator(
            a[i], v[i], pp[i])
        out[i, k, 3] = u
        out[i, k, 4] = a[i]
    return marked


# Rows per lockstep block: at most _BLOCK_MAX (a block's state and scratch stay
# in L1/L2), and not under _BLOCK_MIN if that leaves a block: each block and
# control period has a fixed cost (not broken down; loop set-up and the runtime
# alias checks of loops over ~25 arrays are the likely part), and 32-row blocks
# were 2.8x slower per row than 128-row ones on one thread.
_BLOCK_MAX = 256
_BLOCK_MIN = 128


@njit(cache=True, parallel=True, nogil=True)
def rollout_batch(pp, cp, prof, out, diverged_at, feasible):
    """:func:`rollout` for each row of ``pp`` (B, N_PLANT) and ``cp`` (B, L).

    The rows are cut into contiguous blocks that the threads take as they
    become free; each block runs
    in lockstep (all rows share the time grid and the scenario profiles; each
    has its own plant, controller and divergence state). Fills ``out``
    (B, N + 1, 5), ``diverged_at`` (B,) and ``feasible`` (B,), bit-identical
    to calling :func:`rollout` on each row.
    """
    b = pp.shape[0]
    # A multiple of 8 blocks (balanced on 1, 2, 4 or 8 threads; numba's thread
    # count cannot be read here without making the kernel uncacheable), as
    # few as the size cap allows, halved while blocks would be under
    # _BLOCK_MIN rows.
    nblk = 8 * max((b + 8 * _BLOCK_MAX - 1) // (8 * _BLOCK_MAX), 1)
    while nblk > 1 and b < nblk * _BLOCK_MIN:
        nblk //= 2
    size = max((b + nblk - 1) // nblk, 1)
    nblk = (b + size - 1) // size
    # One worker per block (a thread's later workers find nothing left) claims
    # blocks one at a time. The rows of a block do not depend on who runs it.
    claimed = np.zeros(1, dtype=np.int64)
    for _ in prange(nblk):
        blk = _claim(claimed)
        while blk < nblk:
            lo = blk * size
            hi = min(lo + size, b)
            _lockstep(pp[lo:hi], cp[lo:hi], prof, out[lo:hi], diverged_at[lo:hi],
                      feasible[lo:hi])
            blk = _claim(claimed)


# --------------------------------------------------------------------------
# User-defined laws
# --------------------------------------------------------------------------
def specialise(law):
    """Compile ``(rollout, rollout_batch)`` with a user law in the loop.

    ``law(e, z, d, y, r) -> u`` must be a numba-jitted function of five
    floats: error, integrator state, error derivative, measured speed and
    reference. The loop bodies are the very same Python source as the
    built-in kernels; only the controller hooks are rebound, so the physics is
    not written twice. These specialisations are compiled once per law and are
    not cached on disk (numba cannot cache closures).
    """

    @njit
    def output(e, z, d, y, r, cp):
        u = law(e, z, d, y, r)
        return u, u

    @njit
    def preload(a0, v0, cp):
        return 0.0, law(0.0, 0.0, 0.0, v0, v0)

    step = _rebind(control_step, _control_step=_rebind(_control_step, control_law=output))
    init = _rebind(initial_state, controller_preload=preload)
    single = _rebind(rollout, _rollout=_rebind(_rollout, control_step=step,
                                               initial_state=init))
    lock = _rebind(_lockstep, _outputs_rows=_rebind(_outputs_rows, control_step=step),
                   initial_state=init, _VECTOR_LAWS=False)
    batch = _rebind(rollout_batch, _lockstep=lock)
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
    # njit sets nopython itself (and warns if it is passed again).
    options = {k: v for k, v in dispatcher.targetoptions.items()
               if k not in ("cache", "nopython")}
    return njit(**options)(func)


# --------------------------------------------------------------------------
# Open-loop stepping for the gymnasium env (appended; uses the blocks above)
# --------------------------------------------------------------------------
# Columns of the env observation, in order.
OBS_FIELDS = ("error", "integral", "derivative", "speed", "reference")


@njit(cache=True, error_model="numpy")
def preset_grade(work, i, theta):
    """Pin row ``i`` of an :func:`advance_batch` scratch array to a constant grade.

    ``theta`` (rad) finite: the row's cached road piece becomes the whole
    line with that grade, so :func:`advance_batch` never looks the shared
    road up for this row (per-row constant grades in one lockstep batch).
    NaN: invalidate the cache so the row follows ``prof``'s road again.
    """
    if theta == theta:
        work[9, i], work[10, i], work[11, i], work[12, i] = -_INF, _INF, theta, 0.0
        work[6, i], work[7, i] = _sincos(theta)
    else:
        work[9, i], work[10, i], work[11, i], work[12, i] = _INF, -_INF, 0.0, 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _clip_obs(x, bound):
    x = x if math.isfinite(x) else 0.0
    return min(max(x, -bound), bound)


@njit(cache=True, error_model="numpy")
def _advance_group(rows, p, v, f, a, t0, dt, substeps, plant, prof, work):
    """:func:`advance_batch` on the rows ``rows`` only (gather, advance, scatter)."""
    m = rows.shape[0]
    gp, gv, gf, ga = np.empty(m), np.empty(m), np.empty(m), np.empty(m)
    gplant = np.empty((plant.shape[0], m))
    gwork = batch_work(m)
    for j in range(m):
        i = rows[j]
        gp[j], gv[j], gf[j], ga[j] = p[i], v[i], f[i], a[i]
        gplant[:, j] = plant[:, i]
        gwork[6, j], gwork[7, j] = work[6, i], work[7, i]
        gwork[9:13, j] = work[9:13, i]
    advance_batch(gp, gv, gf, ga, t0, dt, substeps, gplant, prof, gwork)
    for j in range(m):
        i = rows[j]
        p[i], v[i], f[i] = gp[j], gv[j], gf[j]
        work[6, i], work[7, i] = gwork[6, j], gwork[7, j]
        work[9:13, i] = gwork[9:13, j]


# Rows below which a parallel block is not worth the thread hand-off (a
# parallel region costs ~0.1 ms to launch).
_PAR_MIN_ROWS = 256


@njit(cache=True, error_model="numpy")
def _env_commands(r0, r1, act, mode, state, k, plant, cbase, use_base, ref, noise, ts):
    """Commands of the stepping rows ``r0 <= i < r1`` (and their observed integrator)."""
    n = ref.shape[0] - 1
    v, z, ep, zb, eb, ap = state[1], state[3], state[4], state[5], state[6], state[7]
    for i in range(r0, r1):
        if mode[i] != 0:
            continue
        lo, hi = plant[P_CMD_LO, i], plant[P_CMD_HI, i]
        c, h = 0.5 * (lo + hi), 0.5 * (hi - lo)
        x = act[i]
        x = -1.0 if x < -1.0 else (1.0 if x > 1.0 else x)   # the action box (NaN refused before)
        if use_base:
            kk = min(k[i], n)
            eb[i], u, _, zb[i] = control_step(v[i] + noise[kk, i], ref[kk, i], eb[i],
                                              zb[i], kk == 0, ts, lo, hi, cbase)
            a = u + h * x
        else:
            a = c + h * x
        ap[i] = min(max(a, lo), hi)
        z[i] += ts * ep[i]


@njit(cache=True, error_model="numpy")
def _env_restart(i, state, k, start, work, reward, terminated, truncated):
    """Row ``i`` back to its episode start (its parameters already set)."""
    k[i] = 0
    state[7, i] = 0.0
    state[0, i], state[1, i], state[2, i] = 0.0, start[0, i], start[1, i]
    state[3, i], state[5, i], state[6, i] = 0.0, start[2, i], 0.0
    preset_grade(work, i, start[3, i])
    reward[i] = 0.0
    terminated[i] = truncated[i] = False


@njit(cache=True, error_model="numpy")
def _env_finish(r0, r1, mode, state, k, plant, start, ref, noise, prof, work, weights,
                scales, obs, reward, terminated, truncated):
    """Restarts, then observations and rewards, of rows ``r0 <= i < r1``."""
    n = ref.shape[0] - 1
    ts, bound = prof.ts, scales[5]
    # Reciprocals: a multiplication per observation instead of a division.
    ie, iz, i_d, iy, ir, ierr = (1.0 / scales[0], 1.0 / scales[1], 1.0 / scales[2],
                                 1.0 / scales[3], 1.0 / scales[4], 1.0 / scales[6])
    p, v, f, z, ep, ap = state[0], state[1], state[2], state[3], state[4], state[7]
    for i in range(r0, r1):
        if mode[i] == 2:
            continue
        if mode[i] == 1:
            _env_restart(i, state, k, start, work, reward, terminated, truncated)
        else:
            k[i] += 1
            bad = not (_bounded(p[i], v[i], f[i], prof.v_limit) and math.isfinite(z[i]))
            terminated[i] = bad
            truncated[i] = (not bad) and k[i] >= n
            lo, hi = plant[P_CMD_LO, i], plant[P_CMD_HI, i]
            un = (ap[i] - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
            et = (ref[min(k[i], n), i] - v[i]) * ierr
            reward[i] = -weights[2] if bad else -(weights[0] * et * et
                                                  + weights[1] * un * un)
        kk = min(k[i], n)
        y = v[i] + noise[kk, i]
        r = ref[kk, i]
        e, d = _measure(y, r, ep[i], kk == 0, ts)   # as control_step
        ep[i] = e
        obs[i, 0] = _clip_obs(e * ie, bound)
        obs[i, 1] = _clip_obs(z[i] * iz, bound)
        obs[i, 2] = _clip_obs(d * i_d, bound)
        obs[i, 3] = _clip_obs(y * iy, bound)
        obs[i, 4] = _clip_obs(r * ir, bound)


@njit(cache=True, parallel=True)
def step_batch(act, mode, state, k, plant, cbase, use_base, start, ref, noise, prof,
               work, weights, scales, obs, reward, terminated, truncated, blocks):
    """One control period of many independent open-loop episodes (the env's step).

    ``mode[i]`` says what row ``i`` does: 0 apply ``act[i]`` (not NaN;
    clipped to [-1, 1] here) over ``[t_k, t_k+1]``; 1 restart (NEXT_STEP autoreset or
    reset()); 2 hold (nothing changes, its outputs are left as they are).

    ``state`` (8, >= nb; see :func:`aligned_rows`): position, speed, force,
    integral z of the measured error, previous measured error, base-controller
    integrator and previous error, applied command. ``k`` (nb,) int64 sample
    index. ``start`` (4, nb): initial speed, initial force, base-controller
    integrator preload and constant grade (rad; NaN: follow ``prof``'s road). ``ref``/``noise``
    (N + 1, nb) per-row reference and sensor noise; ``prof`` supplies road,
    events, Ts, substeps and the speed limit. ``cbase`` a controller vector
    run through :func:`control_step` when ``use_base`` (the action is then a
    residual on its output). ``weights`` = (error, effort, divergence
    penalty); ``scales`` = (e, z, d, y, r scales, observation bound, error
    scale of the reward). Fills ``obs`` (nb, 5) float32, ``reward``,
    ``terminated``, ``truncated``. When the episodes share the time grid and
    there are enough rows, each of up to ``blocks`` cores takes a block of
    rows through the whole step; else :func:`advance_batch` runs once (or
    once per instant when rows are at different times of a time-dependent
    scenario).
    """
    nb = act.shape[0]
    ts = prof.ts
    p, v, f, ap = state[0, :nb], state[1, :nb], state[2, :nb], state[7, :nb]
    n_step = n_hold = 0
    k_first, same_k = -1, True
    for i in range(nb):
        if mode[i] == 2:
            n_hold += 1
        elif mode[i] == 0:
            n_step += 1
            if k_first < 0:
                k_first = k[i]
            elif k[i] != k_first:
                same_k = False
    time_dep = prof.events.shape[0] > 0 or prof.grade_by_time
    lockstep = n_step > 0 and ((not time_dep and n_hold == 0) or (same_k and n_step == nb))
    if lockstep and blocks > 1 and nb >= 2 * _PAR_MIN_ROWS:
        # All rows share the time grid: each core takes a block of rows through
        # the whole step (commands, plant, observations). Static blocks: the
        # same rows stay on the same core (in its cache) from step to step,
        # which measured faster than handing out smaller blocks dynamically.
        nblk = min(blocks, nb // _PAR_MIN_ROWS)
        for blk in prange(nblk):
            lo = blk * nb // nblk // 8 * 8   # edges on cache lines (aligned_rows)
            hi = nb if blk == nblk - 1 else (blk + 1) * nb // nblk // 8 * 8
            _env_commands(lo, hi, act, mode, state, k, plant, cbase, use_base, ref,
                          noise, ts)
            advance_rows(lo, hi, p, v, f, ap, k_first * ts, ts, prof.substeps, plant, prof,
                         work)
            _env_finish(lo, hi, mode, state, k, plant, start, ref, noise, prof, work,
                        weights, scales, obs, reward, terminated, truncated)
        return
    _env_commands(0, nb, act, mode, state, k, plant, cbase, use_base, ref, noise, ts)
    if lockstep:
        advance_batch(p, v, f, ap, k_first * ts, ts, prof.substeps, plant, prof, work)
    elif n_step > 0:
        # Rows at different instants of a time-dependent scenario: one lockstep
        # call per instant.
        ks = np.empty(n_step, dtype=np.int64)
        j = 0
        for i in range(nb):
            if mode[i] == 0:
                ks[j] = k[i]
                j += 1
        for kk in np.unique(ks):
            m = 0
            for i in range(nb):
                if mode[i] == 0 and k[i] == kk:
                    m += 1
            rows = np.empty(m, dtype=np.int64)
            m = 0
            for i in range(nb):
                if mode[i] == 0 and k[i] == kk:
                    rows[m] = i
                    m += 1
            _advance_group(rows, p, v, f, ap, kk * ts, ts, prof.substeps, plant, prof,
                           work)
    _env_finish(0, nb, mode, state, k, plant, start, ref, noise, prof, work, weights,
                scales, obs, reward, terminated, truncated)

# Multilayer perceptron law (LAW_MLP)
# --------------------------------------------------------------------------
@njit(cache=True, inline="always", error_model="numpy")
def _mlp_act(x, code, alpha):
    """Activation ``code`` (ACT_*) at ``x``."""
    if code == ACT_RELU:
        return x if x > 0.0 else 0.0
    if code == ACT_LEAKY:
        return x if x >= 0.0 else alpha * x
    if code == ACT_TANH:
        return _tanh(x)
    return x


@njit(cache=True, error_model="numpy")
def mlp_forward(e, z, d, y, r, cp):
    """Command of the MLP packed in ``cp`` (layout :data:`MLP_LAYOUT`) at the inputs.

    The inputs are multiplied by ``in_scale``; hidden layers use ``activation``
    (alpha for leaky), the last layer ``out_activation``; the result is
    ``out_offset + out_scale*out``. Works in the scratch space at the tail of
    ``cp`` (no allocation), so ``cp`` must be writable and not shared between
    threads.
    """
    nl = int(cp[M_NLAYERS])
    act, alpha = cp[M_ACT], cp[M_ALPHA]
    src = int(cp[M_SCRATCH])
    dst = src + int(cp[M_WIDTH])
    cp[src] = e * cp[M_IN_SCALE]
    cp[src + 1] = z * cp[M_IN_SCALE + 1]
    cp[src + 2] = d * cp[M_IN_SCALE + 2]
    cp[src + 3] = y * cp[M_IN_SCALE + 3]
    cp[src + 4] = r * cp[M_IN_SCALE + 4]
    pos = N_MLP_HEADER
    out = 0.0
    for layer in range(nl):
        n_out = int(cp[pos])
        n_in = int(cp[pos + 1])
        w = pos + 2
        b = w + n_out * n_in
        last = layer == nl - 1
        for i in range(n_out):
            acc = cp[b + i]
            row = w + i * n_in
            for j in range(n_in):
                acc += cp[row + j] * cp[src + j]
            if last:
                out = _mlp_act(acc, cp[M_OUT_ACT], 0.0)
            else:
                cp[dst + i] = _mlp_act(acc, act, alpha)
        src, dst = dst, src
        pos = b + n_out
    return cp[M_OUT_OFFSET] + cp[M_OUT_SCALE] * out

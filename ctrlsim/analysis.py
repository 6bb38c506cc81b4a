"""Linear analysis of a scenario's loop: operating point, modes, circle criterion, noise gain.

A built-in controller is ``u = phi(s)`` with ``phi`` piecewise linear of slopes 1 (s >= 0)
and alpha (s < 0); ReLU is alpha = 0 and linear is alpha = 1. About an operating point the
plant is linear (its Jacobian, written out below from docs/model.md), the controller is
linear apart from ``phi``, and ``phi`` is slope-restricted to [alpha, 1]. That is a Lur'e
system, and this module

- finds the operating point (final set speed, the grade beyond the road's last breakpoint
  or at the end time, final payload and force),
- linearises the plant there, actuator lag included, as a ``control.StateSpace`` from the
  command to the speed,
- discretises it with a zero-order hold at the control period (``control.c2d``) and closes
  the sampled-data loop for each linear mode of ``phi`` (``control.feedback``): poles,
  damping, natural frequency, predicted overshoot and settling time,
- applies the discrete-time circle criterion for ``phi`` in the sector [alpha, 1],
- bounds how far sensor noise can move the command in one sample (a Lipschitz constant).

What exactly is certified is in docs/analysis.md. Nothing here simulates: the simulated
metrics shown next to the predictions come from :func:`ctrlsim.simulate` and
:func:`ctrlsim.sweep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import control
import numpy as np

from .controllers import Controller, as_controller
from .kernels import _phi_inv
from .metrics import step_info
from .scenario import SPEED_LIMIT, Scenario, as_scenario
from .validation import ParameterError, finite_float

__all__ = ["Analysis", "OperatingPoint", "Mode", "RestPoint", "CircleResult", "StabilityMap",
           "analyze", "operating_point", "rest_point", "linearize_plant", "lure_loop",
           "close_loop", "circle_criterion", "certify", "lipschitz", "settles",
           "stability_map", "nyquist_figure", "stability_map_figure"]

# Rolling resistance and the brake use tanh(v / V_SMOOTH) as a smoothed sign.
V_SMOOTH = 0.1
# Frequencies (rad/sample) on which the circle condition is checked: dense near 0, where
# an integrator makes the loop gain large, and uniform up to the Nyquist frequency.
_OMEGA = np.unique(np.concatenate([np.geomspace(1e-7, 1e-2, 600),
                                   np.linspace(1e-2, math.pi, 6000)]))
# Certified only if Re Z stays above this on the frequency grid (not merely > 0).
CERTIFY_TOL = 1e-6


@dataclass(frozen=True)
class OperatingPoint:
    """Equilibrium the analysis linearises about.

    Attributes
    ----------
    speed : float
        m/s: the final set speed (with ki = 0, the speed where the loop's steady error
        balances).
    grade : float
        rad, the final grade.
    mass : float
        kg, vehicle plus the payload in effect at the end.
    force_ext : float
        N, external force in effect at the end.
    force : float
        N, actuator force that holds ``speed``.
    command : float
        Command ``a*`` producing ``force``.
    preactivation : float
        ``s*`` with ``phi(s*) = a*``; its sign says which linear mode is active.
    feasible : bool
        False if the actuator or the activation cannot produce ``a*`` (e.g. ReLU would have
        to brake, or the command is beyond the limits): there is no equilibrium at the set
        speed to certify. Also False with ki = 0 when the balancing command is on a limit
        (the clip holds it: no linear mode applies).
    reason : str
        Why it is infeasible ("" if feasible).
    """

    speed: float
    grade: float
    mass: float
    force_ext: float
    force: float
    command: float
    preactivation: float
    feasible: bool
    reason: str = ""

    @property
    def active_slope_is_one(self) -> bool:
        return self.preactivation >= 0.0


@dataclass(frozen=True)
class Mode:
    """One linear mode of the loop (phi replaced by the line of slope ``slope``)."""

    slope: float
    poles: np.ndarray
    damping: float
    wn: float
    stable: bool
    spectral_radius: float
    overshoot: float
    settling_time: float
    active: bool

    def to_dict(self) -> dict:
        return {"slope": self.slope,
                "poles": [[float(p.real), float(p.imag)] for p in self.poles],
                "damping": self.damping, "wn": self.wn, "stable": bool(self.stable)}


@dataclass(frozen=True)
class RestPoint:
    """Where a loop with anti-windup comes to rest when it cannot hold the set speed.

    With back-calculation (``kaw > 0``) the integrator settles where
    ``e + (kaw/ki)(phi_inv(a) - s) = 0`` while the command stays on a limit or the ReLU
    coasts; the plant then runs at that constant command.

    Attributes
    ----------
    speed : float
        m/s, where the plant balances the constant command.
    command : float
        The command held there (a limit, or 0 while coasting).
    preactivation : float
        ``s`` at rest: past the limit, or negative while coasting.
    kind : str
        ``"coasting"``, ``"on the upper limit"`` or ``"on the lower limit"``.
    mode : Mode
        The loop linearised there: the command is locally constant, so its poles are the
        plant's (sampled) and the integrator's ``1 - Ts*kaw`` (and 0 for ``kd``).
    """

    speed: float
    command: float
    preactivation: float
    kind: str
    mode: Mode

    @property
    def locally_stable(self) -> bool:
        return self.mode.stable

    def to_dict(self) -> dict:
        return {"speed": self.speed, "command": self.command,
                "preactivation": self.preactivation, "kind": self.kind,
                "locally_stable": bool(self.locally_stable),
                "spectral_radius": self.mode.spectral_radius}


@dataclass(frozen=True)
class CircleResult:
    """Discrete-time circle criterion for ``phi`` in ``sector``.

    ``margin`` is ``min over the unit circle of Re Z`` with ``Z = (1 + hi G)/(1 + lo G)``
    when the loop with the lower slope is stable, else ``1 - spectral radius`` of that
    loop (<= 0). Certified iff the lower-slope loop is stable and the margin is positive.
    """

    sector: tuple[float, float]
    certified: bool
    margin: float
    lower_loop_stable: bool
    reason: str
    omega: np.ndarray = field(repr=False)
    G: np.ndarray = field(repr=False)
    popov_certified: bool | None = None
    popov_margin: float = math.nan
    popov_q: float = math.nan

    def to_dict(self) -> dict:
        return {"sector": list(self.sector), "certified": bool(self.certified),
                "margin": float(self.margin), "reason": self.reason,
                "jury_lee": None if self.popov_certified is None else {
                    "certified": bool(self.popov_certified),
                    "margin": float(self.popov_margin), "q": float(self.popov_q)}}


@dataclass(frozen=True, eq=False)
class Analysis:
    """Result of :func:`analyze`."""

    scenario: Scenario
    controller: Controller
    operating_point: OperatingPoint
    plant: control.StateSpace
    loop: control.StateSpace
    modes: tuple[Mode, ...]
    circle: CircleResult
    lipschitz: float
    simulated: dict[str, float] | None
    simulated_ok: bool | None
    rest: RestPoint | None = None

    @property
    def locally_stable(self) -> bool | None:
        """Whether the equilibrium is locally exponentially stable, from its active mode.

        Away from the kink (``s* != 0``) phi is linear near the operating point, so the
        real loop is, locally, the active mode (Lyapunov's indirect method): stable iff
        that mode is. None without an operating point or with ``s*`` on the kink, where
        only the sector certificate speaks.
        """
        op = self.operating_point
        on_kink = op.preactivation == 0.0 and self.controller.slope != 1.0
        if not op.feasible or on_kink:
            return None
        return any(m.active and m.stable for m in self.modes)

    def noise_bound(self, eps: float) -> float:
        """Largest change of the command in one sample for measurement errors ``|n| <= eps``."""
        eps = finite_float("eps", eps)
        if eps < 0.0:
            raise ParameterError("eps", f"is a bound on |n|, must be >= 0, got {eps:g}")
        return self.lipschitz * eps

    def to_dict(self) -> dict:
        """The JSON of ``ctrlsim analyze --json``."""
        p, op = self.plant, self.operating_point
        return {"scenario": self.scenario.name, "controller": self.controller.spec,
                "operating_speed": op.speed, "feasible": bool(op.feasible),
                "reason": op.reason, "locally_stable": self.locally_stable,
                "plant": {k: np.asarray(getattr(p, k), dtype=float).tolist()
                          for k in ("A", "B", "C", "D")},
                "modes": [m.to_dict() for m in self.modes],
                "circle": self.circle.to_dict(), "lipschitz": self.lipschitz,
                "rest": None if self.rest is None else self.rest.to_dict()}


# --------------------------------------------------------------------------
# Operating point and plant linearisation (docs/model.md, "Plant")
# --------------------------------------------------------------------------
def _final_conditions(sc: Scenario) -> tuple[float, float, float, float]:
    """(set speed, grade rad, payload kg, external force N) in effect at the end of the run."""
    t_end = sc.duration
    r = float(sc.reference.sample(np.array([t_end]), sc.initial_speed)[0])
    pts = sc.road.grade_deg
    if not pts:
        grade = 0.0
    elif sc.road.by == "time":
        grade = float(np.interp(t_end, [x for x, _ in pts], [g for _, g in pts]))
    else:  # by position: the grade beyond the last breakpoint, where the road settles
        grade = float(pts[-1][1])
    active = [e for e in sc.events if e.at <= t_end < e.until]
    return (r, math.radians(grade), float(sum(e.payload for e in active)),
            float(sum(e.force for e in active)))


def _resistance(plant, v: float, m: float, theta: float) -> tuple[float, float]:
    """Rolling resistance + drag and its derivative in v."""
    th = math.tanh(v / V_SMOOTH)
    crg = plant.rolling_resistance * m * plant.gravity * math.cos(theta)
    f = crg * th + plant.drag_linear * v + plant.drag_quadratic * v * abs(v)
    df = crg * (1.0 - th * th) / V_SMOOTH + plant.drag_linear + 2.0 * plant.drag_quadratic * abs(v)
    return f, df


def _actuator(plant, a: float, v: float) -> tuple[float, float, float]:
    """Actuator force target and its partial derivatives in a and v."""
    if plant.preset == "robot":
        return a, 1.0, 0.0
    n = plant.gear_ratios[plant.gear - 1]
    if a >= 0.0:
        w = n * v
        x = w / plant.omega_max - 1.0
        torque = plant.torque_max * (1.0 - plant.torque_beta * x * x)
        if torque <= 0.0:
            return 0.0, 0.0, 0.0
        dtorque = -2.0 * plant.torque_max * plant.torque_beta * x / plant.omega_max
        return n * torque * a, n * torque, n * n * dtorque * a
    th = math.tanh(v / V_SMOOTH)
    bf = plant.brake_force_max
    return bf * a * th, bf * th, bf * a * (1.0 - th * th) / V_SMOOTH


def _command_for(plant, force: float, v: float) -> float | None:
    """The command whose actuator force at speed v is ``force`` (None: none can)."""
    if plant.preset == "robot":
        return force
    if force >= 0.0:
        gain = _actuator(plant, 1.0, v)[1]
    else:
        gain = _actuator(plant, -1.0, v)[1]
    if gain <= 0.0:
        return None if force != 0.0 else 0.0
    return force / gain


def _phi(s: float, alpha: float) -> float:
    return s if s >= 0.0 else alpha * s


def _needed(plant, v: float, m: float, theta: float, f_ext: float) -> float:
    """Actuator force that holds speed ``v``: resistance and gravity less the external force."""
    return _resistance(plant, v, m, theta)[0] + m * plant.gravity * math.sin(theta) - f_ext


def operating_point(scenario: Scenario, controller: Controller) -> OperatingPoint:
    """Equilibrium of the loop at the end of the scenario (see :class:`OperatingPoint`)."""
    sc, ctl = scenario, controller
    plant = sc.plant
    r, theta, payload, f_ext = _final_conditions(sc)
    m = plant.mass + payload
    alpha = ctl.slope
    lo, hi = plant.command_limits

    def needed(v: float) -> float:
        return _needed(plant, v, m, theta, f_ext)

    # With back-calculation the integrator stays bounded when the command clips or the
    # ReLU coasts, so the loop can rest at another speed (rest_point finds it).
    aw = ("; with anti-windup (kaw > 0) the loop can come to rest at another speed "
          "instead, coasting or on a limit" if ctl.kaw > 0.0 and ctl.ki != 0.0 else "")
    v = r
    if ctl.ki == 0.0:
        # No integral action: the speed settles where the proportional command balances.
        def gap(v: float) -> float:
            a = min(max(_phi(ctl.kp * (r - v) + ctl.feedforward * r, alpha), lo), hi)
            return _actuator(plant, a, v)[0] - needed(v)
        v = _bracket_root(gap, r)
        if v is None:
            return OperatingPoint(r, theta, m, f_ext, math.nan, math.nan, math.nan, False,
                                  "ki = 0 and no speed balances the proportional command")
    force = needed(v)
    a = _command_for(plant, force, v)
    if a is None:
        return OperatingPoint(v, theta, m, f_ext, force, math.nan, math.nan, False,
                              f"the actuator cannot produce {force:.4g} N at {v:g} m/s"
                              + aw)
    if not lo <= a <= hi:
        return OperatingPoint(v, theta, m, f_ext, force, a, math.nan, False,
                              f"holding {v:g} m/s needs command {a:.4g}, beyond the limits "
                              f"[{lo:g}, {hi:g}]" + aw)
    if ctl.ki == 0.0:
        s = ctl.kp * (r - v) + ctl.feedforward * r
        u = _phi(s, alpha)
        if not lo < u < hi:
            # The clip holds the command: locally the loop is open (slope 0), which
            # neither linear mode describes.
            return OperatingPoint(v, theta, m, f_ext, force, a, s, False,
                                  f"ki = 0 and the speed settles at {v:.4g} m/s with the "
                                  f"command on its limit (law output {u:.4g}, limits "
                                  f"[{lo:g}, {hi:g}]): the clip holds it there, so the "
                                  "loop is open and its linear modes do not apply")
    elif a < 0.0 and alpha == 0.0:
        return OperatingPoint(v, theta, m, f_ext, force, a, math.nan, False,
                              f"holding {v:g} m/s needs braking (command {a:.4g}) and phi "
                              "has slope 0 for s < 0 (ReLU): it can only coast" + aw)
    else:
        s = a / alpha if a < 0.0 else a
    return OperatingPoint(v, theta, m, f_ext, force, a, s, True)


def rest_point(scenario: Scenario, controller: Controller, op: OperatingPoint,
               horizon: float | None = None) -> RestPoint | None:
    """The rest point of a loop with anti-windup whose set speed ``op`` is infeasible.

    The command it cannot give is replaced by the limit it runs into (or 0 for a ReLU
    that would have to brake); the speed is where the plant balances that command, and
    the integrator rests where the anti-windup cancels the error. None if the loop has no
    anti-windup (its integrator winds up), ``op`` is feasible, no speed balances the
    command, or the law at rest would not keep the command there.
    """
    sc, ctl = scenario, controller
    if op.feasible or ctl.ki == 0.0 or ctl.kaw <= 0.0 or not math.isfinite(op.command):
        return None
    plant = sc.plant
    lo, hi = plant.command_limits
    if op.command < 0.0 and ctl.slope == 0.0:  # a ReLU cannot brake, whatever the limit
        a, kind = 0.0, "coasting"
    elif op.command > hi:
        a, kind = hi, "on the upper limit"
    elif op.command < lo:
        a, kind = lo, "on the lower limit"
    else:
        return None
    r = op.speed  # with integral action the operating point is at the set speed
    # Far from the set speed, possibly: out to the divergence limit, e.g. a car that
    # coasts down a steep hill, or one that rolls back at full throttle.
    v = _bracket_root(lambda v: _actuator(plant, a, v)[0]
                      - _needed(plant, v, op.mass, op.grade, op.force_ext), r,
                      widths=_WIDTHS + (200.0, SPEED_LIMIT))
    if v is None:
        return None
    # The pre-activation the rest command comes from: the anti-windup's phi^-1, the
    # kernel's own (it is part of the control law the simulation runs).
    s = _phi_inv(a, ctl.slope) + (r - v) * ctl.ki / ctl.kaw
    u = _phi(s, ctl.slope)
    holds = s < 0.0 if kind == "coasting" else (u > hi if a == hi else u < lo)
    if not holds:
        return None
    rest = OperatingPoint(v, op.grade, op.mass, op.force_ext,
                          _needed(plant, v, op.mass, op.grade, op.force_ext), a, s, False)
    loop = lure_loop(linearize_plant(sc, rest), ctl, sc.control_period, clipped=True)
    mode = _mode(loop, 0.0, sc.control_period, horizon or sc.duration, active=True)
    return RestPoint(speed=v, command=a, preactivation=s, kind=kind, mode=mode)


# Half-widths (m/s) of the brackets tried around a starting speed, nearest first.
_WIDTHS = (0.1, 0.5, 2.0, 10.0, 50.0)


def _bracket_root(f, x0: float, widths: tuple[float, ...] = _WIDTHS) -> float | None:
    """A root of ``f`` near ``x0``: the nearest bracket of the widths tried, either side."""
    from scipy.optimize import brentq

    f0 = f(x0)
    if f0 == 0.0:
        return x0
    for width in widths:
        for x1 in (x0 - width, x0 + width):
            if f(x1) * f0 < 0.0:
                return float(brentq(f, min(x0, x1), max(x0, x1), xtol=1e-12))
    return None


def linearize_plant(scenario: Scenario, op: OperatingPoint) -> control.StateSpace:
    """Analytic Jacobian of the plant about ``op``: command -> speed, continuous time.

    States are ``[v, F]`` with actuator lag, ``[v]`` without; position drops out (the
    grade is constant beyond the last breakpoint).
    """
    plant = scenario.plant
    m = op.mass
    _, dres = _resistance(plant, op.speed, m, op.grade)
    _, dfa, dfv = _actuator(plant, op.command, op.speed)
    tau = plant.actuator_tau
    if tau > 0.0:
        A = [[-dres / m, 1.0 / m], [dfv / tau, -1.0 / tau]]
        B = [[0.0], [dfa / tau]]
        C = [[1.0, 0.0]]
        names = ["v", "F"]
    else:
        A = [[(dfv - dres) / m]]
        B = [[dfa / m]]
        C = [[1.0]]
        names = ["v"]
    return control.ss(A, B, C, [[0.0]], inputs=["a"], outputs=["v"], states=names,
                      name="plant_lin")


# --------------------------------------------------------------------------
# The sampled-data loop in Lur'e form
# --------------------------------------------------------------------------
def lure_loop(plant_ss: control.StateSpace, ctl: Controller, ts: float,
              clipped: bool = False) -> control.StateSpace:
    """Discrete loop without ``phi``: inputs ``[u, r]``, outputs ``[s, y]`` (deviations).

    ``u`` is the activation's output (held by the ZOH), ``s`` the pre-activation, ``r`` the
    reference and ``y`` the speed. States: the ZOH-discretised plant, the integrator ``z``
    (if ki != 0) and the previous error (if kd != 0). Anti-windup enters only for slope 0
    (ReLU), where ``phi_inv(phi(s)) - s = u - s`` is not zero; for alpha > 0 it vanishes
    away from the actuator limits. ``clipped``: about a point where the clip holds the
    command, where it enters as ``-s`` (close the loop with slope 0 then).
    """
    pd = control.c2d(plant_ss, ts, "zoh")
    Ad, Bd, Cd = (np.asarray(x, dtype=float) for x in (pd.A, pd.B, pd.C))
    n = Ad.shape[0]
    kp, ki, kd, ff = ctl.kp, ctl.ki, ctl.kd, ctl.feedforward
    kdt = kd / ts
    g = ctl.kaw / ki if ((ctl.slope == 0.0 or clipped) and ki != 0.0) else 0.0
    has_z, has_q = ki != 0.0, kd != 0.0
    nz = n + has_z + has_q
    iz, iq = n, n + has_z
    A = np.zeros((nz, nz))
    B = np.zeros((nz, 2))
    Cs = np.zeros(nz)  # s = Cs x + Ds_r r
    Cs[:n] = -(kp + kdt) * Cd[0]
    if has_z:
        Cs[iz] = ki
    if has_q:
        Cs[iq] = -kdt
    ds_r = kp + kdt + ff
    A[:n, :n] = Ad
    B[:n, 0] = Bd[:, 0]
    if has_z:  # z+ = z + Ts*(e + g*(u - s)), e = r - y
        A[iz, :n] = -ts * Cd[0]
        A[iz, iz] = 1.0
        A[iz] -= ts * g * Cs
        B[iz, 0] = ts * g
        B[iz, 1] = ts * (1.0 - g * ds_r)
    if has_q:  # q+ = e
        A[iq, :n] = -Cd[0]
        B[iq, 1] = 1.0
    C = np.zeros((2, nz))
    C[0] = Cs
    C[1, :n] = Cd[0]
    D = np.array([[0.0, ds_r], [0.0, 0.0]])
    return control.ss(A, B, C, D, ts, inputs=["u", "r"], outputs=["s", "y"], name="loop")


def close_loop(loop: control.StateSpace, slope: float) -> control.StateSpace:
    """The loop with ``u = slope * s`` added to its input ``u`` (positive feedback).

    What ``control.feedback(loop, K, sign=1)`` computes, written out: ``u`` feeds
    through to neither output (``D[:, 0] = 0``), so there is no algebraic loop to
    solve. (python-control's rank test of ``I - K D`` fails once ``kp`` is ~1e8,
    although that matrix is unit upper triangular.)
    """
    A, B, C, D = (np.asarray(x, dtype=float) for x in (loop.A, loop.B, loop.C, loop.D))
    K = np.array([[slope, 0.0], [0.0, 0.0]])
    return control.ss(A + B @ K @ C, B + B @ K @ D, C, D, loop.dt,
                      inputs=loop.input_labels, outputs=loop.output_labels)


def _least_damped(poles: np.ndarray, ts: float) -> tuple[float, float]:
    """Smallest damping ratio among the poles, and that pole's natural frequency (rad/s).

    Each pole p maps to the continuous-time ``lambda = ln(p)/Ts``; poles at the origin
    (pure delays) are skipped. Ties go to the slower pole.
    """
    live = poles[np.abs(poles) > 1e-12]
    if live.size == 0:
        return 1.0, math.inf
    lam = np.log(live.astype(complex)) / ts
    wn = np.abs(lam)
    zeta = np.where(wn > 0, -lam.real / np.where(wn > 0, wn, 1.0), 1.0)
    order = np.lexsort((wn, np.round(zeta, 12)))
    i = int(order[0])
    return float(zeta[i]), float(wn[i])


def _mode(loop: control.StateSpace, slope: float, ts: float, horizon: float,
          active: bool) -> Mode:
    cl = close_loop(loop, slope)
    poles = np.sort_complex(np.linalg.eigvals(np.asarray(cl.A, dtype=float)))
    rho = float(np.max(np.abs(poles))) if poles.size else 0.0
    stable = rho < 1.0 - 1e-9
    zeta, wn = _least_damped(poles, ts)
    overshoot = settling = math.nan
    if stable:
        n = max(int(round(horizon / ts)), 2)
        t = np.arange(n + 1) * ts
        resp = control.forced_response(cl[1, 1], T=t, U=np.ones(t.size))
        y = np.asarray(resp.outputs, dtype=float).ravel()
        if np.max(np.abs(y)) > 1e-9:  # else the reference does not reach the speed
            info = step_info(t, y, initial=0.0, final=1.0)
            overshoot, settling = info["overshoot"], info["settling_time"]
    return Mode(slope=float(slope), poles=poles, damping=zeta, wn=wn, stable=bool(stable),
                spectral_radius=rho, overshoot=float(overshoot), settling_time=float(settling),
                active=active)


def circle_criterion(loop: control.StateSpace, lo: float, hi: float) -> CircleResult:
    """Discrete circle criterion for ``u = phi(s)``, ``phi`` in the sector [lo, hi].

    In the standard form ``y = G v, v = -phi(y)`` the linear part is ``G = -(u -> s)``.
    Sufficient condition: the loop with slope ``lo`` is stable and
    ``Re[(1 + hi G(e^jw)) / (1 + lo G(e^jw))] > 0`` for all w in [0, pi] (Nyquist plot
    outside the disk through -1/lo and -1/hi; right of -1/hi when lo = 0).
    """
    ts = loop.dt
    gs = loop[0, 0]
    z = np.exp(1j * _OMEGA)
    A, B, C, D = (np.asarray(x, dtype=float) for x in (gs.A, gs.B, gs.C, gs.D))
    eye = np.eye(A.shape[0])
    # C (zI - A)^-1 B + D for all z at once (a batched solve; ss.horner is much slower).
    sol = np.linalg.solve(z[:, None, None] * eye - A, np.broadcast_to(B, (z.size, *B.shape)))
    G = -((C @ sol)[:, 0, 0] + D[0, 0])
    rho_lo = float(np.max(np.abs(np.linalg.eigvals(np.asarray(close_loop(loop, lo).A)))))
    lower_stable = rho_lo < 1.0 - 1e-9
    if not lower_stable:
        why = (f"the loop with the lower slope {lo:g} is not stable "
               f"(spectral radius {rho_lo:.6g})")
        # Jury-Lee needs that loop stable too (it transforms about the lower slope).
        popov = None if hi <= lo else False
        return CircleResult((lo, hi), False, 1.0 - rho_lo, False, why, _OMEGA, G, popov)
    with np.errstate(all="ignore"):
        Z = (1.0 + hi * G) / (1.0 + lo * G)
    re = Z.real[np.isfinite(Z.real)]
    margin = float(re.min()) if re.size else -math.inf
    ok = margin > CERTIFY_TOL
    why = "" if ok else ("the Nyquist plot of G enters the critical "
                         + ("disk" if lo > 0 else "half-plane"))
    del ts
    p_ok, p_margin, q = _jury_lee(G, lo, hi)
    return CircleResult((lo, hi), bool(ok), margin, True, why, _OMEGA, G, p_ok, p_margin, q)


_Q_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 71)])


def _jury_lee(G: np.ndarray, lo: float, hi: float) -> tuple[bool | None, float, float]:
    """Discrete Popov-type (Jury-Lee / Tsypkin) test for a monotone, slope-restricted phi.

    After the loop transformation ``G' = G/(1 + lo G)``, ``psi = phi - lo`` is nondecreasing
    with slope in [0, k], k = hi - lo. Sufficient (Jury & Lee 1964): some q >= 0 with
    ``1 + k Re[(1 + q(1 - e^-jw)) G'] - (q k^2 / 2) |(1 - e^-jw) G'|^2 > 0`` for all w.
    q = 0 is the circle criterion. Returns (verdict, best margin, its q); verdict None
    where it does not apply (a single slope).
    """
    k = hi - lo
    if k <= 0:
        return None, math.nan, math.nan
    with np.errstate(all="ignore"):
        Gt = G / (1.0 + lo * G)
    keep = np.isfinite(Gt)
    Gt, w = Gt[keep], _OMEGA[keep]
    diff = 1.0 - np.exp(-1j * w)
    base = 1.0 + k * Gt.real
    popov = k * (diff * Gt).real
    slope = 0.5 * k * k * np.abs(diff * Gt) ** 2
    margins = np.array([np.min(base + q * (popov - slope)) for q in _Q_GRID])
    i = int(np.argmax(margins))
    return bool(margins[i] > CERTIFY_TOL), float(margins[i]), float(_Q_GRID[i])


def lipschitz(controller, control_period: float) -> float:
    """Largest change of the command per unit change of the measured speed, one sample.

    For a built-in controller: the measurement at sample k enters through the proportional
    and derivative paths, the one at k-1 through the derivative, the integrator and its
    anti-windup correction (which is 1-Lipschitz in s). With ``phi`` and the clip at most
    max(1, alpha)-Lipschitz::

        L = max(1, alpha) * (|kp| + 2|kd|/Ts + Ts*(|ki| + kaw*(|kp| + |kd|/Ts)))

    (the Ts terms only with integral action). ``|u_k - u'_k| <= L * max(|n_{k-1}|, |n_k|)``
    for measurement errors ``n`` on samples k-1 and k with the state before them fixed.
    A controller with a ``lipschitz()`` method (e.g. an MLP: product of the layer spectral
    norms times the activation's constant) is asked instead.
    """
    ts = finite_float("control_period", control_period)
    own = getattr(controller, "lipschitz", None)
    if callable(own):
        try:
            return float(own())
        except TypeError:
            return float(own(ts))
    if not isinstance(controller, Controller):
        raise ParameterError("controller", "the Lipschitz bound needs a built-in controller "
                             "or one with a lipschitz() method")
    kp, ki, kd, kaw = (abs(getattr(controller, n)) for n in ("kp", "ki", "kd", "kaw"))
    total = kp + 2.0 * kd / ts
    if controller.ki != 0.0:
        total += ts * (ki + kaw * (kp + kd / ts))
    return max(1.0, controller.slope) * total


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------
def _prepare(scenario, controller):
    sc = as_scenario(scenario)
    ctl = sc.resolved_controller(as_controller(controller))
    if not isinstance(ctl, Controller):
        raise ParameterError("controller", "analyze needs a piecewise-linear PID-family "
                             "controller (relu, leaky or linear), got "
                             f"{getattr(ctl, 'spec', type(ctl).__name__)}")
    return sc, ctl


def certify(scenario, controller=None) -> tuple[OperatingPoint, CircleResult | None]:
    """Operating point and circle criterion only (no simulation, no step responses)."""
    sc, ctl = _prepare(scenario, controller)
    op = operating_point(sc, ctl)
    if not op.feasible:
        return op, None
    loop = lure_loop(linearize_plant(sc, op), ctl, sc.control_period)
    return op, circle_criterion(loop, min(ctl.slope, 1.0), max(ctl.slope, 1.0))


def analyze(scenario, controller=None, simulate: bool = True) -> Analysis:
    """Linear analysis of a scenario's loop (docs/analysis.md).

    Parameters
    ----------
    scenario : Scenario or str
        A string is a shipped scenario name or TOML path.
    controller : Controller or str, optional
        Default: the scenario's. Must be a built-in (relu, leaky, linear).
    simulate : bool
        Also simulate the scenario, for the metrics shown next to the predictions.

    Returns
    -------
    Analysis
        If the operating point is infeasible the linearisation is taken at the clipped
        command and the certificate is refused (``circle.certified`` False).
    """
    if not isinstance(simulate, bool):
        raise ParameterError("simulate", f"must be True or False, got {simulate!r}")
    sc, ctl = _prepare(scenario, controller)
    op = operating_point(sc, ctl)
    lin_op = op
    if not op.feasible:
        lo, hi = sc.plant.command_limits
        a = op.command if math.isfinite(op.command) else 0.0
        lin_op = OperatingPoint(op.speed, op.grade, op.mass, op.force_ext, op.force,
                                min(max(a, lo), hi), 0.0, False, op.reason)
    plant_ss = linearize_plant(sc, lin_op)
    ts = sc.control_period
    loop = lure_loop(plant_ss, ctl, ts)
    window = sc.step_window()
    horizon = (window[1] - window[0]) if window else sc.duration
    alpha = ctl.slope
    slopes = [1.0] if alpha == 1.0 else [1.0, alpha]
    modes = tuple(_mode(loop, s, ts, horizon,
                        active=op.feasible and (op.preactivation >= 0.0) == (s == 1.0))
                  for s in slopes)
    circle = circle_criterion(loop, min(alpha, 1.0), max(alpha, 1.0))
    if not op.feasible:
        circle = replace(circle, certified=False, popov_certified=False,
                         reason="no operating point: " + op.reason)
    simulated = ok = None
    if simulate:
        from .simulate import simulate as run

        tr = run(sc, ctl)
        simulated, ok = tr.metrics(), settles(tr)
    return Analysis(scenario=sc, controller=ctl, operating_point=op, plant=plant_ss,
                    loop=loop, modes=modes, circle=circle,
                    lipschitz=lipschitz(ctl, ts), simulated=simulated, simulated_ok=ok,
                    rest=rest_point(sc, ctl, op, horizon))


def settles(tr, band: float = 0.02) -> bool:
    """Simulated stable and settling: not diverged and, at the end, within the band.

    With a set-speed step: a finite settling time (2 % of the step). Without one: the
    last 10 % of the run within ``band`` of the set speed (relative, at least 0.01 m/s).
    Without sensor noise, the applied command must also have come to rest: over the last
    10 % its peak-to-peak swing below 10 % of the command range (a loop that chatters
    between the actuator limits inside the speed band is not stable). A drive cycle only
    has to stay finite.
    """
    if tr.diverged:
        return False
    sc = tr.scenario
    if sc.reference.kind == "cycle":
        return True  # tracking a drive cycle: nothing to settle to
    n = max(int(0.1 * tr.t.size), 2)
    if sc.sensor.speed_noise_std == 0.0:
        lo, hi = sc.plant.command_limits
        if np.ptp(tr.applied[-n:]) > 0.1 * (hi - lo):
            return False  # a limit cycle (e.g. chattering between the actuator limits)
    if sc.step_window() is not None:
        return math.isfinite(tr.metrics()["settling_time"])
    tol = np.maximum(band * np.abs(tr.reference[-n:]), 0.01)
    return bool(np.all(np.abs(tr.error[-n:]) <= tol))


# --------------------------------------------------------------------------
# Stability map
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StabilityMap:
    """Certificate vs simulation over a grid of a gain and alpha (grid order: gain, alpha)."""

    scenario: Scenario
    gain: str
    gains: np.ndarray
    alphas: np.ndarray
    certified: np.ndarray
    simulated_ok: np.ndarray
    margin: np.ndarray
    popov: np.ndarray

    @property
    def unsound(self) -> int:
        """Points certified but not stable-and-settling in simulation (must be 0)."""
        return int(np.count_nonzero(self.certified & ~self.simulated_ok))

    @property
    def popov_share(self) -> float:
        """Share of the simulated-stable points that the circle or Jury-Lee test accepts."""
        ok = np.count_nonzero(self.simulated_ok)
        return float(np.count_nonzero(self.popov & self.simulated_ok) / ok) if ok else math.nan

    @property
    def certified_share(self) -> float:
        """Share of the simulated-stable points that the certificate accepts."""
        ok = np.count_nonzero(self.simulated_ok)
        return float(np.count_nonzero(self.certified & self.simulated_ok) / ok) if ok else \
            math.nan


def stability_map(scenario, gains, alphas, gain: str = "kp", controller=None) -> StabilityMap:
    """Certified region vs the region simulation finds stable and settling.

    The simulations run through :func:`ctrlsim.sweep` over ``{gain: gains, "alpha": alphas}``.
    """
    from .sweep import sweep

    if gain not in ("kp", "ki"):
        raise ParameterError("gain", f"must be 'kp' or 'ki', got {gain!r}")
    sc = as_scenario(scenario)
    res = sweep(sc, {gain: gains, "alpha": alphas}, controller=controller,
                keep_trajectories=True)
    cert, ok, margin, popov = [], [], [], []
    for tr in res.trajectories:
        op, circ = certify(sc, tr.controller)
        cert.append(bool(circ is not None and circ.certified))
        popov.append(bool(circ is not None and (circ.popov_certified or circ.certified)))
        margin.append(circ.margin if circ is not None else math.nan)
        ok.append(settles(tr))
    shape = res.shape
    return StabilityMap(sc, gain, res.axes[0], res.axes[1],
                        np.array(cert).reshape(shape), np.array(ok).reshape(shape),
                        np.array(margin).reshape(shape), np.array(popov).reshape(shape))


# --------------------------------------------------------------------------
# Figures (built without pyplot)
# --------------------------------------------------------------------------
def nyquist_figure(an: Analysis):
    """Nyquist plot of the Lur'e linear part G with the circle criterion's critical region."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    from .plotting import plain_text

    circ = an.circle
    lo, hi = circ.sector
    G = circ.G
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    finite = np.isfinite(G)
    ax.plot(G.real[finite], G.imag[finite], color="#1f77b4", lw=1.5, label="G(e^{jω}), ω ≥ 0")
    ax.plot(G.real[finite], -G.imag[finite], color="#1f77b4", lw=1.0, ls="--",
            label="ω ≤ 0")
    if lo > 0 and hi > lo:
        c, rad = -(1 / lo + 1 / hi) / 2, (1 / lo - 1 / hi) / 2
        ax.add_patch(Circle((c, 0), rad, color="#d62728", alpha=0.25,
                            label=f"critical disk, sector [{lo:g}, {hi:g}]"))
    elif lo == 0:
        ax.axvspan(-1e9, -1 / hi, color="#d62728", alpha=0.25,
                   label=f"critical half-plane Re ≤ {-1 / hi:g}")
    ax.plot([-1 / hi], [0], "kx", ms=8, label=f"-1/{hi:g}")
    if 0 < lo < hi:
        ax.plot([-1 / lo], [0], "k+", ms=9, label=f"-1/{lo:g}")
    span = max(2.5 / hi, (1 / lo if lo > 0 else 0) * 1.2, 1.0)
    ax.set_xlim(-span, span * 0.6)
    ax.set_ylim(-span * 0.8, span * 0.8)
    ax.set_aspect("equal")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.set_xlabel("Re G")
    ax.set_ylabel("Im G")
    verdict = "certified" if circ.certified else "NOT certified"
    ax.set_title(plain_text(f"{an.scenario.name}, {an.controller.spec}: circle criterion "
                            f"{verdict} (margin {circ.margin:.3g})"), fontsize=9)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return fig


def stability_map_figure(smap: StabilityMap, title: str | None = None):
    """Grid of (gain, alpha): certified, simulated stable, both, neither."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .plotting import plain_text

    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.subplots()
    G, A = np.meshgrid(smap.gains, smap.alphas, indexing="ij")
    ok, circ, pop = smap.simulated_ok, smap.certified, smap.popov | smap.certified
    cats = [
        (circ & ok, "#2ca02c", "o", "circle criterion certifies, simulation settles"),
        (pop & ~circ & ok, "#1f77b4", "o", "only the Jury-Lee test certifies, settles"),
        (~pop & ok, "#ffbf00", "o", "not certified, simulation settles"),
        (~pop & ~ok, "#d62728", "s", "not certified, diverges or does not settle"),
        (pop & ~ok, "k", "X", "certified but fails (unsound)"),
    ]
    handles = []
    for mask, color, marker, label in cats:
        if mask.any():
            ax.scatter(A[mask], G[mask], c=color, marker=marker, s=42, edgecolors="k",
                       linewidths=0.4)
        handles.append(Line2D([], [], color=color, marker=marker, ls="none",
                              markeredgecolor="k", label=f"{label} ({int(mask.sum())})"))
    ax.set_xlabel("alpha (slope of phi for s < 0; 0 = ReLU, 1 = linear)")
    ax.set_ylabel(f"{smap.gain} [{'cmd/(m/s)' if smap.gain == 'kp' else 'cmd/m'}]")
    if smap.gains.size > 1 and smap.gains.min() > 0 and \
            smap.gains.max() / smap.gains.min() > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    import textwrap

    default = (f"{smap.scenario.name} ({smap.scenario.duration:g} s): certificate vs "
               f"simulation — of the simulated-stable points, the circle criterion certifies "
               f"{smap.certified_share:.0%}, with the Jury-Lee test {smap.popov_share:.0%}")
    ax.set_title(textwrap.fill(plain_text(title or default), 90), fontsize=9)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              fontsize=8)
    return fig


def write_stability_map(path="plots/stability-map.png", scenario="decel", duration=100.0,
                        gains=None, alphas=None, gain="kp") -> StabilityMap:
    """The README's stability map: ``decel`` run for 100 s over a (kp, alpha) grid."""
    import io

    from .files import atomic_write

    sc = as_scenario(scenario)
    sc = replace(sc, duration=duration)
    gains = np.geomspace(5.0, 12000.0, 16) if gains is None else np.asarray(gains, float)
    alphas = np.linspace(0.0, 1.0, 11) if alphas is None else np.asarray(alphas, float)
    smap = stability_map(sc, gains, alphas, gain=gain)
    fig = stability_map_figure(smap)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    with atomic_write(path, "path") as fh:
        fh.write(buf.getbuffer())
    return smap


if __name__ == "__main__":  # python -m ctrlsim.analysis [PATH]
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "plots/stability-map.png"
    m = write_stability_map(out)
    ok = int(m.simulated_ok.sum())
    print(f"wrote {out}: {m.certified.size} points, {ok} simulated stable and settling, "
          f"{int((m.certified & m.simulated_ok).sum())} of them certified "
          f"({m.certified_share:.1%}); certified but failing: {m.unsound}")
    print(f"with the Jury-Lee (Popov-type) test as well: {int(m.popov.sum())} certified "
          f"({m.popov_share:.1%} of the simulated-stable), "
          f"{int((m.popov & ~m.simulated_ok).sum())} of them failing")
    cm = m.margin[m.certified]
    print(f"certified margins: min {np.min(cm):.3g}, median {np.median(cm):.3g}")

"""Controllers: the ReLU / Leaky ReLU / linear PID family and user laws.

A built-in controller computes ``s = kp*e + ki*z + kd*d + feedforward*r`` and
passes it through ``phi``: ``max(s, 0)`` (ReLU), ``s`` or ``alpha*s`` (Leaky
ReLU), ``s`` (linear). The loop itself (timing, integrator, anti-windup) is in
:mod:`ctrlsim.kernels`; these classes hold gains and pack them.

Gains left as ``None`` are *unset*: :meth:`resolve` fills them from another
controller (the scenario's) and then from the plant preset's defaults, so
``simulate(sc, controller=ReLUController())`` compares the scenario's gains
under a different activation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from . import kernels as K
from .validation import ParameterError, ParameterTypeError, finite_float, text

__all__ = [
    "Controller", "ReLUController", "LeakyReLUController", "LinearController",
    "CustomController", "controller", "as_controller", "default_controller", "GAIN_NAMES",
    "DEFAULT_ALPHA", "pid_vectors",
]

GAIN_NAMES = ("kp", "ki", "kd", "kaw", "feedforward")
# What `ctrlsim compare` and the gallery run when not told otherwise.
DEFAULT_COMPARISON = ("relu", "leaky:0.1", "linear")
DEFAULT_ALPHA = 0.1

# Preset defaults. Robot: a stiff PI (100 N per m/s; ki/kp = 0.2 1/s) that
# holds 2 m/s onto a 3 degree descent within 2 % in ~20 s under Leaky ReLU.
# No anti-windup by default, by choice: kaw = 0.5 would help where the 20 N
# actuator saturates (`step`: overshoot 29 % -> 0 %), but in the pre-activation
# domain a coasting ReLU (a = 0, s < 0) counts as saturated, so its integrator
# stops winding down (`decel`: ReLU overshoot 30 % -> 0 %, rise 2.8 -> 5.8 s)
# and the family jumps between alpha = 0 and alpha = 0.01 (phi_inv(a) = a/alpha
# only for alpha > 0). Set kaw per scenario where saturation is the subject.
# Car: the book's PI with anti-windup (Feedback Systems, sec. 4.1 / 11.5).
_PRESET_DEFAULTS = {
    "robot": dict(kind="leaky", alpha=DEFAULT_ALPHA, kp=100.0, ki=20.0,
                  kd=0.0, kaw=0.0, feedforward=0.0),
    "car": dict(kind="relu", kp=0.5, ki=0.1, kd=0.0, kaw=2.0, feedforward=0.0),
}


@dataclass(frozen=True, kw_only=True)
class Controller:
    """Base of the built-in PID-family controllers.

    Parameters
    ----------
    kp, ki, kd : float, optional
        Proportional (per m/s), integral (per m) and derivative (per m/s^2)
        gains, in command units (N for the robot, 1 for the car).
    kaw : float, optional
        Back-calculation anti-windup gain, in the pre-activation domain:
        ``dz = e + (kaw/ki)*(phi_inv(a) - s)`` (zero unless the command clips or
        a ReLU coasts).
    feedforward : float, optional
        Reference feedforward gain, command units per m/s.
    """

    kind: ClassVar[str] = "pid"
    kp: float | None = None
    ki: float | None = None
    kd: float | None = None
    kaw: float | None = None
    feedforward: float | None = None

    def __post_init__(self) -> None:
        for name in GAIN_NAMES + ("alpha",):
            value = getattr(self, name, None)
            if value is None:
                continue
            object.__setattr__(self, name, finite_float(name, value))
        if getattr(self, "kaw", None) is not None and self.kaw < 0:
            raise ParameterError("kaw", f"must be >= 0, got {self.kaw}")

    @property
    def slope(self) -> float:
        """Slope of phi for s < 0."""
        raise NotImplementedError

    @property
    def resolved(self) -> bool:
        return all(getattr(self, n) is not None for n in GAIN_NAMES)

    def resolve(self, base: Controller | None, preset: str) -> Controller:
        """Fill unset gains from ``base`` (if given), then from the preset."""
        values = {}
        defaults = _PRESET_DEFAULTS[preset]
        for name in GAIN_NAMES:
            value = getattr(self, name)
            if value is None and isinstance(base, Controller):
                value = getattr(base, name)
            values[name] = defaults[name] if value is None else value
        return replace(self, **values)

    def pack(self) -> np.ndarray:
        """The kernel's controller vector, laid out as ``kernels.PID_LAYOUT``."""
        if not self.resolved:
            raise ValueError("controller has unset gains; call resolve() first")
        gains = {n: np.array([getattr(self, n)], dtype=float) for n in GAIN_NAMES}
        return pid_vectors(slope=np.array([self.slope]), **gains)[0]

    def kernels(self) -> tuple[Callable, Callable]:
        """The compiled ``(rollout, rollout_batch)`` this controller runs in."""
        return K.rollout_pid, K.rollout_batch

    @property
    def spec(self) -> str:
        """Canonical spec string, e.g. ``leaky:0.1,kp=40,ki=40``."""
        head = self.kind
        if isinstance(self, LeakyReLUController) and self.alpha is not None:
            head += f":{self.alpha:g}"
        gains = [f"{n}={getattr(self, n):g}" for n in GAIN_NAMES
                 if getattr(self, n) is not None]
        return ",".join([head] + gains)


@dataclass(frozen=True, kw_only=True)
class ReLUController(Controller):
    """``phi(s) = max(s, 0)``: pushes forward only, coasts when too fast."""

    kind: ClassVar[str] = "relu"

    @property
    def slope(self) -> float:
        return 0.0


@dataclass(frozen=True, kw_only=True)
class LeakyReLUController(Controller):
    """``phi(s) = s`` for s >= 0, ``alpha*s`` otherwise: brakes gently.

    Parameters
    ----------
    alpha : float, optional
        Braking slope in [0, 1] (unset: the scenario's, else 0.1).
    """

    kind: ClassVar[str] = "leaky"
    alpha: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ParameterError("alpha", f"must be in [0, 1], got {self.alpha}")

    @property
    def slope(self) -> float:
        return DEFAULT_ALPHA if self.alpha is None else self.alpha

    def resolve(self, base: Controller | None, preset: str) -> Controller:
        out = super().resolve(base, preset)
        if out.alpha is None:
            alpha = base.alpha if isinstance(base, LeakyReLUController) else None
            out = replace(out, alpha=DEFAULT_ALPHA if alpha is None else alpha)
        return out


@dataclass(frozen=True, kw_only=True)
class LinearController(Controller):
    """``phi(s) = s``: full two-sided control."""

    kind: ClassVar[str] = "linear"

    @property
    def slope(self) -> float:
        return 1.0


@dataclass(frozen=True)
class CustomController:
    """A user-defined control law compiled into the simulation kernel.

    Parameters
    ----------
    law : numba-jitted function ``law(e, z, d, y, r) -> u``
        Called at every control instant with the error ``e = r - y`` (m/s),
        the integrator state ``z`` (integral of the error, m), the error
        derivative ``d`` (m/s^2, 0 at the first sample), the measured speed
        ``y`` and the reference ``r`` (m/s). Returns the command ``u`` in
        actuator units; it is clipped to the actuator range afterwards.
    kaw : float
        Anti-windup: ``dz = e + kaw*(a - u)`` where ``a`` is the clipped
        command. The integrator starts at 0 and the plant at the force of
        ``law(0, 0, 0, v0, v0)``.
    name : str
        Label used in tables and plots.

    Examples
    --------
    >>> import numba
    >>> @numba.njit
    ... def bang_bang(e, z, d, y, r):
    ...     return 20.0 if e > 0 else -20.0
    >>> ctl = CustomController(bang_bang, name="bang-bang")
    """

    law: Callable[..., float]
    kaw: float = 0.0
    name: str = "custom"
    _kernels: tuple = field(default=None, repr=False, compare=False)

    kind: ClassVar[str] = "custom"

    def __post_init__(self) -> None:
        if not hasattr(self.law, "py_func"):
            raise ParameterTypeError("law", "CustomController: law must be a numba.njit "
                                     "function law(e, z, d, y, r) -> u")
        try:  # numba's typing error for a wrong arity is long and comes at first use
            inspect.signature(self.law.py_func).bind(0.0, 0.0, 0.0, 0.0, 0.0)
        except TypeError as exc:
            raise ParameterTypeError("law", "CustomController: law must take five arguments "
                                     f"(e, z, d, y, r): {exc}") from None
        kaw = finite_float("kaw", self.kaw)
        if kaw < 0:
            raise ParameterError("kaw", f"must be a finite number >= 0, got {self.kaw}")
        object.__setattr__(self, "kaw", kaw)
        text("name", self.name, 200)

    @property
    def spec(self) -> str:
        return self.name

    def resolve(self, base: Controller | None, preset: str) -> CustomController:
        return self

    def pack(self) -> np.ndarray:
        """Controller vector: only the integrator header is used by a user law."""
        cp = np.zeros(K.N_PID)
        # dz = e + kaw*(a - u): phi_inv is the identity (slope 1) and s = u.
        cp[K.PID_LAYOUT.index("integrate")] = 1.0
        cp[K.PID_LAYOUT.index("aw_gain")] = self.kaw
        cp[K.PID_LAYOUT.index("aw_slope")] = 1.0
        return cp

    def kernels(self) -> tuple[Callable, Callable]:
        """The specialised ``(rollout, rollout_batch)``, compiled on first use."""
        if self._kernels is None:
            object.__setattr__(self, "_kernels", K.specialise(self.law))
        return self._kernels


_TYPES = {"relu": ReLUController, "leaky": LeakyReLUController,
          "linear": LinearController}
_KEY_ALIASES = {"ff": "feedforward"}


def controller(spec: str) -> Controller:
    """Parse a controller spec ``TYPE[:ALPHA][,key=value...]``.

    Parameters
    ----------
    spec : str
        ``TYPE`` is ``relu``, ``leaky`` or ``linear``; ``:ALPHA`` sets the
        Leaky ReLU slope; ``mlp:FILE.npz`` loads a learned controller
        (:func:`ctrlsim.mlp.load_mlp`; everything after ``mlp:`` is the path);
        keys are ``kp, ki, kd, kaw, feedforward`` (alias
        ``ff``) and ``alpha``. Unset gains are taken from the scenario.

    Raises
    ------
    ValueError
        With a message naming the offending part of the spec.

    Examples
    --------
    >>> controller("leaky:0.05,kp=80")
    LeakyReLUController(kp=80.0, ki=None, kd=None, kaw=None, feedforward=None, alpha=0.05)
    """
    if not isinstance(spec, str):
        raise ParameterTypeError("controller", f"spec must be a non-empty string, got {spec!r}")
    if not spec.strip() or len(spec) > 1000:
        raise ParameterError("controller", f"spec must be a non-empty string of at most "
                             f"1000 characters, got {spec[:40]!r}")
    head, *pairs = [part.strip() for part in spec.split(",")]
    kind, colon, alpha = head.partition(":")
    kind = kind.strip().lower()
    if kind == "mlp":
        from .mlp import mlp_from_spec

        if not colon:
            raise _spec_error(spec, "mlp needs a weights file: mlp:FILE.npz")
        return mlp_from_spec(spec.strip().partition(":")[2])  # the rest is the path
    if kind not in _TYPES:
        raise _spec_error(spec, f"unknown type {kind!r} (expected one of {', '.join(_TYPES)})")
    kwargs: dict[str, float] = {}
    if colon:
        if kind != "leaky":
            raise _spec_error(spec, "only leaky takes ':ALPHA'")
        kwargs["alpha"] = _spec_number(spec, "alpha", alpha)
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = _KEY_ALIASES.get(key.strip(), key.strip())
        allowed = GAIN_NAMES + (("alpha",) if kind == "leaky" else ())
        if not eq or key not in allowed:
            raise _spec_error(spec, f"bad setting {pair!r} "
                              f"(expected key=value with key in {', '.join(allowed)})")
        if key in kwargs:
            raise _spec_error(spec, f"{key} is given twice")
        kwargs[key] = _spec_number(spec, key, value)
    try:
        return _TYPES[kind](**kwargs)
    except ParameterError as exc:
        raise _spec_error(spec, str(exc)) from None


def as_controller(obj) -> Controller | CustomController | None:
    """``obj`` if it is a controller or None; a string is parsed as a spec (:func:`controller`).

    Raises
    ------
    TypeError
        (a :class:`~ctrlsim.validation.ParameterTypeError`) for anything else.
    ValueError
        (a :class:`~ctrlsim.validation.ParameterError`) for a bad spec.
    """
    from .mlp import MLPController

    if obj is None or isinstance(obj, (Controller, CustomController, MLPController)):
        return obj
    if isinstance(obj, str):
        return controller(obj)
    raise ParameterTypeError("controller", "must be a Controller, a CustomController, an "
                             "MLPController, a spec "
                             f"string or None, got {type(obj).__name__}")


def pid_vectors(kp, ki, kd, kaw, feedforward, slope) -> np.ndarray:
    """Controller vectors (n, ``kernels.N_PID``) of n PID-family controllers.

    Each argument is an array (n,) of that gain (``slope``: the activation's
    slope for s < 0). :meth:`Controller.pack` and sweeps both pack through here.
    """
    n = np.shape(kp)[0]
    ki = np.asarray(ki, dtype=float)
    # A subnormal ki overflows kaw/ki to inf: legal input, and the kernel then
    # flags the run as diverged (the integrator goes non-finite), so no warning.
    with np.errstate(over="ignore"):
        aw_gain = np.divide(kaw, ki, out=np.zeros(n), where=ki != 0.0)
    values = dict(law=np.full(n, K.LAW_PID), integrate=(ki != 0.0).astype(float),
                  aw_gain=aw_gain,
                  aw_slope=slope, kp=kp, ki=ki, kd=kd, feedforward=feedforward)
    return np.column_stack([np.asarray(values[name], dtype=float) for name in K.PID_LAYOUT])


def default_controller(preset: str) -> Controller:
    """The preset's documented default controller, all gains set."""
    values = dict(_PRESET_DEFAULTS[preset])
    kind = values.pop("kind")
    if kind != "leaky":
        values.pop("alpha", None)
    return _TYPES[kind](**values)


def from_dict(kind: str, values: dict[str, float]) -> Controller:
    """Controller of type ``kind`` from keyword values (used by the loader)."""
    if kind not in _TYPES:
        raise ParameterError("type", f"unknown type {kind!r} "
                             f"(expected one of {', '.join(_TYPES)})")
    return _TYPES[kind](**values)


def _spec_number(spec: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _spec_error(spec, f"{key} must be a number, got {text.strip()!r}") from None
    if not math.isfinite(value):
        raise _spec_error(spec, f"{key} must be finite")
    return value


def _spec_error(spec: str, reason: str) -> ParameterError:
    return ParameterError("controller", reason, message=f"controller {spec!r}: {reason}")

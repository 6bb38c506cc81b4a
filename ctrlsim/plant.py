"""Plant parameters: the ``robot`` and ``car`` presets and their validation.

The equations live in :mod:`ctrlsim.kernels`; this module only holds the
numbers, checks them, and packs them into the kernel's float64 vector.

Presets
-------
``robot``
    A small wheeled delivery robot (sidewalk class, ~25 kg). Rolling
    resistance 0.015 (small pneumatic wheels on pavement), linear drag
    2 N/(m/s) (gearbox and motor viscous losses), quadratic drag 0.3 kg/m
    (0.5 * 1.2 kg/m^3 * Cd 1.0 * 0.5 m^2), actuator lag 0.2 s (motor current
    loop plus speed-controller filtering), drive/brake force +-20 N. On the flat
    that gives a top speed of about 4.8 m/s; a 3 degree climb at full force
    tops out near 1.4 m/s.
``car``
    The cruise-control example of Astrom & Murray, *Feedback Systems*
    (2nd ed., sec. 4.1), with the book's numbers exactly. The command is
    ``a`` in [-1, 1]: throttle for ``a >= 0``, braking for ``a < 0``. The
    book has no brake; we choose ``brake_force_max`` = 8000 N (0.5 g for the
    1600 kg car, a firm but ordinary stop), and the brake force is
    ``brake_force_max * a * tanh(v / 0.1)``: it opposes motion and fades to 0
    at standstill (the same smoothed sign as rolling resistance, exactly
    ``brake_force_max * a`` above ~2 m/s), so braking never reverses the car.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import kernels as K
from .validation import ParameterError, ParameterTypeError, finite_float

__all__ = ["Plant", "make_plant", "PRESETS", "ROBOT_FIELDS", "CAR_FIELDS", "PRESET_FIELDS",
           "COMMAND_LABELS"]

COMMON_FIELDS = ("mass", "gravity", "rolling_resistance", "drag_linear",
                 "drag_quadratic", "actuator_tau")
ROBOT_FIELDS = COMMON_FIELDS + ("force_min", "force_max")
CAR_FIELDS = COMMON_FIELDS + ("gear", "gear_ratios", "torque_max",
                              "omega_max", "torque_beta", "brake_force_max")
# Per preset: the fields that apply, and what its command means (axis labels).
PRESET_FIELDS = {"robot": ROBOT_FIELDS, "car": CAR_FIELDS}
COMMAND_LABELS = {"robot": "force command [N]", "car": "throttle (+) / brake (−)"}

PRESETS: dict[str, dict[str, Any]] = {
    "robot": dict(mass=25.0, gravity=9.81, rolling_resistance=0.015,
                  drag_linear=2.0, drag_quadratic=0.3, actuator_tau=0.2,
                  force_min=-20.0, force_max=20.0),
    "car": dict(mass=1600.0, gravity=9.8, rolling_resistance=0.01,
                drag_linear=0.0, drag_quadratic=0.5 * 1.3 * 0.32 * 2.4,
                actuator_tau=0.0, gear=4,
                gear_ratios=(40.0, 25.0, 16.0, 12.0, 10.0),
                torque_max=190.0, omega_max=420.0, torque_beta=0.4,
                brake_force_max=8000.0),
}


@dataclass(frozen=True)
class Plant:
    """Validated plant parameters, SI units.

    Build one with :func:`make_plant`. Fields that do not apply to the
    preset are ``None``.

    Attributes
    ----------
    preset : {"robot", "car"}
    mass : float
        Vehicle mass without payload, kg.
    gravity : float
        m/s^2.
    rolling_resistance : float
        Rolling resistance coefficient (dimensionless).
    drag_linear : float
        Viscous drag, N/(m/s).
    drag_quadratic : float
        Aerodynamic drag ``0.5 rho Cd A``, N/(m/s)^2.
    actuator_tau : float
        First-order actuator lag, s (0: no lag).
    force_min, force_max : float
        Robot only: command (force) range, N.
    gear, gear_ratios, torque_max, omega_max, torque_beta, brake_force_max
        Car only: gear (1-based), gear ratios per metre of wheel radius
        (1/m), peak engine torque (N m), engine speed at peak torque (rad/s),
        torque-curve shape, and full-brake force (N).
    """

    preset: str
    mass: float
    gravity: float
    rolling_resistance: float
    drag_linear: float
    drag_quadratic: float
    actuator_tau: float
    force_min: float | None = None
    force_max: float | None = None
    gear: int | None = None
    gear_ratios: tuple[float, ...] | None = None
    torque_max: float | None = None
    omega_max: float | None = None
    torque_beta: float | None = None
    brake_force_max: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.preset, str) and self.preset in PRESETS:
            # Direct construction gets the same coercion as make_plant.
            allowed = PRESET_FIELDS[self.preset]
            for f in fields(self):
                value = getattr(self, f.name)
                if f.name in allowed:
                    object.__setattr__(self, f.name, _coerce(f.name, value))
                elif f.name != "preset" and value is not None:
                    raise ParameterError(f.name, f"not a field of the {self.preset!r} preset")
        _validate(self)

    @property
    def command_limits(self) -> tuple[float, float]:
        """Range of the actuator command: newtons (robot) or [-1, 1] (car)."""
        if self.preset == "car":
            return -1.0, 1.0
        return float(self.force_min), float(self.force_max)

    def with_(self, **changes: Any) -> Plant:
        """Copy with some fields changed (validated like the original)."""
        return make_plant(self.preset, **{**self.overrides(), **changes})

    def overrides(self) -> dict[str, Any]:
        """The fields that apply to this preset, as a dict."""
        names = PRESET_FIELDS[self.preset]
        return {n: getattr(self, n) for n in names}

    def pack(self) -> np.ndarray:
        """The kernel's plant vector, laid out as ``kernels.PLANT_LAYOUT``."""
        car = self.preset == "car"
        lo, hi = self.command_limits
        values = {name: float(getattr(self, name)) for name in COMMON_FIELDS}
        values.update(
            kind=K.KIND_CAR if car else K.KIND_ROBOT, command_min=lo, command_max=hi,
            gear_ratio=self.gear_ratios[self.gear - 1] if car else 0.0,
            torque_max=self.torque_max if car else 0.0,
            omega_max=self.omega_max if car else 1.0,   # never divide by 0
            torque_beta=self.torque_beta if car else 0.0,
            brake_force_max=self.brake_force_max if car else 0.0)
        return np.array([values[name] for name in K.PLANT_LAYOUT], dtype=float)


def make_plant(preset: str = "robot", **overrides: Any) -> Plant:
    """Plant from a preset with some fields overridden.

    Parameters
    ----------
    preset : {"robot", "car"}
    **overrides
        Any field of the preset (see :class:`Plant`).

    Raises
    ------
    ValueError
        Unknown preset, a field that does not belong to the preset, or an
        invalid value; the message names the field.

    Examples
    --------
    >>> make_plant("robot", mass=30).mass
    30.0
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ParameterError("preset", f"unknown preset {preset!r} "
                             f"(expected one of {', '.join(PRESETS)})")
    allowed = PRESET_FIELDS[preset]
    for name in overrides:
        if name not in allowed:
            raise ParameterError(name, f"not a field of the {preset!r} preset "
                                 f"(fields: {', '.join(allowed)})")
    values = {**PRESETS[preset], **overrides}
    for name, value in values.items():
        values[name] = _coerce(name, value)
    return Plant(preset=preset, **values)


def _coerce(name: str, value: Any) -> Any:
    if name == "gear":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ParameterTypeError("gear", f"must be an integer, got {value!r}")
        return int(value)
    if name == "gear_ratios":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ParameterTypeError("gear_ratios", f"must be a list of numbers, got {value!r}")
        ratios = []
        for x in value:
            if len(ratios) >= 100:
                raise ParameterError("gear_ratios", "at most 100 gears")
            ratios.append(finite_float(name, x))
        return tuple(ratios)
    return finite_float(name, value)


def _validate(plant: Plant) -> None:
    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ParameterError(name, f"{what}, got {getattr(plant, name)!r}")

    if not isinstance(plant.preset, str) or plant.preset not in PRESETS:
        raise ParameterError("preset", f"unknown preset {plant.preset!r}")
    for f in fields(plant):
        value = getattr(plant, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f.name, f"must be finite, got {value}")
    need(plant.mass > 0, "mass", "must be positive")
    for name in ("gravity", "rolling_resistance", "drag_linear",
                 "drag_quadratic", "actuator_tau"):
        need(getattr(plant, name) >= 0, name, "must be >= 0")
    if plant.preset == "robot":
        # The bound that leaves out 0 first: a scenario usually sets just one of them.
        need(plant.force_min is not None and plant.force_min <= 0, "force_min",
             "must be <= 0: the force range must contain 0 (coasting)")
        need(plant.force_max is not None and plant.force_max >= 0, "force_max",
             "must be >= 0: the force range must contain 0 (coasting)")
        need(plant.force_min < plant.force_max, "force_min",
             f"must be below force_max ({plant.force_max})")
        return
    need(len(plant.gear_ratios) > 0 and all(r > 0 for r in plant.gear_ratios),
         "gear_ratios", "must be a non-empty list of positive numbers")
    need(1 <= plant.gear <= len(plant.gear_ratios), "gear",
         f"must be between 1 and {len(plant.gear_ratios)} (the number of gear_ratios)")
    need(plant.torque_max > 0, "torque_max", "must be positive")
    need(plant.omega_max > 0, "omega_max", "must be positive")
    need(plant.torque_beta >= 0, "torque_beta", "must be >= 0")
    need(plant.brake_force_max >= 0, "brake_force_max", "must be >= 0")


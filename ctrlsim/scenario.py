"""Scenarios: what to simulate, as frozen dataclasses in SI units.

A :class:`Scenario` holds a plant, an optional controller, a speed reference,
a road profile, events and a sensor model. It validates its own values
(``ValueError`` naming the key); the TOML loader in :mod:`ctrlsim.loader`
only parses and checks types. :meth:`Scenario.pack` turns it into the plain
arrays the kernels take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .controllers import Controller, CustomController, default_controller
from .kernels import Profiles
from .plant import Plant, make_plant

__all__ = ["Scenario", "Reference", "Road", "Event", "Sensor", "Profiles"]

# A speed this large (m/s) means the integration has blown up.
SPEED_LIMIT = 1000.0
# Largest run accepted: 20 M samples (800 MB of output) and 10 000 substeps.
MAX_SAMPLES = 20_000_000
MAX_SUBSTEPS = 10_000


@dataclass(frozen=True)
class Reference:
    """Speed reference.

    Parameters
    ----------
    points : sequence of (time s, speed m/s)
        ``kind="steps"``: the speed switches to each value at its time and
        holds (before the first: the initial speed). ``kind="cycle"``: a
        drive cycle, linearly interpolated, held beyond its ends.
    kind : {"steps", "cycle"}
    name : str, optional
        The cycle's name (for labels).
    """

    points: tuple[tuple[float, float], ...]
    kind: Literal["steps", "cycle"] = "steps"
    name: str | None = None

    def __post_init__(self) -> None:
        pts = tuple((float(t), float(v)) for t, v in self.points)
        object.__setattr__(self, "points", pts)
        if self.kind not in ("steps", "cycle"):
            raise ValueError(f"reference: unknown kind {self.kind!r}")
        if not pts:
            raise ValueError(f"reference.{self.kind}: must not be empty")
        times = [t for t, _ in pts]
        if not all(math.isfinite(x) for p in pts for x in p):
            raise ValueError(f"reference.{self.kind}: values must be finite")
        if any(t < 0 for t in times):
            raise ValueError(f"reference.{self.kind}: times must be >= 0")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"reference.{self.kind}: times must be strictly increasing")

    def sample(self, t: np.ndarray, initial_speed: float) -> np.ndarray:
        """Reference speed at times ``t`` (s)."""
        times = np.array([p[0] for p in self.points])
        speeds = np.array([p[1] for p in self.points])
        if self.kind == "cycle":
            return np.interp(t, times, speeds)
        # Tolerance: a step at 15.0 s must hit sample k*Ts even when k*Ts
        # rounds to 14.999999999999998.
        idx = np.searchsorted(times, t + 1e-9, side="right") - 1
        return np.where(idx >= 0, speeds[np.maximum(idx, 0)], initial_speed)


@dataclass(frozen=True)
class Road:
    """Grade profile: piecewise linear in degrees, constant beyond the ends.

    Parameters
    ----------
    grade_deg : sequence of (x, degrees)
        ``x`` in metres (``by="position"``) or seconds (``by="time"``).
        Positive grade is uphill.
    by : {"position", "time"}
    """

    grade_deg: tuple[tuple[float, float], ...] = ()
    by: Literal["position", "time"] = "position"

    def __post_init__(self) -> None:
        pts = tuple((float(x), float(g)) for x, g in self.grade_deg)
        object.__setattr__(self, "grade_deg", pts)
        if self.by not in ("position", "time"):
            raise ValueError(f"road.by: must be 'position' or 'time', got {self.by!r}")
        if not all(math.isfinite(x) for p in pts for x in p):
            raise ValueError("road.grade_deg: values must be finite")
        if any(abs(g) >= 90 for _, g in pts):
            raise ValueError("road.grade_deg: grades must be between -90 and 90 degrees")
        xs = [x for x, _ in pts]
        if any(b < a for a, b in zip(xs, xs[1:])):
            raise ValueError("road.grade_deg: breakpoints must be increasing")


@dataclass(frozen=True)
class Event:
    """A payload change and/or an external force over ``at <= t < until``.

    Parameters
    ----------
    at : float
        Start time, s.
    until : float
        End time, s (default: never).
    payload : float
        Mass added (kg, negative removes) while active.
    force : float
        External force along the direction of travel (N; negative: headwind
        or pull-back) while active.
    """

    at: float
    until: float = math.inf
    payload: float = 0.0
    force: float = 0.0

    def __post_init__(self) -> None:
        for name in ("at", "payload", "force"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"events.{name}: must be finite")
        if self.at < 0:
            raise ValueError(f"events.at: must be >= 0, got {self.at}")
        if math.isnan(self.until) or self.until < self.at:
            raise ValueError(f"events.until: must be >= at ({self.at}), got {self.until}")


@dataclass(frozen=True)
class Sensor:
    """Additive white Gaussian speed-measurement noise.

    Parameters
    ----------
    speed_noise_std : float
        Standard deviation, m/s.
    seed : int
        Seed of ``numpy.random.default_rng``.
    """

    speed_noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed_noise_std) and self.speed_noise_std >= 0):
            raise ValueError(f"sensor.speed_noise_std: must be >= 0, got {self.speed_noise_std}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ValueError(f"sensor.seed: must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class Scenario:
    """A complete simulation setup (DESIGN 5), SI units.

    Parameters
    ----------
    reference : Reference
    duration : float
        Simulated time, s; a whole number of control periods.
    control_period : float
        Controller sample period Ts, s.
    substeps : int
        RK4 substeps per control period.
    initial_speed : float
        Speed the vehicle was cruising at before t = 0, m/s.
    plant : Plant
    controller : Controller, optional
        None: the preset's default controller.
    road, events, sensor
        Grade profile, payload/force events, measurement noise.
    name, description : str

    Examples
    --------
    >>> sc = Scenario(reference=Reference([(0.0, 2.0), (15.0, 1.0)]),
    ...               duration=30.0, initial_speed=2.0)
    >>> sc.n_steps
    3000
    """

    reference: Reference
    duration: float
    control_period: float = 0.01
    substeps: int = 10
    initial_speed: float = 0.0
    plant: Plant = field(default_factory=make_plant)
    controller: Controller | CustomController | None = None
    road: Road = field(default_factory=Road)
    events: tuple[Event, ...] = ()
    sensor: Sensor = field(default_factory=Sensor)
    name: str = "scenario"
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        for key in ("duration", "control_period"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key}: must be a positive number, got {value}")
        if isinstance(self.substeps, bool) or not isinstance(self.substeps, (int, np.integer)) \
                or not 1 <= self.substeps <= MAX_SUBSTEPS:
            raise ValueError(f"substeps: must be an integer from 1 to {MAX_SUBSTEPS}, "
                             f"got {self.substeps!r}")
        if not math.isfinite(self.initial_speed):
            raise ValueError(f"initial_speed: must be finite, got {self.initial_speed}")
        n = self.duration / self.control_period
        if n + 1 > MAX_SAMPLES:
            raise ValueError(f"duration: {self.duration} s at control_period "
                             f"{self.control_period} s is {n:.3g} samples "
                             f"(at most {MAX_SAMPLES:.0e})")
        n = round(n)
        if n < 1 or abs(n * self.control_period - self.duration) > 1e-9 * self.duration:
            raise ValueError(f"duration: must be a whole number of control periods "
                             f"({self.control_period} s), got {self.duration}")
        for start in [0.0] + [e.at for e in self.events]:
            payload = sum(e.payload for e in self.events if e.at <= start < e.until)
            if self.plant.mass + payload <= 0:
                raise ValueError(f"events.payload: the events active at t = {start} s "
                                 f"remove {-payload} kg from a {self.plant.mass} kg vehicle")

    @property
    def n_steps(self) -> int:
        """Number of control periods N; samples are k = 0..N."""
        return round(self.duration / self.control_period)

    @property
    def time(self) -> np.ndarray:
        """Control instants ``t_k = k*Ts``, s."""
        return np.arange(self.n_steps + 1) * self.control_period

    def resolved_controller(self, controller=None):
        """``controller`` (or the scenario's own) with unset gains filled in."""
        base = self.controller
        if controller is None:
            controller = base if base is not None else default_controller(self.plant.preset)
        return controller.resolve(base, self.plant.preset)

    def step_window(self) -> tuple[float, float] | None:
        """``(t_change, t_end)`` of the first set-speed change, or None.

        The step is the first change of a ``steps`` reference, or t = 0 if the
        reference there differs from the initial speed; the window runs to the
        next change or the end. A cycle reference has no step.
        """
        if self.reference.kind != "steps":
            return None
        changes = []
        level = self.initial_speed
        for t, v in self.reference.points:
            if v != level and t < self.duration:
                changes.append(t)
            level = v
        if not changes:
            return None
        end = changes[1] if len(changes) > 1 else self.duration
        return changes[0], end

    def pack(self) -> Profiles:
        """Sample the reference and noise, and convert the road and events."""
        t = self.time
        noise = np.zeros(t.size)
        if self.sensor.speed_noise_std > 0:
            rng = np.random.default_rng(self.sensor.seed)
            noise = self.sensor.speed_noise_std * rng.standard_normal(t.size)
        grade = np.array(self.road.grade_deg, dtype=float).reshape(-1, 2)
        events = np.array([(e.at, e.until, e.force, e.payload) for e in self.events],
                          dtype=float).reshape(-1, 4)
        return Profiles(
            v0=float(self.initial_speed),
            ref=self.reference.sample(t, self.initial_speed).astype(float),
            noise=noise, ts=float(self.control_period), substeps=int(self.substeps),
            grade_x=np.ascontiguousarray(grade[:, 0]),
            grade_th=np.ascontiguousarray(np.radians(grade[:, 1])),
            grade_by_time=self.road.by == "time", events=events,
            v_limit=SPEED_LIMIT)

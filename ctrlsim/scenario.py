"""Scenarios: what to simulate, as frozen dataclasses in SI units.

A :class:`Scenario` holds a plant, an optional controller, a speed reference,
a road profile, events and a sensor model. It validates its own values
(``ValueError`` naming the key); the TOML loader in :mod:`ctrlsim.loader`
only parses and checks types. :meth:`Scenario.pack` turns it into the plain
arrays the kernels take.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Literal

import numpy as np

from .controllers import Controller, CustomController, default_controller
from .kernels import Profiles
from .limits import (
    MAX_DESCRIPTION,
    MAX_EVENTS,
    MAX_NAME,
    MAX_POINTS,
    MAX_RUN_WORK,
    MAX_SAMPLES,
    MAX_SUBSTEPS,
    run_work,
)
from .plant import Plant, make_plant
from .validation import (
    ParameterError,
    ParameterTypeError,
    finite_float,
    integer,
    positive_float,
    text,
)

__all__ = ["Scenario", "Reference", "Road", "Event", "Sensor", "Profiles", "as_scenario",
           "mass_timeline", "MAX_SAMPLES", "MAX_SUBSTEPS"]

# A speed this large (m/s) means the integration has blown up.
SPEED_LIMIT = 1000.0


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
        if self.kind not in ("steps", "cycle"):
            raise ParameterError("reference.kind", f"must be 'steps' or 'cycle', "
                                 f"got {self.kind!r}")
        key = f"reference.{self.kind}"
        pts = _pairs(key, self.points)
        object.__setattr__(self, "points", pts)
        if self.name is not None:
            text("reference.name", self.name, MAX_NAME)
        if not pts:
            raise ParameterError(key, "must not be empty")
        times = [t for t, _ in pts]
        if any(t < 0 for t in times):
            raise ParameterError(key, "times must be >= 0")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ParameterError(key, "times must be strictly increasing")

    def sample(self, t: np.ndarray, initial_speed: float) -> np.ndarray:
        """Reference speed at times ``t`` (s, ascending)."""
        if self.kind == "steps" and len(self.points) <= _FEW_STEPS:
            return self._sample_few(np.asarray(t, dtype=float), float(initial_speed))
        times = np.array([p[0] for p in self.points])
        speeds = np.array([p[1] for p in self.points])
        if self.kind == "cycle":
            return np.interp(t, times, speeds)
        # Tolerance: a step at 15.0 s must hit sample k*Ts even when k*Ts
        # rounds to 14.999999999999998.
        idx = np.searchsorted(times, t + 1e-9, side="right") - 1
        return np.where(idx >= 0, speeds[np.maximum(idx, 0)], initial_speed)

    def _sample_few(self, t: np.ndarray, initial_speed: float) -> np.ndarray:
        """:meth:`sample` of a few steps: fill from each step's first sample on.

        The same samples as the general rule (step ``i`` holds where
        ``t + 1e-9 >= time_i``), found by bisection instead of by a pass over
        all samples per step (5x faster for a 40 000-sample run).
        """
        out = np.full(t.size, initial_speed)
        for when, speed in self.points:
            k = int(np.searchsorted(t, when - 1e-9))
            while k > 0 and t[k - 1] + 1e-9 >= when:
                k -= 1
            while k < t.size and not t[k] + 1e-9 >= when:
                k += 1
            out[k:] = speed
        return out


_FEW_STEPS = 16


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
        pts = _pairs("road.grade_deg", self.grade_deg)
        object.__setattr__(self, "grade_deg", pts)
        if self.by not in ("position", "time"):
            raise ParameterError("road.by", f"must be 'position' or 'time', got {self.by!r}")
        if any(abs(g) >= 90 for _, g in pts):
            raise ParameterError("road.grade_deg", "grades must be between -90 and 90 degrees")
        xs = [x for x, _ in pts]
        if any(b < a for a, b in zip(xs, xs[1:])):
            raise ParameterError("road.grade_deg", "breakpoints must be increasing")


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
            object.__setattr__(self, name, finite_float(f"events.{name}", getattr(self, name)))
        until = self.until
        if not (isinstance(until, (float, np.floating)) and until == math.inf):
            until = finite_float("events.until", until)
        object.__setattr__(self, "until", float(until))
        if self.at < 0:
            raise ParameterError("events.at", f"must be >= 0, got {self.at}")
        if self.until < self.at:
            raise ParameterError("events.until", f"must be >= at ({self.at}), got {self.until}")


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
        std = finite_float("sensor.speed_noise_std", self.speed_noise_std)
        if std < 0:
            raise ParameterError("sensor.speed_noise_std", f"must be >= 0, got {std}")
        object.__setattr__(self, "speed_noise_std", std)
        object.__setattr__(self, "seed", integer("sensor.seed", self.seed, lo=0))


@dataclass(frozen=True)
class Scenario:
    """A complete simulation setup (docs/scenarios.md), SI units.

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
        setv = functools.partial(object.__setattr__, self)
        _need_type("reference", self.reference, Reference)
        setv("duration", positive_float("duration", self.duration))
        setv("control_period", positive_float("control_period", self.control_period))
        setv("substeps", integer("substeps", self.substeps, 1, MAX_SUBSTEPS))
        setv("initial_speed", finite_float("initial_speed", self.initial_speed))
        _need_type("plant", self.plant, Plant, "build one with make_plant(preset, ...)")
        if self.controller is not None:
            from .mlp import MLPController

            _need_type("controller", self.controller,
                       (Controller, CustomController, MLPController),
                       "use ctrlsim.controller(spec)")
        _need_type("road", self.road, Road)
        _need_type("sensor", self.sensor, Sensor)
        setv("events", _events(self.events))
        text("name", self.name, MAX_NAME)
        text("description", self.description, MAX_DESCRIPTION)
        n = self.duration / self.control_period
        if n + 1 > MAX_SAMPLES:
            raise ParameterError("duration", f"{self.duration} s at control_period "
                                 f"{self.control_period} s is {n:.3g} samples "
                                 f"(at most {MAX_SAMPLES:.0e})")
        n = round(n)
        if n < 1 or abs(n * self.control_period - self.duration) > 1e-9 * self.duration:
            raise ParameterError("duration", f"must be a whole number of control periods "
                                 f"({self.control_period} s), got {self.duration}")
        work = self.work
        if work > MAX_RUN_WORK:
            raise ParameterError(
                "duration", f"{self.duration:g} s / control_period {self.control_period:g} s "
                f"x substeps {self.substeps} (with {len(self.events)} events and "
                f"{len(self.road.grade_deg)} grade points) is {work:.3g} RK4 substeps "
                f"(at most {MAX_RUN_WORK:.0e} per run, about a second)")
        self.check_mass(self.plant.mass)

    @property
    def work(self) -> int:
        """Cost of one run in RK4 substeps (see :mod:`ctrlsim.limits`)."""
        return run_work(self.n_steps + 1, self.substeps, len(self.events),
                        len(self.road.grade_deg))

    def check_mass(self, mass: float, key: str = "events.payload") -> None:
        """Reject a vehicle ``mass`` that the payload events leave <= 0 at some time.

        The whole piecewise-constant timeline up to ``duration`` is checked
        (:func:`mass_timeline`), not only the instants where events start.
        """
        for t, payload, cause in mass_timeline(self.events, self.duration):
            if mass + payload <= 1e-9 * mass:
                raise ParameterError(
                    key, f"from t = {t:g} s ({cause}) the payload is {payload:g} kg, "
                    f"leaving {mass + payload:.6g} kg of the {mass:g} kg vehicle "
                    "(the mass must stay positive)")

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

    def pack(self, t: np.ndarray | None = None) -> Profiles:
        """Sample the reference and noise, and convert the road and events.

        ``t`` is :attr:`time` (passed when the caller has it already).
        """
        t = self.time if t is None else t
        noise = np.zeros(t.size)
        if self.sensor.speed_noise_std > 0:
            rng = np.random.default_rng(self.sensor.seed)
            noise = self.sensor.speed_noise_std * rng.standard_normal(t.size)
        grade = np.array(self.road.grade_deg, dtype=float).reshape(-1, 2)
        events = np.array([(e.at, e.until, e.force, e.payload) for e in self.events],
                          dtype=float).reshape(-1, 4)
        return Profiles(
            v0=float(self.initial_speed),
            ref=np.asarray(self.reference.sample(t, self.initial_speed), dtype=float),
            noise=noise, ts=float(self.control_period), substeps=int(self.substeps),
            grade_x=np.ascontiguousarray(grade[:, 0]),
            grade_th=np.ascontiguousarray(np.radians(grade[:, 1])),
            grade_by_time=self.road.by == "time", events=events,
            v_limit=SPEED_LIMIT)


@functools.lru_cache(maxsize=64)
def mass_timeline(events: tuple[Event, ...], until: float = math.inf,
                  ) -> tuple[tuple[float, float, str], ...]:
    """The payload as a piecewise-constant function of time.

    Returns ``(start, payload, cause)`` for each piece that starts before
    ``until``: the payload (kg) of the events active (``at <= t < until``) from
    ``start`` to the next piece; ``cause`` names the event that starts or ends
    there.
    """
    starts: dict[float, str] = {0.0: "the start"}
    for i, e in enumerate(events):
        starts.setdefault(e.at, f"events[{i}] starts")
        if math.isfinite(e.until):
            starts.setdefault(e.until, f"events[{i}] ends")
    times = np.array(sorted(t for t in starts if t < until) or [0.0])
    if not events:
        return tuple((float(t), 0.0, starts[float(t)]) for t in times)
    at = np.array([e.at for e in events])
    end = np.array([e.until for e in events])
    payload = np.array([e.payload for e in events])
    active = (at[None, :] <= times[:, None]) & (times[:, None] < end[None, :])
    totals = np.where(active, payload[None, :], 0.0).sum(axis=1)
    return tuple((float(t), float(p), starts[float(t)]) for t, p in zip(times, totals))


def as_scenario(obj: Any) -> Scenario:
    """``obj`` if it is a :class:`Scenario`; a shipped name or TOML path is loaded.

    Raises
    ------
    TypeError
        (a :class:`~ctrlsim.validation.ParameterTypeError`) for anything else.
    """
    if isinstance(obj, Scenario):
        return obj
    if isinstance(obj, (str, PathLike)):
        from .loader import load_scenario

        return load_scenario(obj)
    raise ParameterTypeError("scenario", "must be a Scenario, a shipped scenario name or a "
                             f"TOML path, got {type(obj).__name__}")


def _need_type(key: str, value: Any, types, hint: str = "") -> None:
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else
                                                  (types,)))
        raise ParameterTypeError(key, f"must be a {names}, got {type(value).__name__}"
                                 + (f" ({hint})" if hint else ""))


def _pairs(key: str, points: Any) -> tuple[tuple[float, float], ...]:
    """``points`` as a tuple of finite ``(x, y)`` float pairs."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Iterable):
        raise ParameterTypeError(key, f"must be a sequence of (x, y) pairs, "
                                 f"got {type(points).__name__}")
    out = []
    for i, pair in enumerate(points):
        if i >= MAX_POINTS:
            raise ParameterError(key, f"at most {MAX_POINTS} points")
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable):
            raise ParameterTypeError(f"{key}[{i}]", f"must be a pair (x, y), got {pair!r}")
        pair = tuple(pair)
        if len(pair) != 2:
            raise ParameterError(f"{key}[{i}]", f"must be a pair (x, y), got {pair!r}")
        try:
            out.append((finite_float(key, pair[0]), finite_float(key, pair[1])))
        except ParameterError as exc:
            raise type(exc)(key, f"values must be finite numbers ([{i}]: {exc.reason})") \
                from None
    return tuple(out)


def _events(events: Any) -> tuple[Event, ...]:
    if isinstance(events, (str, bytes, Event)) or not isinstance(events, Iterable):
        raise ParameterTypeError("events", f"must be a sequence of Event, "
                                 f"got {type(events).__name__}")
    events = tuple(events)
    if len(events) > MAX_EVENTS:
        raise ParameterError("events", f"at most {MAX_EVENTS} events, got {len(events)}")
    for i, e in enumerate(events):
        if not isinstance(e, Event):
            raise ParameterTypeError(f"events[{i}]", f"must be an Event, "
                                     f"got {type(e).__name__}")
    return events

"""Read scenario TOML files (format: ``docs/scenarios.md``) into a ``Scenario``.

The loader parses and checks structure and types; the dataclasses check
values. Every problem becomes one :class:`ScenarioError` naming the file, the
key and the reason.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

from .controllers import GAIN_NAMES, default_controller, from_dict
from .cycles import load_cycle
from .limits import MAX_SCENARIO_BYTES
from .plant import make_plant
from .scenario import Event, Reference, Road, Scenario, Sensor
from .validation import ParameterError, ParameterTypeError, finite_float, kind, safe_text

__all__ = ["load_scenario", "shipped_scenarios", "ScenarioError"]

_TOP_KEYS = {"name", "description", "duration", "control_period", "substeps",
             "initial_speed", "plant", "controller", "reference", "road", "events", "sensor"}


class ScenarioError(ParameterError):
    """A scenario file that cannot be used (a :class:`~ctrlsim.validation.ParameterError`).

    Attributes
    ----------
    file : str
    key : str
        Dotted key, e.g. ``plant.mass`` or ``events[1].until``.
    reason : str
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        super().__init__(key, reason, message=f"{file}: {key}: {reason}")


def shipped_scenarios() -> dict[str, str]:
    """Names and descriptions of the scenarios shipped with ctrlsim."""
    out = {}
    for path in sorted(_shipped_dir().iterdir(), key=lambda p: p.name):
        if path.name.endswith(".toml"):
            with path.open("rb") as fh:
                out[path.name[:-5]] = str(tomllib.load(fh).get("description", ""))
    return out


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by shipped name (``"downhill"``) or TOML path.

    Parameters
    ----------
    name_or_path : str or Path

    Returns
    -------
    Scenario

    Raises
    ------
    ScenarioError
        Missing file, invalid TOML, unknown keys, wrong types or values.

    Examples
    --------
    >>> sc = load_scenario("decel")
    >>> sc.plant.preset, sc.initial_speed
    ('robot', 2.0)
    """
    if not isinstance(name_or_path, (str, PathLike)):
        raise ParameterTypeError("name_or_path", "must be a shipped scenario name or a TOML "
                                 f"path, got {type(name_or_path).__name__}")
    label = str(name_or_path)
    if len(label) > 4096:
        raise ScenarioError(safe_text(label[:60]) + "...", "(file)", "path too long")
    try:
        path = _locate(label)
        label = str(path) if isinstance(path, Path) else label
        with path.open("rb") as fh:
            raw = fh.read(MAX_SCENARIO_BYTES + 1)
        if len(raw) > MAX_SCENARIO_BYTES:
            raise ScenarioError(label, "(file)", f"larger than {MAX_SCENARIO_BYTES // 1000} kB")
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(label, "(file)", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(label, "(file)", "nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(label, "(file)", f"cannot read: not UTF-8 ({exc.reason} at "
                            f"byte {exc.start})") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        if isinstance(exc, ScenarioError):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(label, "(file)", f"cannot read: {reason}") from None
    stem = Path(path.name).stem
    return _Parser(label, path).scenario(data, stem)


def _shipped_dir():
    return resources.files("ctrlsim") / "scenarios"


def _locate(name: str):
    path = Path(name)
    if path.suffix == ".toml" or path.parent != Path(".") or path.is_file():
        if path.is_dir():
            raise ScenarioError(name, "(file)", "is a directory, not a scenario file")
        if not path.is_file():
            raise ScenarioError(name, "(file)", "no such file")
        return path
    shipped = _shipped_dir() / f"{name}.toml"
    if not shipped.is_file():
        raise ScenarioError(name, "(file)", "no such file or shipped scenario (shipped: "
                            + ", ".join(shipped_scenarios()) + ")")
    return shipped


class _Parser:
    """Turns the parsed TOML dict into dataclasses, raising ScenarioError."""

    def __init__(self, label: str, path) -> None:
        self.label = label
        self.base = Path(str(path)).parent

    def fail(self, key: str, reason: str) -> ScenarioError:
        return ScenarioError(self.label, key, reason)

    # -- typed getters -----------------------------------------------------
    def table(self, data: dict, key: str, allowed: set[str]) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {_kind(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}", "unknown key (allowed: "
                                + ", ".join(sorted(allowed)) + ")")
        return value

    def number(self, data: dict, key: str, path: str, default: Any = None) -> Any:
        if key not in data:
            if default is _REQUIRED:
                raise self.fail(path, "missing")
            return default
        return self.build(finite_float, "", name=path, value=data[key])

    def integer(self, data: dict, key: str, path: str, default: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, got {_kind(value)}")
        return value

    def string(self, data: dict, key: str, path: str, default: Any = None) -> Any:
        value = data.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_kind(value)}")
        return value

    def pairs(self, data: dict, key: str, path: str) -> tuple[tuple[float, float], ...]:
        value = data[key]
        if not isinstance(value, list) or not value:
            raise self.fail(path, "must be a non-empty list of [x, y] pairs")
        out = []
        for i, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise self.fail(f"{path}[{i}]", f"must be a pair [x, y], got {_kind(pair)}")
            out.append((self.number({"x": pair[0]}, "x", f"{path}[{i}][0]"),
                        self.number({"y": pair[1]}, "y", f"{path}[{i}][1]")))
        return tuple(out)

    # -- sections ----------------------------------------------------------
    def scenario(self, data: dict, stem: str) -> Scenario:
        for k in data:
            if k not in _TOP_KEYS:
                raise self.fail(k, "unknown key (allowed: " + ", ".join(sorted(_TOP_KEYS)) + ")")
        plant = self.plant(data)
        reference = self.reference(data)
        duration_default = reference.points[-1][0] if reference.kind == "cycle" else _REQUIRED
        kwargs = dict(
            name=self.string(data, "name", "name", stem),
            description=self.string(data, "description", "description", ""),
            duration=self.number(data, "duration", "duration", duration_default),
            control_period=self.number(data, "control_period", "control_period", 0.01),
            substeps=self.integer(data, "substeps", "substeps", 10),
            initial_speed=self.number(data, "initial_speed", "initial_speed", 0.0),
            plant=plant, controller=self.controller(data, plant.preset),
            reference=reference, road=self.road(data), events=self.events(data),
            sensor=self.sensor(data))
        return self.build(Scenario, "", **kwargs)

    def build(self, cls, prefix: str, rename: tuple[str, str] = ("", ""), **kwargs):
        """Call ``cls(**kwargs)``, turning its ``ValueError("key: reason")`` into a
        ScenarioError for ``prefix + key`` (``rename`` rewrites part of the key)."""
        try:
            return cls(**kwargs)
        except ParameterError as exc:
            key = exc.key.replace(*rename) if rename[0] else exc.key
            raise self.fail(prefix + key, exc.reason) from None

    def plant(self, data: dict):
        section = data.get("plant", {})
        if not isinstance(section, dict):
            raise self.fail("plant", f"must be a table, got {_kind(section)}")
        preset = self.string(section, "preset", "plant.preset", "robot")
        overrides = {k: v for k, v in section.items() if k != "preset"}
        return self.build(make_plant, "plant.", preset=preset, **overrides)

    def controller(self, data: dict, preset: str):
        if "controller" not in data:
            return None
        section = self.table(data, "controller", {"type", "alpha", "weights", *GAIN_NAMES})
        kind = self.string(section, "type", "controller.type",
                           type(default_controller(preset)).kind)
        if kind == "mlp":
            return self.mlp(section)
        if kind not in ("relu", "leaky", "linear"):
            raise self.fail("controller.type", f"unknown type {kind!r} "
                            "(expected relu, leaky, linear or mlp)")
        if "weights" in section:
            raise self.fail("controller.weights", "only for type = \"mlp\"")
        if "alpha" in section and kind != "leaky":
            raise self.fail("controller.alpha", f"only for type = \"leaky\", not {kind!r}")
        values = {k: self.number(section, k, f"controller.{k}")
                  for k in section if k != "type"}
        return self.build(from_dict, "controller.", kind=kind, values=values)

    def mlp(self, section: dict):
        """``type = "mlp"``: the network in ``weights`` (relative to the scenario file)."""
        from .mlp import load_mlp

        for k in section:
            if k not in ("type", "weights"):
                raise self.fail(f"controller.{k}", "not for type = \"mlp\" (the network "
                                "file holds all its parameters)")
        if "weights" not in section:
            raise self.fail("controller.weights", "missing (the .npz file of the network)")
        name = self.string(section, "weights", "controller.weights")
        path = Path(name)
        if not path.is_absolute():
            path = self.base / path
        try:
            return load_mlp(path, label=name)
        except ParameterError as exc:
            raise self.fail("controller.weights", str(exc)) from None

    def reference(self, data: dict) -> Reference:
        if "reference" not in data:
            raise self.fail("reference", "missing (give steps or cycle)")
        section = self.table(data, "reference", {"steps", "cycle", "cycle_scale"})
        has_steps, has_cycle = "steps" in section, "cycle" in section
        if has_steps == has_cycle:
            raise self.fail("reference", "give exactly one of steps or cycle")
        if has_steps:
            if "cycle_scale" in section:
                raise self.fail("reference.cycle_scale", "only with cycle")
            return self.build(Reference, "",
                              points=self.pairs(section, "steps", "reference.steps"))
        name = self.string(section, "cycle", "reference.cycle")
        scale = self.number(section, "cycle_scale", "reference.cycle_scale", 1.0)
        if scale <= 0:
            raise self.fail("reference.cycle_scale", f"must be positive, got {scale}")
        if name.lower().endswith(".csv") and not Path(name).is_absolute():
            name = str(self.base / name)  # relative to the scenario file
        try:
            return load_cycle(name, scale)
        except ParameterError as exc:
            raise self.fail("reference.cycle", exc.reason) from None

    def road(self, data: dict) -> Road:
        section = self.table(data, "road", {"by", "grade_deg"})
        by = self.string(section, "by", "road.by", "position")
        grade = self.pairs(section, "grade_deg", "road.grade_deg") if "grade_deg" in section \
            else ()
        return self.build(Road, "", grade_deg=grade, by=by)

    def events(self, data: dict) -> tuple[Event, ...]:
        items = data.get("events", [])
        if not isinstance(items, list):
            raise self.fail("events", "must be an array of tables ([[events]])")
        out = []
        for i, item in enumerate(items):
            key = f"events[{i}]"
            if not isinstance(item, dict):
                raise self.fail(key, f"must be a table, got {_kind(item)}")
            self.table({key: item}, key, {"at", "until", "payload", "force"})
            if "payload" not in item and "force" not in item:
                raise self.fail(key, "needs payload or force")
            values = {k: self.number(item, k, f"{key}.{k}") for k in item}
            if "at" not in values:
                raise self.fail(f"{key}.at", "missing")
            out.append(self.build(Event, "", rename=("events", key), **values))
        return tuple(out)

    def sensor(self, data: dict) -> Sensor:
        section = self.table(data, "sensor", {"speed_noise_std", "seed"})
        std = self.number(section, "speed_noise_std", "sensor.speed_noise_std", 0.0)
        seed = self.integer(section, "seed", "sensor.seed", 0)
        return self.build(Sensor, "", speed_noise_std=std, seed=seed)


_REQUIRED = object()


_kind = kind

"""Drive cycles: the shipped EPA UDDS and HWFET speed traces, or a user CSV.

A cycle file is a CSV whose header names the columns ``time_s`` and
``speed_mps`` (read by name, in any order), with increasing times. The
shipped cycles are car-scale; ``scale`` multiplies the speeds (e.g. 0.1 to
drive a small robot with the same shape of demand).
"""

from __future__ import annotations

import csv
import io
import math
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np

from .limits import MAX_CYCLE_BYTES
from .scenario import Reference
from .validation import ParameterError, ParameterTypeError, positive_float

__all__ = ["CYCLES", "load_cycle"]

COLUMNS = ("time_s", "speed_mps")
CYCLES = {"udds": "EPA Urban Dynamometer Driving Schedule (city), 1369 s",
          "hwfet": "EPA Highway Fuel Economy Test, 765 s"}


def load_cycle(name_or_path: str | Path, scale: float = 1.0) -> Reference:
    """A drive cycle as a piecewise-linear :class:`~ctrlsim.scenario.Reference`.

    Parameters
    ----------
    name_or_path : str or Path
        ``"udds"``, ``"hwfet"`` or the path of a CSV file whose header names
        the columns ``time_s`` and ``speed_mps`` (in any order; other columns
        are ignored). Columns are read by name; a file without that header is
        refused, as is one over 4 MB.
    scale : float
        Factor (> 0) applied to the speeds.

    Raises
    ------
    ValueError
        (a :class:`~ctrlsim.validation.ParameterError` with key ``cycle``):
        unknown name, missing, oversized or malformed file.

    Examples
    --------
    >>> ref = load_cycle("udds", scale=0.1)
    >>> ref.points[-1][0]
    1369.0
    """
    if not isinstance(name_or_path, (str, PathLike)):
        raise ParameterTypeError("cycle", f"must be a cycle name or a CSV path, "
                                 f"got {type(name_or_path).__name__}")
    scale = positive_float("cycle_scale", scale)
    name = str(name_or_path)
    if name in CYCLES:
        source = resources.files("ctrlsim") / "data" / "cycles" / f"{name}.csv"
        label = name
    else:
        source = Path(name)
        label = source.stem
        if source.suffix.lower() != ".csv":
            raise ParameterError("cycle", f"unknown drive cycle {name!r} "
                                 f"(shipped: {', '.join(CYCLES)}; or give a .csv path)")
        try:
            if not source.is_file():
                raise ParameterError("cycle", f"drive cycle file {name!r} not found")
        except OSError as exc:
            raise ParameterError("cycle", f"drive cycle file {name!r}: {exc.strerror}") \
                from None
    try:
        with source.open("rb") as fh:
            raw = fh.read(MAX_CYCLE_BYTES + 1)
        if len(raw) > MAX_CYCLE_BYTES:
            raise ParameterError("cycle", f"drive cycle {name!r}: larger than "
                                 f"{MAX_CYCLE_BYTES // 1_000_000} MB")
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ParameterError("cycle", f"drive cycle {name!r}: cannot read it ({exc})") \
            from None
    times, speeds = _columns(name, rows)
    if len(times) < 2:
        raise ParameterError("cycle", f"drive cycle {name!r}: need at least two rows")
    if np.any(np.diff(times) <= 0):
        raise ParameterError("cycle", f"drive cycle {name!r}: time_s must be increasing")
    return Reference(tuple(zip(times, scale * speeds)), kind="cycle", name=label)


def _columns(name: str, rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The ``time_s`` and ``speed_mps`` columns, located by the header."""
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines
    header = [cell.strip() for cell in rows[0]] if rows else []
    cols = []
    for col in COLUMNS:
        if header.count(col) != 1:
            found = ",".join(header)[:80]
            raise ParameterError(
                "cycle", f"drive cycle {name!r}: the first line must be a header naming the "
                f"columns {','.join(COLUMNS)} once each, got {found!r}")
        cols.append(header.index(col))
    out = np.empty((len(rows) - 1, 2))
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ParameterError("cycle", f"drive cycle {name!r}: line {i + 2} has "
                                 f"{len(row)} fields, the header {len(header)}")
        for j, col in enumerate(cols):
            try:
                value = float(row[col])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ParameterError("cycle", f"drive cycle {name!r}: line {i + 2}: "
                                     f"{COLUMNS[j]} {row[col].strip()[:20]!r} is not a "
                                     "finite number")
            out[i, j] = value
    return out[:, 0], out[:, 1]

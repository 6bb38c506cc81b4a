"""Drive cycles: the shipped EPA UDDS and HWFET speed traces, or a user CSV.

A cycle file has a header and two columns, ``time_s,speed_mps``, with
increasing times. The shipped cycles are car-scale; ``scale`` multiplies the
speeds (e.g. 0.1 to drive a small robot with the same shape of demand).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .scenario import Reference

__all__ = ["CYCLES", "load_cycle"]

CYCLES = {"udds": "EPA Urban Dynamometer Driving Schedule (city), 1369 s",
          "hwfet": "EPA Highway Fuel Economy Test, 765 s"}


def load_cycle(name_or_path: str | Path, scale: float = 1.0) -> Reference:
    """A drive cycle as a piecewise-linear :class:`~ctrlsim.scenario.Reference`.

    Parameters
    ----------
    name_or_path : str or Path
        ``"udds"``, ``"hwfet"`` or the path of a ``time_s,speed_mps`` CSV.
    scale : float
        Factor applied to the speeds.

    Raises
    ------
    ValueError
        Unknown name, missing or malformed file.

    Examples
    --------
    >>> ref = load_cycle("udds", scale=0.1)
    >>> ref.points[-1][0]
    1369.0
    """
    name = str(name_or_path)
    if name in CYCLES:
        source = resources.files("ctrlsim") / "data" / "cycles" / f"{name}.csv"
        label = name
    else:
        source = Path(name)
        label = source.stem
        if source.suffix.lower() != ".csv":
            raise ValueError(f"unknown drive cycle {name!r} "
                             f"(shipped: {', '.join(CYCLES)}; or give a .csv path)")
        if not source.is_file():
            raise ValueError(f"drive cycle file {name!r} not found")
    try:
        with source.open("r", encoding="utf-8") as fh:
            data = np.loadtxt(fh, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"drive cycle {name!r}: cannot read it as time_s,speed_mps CSV "
                         f"({exc})") from None
    if data.shape[1] != 2 or data.shape[0] < 2:
        raise ValueError(f"drive cycle {name!r}: need two columns and at least two rows")
    if not np.all(np.isfinite(data)) or np.any(np.diff(data[:, 0]) <= 0):
        raise ValueError(f"drive cycle {name!r}: times must be finite and increasing")
    return Reference(tuple(zip(data[:, 0], scale * data[:, 1])), kind="cycle", name=label)

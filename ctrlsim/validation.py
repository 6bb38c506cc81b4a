"""The one check every numeric setting goes through: a finite real number."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["finite_float"]


def finite_float(name: str, value: Any) -> float:
    """``value`` as a finite float, or ``ValueError("name: reason")``.

    Integers are accepted (``mass = 20``); booleans and strings are not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name}: must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name}: must be finite, got {value}")
    return number

"""Argument checks shared by the dataclasses, the loader, the API and the CLI.

Every problem a user can cause is a :class:`ParameterError` naming the
parameter (``.key``) and the reason (``.reason``); a wrong *type* is a
:class:`ParameterTypeError`, which is also a ``TypeError``. The CLI maps
exactly these (and nothing else) to exit code 2.
"""

from __future__ import annotations

import math
import reprlib
import unicodedata
from typing import Any

import numpy as np

__all__ = ["kind", "ParameterError", "ParameterTypeError", "finite_float", "positive_float",
           "integer", "text", "safe_text"]


class ParameterError(ValueError):
    """An invalid argument or setting.

    Attributes
    ----------
    key : str
        The parameter, e.g. ``mass``, ``events[1].until`` or ``--csv``.
    reason : str
    """

    def __init__(self, key: str, reason: str, message: str | None = None) -> None:
        self.key, self.reason = key, reason
        super().__init__(message if message is not None else f"{key}: {reason}")


class ParameterTypeError(ParameterError, TypeError):
    """An argument of the wrong type (both a ``ValueError`` and a ``TypeError``)."""


def _kind(value: Any) -> str:
    """Type and a short repr (bounded in depth and length: the value may be hostile)."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def finite_float(name: str, value: Any) -> float:
    """``value`` as a finite float, or a :class:`ParameterError` for ``name``.

    Integers are accepted (``mass = 20``); booleans and strings are not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterTypeError(name, f"must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ParameterError(name, f"must be finite, got {value}")
    return number


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0."""
    number = finite_float(name, value)
    if number <= 0:
        raise ParameterError(name, f"must be a positive number, got {value}")
    return number


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool or float) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterTypeError(name, f"must be an integer, got {_kind(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"from {lo} to {hi}" if lo is not None and hi is not None else \
            (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ParameterError(name, f"must be an integer {span}, got {value}")
    return value


def text(name: str, value: Any, max_len: int) -> str:
    """A string of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise ParameterTypeError(name, f"must be a string, got {_kind(value)}")
    if len(value) > max_len:
        raise ParameterError(name, f"must be at most {max_len} characters, got {len(value)}")
    return value


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe_text(value: Any, newlines: bool = False) -> str:
    """``str(value)`` with control and format characters escaped (``\\x1b``, ``\\u202e``).

    For anything that came from a user file and is printed to a terminal:
    escape sequences cannot clear the screen, retitle the window or reorder
    the text. ``newlines=True`` keeps ``\\n`` (for multi-line output built by
    ctrlsim itself).

    >>> safe_text("evil\\x1b]0;pwned\\x07name")
    'evil\\\\x1b]0;pwned\\\\x07name'
    """
    text = str(value)
    # Fast path (big sweep tables): printable ASCII has no control characters.
    plain = text.replace("\n", "") if newlines else text
    if plain.isascii() and plain.isprintable():
        return text
    out = []
    for ch in text:
        if (ch == "\n" and newlines) or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


kind = _kind

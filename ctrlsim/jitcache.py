"""numba's disk cache for ctrlsim's kernels, keyed on every source they compile in.

numba keys a cached function on its own file alone, yet a compiled function
carries the code of everything it calls: ``fastmetrics.rollout_metrics``
holds a copy of ``kernels._lockstep``. After an edit or upgrade that changes
``kernels.py`` but not ``fastmetrics.py``, numba would keep running the old
``_lockstep`` inside the sweeps (a limitation its documentation states). Here
every cached function of ctrlsim is keyed on its own file *and* on the hash of
all of :data:`COMPILED_SOURCES`: a change to any of them recompiles all of
them, once, and nothing stale is ever loaded.

:func:`install` puts :class:`PackageLocator` first among numba's cache
locators; it serves ctrlsim's own files only and otherwise defers to the
locator numba would have picked (``NUMBA_CACHE_DIR``, ``__pycache__``, or the
user-wide cache), so where the cache lives does not change. (Setting
``NUMBA_CACHE_LOCATOR_CLASSES`` replaces numba's list, this locator included.)
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

__all__ = ["COMPILED_SOURCES", "PackageLocator", "install", "sources_hash"]

PACKAGE = Path(__file__).resolve().parent

# The modules that hold cached kernels and every ctrlsim module they import
# (its code or constants may be compiled in). tests/test_kernels.py derives
# this set from the imports and checks that it is this one.
COMPILED_SOURCES = ("fastmetrics.py", "jitcache.py", "kernels.py", "metrics.py",
                    "validation.py")


@functools.cache
def sources_hash(folder: Path = PACKAGE, names: tuple[str, ...] = COMPILED_SOURCES) -> str:
    """SHA-256 over the names and contents of ``names`` in ``folder``."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


class PackageLocator(caching._CacheLocator):
    """The cache locator numba would pick for a ctrlsim function, with a source
    stamp that also covers :data:`COMPILED_SOURCES`."""

    def __init__(self, inner: caching._CacheLocator) -> None:
        self._inner = inner
        self._py_file = inner._py_file  # numba's warnings name the file from here

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_disambiguator(self) -> str:
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), sources_hash()

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != PACKAGE:
            return None
        for locator in _numba_locators():
            inner = locator.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


def _numba_locators() -> list:
    return [c for c in caching.CacheImpl._locator_classes if c is not PackageLocator]


def install() -> None:
    """Put :class:`PackageLocator` first among numba's cache locators (idempotent).

    Must run before a module's ``@njit(cache=True)`` decorators: numba picks a
    function's locator when it is decorated.
    """
    classes = caching.CacheImpl._locator_classes
    if PackageLocator not in classes:
        classes.insert(0, PackageLocator)

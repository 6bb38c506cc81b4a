"""Start-up as installed: ctrlsim's modules byte-compiled before a timed start.

``pip install`` byte-compiles a package; an editable install (or a source tree)
leaves that to the first import, and with ``PYTHONDONTWRITEBYTECODE`` set (as on
the machine of ``RESULTS.md``) every process compiles ctrlsim's ~9,000 lines
again: ~50 ms of a ~0.4 s CLI start, all of it serial. The start-up and sweep
benchmarks call :func:`byte_compile` first, so they time the installed case.
"""

from __future__ import annotations

import compileall
import importlib.util
from pathlib import Path


def byte_compile() -> None:
    """Write (or refresh) the ``.pyc`` files of the ctrlsim that ``python`` imports."""
    spec = importlib.util.find_spec("ctrlsim")
    if spec is None or spec.origin is None:
        raise SystemExit("ctrlsim is not importable: pip install -e . first")
    compileall.compile_dir(Path(spec.origin).parent, quiet=1)

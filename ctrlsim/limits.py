"""Every size limit in one place, checked before any allocation or simulation.

Work is counted in RK4 substeps: a run costs ``samples * substeps`` of them,
weighted up for many events and grade breakpoints (the kernel scans them at
every RK4 stage). Sizes are Python integers, so a grid of 65536**4 points is
2**64, not 0.

Measured on the project's 2-core machine: ~5 M substeps/s on one core,
~7-11 M/s for a sweep on both, and ~0.25 ms of Python per sweep row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .validation import ParameterError

__all__ = ["MAX_SAMPLES", "MAX_SUBSTEPS", "MAX_RUN_WORK", "MAX_CHUNK_WORK",
           "MAX_SWEEP_WORK", "MAX_SWEEP_RUNS", "RUN_OVERHEAD", "MAX_EVENTS",
           "MAX_POINTS", "MAX_SCENARIO_BYTES", "MAX_CYCLE_BYTES", "MAX_NAME", "MAX_DESCRIPTION",
           "run_work", "check_sweep"]

# Samples per run, and in all runs of a sweep together (8 bytes x 5 outputs each:
# 800 MB at most).
MAX_SAMPLES = 20_000_000
MAX_SUBSTEPS = 10_000
# One run: ~1 s on one core. The compiled kernel cannot be interrupted, so any
# accepted run must finish quickly; Ctrl-C is then seen between runs.
MAX_RUN_WORK = 5_000_000
# One chunk of sweep rows (one compiled call, 16 rows): ~2 s on two cores, the
# longest a sweep ignores Ctrl-C.
MAX_CHUNK_WORK = 16_000_000
# A whole sweep (~45 s on two cores), rows counted with their Python overhead.
MAX_SWEEP_WORK = 300_000_000
MAX_SWEEP_RUNS = 100_000
RUN_OVERHEAD = 2_000  # substep-equivalents of Python work per sweep row
# Inputs scanned at every RK4 stage.
MAX_EVENTS = 1_000
MAX_POINTS = 100_000  # reference points and grade breakpoints, each
# Files read before parsing.
MAX_SCENARIO_BYTES = 1_000_000
MAX_CYCLE_BYTES = 4_000_000  # ~250 000 rows; MAX_POINTS applies after
MAX_NAME = 200
MAX_DESCRIPTION = 2_000


def run_work(samples: int, substeps: int, n_events: int = 0, n_grade: int = 0) -> int:
    """Cost of one run in substep-equivalents (Python integers, never wraps)."""
    return math.ceil(int(samples) * int(substeps) * (1 + (n_events + n_grade) / 32))


def check_sweep(axis_sizes: Sequence[int], samples: int, work: int, chunk: int) -> int:
    """Number of rows of a grid, or :class:`ParameterError` if the sweep is too large.

    ``samples`` and ``work`` are per run (see :func:`run_work`); ``chunk`` is
    the number of rows per compiled call.
    """
    rows = math.prod(int(n) for n in axis_sizes)
    shape = " x ".join(str(int(n)) for n in axis_sizes)
    if rows > MAX_SWEEP_RUNS:
        raise ParameterError("sweep", f"{shape} = {rows} runs (at most {MAX_SWEEP_RUNS})")
    if rows * samples > MAX_SAMPLES:
        raise ParameterError("sweep", f"{rows} runs of {samples} samples is too large "
                             f"(at most {MAX_SAMPLES:.0e} samples in all)")
    per_call = min(rows, chunk) * work
    if per_call > MAX_CHUNK_WORK:
        raise ParameterError("sweep", f"{min(rows, chunk)} runs of {work:.3g} RK4 substeps "
                             f"per compiled call (at most {MAX_CHUNK_WORK:.0e}, so that Ctrl-C "
                             "is seen within a few seconds); shorten the scenario or use "
                             "fewer substeps")
    total = rows * (work + RUN_OVERHEAD)
    if total > MAX_SWEEP_WORK:
        raise ParameterError("sweep", f"{rows} runs of {work:.3g} RK4 substeps is "
                             f"{total:.3g} units of work (at most {MAX_SWEEP_WORK:.0e})")
    return rows

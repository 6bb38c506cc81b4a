"""Every size limit in one place, checked before any allocation or simulation.

Work is counted in RK4 substeps: a run costs ``samples * substeps`` of them,
weighted up for many events and grade breakpoints (the kernel scans them at
every RK4 stage). Sizes are Python integers, so a grid of 65536**4 points is
2**64, not 0.

Measured on the project's 2-core machine: ~15 M substeps/s for one run, and
~100 M/s for a sweep (lockstep batch kernel on both cores), with a few
microseconds of Python per sweep row. A sweep runs in blocks of at most
:data:`MAX_CHUNK_WORK` substeps (Ctrl-C is seen between blocks, and an
interrupted ``--csv`` sweep resumes from its last finished block), so its total
is budgeted only against what one machine finishes in minutes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .validation import ParameterError

__all__ = ["MAX_SAMPLES", "MAX_SUBSTEPS", "MAX_RUN_WORK", "MAX_CHUNK_WORK",
           "MAX_SWEEP_WORK", "MAX_SWEEP_RUNS", "RUN_OVERHEAD", "MAX_BLOCK_SAMPLES",
           "MAX_BLOCK_ROWS", "sweep_block", "MAX_EVENTS",
           "MAX_POINTS", "MAX_SCENARIO_BYTES", "MAX_CYCLE_BYTES", "MAX_NAME", "MAX_DESCRIPTION",
           "run_work", "check_sweep"]

# Samples per run, and in all runs of a sweep that keeps its trajectories
# (8 bytes x 5 outputs each: 800 MB at most).
MAX_SAMPLES = 20_000_000
MAX_SUBSTEPS = 10_000
# One run: ~1 s on one core. The compiled kernel cannot be interrupted, so any
# accepted run must finish quickly; Ctrl-C is then seen between runs.
MAX_RUN_WORK = 5_000_000
# One block of sweep rows (one compiled call): ~0.7 s on one core, the
# longest a sweep ignores Ctrl-C. Blocks are sized to it (at least one row;
# one run is itself capped by MAX_RUN_WORK). Large blocks leave the threads
# many pieces to share, so they finish each call close together.
MAX_CHUNK_WORK = 64_000_000
# Samples in one block's output buffer (x 5 outputs x 8 bytes: 100 MB), for
# kernels that keep a whole block's outputs (user-defined laws); the built-in
# laws measure rows as they finish them and keep only a few rows per thread.
MAX_BLOCK_SAMPLES = 2_500_000
MAX_BLOCK_ROWS = 4096
# A whole sweep: 1e10 substeps is ~5-10 min on two cores (the 100 000-point,
# 1e9-substep sweep: 35-70 s, depending on load); rows counted with their overhead.
MAX_SWEEP_WORK = 10_000_000_000
# Rows of a sweep: the per-row results (17 metrics + parameters) stay in memory,
# ~150 bytes a row.
MAX_SWEEP_RUNS = 1_000_000
RUN_OVERHEAD = 100  # substep-equivalents of Python work per sweep row
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


def sweep_block(samples: int, work: int, whole: bool = False) -> int:
    """Rows per block of a sweep whose runs have ``samples`` samples and cost
    ``work``; ``whole``: the kernel holds a block's outputs whole (user laws)."""
    rows = min(MAX_BLOCK_ROWS, MAX_CHUNK_WORK // max(int(work), 1))
    if whole:
        rows = min(rows, MAX_BLOCK_SAMPLES // max(int(samples), 1))
    return max(1, rows)


def check_sweep(axis_sizes: Sequence[int], samples: int, work: int,
                trajectories: bool = False) -> int:
    """Number of rows of a grid, or :class:`ParameterError` if the sweep is too large.

    ``samples`` and ``work`` are per run (see :func:`run_work`); a sweep that
    keeps its ``trajectories`` is also capped at :data:`MAX_SAMPLES` in all.
    """
    rows = math.prod(int(n) for n in axis_sizes)
    shape = " x ".join(str(int(n)) for n in axis_sizes)
    if rows > MAX_SWEEP_RUNS:
        raise ParameterError("sweep", f"{shape} = {rows} runs (at most {MAX_SWEEP_RUNS})")
    if trajectories and rows * samples > MAX_SAMPLES:
        raise ParameterError("sweep", f"{rows} runs of {samples} samples is too large "
                             f"to keep the trajectories (at most {MAX_SAMPLES:.0e} samples "
                             "in all; without keep_trajectories a sweep keeps metrics only)")
    total = rows * (work + RUN_OVERHEAD)
    if total > MAX_SWEEP_WORK:
        raise ParameterError("sweep", f"{rows} runs of {work:.3g} RK4 substeps is "
                             f"{total:.3g} units of work (at most {MAX_SWEEP_WORK:.0e})")
    return rows

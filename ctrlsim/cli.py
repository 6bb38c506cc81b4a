"""The ``ctrlsim`` command line: parse, call the public API, format.

Exit codes: 0 success; 2 usage or validation error (a
:class:`~ctrlsim.validation.ParameterError`, one line on stderr naming the
key); 1 an output file or stdout that could not be written (a full disk), or an
internal error (``--debug`` shows the traceback); 130 interrupted (Ctrl-C); 141 stdout
closed early (``| head``), quietly.

Everything printed goes through :func:`_out`/:func:`_err`, which escape
control characters: scenario names and descriptions come from user files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .controllers import DEFAULT_COMPARISON
from .controllers import controller as parse_controller
from .files import OutputError, atomic_write, check_folder, check_output
from .limits import MAX_SWEEP_RUNS
from .loader import load_scenario, shipped_scenarios
from .metrics import METRIC_KEYS, metric_label
from .simulate import Trajectory, simulate
from .validation import ParameterError, safe_text

__all__ = ["main"]

_PLOT_SUFFIXES = {".png", ".pdf", ".svg", ".jpg"}
# (metric, header, width) of the human tables.
_COLUMNS = tuple((key, metric_label(key, short=True), len(metric_label(key, short=True)))
                 for key in ("overshoot", "settling_time", "rise_time", "peak",
                             "steady_state_error", "iae", "max_abs_error", "energy"))


def entry() -> int:
    """The ``ctrlsim`` console script and ``python -m ctrlsim``: :func:`main`,
    with the garbage collector kept off the imported modules."""
    # Garbage collections walk every tracked object, and numba's (imported by
    # now, and made again by its first call) are most of them. Frozen objects
    # are skipped: once after the imports (a warm sweep starts ~0.07 s sooner)
    # and once at the end, before the interpreter's exit collects (~0.2 s of
    # every command). Only here: a program calling main() keeps its collector.
    gc.freeze()
    code = main()
    gc.freeze()
    return code


class UsageError(ParameterError):
    """Bad command-line input (exit code 2)."""

    def __init__(self, message: str, key: str = "usage") -> None:
        super().__init__(key, message, message=message)


class _StdoutError(OutputError):
    """stdout could not be written (a full disk, an I/O error; not a closed pipe)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    debug = False
    try:
        args = _parser().parse_args(argv)
        debug = args.debug
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = args.func(args)
        for message in dict.fromkeys(str(w.message) for w in caught):
            _err(f"ctrlsim: warning: {message}")
        with _stdout_errors():
            sys.stdout.flush()  # a closed or full stdout shows up here, not at exit
        return code
    except KeyboardInterrupt:
        _err("ctrlsim: interrupted")
        return 130
    except BrokenPipeError:  # `ctrlsim ... | head`: the reader has gone
        _silence_stdout()
        return 141
    except ParameterError as exc:  # ScenarioError, bad specs, parameters, outputs
        if debug:
            raise
        _err(f"ctrlsim: error: {exc}")
        return 2
    except OutputError as exc:
        if debug:
            raise
        if isinstance(exc, _StdoutError):
            _silence_stdout()  # the interpreter's final flush would fail again
        _err(f"ctrlsim: error: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: no traceback for users
        if debug:
            raise
        _err(f"ctrlsim: internal error: {type(exc).__name__}: {exc} "
             "(run with --debug for the traceback)")
        return 1


def _out(text: str = "", file=None) -> None:
    """Print text ctrlsim composed (newlines kept, control characters escaped)."""
    if file is not None and file is not sys.stdout:
        print(safe_text(text, newlines=True), file=file)
        return
    with _stdout_errors():
        print(safe_text(text, newlines=True))


@contextlib.contextmanager
def _stdout_errors():
    """Turn an I/O error writing stdout into :class:`_StdoutError` (exit 1, one
    line); a closed pipe stays a ``BrokenPipeError`` (exit 141, quietly)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutError(f"cannot write the output: {exc.strerror or exc}") from None


def _err(text: str) -> None:
    """One line on stderr, control characters (newlines too) escaped."""
    try:
        print(safe_text(text), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed as well
        pass


def _line(text) -> str:
    """A user-supplied field (name, description, spec) on one line."""
    return safe_text(text)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------
def _cmd_scenarios(args) -> int:
    scenarios = shipped_scenarios()
    width = max(map(len, scenarios))
    _out("\n".join(f"{_line(name):<{width}}  {_line(description)}"
                    for name, description in scenarios.items()))
    return 0


def _cmd_run(args) -> int:
    sc = load_scenario(args.scenario)
    ctl = parse_controller(args.controller) if args.controller else None
    targets = _check_outputs(args, sc, "run")
    _compile_notice("simulation")
    tr = simulate(sc, ctl)
    spec = args.controller or tr.controller.spec
    if args.csv:
        _write_trajectory_csv(tr, targets["--csv"])
    _report(sc, [spec], [tr], args, targets)
    return 0


def _cmd_compare(args) -> int:
    sc = load_scenario(args.scenario)
    specs = args.controller or list(DEFAULT_COMPARISON)
    ctls = [parse_controller(s) for s in specs]
    targets = _check_outputs(args, sc, "compare")
    _compile_notice("simulation")
    trs = [simulate(sc, c) for c in ctls]
    _report(sc, specs, trs, args, targets)
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import sweep

    sc = load_scenario(args.scenario)
    params: dict[str, np.ndarray] = {}
    for text in args.param:
        name, values = _parse_param(text)
        if name in params:
            raise UsageError(f"--param {name} is given twice")
        params[name] = values
    metrics = args.metric or ["overshoot", "settling_time"]
    for m in metrics:
        if m not in METRIC_KEYS:
            raise UsageError(f"--metric: unknown metric {m!r} "
                             f"(choose from {', '.join(METRIC_KEYS)})")
    if args.metric and args.plot is None:  # else silently ignored: the table is fixed
        raise UsageError("--metric chooses what --plot draws: add --plot (--json and "
                         "--csv hold every metric)", key="--metric")
    if args.plot is not None and len(params) > 2:
        raise UsageError("--plot draws 1-D or 2-D sweeps; give at most two --param")
    ctl = parse_controller(args.controller) if args.controller else None
    targets = _check_outputs(args, sc, "sweep-" + "-".join(params))
    if args.resume and not args.csv:
        raise UsageError("--resume continues the file given with --csv; give --csv FILE",
                         key="--resume")
    total = math.prod(len(v) for v in params.values())  # Python ints: never wraps
    if args.scheduler is None:  # on a cluster the workers compile
        _compile_notice("sweep")
    bars = []  # started at the first finished block: loading the kernels does not count

    def progress(done: int, n: int) -> None:
        if not bars:
            bars.append(_progress(total))
        bars[0].update(done - bars[0].n)
    table = _SweepTable(list(params))
    try:
        try:
            res = sweep(sc, params, controller=ctl, scheduler=args.scheduler,
                        csv=targets.get("--csv"), resume=args.resume, progress=progress,
                        on_block=None if args.json else table)
        finally:
            for bar in bars:
                bar.close()
        _sweep_report(sc, ctl, res, args, targets, metrics, table, total)
    finally:
        table.close()
    _wrote(targets, args.json)
    return 0


def _sweep_report(sc, ctl, res, args, targets: dict, metrics: list[str],
                  table: _SweepTable, total: int) -> None:
    """Write the sweep's plot, then print its table (or JSON), streamed row by
    row: a 100 000-point table is not built in memory."""
    spec = args.controller or sc.resolved_controller(ctl).spec
    if args.plot is not None:
        from .plotting import plain_text, sweep_plot

        _save(sweep_plot(res, metrics, title=plain_text(f"{sc.name}: sweep")),
              targets["--plot"])
    if args.json:
        head = json.dumps(_strict({"scenario": sc.name, "controller": spec,
                                   "params": list(res.names)}), allow_nan=False)
        items = (json.dumps(_strict({"controller": spec, "params": {n: r[n] for n in res.names},
                                     "diverged": r["diverged"],
                                     "metrics": {k: r[k] for k in METRIC_KEYS}}),
                            allow_nan=False) for r in res.iter_rows())
        _out_lines(itertools.chain([head[:-1] + ', "results": ['],
                                   _joined(items, ","), ["]}"]))
    else:
        _out(f"{_line(sc.name)}: sweep of {', '.join(res.names)} ({total} runs)")
        for text in table.lines(res):
            _out(text)


def _cmd_analyze(args) -> int:
    from .analysis import analyze, nyquist_figure

    sc = load_scenario(args.scenario)
    ctl = parse_controller(args.controller) if args.controller else None
    targets = _check_outputs(args, sc, "analyze")
    an = analyze(sc, ctl)
    if args.plot is not None:
        _save(nyquist_figure(an), targets["--plot"])
    if args.json:
        _print_json(an.to_dict())
    else:
        _out(_analysis_report(an))
    _wrote(targets, args.json)
    return 0


def _analysis_report(an) -> str:
    """The human-readable report of ``ctrlsim analyze``."""
    sc, op, circ = an.scenario, an.operating_point, an.circle
    unit = " N" if sc.plant.preset == "robot" else ""

    def num(x: float, fmt: str = ".3g") -> str:
        return "-" if not math.isfinite(x) else format(x, fmt)

    lines = [f"{_line(sc.name)}: {_line(sc.description)}" if sc.description else _line(sc.name),
             f"controller  {_line(an.controller.spec)}"]
    head = (f"operating   {op.speed:g} m/s, grade {math.degrees(op.grade):.3g} deg, "
            f"mass {op.mass:g} kg")
    if op.feasible:
        mode = "slope 1" if op.preactivation >= 0 else f"slope {an.controller.slope:g}"
        lines.append(f"{head}: force {op.force:.4g} N, command {op.command:.4g}{unit}, "
                     f"s* = {op.preactivation:.4g} ({mode} active)")
    elif an.controller.ki == 0.0:
        lines.append(f"{head}: NOT ANALYSED ({op.reason})")
    elif an.controller.kaw > 0.0:
        lines.append(f"{head}: NO EQUILIBRIUM AT THE SET SPEED ({op.reason})")
    else:
        lines.append(f"{head}: NO EQUILIBRIUM ({op.reason})")
    if an.rest is not None:
        rp = an.rest
        lines.append(f"rest        with anti-windup the loop rests at {rp.speed:.4g} m/s "
                     f"instead, {rp.kind} (command {rp.command:.4g}{unit}, s = "
                     f"{rp.preactivation:.4g}): "
                     + ("locally exponentially stable" if rp.locally_stable else
                        "NOT locally stable")
                     + f" (|p|max {rp.mode.spectral_radius:.6f})")
    if sc.reference.kind == "cycle":
        lines.append("note        a drive cycle: analysed at its last set speed, "
                     f"{op.speed:g} m/s, not along the cycle")
    A = np.asarray(an.plant.A)
    B = np.asarray(an.plant.B)
    def mat(x) -> str:
        return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in x) + "]"

    lines.append(f"plant       linearised, command -> speed: A = {mat(A)}, B = {mat(B)}, "
                 f"poles {', '.join(f'{p.real:.4g}' for p in np.linalg.eigvals(A))} 1/s")
    lines.append("modes       slope  damping  wn [rad/s]  |p|max     overshoot [%]  "
                 "settling [s]  stable")
    for m in an.modes:
        lines.append(f"            {m.slope:<5g}  {num(m.damping):>7}  {num(m.wn):>10}  "
                     f"{m.spectral_radius:<9.6f}  {num(m.overshoot):>13}  "
                     f"{num(m.settling_time):>12}  {'yes' if m.stable else 'NO'}"
                     + ("  (active)" if m.active else ""))
    if an.simulated is not None:
        sim = an.simulated
        lines.append(f"simulated   overshoot {num(sim['overshoot'])} %, settling "
                     f"{num(sim['settling_time'])} s; stable and settling: "
                     f"{'yes' if an.simulated_ok else 'NO'}")
    local = an.locally_stable
    if local is not None:
        lines.append("local       " + ("the active mode is stable: the equilibrium is locally "
                                       "exponentially stable" if local else
                                       "the active mode is NOT stable: the equilibrium is "
                                       "unstable"))
    lo, hi = circ.sector
    verdict = "CERTIFIED" if circ.certified else "not certified"
    lines.append(f"circle      phi in [{lo:g}, {hi:g}]: {verdict}, margin {circ.margin:.3g}"
                 + (f" ({circ.reason})" if circ.reason else "")
                 + "; covers the linearised loop with any phi in the sector "
                   "(docs/analysis.md)")
    if circ.popov_certified is not None:
        detail = (f"margin {circ.popov_margin:.3g} at q = {circ.popov_q:.3g}"
                  if math.isfinite(circ.popov_margin) else
                  "the loop with the lower slope is not stable")
        lines.append(f"popov       Jury-Lee test (phi monotone, slope-restricted): "
                     f"{'CERTIFIED' if circ.popov_certified else 'not certified'}, {detail}")
    eps = sc.sensor.speed_noise_std * 3 or 0.01
    what = "3 x the sensor's noise std" if sc.sensor.speed_noise_std else "e.g."
    lines.append(f"noise       Lipschitz {an.lipschitz:.4g} cmd/(m/s) over one sample: "
                 f"measurement errors |n| <= {eps:.3g} m/s ({what}) move the command "
                 f"by at most {an.noise_bound(eps):.3g}{unit}")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    import time

    from . import learn
    from .controllers import controller as spec_controller
    from .plotting import dead_units_plot, learning_curve, plain_text

    sc = load_scenario(args.scenario)
    hidden = _parse_hidden(args.hidden)
    if not (math.isfinite(args.alpha) and 0.0 <= args.alpha <= 1.0):
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}", key="--alpha")
    if not (math.isfinite(args.budget) and 1.0 <= args.budget <= 86400.0):
        raise UsageError(f"--budget must be from 1 to 86400 seconds, got {args.budget}",
                         key="--budget")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be from 0 to 2**32 - 1, got {args.seed}", key="--seed")
    if not 1 <= args.heldout <= 2000:
        raise UsageError(f"--heldout must be from 1 to 2000, got {args.heldout}",
                         key="--heldout")
    if Path(args.out).suffix.lower() != ".npz":
        raise UsageError(f"--out {args.out}: give a file name ending in .npz", key="--out")
    out = check_output("--out", args.out)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sc.name).strip("._")[:80] or "scenario"
    curve_shown = str(Path("plots") / f"{safe}-train.png")
    curve = check_output("--plot", curve_shown)
    dead_shown = str(Path("plots") / f"{safe}-dead-relu.png")
    dead_target = check_output("--report", dead_shown) if args.report else None
    from tqdm import tqdm

    with tqdm(total=round(args.budget), unit="s", file=sys.stderr, leave=False,
              bar_format="{l_bar}{bar}| {n:.0f}/{total} s {postfix}") as bar:
        def progress(stage, seconds, value):
            bar.set_postfix_str(f"{stage} {value:.4g}", refresh=False)
            bar.update(min(seconds, bar.total) - bar.n)

        res = learn.train(sc, hidden=hidden, activation=args.activation, alpha=args.alpha,
                          method=args.method, seed=args.seed, budget=args.budget,
                          progress=progress)
    buf = io.BytesIO()
    net = res.controller
    net.save(buf)
    with atomic_write(out, "--out") as fh:
        fh.write(buf.getbuffer())
    _save(learning_curve(res.imitation, res.es, title=plain_text(
        f"{sc.name}: {args.method} training, {args.activation} {args.hidden}"),
        pid=res.pid, baseline=res.expert_cost), curve)
    t0 = time.perf_counter()
    heldout = learn.variants(sc, args.heldout, seed=args.seed + 1_000_003)
    rows = [(f"mlp:{args.out} (trained)", net), (f"{res.expert.spec} (tuned PI)", res.expert)]
    rows += [(s, spec_controller(s)) for s in DEFAULT_COMPARISON]
    ctls = [c for _, c in rows]
    on_sc = learn.evaluate(ctls, [sc])[:, 0]
    held = learn.evaluate(ctls, heldout)
    _out(f"{_line(sc.name)}: trained in {res.seconds:.0f} s ({args.method}, "
         f"{args.activation}, hidden {','.join(map(str, hidden))}); "
         f"cost = ITAE/T + {learn.EFFORT_WEIGHT:g}*effort (docs/learning.md)")
    _out(_plain_table(
        ["controller", "cost (scenario)", f"cost ({args.heldout} held-out, mean)",
         "worst", "diverged"],
        [[_line(name), f"{on_sc[i]:.4g}", f"{held[i].mean():.4g}", f"{held[i].max():.4g}",
          f"{int((held[i] >= learn.DIVERGED_COST).sum())}/{args.heldout}"]
         for i, (name, _) in enumerate(rows)]))
    gain = 1.0 - held[0].mean() / held[1].mean()
    _out(f"trained vs tuned PI on the held-out variants: {100 * abs(gain):.1f} % "
         f"{'lower' if gain >= 0 else 'higher'} cost (evaluation "
         f"{time.perf_counter() - t0:.0f} s)")
    _out(f"wrote {args.out}")
    _out(f"plot written to {curve_shown}")
    if args.report:
        results = learn.dead_relu_experiment(sc, hidden=hidden, alpha=args.alpha,
                                             seed=args.seed)
        _save(dead_units_plot(results, title=plain_text(
            f"{sc.name}: imitation from negative biases, hidden {args.hidden}")),
            dead_target)
        _out("")
        _out(dead_relu_table(results))
        _out(f"plot written to {dead_shown}")
    return 0


def dead_relu_table(results: dict) -> str:
    """Markdown table of :func:`ctrlsim.learn.dead_relu_experiment`."""
    lines = ["| hidden units | dead at start | dead after training | imitation loss at start "
             "| after training | closed-loop cost |", "|---|---|---|---|---|---|"]
    for label, (net, log, cost) in results.items():
        name = label if label != "leaky" else f"leaky (alpha {net.alpha:g})"
        lines.append(f"| {name} | {100 * log.dead[0]:.0f} % | {100 * log.dead[-1]:.0f} % "
                     f"| {log.loss[0]:.3g} | {log.loss[-1]:.3g} | {cost:.3g} |")
    return "\n".join(lines)


def _plain_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _parse_hidden(text: str) -> tuple[int, ...]:
    from .mlp import MAX_HIDDEN_LAYERS, MAX_WIDTH

    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or len(sizes) > MAX_HIDDEN_LAYERS or not all(
            1 <= n <= MAX_WIDTH for n in sizes):
        raise UsageError(f"--hidden {text!r}: expected widths like 16,16 (1 to "
                         f"{MAX_HIDDEN_LAYERS} layers of 1 to {MAX_WIDTH} units)",
                         key="--hidden")
    return sizes

def _joined(items, sep: str):
    """``items`` with ``sep`` after every one but the last."""
    prev = None
    for item in items:
        if prev is not None:
            yield prev + sep
        prev = item
    if prev is not None:
        yield prev


def _out_lines(lines, chunk: int = 2000) -> None:
    """Print many lines, a chunk at a time."""
    buf = []
    for line in lines:
        buf.append(line)
        if len(buf) >= chunk:
            _out("\n".join(buf))
            buf = []
    if buf:
        _out("\n".join(buf))


def _cmd_gallery(args) -> int:
    from .gallery import make_gallery

    check_folder("--out", args.out)
    for path in make_gallery(Path(args.out)):
        _out(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _report(sc, specs: list[str], trs: list[Trajectory], args, targets: dict) -> None:
    """Write the plot (before printing: a closed stdout must not lose it), then print."""
    metrics = [tr.metrics() for tr in trs]
    if args.plot is not None:
        from .plotting import comparison

        _save(comparison(trs, specs), targets["--plot"])
    if args.json:
        _print_json({"scenario": sc.name, "results": [
            {"controller": s, "diverged": tr.diverged, "diverged_at": tr.diverged_at,
             "metrics": m} for s, tr, m in zip(specs, trs, metrics)]})
    else:
        name = _line(sc.name)
        _out(f"{name}: {_line(sc.description)}" if sc.description else name)
        _out(_table([_fmt_row([_line(s)], m, tr.diverged, tr.diverged_at)
                     for s, tr, m in zip(specs, trs, metrics)], headers=["controller"]))
    _wrote(targets, args.json)


def _wrote(targets: dict, quiet: bool) -> None:
    if "--plot" in targets:
        _out(f"plot written to {targets['--plot.shown']}", sys.stderr if quiet else sys.stdout)


def _fmt_metric(key: str, value: float, overshoot: float) -> str:
    if math.isnan(value):
        return "not settled" if key == "settling_time" and not math.isnan(overshoot) else "-"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}"


def _fmt_row(lead: list[str], m: dict, diverged: bool, at: float | None = None) -> list[str]:
    cells = [_fmt_metric(key, m[key], m["overshoot"]) for key, _, _ in _COLUMNS]
    status = "ok" if not diverged else ("DIVERGED" + (f" at {at:.2f} s" if at is not None else ""))
    return lead + cells + [status]


def _metric_column(key: str, values: np.ndarray, overshoot: np.ndarray) -> list[str]:
    """:func:`_fmt_metric` of a column; the common case (all finite, < 1e4) in one pass."""
    if np.all(np.abs(values) < 1e4):  # False for NaN
        return [f"{x:.3g}" for x in values.tolist()]
    return [_fmt_metric(key, x, o) for x, o in zip(values.tolist(), overshoot.tolist())]


def _sweep_columns(names, values, metrics, diverged, chunk: int = 4096, start: int = 0,
                   stop: int | None = None):
    """The sweep table's cells of rows ``[start, stop)``, a chunk of rows at a
    time, as lists of columns formatted from the result arrays (the same cells
    as :func:`_fmt_row`)."""
    n = diverged.size if stop is None else stop
    for lo in range(start, n, chunk):
        hi = min(lo + chunk, n)
        cols = [[f"{x:g}" for x in values[name][lo:hi].tolist()] for name in names]
        over = metrics["overshoot"][lo:hi]
        cols += [_metric_column(key, metrics[key][lo:hi], over) for key, _, _ in _COLUMNS]
        cols.append(["DIVERGED" if d else "ok" for d in diverged[lo:hi].tolist()])
        yield cols


def _widen(widths: list[int], cols: list[list[str]]) -> list[int]:
    """Column widths that also fit the cells ``cols`` (a list of columns)."""
    return [max(w, max(map(len, c), default=0)) for w, c in zip(widths, cols)]


def _headers(lead) -> list[str]:
    """A results table's headers: the ``lead`` columns, the metrics, the status."""
    return list(lead) + [h for _, h, _ in _COLUMNS] + ["status"]


def _template(widths: list[int], n_lead: int) -> str:
    """One format string per table: lead columns and status left-aligned, metrics right."""
    return "  ".join(f"{{:{'<' if i < n_lead or i == len(widths) - 1 else '>'}{w}}}"
                     for i, w in enumerate(widths))


class _SweepTable:
    """The sweep table, rendered block by block through ``sweep(on_block=...)``
    while the next block computes, so that little is left to do once the sweep
    ends (on two cores, formatting a 100 000-row table at the end took ~0.6 s
    while the other core idled).

    Column widths only grow: each block's lines are rendered with the widths
    of the blocks so far (and the headers) into a temporary file. At the end,
    a block rendered with the final widths is copied from it; a block that a
    later one widened is rendered again, so the table is the same as two
    passes over the result (:func:`_sweep_table_lines`). Memory stays flat:
    the rendered text is on disk.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.headers = _headers(names)
        self.n_lead = len(names)
        self.widths = [len(h) for h in self.headers]
        # Rendered chunks of rows: lo, hi, the widths used, where the text is in the spool.
        self.parts: list[tuple[int, int, list[int], int, int]] = []
        self.spool = None
        self.copied = 0     # chunks taken from the spool by lines() (for the tests)

    def __call__(self, lo, hi, values, metrics, diverged) -> None:
        if self.spool is None:
            self.spool = tempfile.TemporaryFile()
        # A chunk of rows at a time (a resume hands over all rows read back at once).
        for cols in _sweep_columns(list(values), values, metrics, diverged):
            self.widths = _widen(self.widths, cols)
            template = _template(self.widths, self.n_lead)
            start = self.spool.tell()
            self.spool.write("\n".join(template.format(*r).rstrip()
                                       for r in zip(*cols)).encode())
            self.parts.append((lo, lo + len(cols[0]), list(self.widths), start,
                               self.spool.tell()))
            lo += len(cols[0])

    def lines(self, res):
        """The table's lines (header, rule, rows) of the result ``res``, as
        chunks of text."""
        ends = self.parts + [(res.diverged.size,) * 2 + (None, 0, 0)]
        done = 0
        for lo, hi, *_ in ends:  # rows no block brought (none if all passed through)
            for cols in _sweep_columns(res.names, res.values, res.metrics, res.diverged,
                                       start=done, stop=lo):
                self.widths = _widen(self.widths, cols)
            done = max(done, hi)
        template = _template(self.widths, self.n_lead)
        yield template.format(*self.headers).rstrip()
        yield template.format(*["-" * w for w in self.widths]).rstrip()
        done = 0
        for lo, hi, widths, a, b in ends:
            if lo > done:
                yield from self._render(res, template, done, lo)
            if widths == self.widths:
                self.spool.seek(a)
                yield self.spool.read(b - a).decode()
                self.copied += 1
            elif widths is not None:
                yield from self._render(res, template, lo, hi)
            done = max(done, hi)

    @staticmethod
    def _render(res, template: str, lo: int, hi: int):
        for cols in _sweep_columns(res.names, res.values, res.metrics, res.diverged,
                                   start=lo, stop=hi):
            yield "\n".join(template.format(*r).rstrip() for r in zip(*cols))

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def _sweep_table_lines(res, headers: list[str]):
    """:func:`_table_lines` of a sweep in two passes over the result (widths,
    then lines): what :class:`_SweepTable` must print (the tests' reference)."""
    def cells():
        return _sweep_columns(res.names, res.values, res.metrics, res.diverged)
    widths = [0] * len(_headers(res.names))
    for cols in cells():
        widths = _widen(widths, cols)
    rows = lambda: (r for cols in cells() for r in zip(*cols))  # noqa: E731
    return _table_lines(rows, headers, widths)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    return "\n".join(_table_lines(lambda: iter(rows), headers))


def _table_lines(rows, headers: list[str], widths: list[int] | None = None):
    """Lines of the table; ``rows()`` gives the rows afresh (two passes: widths, then
    lines; one if the cells' ``widths`` are given)."""
    headers = _headers(headers)
    if widths is None:
        widths = [0] * len(headers)
        for r in rows():
            widths = [max(w, len(c)) for w, c in zip(widths, r)]
    widths = [max(w, len(h)) for w, h in zip(widths, headers)]
    template = _template(widths, len(headers) - len(_COLUMNS) - 1)

    def line(cells):
        return template.format(*cells).rstrip()
    yield line(headers)
    yield line(["-" * w for w in widths])
    for r in rows():
        yield line(r)


def _print_json(obj) -> None:
    _out(json.dumps(_strict(obj), indent=2, allow_nan=False))  # ASCII: escapes controls


def _strict(obj):
    """NaN and inf become null: the output is strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _check_outputs(args, sc, what: str) -> dict:
    """Resolve and check every output path before any simulation runs.

    Returns ``{flag: target path}`` (plus ``"--plot.shown"``, the path as
    given or defaulted, for the message).
    """
    targets: dict = {}
    plot = getattr(args, "plot", None)
    if plot is not None:
        if plot and Path(plot).suffix.lower() not in _PLOT_SUFFIXES:
            raise UsageError(f"--plot {plot}: give a file name ending in "
                             f"{', '.join(sorted(_PLOT_SUFFIXES))}", key="--plot")
        # Default name from the scenario name: sanitised and short (a long name
        # must not become "File name too long" after the run).
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sc.name).strip("._")[:80] or "scenario"
        shown = plot or str(Path("plots") / f"{safe}-{what[:60]}.png")
        targets["--plot"], targets["--plot.shown"] = check_output("--plot", shown), shown
    if getattr(args, "csv", None):
        targets["--csv"] = check_output("--csv", args.csv)
    if "--plot" in targets and targets["--plot"] == targets.get("--csv"):
        raise UsageError(f"--plot and --csv name the same file {args.csv}", key="--csv")
    return targets


def _save(fig, target: Path) -> None:
    buf = io.BytesIO()  # render first: the file is only opened to be written
    fig.savefig(buf, format=target.suffix.lstrip(".").lower(), dpi=110)
    with atomic_write(target, "--plot") as fh:
        fh.write(buf.getbuffer())


def _write_trajectory_csv(tr: Trajectory, target: Path) -> None:
    cols = {"t_s": tr.t, "position_m": tr.position, "speed_mps": tr.speed,
            "force_N": tr.force, "command": tr.command, "applied": tr.applied,
            "reference_mps": tr.reference, "error_mps": tr.error}
    with atomic_write(target, "--csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        writer.writerows(zip(*(c.tolist() for c in cols.values())))


def _compile_notice(job: str) -> None:
    """Say on stderr that the ``job``'s kernel is about to be compiled, when
    numba's disk cache does not hold it (first use after installing or
    upgrading): otherwise the command would sit silent for up to a minute."""
    from . import fastmetrics, kernels

    # The kernel each job compiles first, and roughly how long that takes here.
    kernel, took = {"simulation": (kernels.rollout_pid, "~10 s"),
                    "sweep": (fastmetrics.rollout_metrics, "~1 min")}[job]
    if not _cached(kernel):
        print(f"ctrlsim: compiling the {job} kernel (first use after installing or "
              f"upgrading, {took}; cached for later runs)", file=sys.stderr, flush=True)


def _cached(kernel) -> bool:
    """Whether numba's disk cache has an entry for the dispatcher ``kernel``
    (True when it cannot tell: a missing notice is better than a wrong one)."""
    try:
        return bool(kernel._cache._cache_file._load_index())
    except Exception:  # numba internals: another version may lay them out otherwise
        return True


def _progress(total: int):
    from tqdm import tqdm

    # delay: only runs that take over a second get a bar, and only on a terminal
    # (a log file or a pipe gets no carriage-return noise).
    return tqdm(total=total, unit="run", delay=1.0, file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------
def _parse_param(text: str) -> tuple[str, np.ndarray]:
    """``NAME=START:STOP:NUM`` (inclusive linspace) or ``NAME=v1,v2,...``."""
    name, eq, spec = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise UsageError(f"--param {text!r}: expected NAME=START:STOP:NUM or NAME=v1,v2,...")
    try:
        if ":" in spec:
            start, stop, num = spec.split(":")
            n = int(num)
            if n < 1:
                raise ValueError
            if n > MAX_SWEEP_RUNS:  # before linspace allocates it
                raise UsageError(f"--param {text!r}: NUM {n} is more than the "
                                 f"{MAX_SWEEP_RUNS} runs a sweep may have", key="--param")
            values = np.linspace(float(start), float(stop), n)
        else:
            values = np.array([float(v) for v in spec.split(",")])
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"--param {text!r}: expected NAME=START:STOP:NUM (NUM a positive "
                         "integer) or NAME=v1,v2,...") from None
    if not np.all(np.isfinite(values)):
        raise UsageError(f"--param {text!r}: values must be finite")
    return name, values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctrlsim", description="Cruise-control simulator: ReLU vs Leaky ReLU vs linear "
        "control laws on a robot or Astrom & Murray's car.")
    p.add_argument("--version", action="version", version=f"ctrlsim {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731

    s = add("scenarios", help="list the shipped scenarios")
    s.set_defaults(func=_cmd_scenarios)

    spec_help = "controller spec TYPE[:ALPHA][,key=value...], e.g. leaky:0.05,kp=80"
    plot_help = "write a PNG (default: plots/<scenario>-<what>.png)"

    s = add("run", help="simulate one scenario with one controller")
    s.add_argument("scenario", help="shipped scenario name or TOML path")
    s.add_argument("-c", "--controller", action=_OneController,
                   help=spec_help + " (default: the scenario's)")
    s.set_defaults(func=_cmd_run)
    _output_args(s, plot_help)
    s.add_argument("--csv", metavar="FILE", help="write the trajectory as CSV")

    s = add("compare", help="simulate one scenario under several controllers")
    s.add_argument("scenario", help="shipped scenario name or TOML path")
    s.add_argument("-c", "--controller", action="append",
                   help=spec_help + "; repeat it (default: relu, leaky:0.1, linear)")
    s.set_defaults(func=_cmd_compare)
    _output_args(s, plot_help)

    s = add("sweep", help="grid sweep of controller gains or plant fields")
    s.add_argument("scenario", help="shipped scenario name or TOML path")
    s.add_argument("--param", action="append", required=True, metavar="NAME=START:STOP:NUM",
                   help="parameter and values (repeat for a grid product)")
    s.add_argument("-c", "--controller", action=_OneController,
                   help=spec_help + " (default: the scenario's)")
    s.add_argument("--metric", action="append",
                   help="metric that --plot draws (repeatable; default overshoot, "
                   "settling_time)")
    s.add_argument("--csv", metavar="FILE",
                   help="write the sweep table as CSV, block by block (valid if interrupted)")
    s.add_argument("--resume", action="store_true",
                   help="continue the unfinished --csv FILE of the same sweep")
    s.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run the blocks on a Dask cluster (needs ctrlsim[dask])")
    s.set_defaults(func=_cmd_sweep)
    _output_args(s, plot_help)

    s = add("analyze", help="linearise, list the linear modes and certify stability "
            "(circle criterion)")
    s.add_argument("scenario", help="shipped scenario name or TOML path")
    s.add_argument("-c", "--controller", action=_OneController,
                   help=spec_help + " (default: the scenario's)")
    s.set_defaults(func=_cmd_analyze)
    _output_args(s, "write a Nyquist plot with the critical disk "
                 "(default: plots/<scenario>-analyze.png)")

    s = add("train", help="train an MLP controller for a scenario (docs/learning.md)")
    s.add_argument("scenario", help="shipped scenario name or TOML path")
    s.add_argument("--out", required=True, metavar="FILE.npz", help="where to save the network")
    s.add_argument("--activation", choices=("relu", "leaky", "tanh"), default="leaky",
                   help="hidden-layer activation (default: leaky)")
    s.add_argument("--alpha", type=float, default=0.1,
                   help="Leaky ReLU slope of the hidden units (default: 0.1)")
    s.add_argument("--hidden", default="8", help="hidden layer widths (default: 8)")
    s.add_argument("--method", choices=("imitation", "es"), default="es",
                   help="imitation of the tuned PI only, or (default) CMA-ES from the "
                   "best network-as-PID-law (tanh: from imitation)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--budget", type=float, default=240.0, metavar="SECONDS",
                   help="training time (default: 240)")
    s.add_argument("--heldout", type=int, default=100, metavar="N",
                   help="held-out randomised variants in the final table (default: 100)")
    s.add_argument("--report", action="store_true",
                   help="also run the dead-ReLU experiment (figure and markdown table)")
    s.set_defaults(func=_cmd_train)

    s = add("gallery", help="write the README's gallery of plots")
    s.add_argument("--out", default="plots", help="output folder (default: plots)")
    s.set_defaults(func=_cmd_gallery)
    return p


class _OneController(argparse.Action):
    """``-c`` of a command that takes one controller: a second ``-c`` is a usage
    error, not silently the last one."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest) is not None:
            command = parser.prog.split()[-1]
            hint = "; use `ctrlsim compare` for several" if command == "run" else ""
            raise UsageError(f"{option_string}: {command} takes one controller, got "
                             f"{getattr(namespace, self.dest)!r} and {values!r}{hint}",
                             key="--controller")
        setattr(namespace, self.dest, values)


def _output_args(s: argparse.ArgumentParser, plot_help: str) -> None:
    s.add_argument("--json", action="store_true", help="print strict JSON instead of a table")
    s.add_argument("--plot", nargs="?", const="", default=None, metavar="FILE", help=plot_help)

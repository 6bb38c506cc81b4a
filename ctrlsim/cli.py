"""The ``ctrlsim`` command line: parse, call the public API, format.

Exit codes: 0 success, 2 usage or validation error (one line on stderr),
1 anything else (internal error; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .controllers import DEFAULT_COMPARISON
from .controllers import controller as parse_controller
from .loader import load_scenario, shipped_scenarios
from .metrics import METRIC_KEYS
from .simulate import Trajectory, simulate

__all__ = ["main"]

_PLOT_SUFFIXES = {".png", ".pdf", ".svg", ".jpg"}
# (metric, header, width) of the human tables.
_COLUMNS = (("overshoot", "overshoot [%]", 13), ("settling_time", "settling [s]", 12),
            ("rise_time", "rise [s]", 8), ("peak", "peak [m/s]", 10),
            ("steady_state_error", "final err [m/s]", 15), ("iae", "IAE [m]", 8),
            ("max_abs_error", "max|e| [m/s]", 12), ("energy", "energy [J]", 10))


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctrlsim`` console script and ``python -m ctrlsim``."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = args.func(args)
        for message in dict.fromkeys(str(w.message) for w in caught):
            print(f"ctrlsim: warning: {message}", file=sys.stderr)
        return code
    except ValueError as exc:  # ScenarioError, bad specs, bad parameters
        if args.debug:
            raise
        print(f"ctrlsim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        print(f"ctrlsim: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: no traceback for users
        if args.debug:
            raise
        print(f"ctrlsim: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------
def _cmd_scenarios(args) -> int:
    scenarios = shipped_scenarios()
    width = max(map(len, scenarios))
    for name, description in scenarios.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _cmd_run(args) -> int:
    _check_outputs(args)
    sc = load_scenario(args.scenario)
    ctl = parse_controller(args.controller) if args.controller else None
    tr = simulate(sc, ctl)
    spec = args.controller or tr.controller.spec
    _report(sc, [spec], [tr], args, "run")
    if args.csv:
        _write_trajectory_csv(tr, args.csv)
    return 0


def _cmd_compare(args) -> int:
    _check_outputs(args)
    sc = load_scenario(args.scenario)
    specs = args.controller or list(DEFAULT_COMPARISON)
    ctls = [parse_controller(s) for s in specs]
    trs = [simulate(sc, c) for c in ctls]
    _report(sc, specs, trs, args, "compare")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import sweep

    _check_outputs(args)
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
    if args.plot is not None and len(params) > 2:
        raise UsageError("--plot draws 1-D or 2-D sweeps; give at most two --param")
    ctl = parse_controller(args.controller) if args.controller else None
    total = int(np.prod([len(v) for v in params.values()]))
    with _progress(total) as bar:
        res = sweep(sc, params, controller=ctl, progress=lambda done, n: bar.update(done - bar.n))
    rows = res.rows()
    spec = args.controller or sc.resolved_controller(ctl).spec
    if args.json:
        _print_json({"scenario": sc.name, "controller": spec, "params": list(res.names),
                     "results": [{"controller": spec, "params": {n: r[n] for n in res.names},
                                  "diverged": r["diverged"],
                                  "metrics": {k: r[k] for k in METRIC_KEYS}} for r in rows]})
    else:
        print(f"{sc.name}: sweep of {', '.join(res.names)} ({total} runs)")
        print(_table([_fmt_row([f"{r[n]:g}" for n in res.names], r, r["diverged"])
                      for r in rows], headers=list(res.names)))
    if args.csv:
        _write_rows_csv(rows, args.csv)
    if args.plot is not None:
        from .plotting import sweep_plot

        what = "sweep-" + "-".join(res.names)
        _save(sweep_plot(res, metrics, title=f"{sc.name}: sweep"), args.plot, sc.name, what,
              args.json)
    return 0


def _cmd_gallery(args) -> int:
    from .gallery import make_gallery

    for path in make_gallery(Path(args.out)):
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def _report(sc, specs: list[str], trs: list[Trajectory], args, what: str) -> None:
    metrics = [tr.metrics() for tr in trs]
    if args.json:
        _print_json({"scenario": sc.name, "results": [
            {"controller": s, "diverged": tr.diverged, "metrics": m}
            for s, tr, m in zip(specs, trs, metrics)]})
    else:
        print(f"{sc.name}: {sc.description}" if sc.description else sc.name)
        print(_table([_fmt_row([s], m, tr.diverged, tr.diverged_at)
                      for s, tr, m in zip(specs, trs, metrics)], headers=["controller"]))
    if args.plot is not None:
        from .plotting import comparison

        _save(comparison(trs, specs), args.plot, sc.name, what, args.json)


def _fmt_row(lead: list[str], m: dict, diverged: bool, at: float | None = None) -> list[str]:
    cells = []
    for key, _, _ in _COLUMNS:
        value = m[key]
        if math.isnan(value):
            cells.append("not settled" if key == "settling_time" and not math.isnan(
                m["overshoot"]) else "-")
        else:
            cells.append(f"{value:.3g}" if abs(value) < 1e4 else f"{value:.4g}")
    status = "ok" if not diverged else ("DIVERGED" + (f" at {at:.2f} s" if at is not None else ""))
    return lead + cells + [status]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    headers = headers + [h for _, h, _ in _COLUMNS] + ["status"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    n_lead = len(headers) - len(_COLUMNS) - 1

    def line(cells):
        return "  ".join(c.ljust(w) if i < n_lead or i == len(cells) - 1 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _print_json(obj) -> None:
    print(json.dumps(_strict(obj), indent=2, allow_nan=False))


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


def _check_outputs(args) -> None:
    """Reject unusable output paths before any simulation runs."""
    plot = getattr(args, "plot", None)
    if plot and Path(plot).suffix.lower() not in _PLOT_SUFFIXES:
        raise UsageError(f"--plot {plot}: give a file name ending in "
                         f"{', '.join(sorted(_PLOT_SUFFIXES))}")
    for flag, path in (("--plot", plot), ("--csv", getattr(args, "csv", None))):
        if path and Path(path).is_dir():
            raise UsageError(f"{flag} {path}: is a directory, give a file name")


def _save(fig, path: str, scenario: str, what: str, quiet: bool) -> None:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scenario).strip("._") or "scenario"
    target = Path(path) if path else Path("plots") / f"{safe}-{what}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    print(f"plot written to {target}", file=sys.stderr if quiet else sys.stdout)


def _write_trajectory_csv(tr: Trajectory, path: str) -> None:
    cols = {"t_s": tr.t, "position_m": tr.position, "speed_mps": tr.speed,
            "force_N": tr.force, "command": tr.command, "applied": tr.applied,
            "reference_mps": tr.reference, "error_mps": tr.error}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        writer.writerows(zip(*(c.tolist() for c in cols.values())))


def _write_rows_csv(rows: list[dict], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _progress(total: int):
    from tqdm import tqdm

    # delay: only runs that take over a second get a bar (on stderr).
    return tqdm(total=total, unit="run", delay=1.0, file=sys.stderr, leave=False)


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
            values = np.linspace(float(start), float(stop), n)
        else:
            values = np.array([float(v) for v in spec.split(",")])
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
    s.add_argument("-c", "--controller", help=spec_help + " (default: the scenario's)")
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
    s.add_argument("-c", "--controller", help=spec_help + " (default: the scenario's)")
    s.add_argument("--metric", action="append",
                   help="metric to plot (repeatable; default overshoot, settling_time)")
    s.add_argument("--csv", metavar="FILE", help="write the sweep table as CSV")
    s.set_defaults(func=_cmd_sweep)
    _output_args(s, plot_help)

    s = add("gallery", help="write the README's gallery of plots")
    s.add_argument("--out", default="plots", help="output folder (default: plots)")
    s.set_defaults(func=_cmd_gallery)
    return p


def _output_args(s: argparse.ArgumentParser, plot_help: str) -> None:
    s.add_argument("--json", action="store_true", help="print strict JSON instead of a table")
    s.add_argument("--plot", nargs="?", const="", default=None, metavar="FILE", help=plot_help)

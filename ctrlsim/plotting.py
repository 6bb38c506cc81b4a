"""Matplotlib figures: step responses, drive-cycle tracking and sweeps.

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot (no global state, no GUI backend), so it works the same in a
notebook, a script and the headless CLI. Save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .metrics import METRIC_KEYS, metric_label
from .plant import COMMAND_LABELS
from .simulate import Trajectory
from .sweep import SweepResult
from .validation import safe_text

__all__ = ["step_response", "tracking", "sweep_plot", "comparison", "METRIC_LABELS",
           "learning_curve", "dead_units_plot"]

METRIC_LABELS = {key: metric_label(key) for key in METRIC_KEYS}


def comparison(trajectories: Sequence[Trajectory], labels: Sequence[str] | None = None,
               title: str | None = None) -> Figure:
    """:func:`step_response` for a steps reference, :func:`tracking` for a cycle."""
    if trajectories[0].scenario.reference.kind == "cycle":
        return tracking(trajectories, labels, title)
    return step_response(trajectories, labels, title)


def step_response(trajectories: Sequence[Trajectory], labels: Sequence[str] | None = None,
                  title: str | None = None, settling_threshold: float = 0.02) -> Figure:
    """Speed vs time with the reference, settling band and step markers.

    Parameters
    ----------
    trajectories : sequence of Trajectory
        Runs of the same scenario (e.g. one per controller).
    labels : sequence of str, optional
        Legend labels (default: each run's controller spec).
    title : str, optional
    settling_threshold : float
        Half-width of the shaded band, as a fraction of the step.

    Returns
    -------
    Figure
        Top: speed, reference (dashed), settling band, a triangle at each
        run's peak and a dotted line at its settling time. Bottom: the
        applied actuator command.
    """
    labels = _labels(trajectories, labels)
    sc = trajectories[0].scenario
    fig, (ax_v, ax_u) = _two_panels(title or _title(sc))
    ref = trajectories[0]
    ax_v.plot(ref.t, ref.reference, color="k", ls="--", lw=1.2, label="set speed")
    window = sc.step_window()
    if window is not None:
        t0, t1 = window
        final = float(np.interp(t0 + 1e-9, ref.t, ref.reference))
        initial = float(np.interp(t0, ref.t, ref.speed))
        half = settling_threshold * abs(final - initial)
        ax_v.fill_between([t0, t1], final - half, final + half, color="0.85", lw=0,
                          label=f"±{settling_threshold:.0%} band")
    for tr, label, color in zip(trajectories, labels, _colors()):
        m = tr.metrics()
        ax_v.plot(tr.t, tr.speed, color=color, lw=1.6, label=_step_label(label, m, tr))
        ax_u.step(tr.t, tr.applied, where="post", color=color, lw=1.2)
        if window is not None and math.isfinite(m["peak_time"]) and m["overshoot"] > 0:
            ax_v.plot(window[0] + m["peak_time"], m["peak"], marker="v" if
                      m["peak"] < tr.reference[-1] else "^", color=color, ms=8, ls="none")
        if window is not None and math.isfinite(m["settling_time"]):
            ax_v.axvline(window[0] + m["settling_time"], color=color, ls=":", lw=1.2)
    ax_v.set_ylabel("speed [m/s]")
    ax_v.legend(loc="best", fontsize=8, framealpha=0.9)
    _command_axis(ax_u, sc)
    return fig


def tracking(trajectories: Sequence[Trajectory], labels: Sequence[str] | None = None,
             title: str | None = None) -> Figure:
    """Drive-cycle tracking: speed with the reference, and the tracking error.

    Parameters
    ----------
    trajectories : sequence of Trajectory
    labels : sequence of str, optional
    title : str, optional

    Returns
    -------
    Figure
    """
    labels = _labels(trajectories, labels)
    sc = trajectories[0].scenario
    fig, (ax_v, ax_e) = _two_panels(title or _title(sc))
    ax_v.plot(trajectories[0].t, trajectories[0].reference, color="k", lw=1.0,
              label="cycle")
    for tr, label, color in zip(trajectories, labels, _colors()):
        m = tr.metrics()
        ax_v.plot(tr.t, tr.speed, color=color, lw=0.9, alpha=0.85,
                  label=f"{label} (RMS error {m['rms_error']:.3g} m/s)")
        ax_e.plot(tr.t, tr.error, color=color, lw=0.8, alpha=0.85)
    ax_v.set_ylabel("speed [m/s]")
    ax_v.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax_e.axhline(0.0, color="k", lw=0.6)
    ax_e.set_ylabel("error [m/s]")
    ax_e.set_xlabel("time [s]")
    return fig


def sweep_plot(result: SweepResult, metrics: Sequence[str] = ("overshoot", "settling_time"),
               title: str | None = None) -> Figure:
    """Metrics against swept parameters: curves (1-D) or heatmaps (2-D).

    Parameters
    ----------
    result : SweepResult
    metrics : sequence of str
        Metric keys, one panel each.
    title : str, optional

    Returns
    -------
    Figure
        NaN (not settled, diverged) shows as gaps in curves and grey cells
        in heatmaps.
    """
    if len(result.names) > 2:
        raise ValueError("sweep_plot: can only draw 1-D or 2-D sweeps")
    fig = Figure(figsize=(5.2 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics):
        if len(result.names) == 1:
            x = result.axes[0]
            ax.plot(x, result.metrics[key], marker="o", ms=4)
            ax.set_xlabel(_param_label(result.names[0]))
            ax.set_ylabel(METRIC_LABELS.get(key, key))
            ax.grid(alpha=0.3)
        else:
            _heatmap(fig, ax, result, key)
    fig.suptitle(title or "sweep")
    return fig


# --------------------------------------------------------------------------
def _heatmap(fig: Figure, ax, result: SweepResult, key: str) -> None:
    grid = np.ma.masked_invalid(result.grid(key))
    x, y = result.axes[1], result.axes[0]
    ax.set_facecolor("0.8")
    mesh = ax.pcolormesh(_edges(x), _edges(y), grid, shading="flat", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=METRIC_LABELS.get(key, key))
    ax.set_xlabel(_param_label(result.names[1]))
    ax.set_ylabel(_param_label(result.names[0]))
    ax.set_title(f"{METRIC_LABELS.get(key, key)} (grey: not settled)", fontsize=9)


def _edges(v: np.ndarray) -> np.ndarray:
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def _two_panels(title: str):
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    fig.suptitle(title)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _command_axis(ax, sc) -> None:
    ax.set_ylabel(COMMAND_LABELS[sc.plant.preset])
    lo, hi = sc.plant.command_limits
    for lim in (lo, hi):
        ax.axhline(lim, color="0.5", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("time [s]")


def _step_label(label: str, m: dict, tr: Trajectory) -> str:
    if tr.diverged:
        return f"{label}: DIVERGED at {tr.diverged_at:.2f} s"
    if math.isnan(m["overshoot"]):
        return f"{label}: max |error| {m['max_abs_error']:.3g} m/s"
    ts = "not settled" if math.isnan(m["settling_time"]) else f"settles {m['settling_time']:.1f} s"
    return f"{label}: overshoot {m['overshoot']:.1f} %, {ts}"


def _labels(trajectories, labels):
    if not trajectories:
        raise ValueError("no trajectories to plot")
    return list(labels) if labels is not None else [plain_text(tr.controller.spec)
                                                    for tr in trajectories]


def _title(sc) -> str:
    text = f"{sc.name}: {sc.description}" if sc.description else sc.name
    return textwrap.fill(plain_text(text), 95)


def plain_text(text: str) -> str:
    """Text from a user file, shown literally: ``$`` would start matplotlib mathtext
    (and a malformed formula fails only when the figure is saved)."""
    return safe_text(text).replace("$", r"\$")


def _param_label(name: str) -> str:
    units = {"kp": "kp [cmd/(m/s)]", "ki": "ki [cmd/m]", "kd": "kd [cmd/(m/s²)]",
             "mass": "mass [kg]", "actuator_tau": "actuator lag [s]", "alpha": "alpha [-]"}
    return units.get(name, name)


def _colors():
    return ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"] * 10


def learning_curve(imitation=None, es=None, title: str = "training", pid=None,
                   baseline: float | None = None) -> Figure:
    """One panel per stage given: imitation loss, PID-law search, ES best cost.

    ``imitation``, ``pid`` and ``es`` are :class:`ctrlsim.learn.TrainLog` (or
    None); ``baseline`` (the tuned PI's training cost) is drawn as a dashed
    line on the cost panels.
    """
    stages = [(log, label) for log, label in (
        (imitation, "imitation epoch"), (pid, "PID-law CMA-ES generation"),
        (es, "ES generation")) if log is not None]
    fig = Figure(figsize=(9, 3.6 * max(len(stages), 1)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(len(stages), 1), 1))
    fig.suptitle(plain_text(title))
    for ax, (log, label) in zip(axes, stages):
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if log is imitation:
            ax.semilogy(log.step, log.loss, marker=".")
            ax.set_ylabel("MSE (command / scale)²")
            continue
        ax.plot(log.step, log.loss, marker=".", color="#d62728")
        ax.set_ylabel("best mean cost (training variants)")
        if baseline is not None:
            ax.axhline(baseline, color="0.4", ls="--", label="tuned PI")
            ax.legend()
    return fig


def dead_units_plot(results: dict, title: str = "dead ReLU units") -> Figure:
    """Loss and dead-unit fraction over imitation epochs, one line per activation.

    ``results`` maps a label to ``(controller, TrainLog, cost)``
    (:func:`ctrlsim.learn.dead_relu_experiment`).
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_dead = fig.subplots(1, 2)
    fig.suptitle(plain_text(title))
    for (label, (_, log, _)), color in zip(results.items(), _colors()):
        ax_loss.semilogy(log.step, log.loss, color=color, label=label)
        ax_dead.plot(log.step, 100 * np.asarray(log.dead), color=color, label=label)
    ax_loss.set_ylabel("imitation MSE (command / scale)²")
    ax_dead.set_ylabel("dead hidden units [%]")
    ax_dead.set_ylim(-2, 102)
    for ax in (ax_loss, ax_dead):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig

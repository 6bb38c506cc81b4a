"""The README's gallery: one command (``ctrlsim gallery``) writes every figure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .controllers import DEFAULT_COMPARISON, controller
from .files import atomic_write
from .loader import load_scenario
from .plotting import comparison, sweep_plot
from .simulate import simulate
from .sweep import sweep

__all__ = ["make_gallery"]


def make_gallery(out: Path) -> list[Path]:
    """Write the gallery PNGs into ``out`` and return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out / f"{name}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        with atomic_write(path, "--out") as fh:  # never a half-written PNG
            fh.write(buf.getbuffer())
        written.append(path)

    for name in ("decel", "downhill", "step", "uphill", "udds-robot"):
        sc = load_scenario(name)
        runs = [simulate(sc, controller(s)) for s in DEFAULT_COMPARISON]
        save(comparison(runs, list(DEFAULT_COMPARISON)), f"{name}-compare")
    windup = load_scenario("fbs-windup")
    specs = ["relu,kaw=0", "relu,kaw=2"]
    save(comparison([simulate(windup, controller(s)) for s in specs],
                    ["kaw = 0 (windup)", "kaw = 2 (anti-windup)"]), "fbs-windup-compare")
    decel = load_scenario("decel")
    save(sweep_plot(sweep(decel, {"alpha": np.linspace(0, 1, 21)}),
                    title="decel: Leaky ReLU slope from 0 (ReLU) to 1 (linear)"),
         "decel-sweep-alpha")
    save(sweep_plot(sweep(decel, {"alpha": np.linspace(0, 1, 11),
                                  "kp": np.linspace(40, 200, 9)}),
                    metrics=("settling_time", "iae"), title="decel: alpha x kp"),
         "decel-sweep-alpha-kp")
    return written

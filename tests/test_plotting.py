"""Figures come back as matplotlib Figures with labelled axes and legends."""

import numpy as np
from matplotlib.figure import Figure

import ctrlsim
from ctrlsim.plotting import comparison, step_response, sweep_plot, tracking


def _runs(name):
    sc = ctrlsim.load_scenario(name)
    return [ctrlsim.simulate(sc, ctrlsim.controller(s)) for s in ("relu", "leaky:0.1")]


def test_step_response_panels_markers_and_legend():
    fig = step_response(_runs("decel"))
    assert isinstance(fig, Figure)
    ax_v, ax_u = fig.axes
    assert ax_v.get_ylabel() == "speed [m/s]" and ax_u.get_xlabel() == "time [s]"
    assert ax_u.get_ylabel() == "force command [N]"
    labels = [t.get_text() for t in ax_v.get_legend().get_texts()]
    assert labels[0] == "set speed" and any("overshoot" in t and "settles" in t for t in labels)
    # One peak marker and one settling line per controller.
    assert sum(1 for line in ax_v.lines if line.get_marker() in ("v", "^")) == 2
    assert sum(1 for line in ax_v.lines if line.get_linestyle() == ":") == 2


def test_cycle_comparison_is_a_tracking_plot_with_error_panel():
    fig = comparison(_runs("udds-robot"))
    assert fig.axes[1].get_ylabel() == "error [m/s]"
    assert isinstance(tracking(_runs("udds-robot")), Figure)


def test_sweep_plots_1d_curves_and_2d_heatmap(tmp_path):
    sc = ctrlsim.load_scenario("decel")
    one = sweep_plot(ctrlsim.sweep(sc, {"alpha": np.linspace(0, 1, 3)}))
    assert one.axes[0].get_xlabel() == "alpha [-]" and len(one.axes) == 2
    two = sweep_plot(ctrlsim.sweep(sc, {"alpha": [0.0, 1.0], "kp": [50.0, 100.0]}),
                     metrics=("iae",))
    assert two.axes[0].get_ylabel() == "alpha [-]"  # heatmap + colorbar
    two.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 5000

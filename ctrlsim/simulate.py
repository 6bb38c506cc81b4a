"""Run one scenario through the compiled kernel: :func:`simulate` and :class:`Trajectory`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from . import kernels as K
from .controllers import Controller, CustomController, as_controller
from .metrics import run_metrics
from .scenario import Scenario, as_scenario

__all__ = ["simulate", "Trajectory", "StartWarning", "SetupWarning"]


class StartWarning(UserWarning):
    """The run cannot start in equilibrium: the actuator cannot hold the initial
    speed, or a controller without integral action does not command it."""


class SetupWarning(UserWarning):
    """A setting that will give results the user probably does not expect."""


@dataclass(frozen=True, eq=False)
class Trajectory:
    """A simulated run, sampled at the control instants ``t_k = k*Ts``, k = 0..N.

    Attributes
    ----------
    t : ndarray
        Time, s.
    position, speed, force : ndarray
        Position (m), true speed (m/s) and actuator force (N) at ``t_k``.
    command : ndarray
        Controller output ``u_k = phi(s_k)`` before the actuator limits.
    applied : ndarray
        Command ``a_k`` after the limits, held over ``[t_k, t_k+1)``
        (N for the robot, throttle/brake in [-1, 1] for the car).
    reference : ndarray
        Set speed ``r_k``, m/s.
    error : ndarray
        Tracking error ``reference - speed`` (true, not measured), m/s.
    diverged : bool
        True if the state became non-finite or absurdly fast; samples from
        ``diverged_at`` on are NaN.
    diverged_at : float or None
        Time of the first bad sample, s.
    scenario : Scenario
    controller : Controller
        The controller actually used, gains resolved.
    """

    t: np.ndarray
    position: np.ndarray
    speed: np.ndarray
    force: np.ndarray
    command: np.ndarray
    applied: np.ndarray
    reference: np.ndarray
    diverged: bool
    diverged_at: float | None
    scenario: Scenario = field(repr=False)
    controller: Controller | CustomController = field(repr=False)

    @property
    def error(self) -> np.ndarray:
        return self.reference - self.speed

    def metrics(self) -> dict[str, float]:
        """Step and tracking metrics against the set speed (docs/metrics.md).

        See :func:`ctrlsim.metrics.run_metrics`.
        """
        sc = self.scenario
        return run_metrics(self.t, self.speed, self.reference, self.applied, self.force,
                           sc.step_window(), sc.control_period, self.diverged)


def simulate(scenario: Scenario, controller: Controller | CustomController | None = None,
             ) -> Trajectory:
    """Simulate a scenario in closed loop.

    Parameters
    ----------
    scenario : Scenario, or str
        A string is a shipped scenario name or TOML path (:func:`ctrlsim.load_scenario`).
    controller : Controller, CustomController or str, optional
        None: the scenario's own controller (or the preset's default). A
        string is a spec (:func:`ctrlsim.controller`). Gains the controller
        leaves unset are taken from the scenario's controller.

    Returns
    -------
    Trajectory

    Raises
    ------
    TypeError, ValueError
        (:class:`~ctrlsim.validation.ParameterError`) naming the bad argument.

    Warns
    -----
    StartWarning
        If the actuator cannot produce the command that holds the initial
        speed (the run then starts from the clipped command), or if a
        controller without integral action (ki = 0) commands something else
        at zero error (the speed then drifts from the start).

    Examples
    --------
    >>> import ctrlsim
    >>> from ctrlsim.scenario import Scenario, Reference
    >>> sc = Scenario(reference=Reference([(0.0, 2.0)]), duration=40.0)
    >>> tr = ctrlsim.simulate(sc, ctrlsim.controller("linear"))
    >>> round(float(tr.speed[-1]), 2), round(tr.metrics()["settling_time"], 1)
    (2.0, 18.5)
    """
    scenario, controller = as_scenario(scenario), as_controller(controller)
    ctl = scenario.resolved_controller(controller)
    check_setup(scenario, [ctl])
    t = scenario.time
    prof = scenario.pack(t)
    rollout = ctl.kernels()[0]
    out = np.empty((prof.ref.size, len(K.OUT_FIELDS)))
    pp, cp = scenario.plant.pack(), ctl.pack()
    diverged_at, feasible = rollout(pp, cp, prof, out)
    if not feasible:
        warn_infeasible_start(scenario)
    elif isinstance(ctl, Controller) and ctl.ki == 0.0:
        warn_unheld_start(scenario, pp, cp, prof)
    return make_trajectory(scenario, ctl, prof.ref, out, int(diverged_at), t)


def make_trajectory(scenario: Scenario, ctl, ref: np.ndarray, out: np.ndarray,
                    diverged_at: int, t: np.ndarray | None = None) -> Trajectory:
    """Wrap one kernel output array (N + 1, 5) as a :class:`Trajectory`
    (``t``: ``scenario.time``, if the caller has it)."""
    t = scenario.time if t is None else t
    cols = {name: out[:, i] for i, name in enumerate(K.OUT_FIELDS)}
    return Trajectory(t=t, reference=ref, diverged=diverged_at >= 0,
                      diverged_at=float(t[diverged_at]) if diverged_at >= 0 else None,
                      scenario=scenario, controller=ctl, **cols)


def check_setup(scenario: Scenario, controllers, taus: np.ndarray | None = None,
                rows_each: int = 1) -> None:
    """Warn about settings that are legal but give misleading numbers.

    ``taus``: the actuator lags of a sweep's plants, each used by
    ``rows_each`` rows (default: the scenario's plant alone).
    """
    h = scenario.control_period / scenario.substeps
    taus = np.array([scenario.plant.actuator_tau]) if taus is None else np.asarray(taus)
    short = taus[(taus > 0) & (taus < h)]
    if short.size:
        tau = float(short.min())
        rows = ("" if taus.size == 1 else
                f" (in {short.size * rows_each} of {taus.size * rows_each} rows)")
        warnings.warn(
            f"scenario {scenario.name!r}{rows}: the RK4 substep ({h:g} s) is longer than "
            f"actuator_tau ({tau:g} s): inaccurate, and unstable beyond 2.78*tau "
            f"(needs substeps >= {scenario.control_period / tau:.3g})",
            SetupWarning, stacklevel=3)


def warn_infeasible_start(scenario: Scenario, rows: str = "",
                          limits: tuple[float, float] | None = None) -> None:
    """StartWarning: the actuator cannot hold the initial speed (``rows``, e.g.
    "in 1 of 2 rows (first: force_max=10)", and their ``limits`` in a sweep)."""
    limits = scenario.plant.command_limits if limits is None else limits
    warnings.warn(
        f"scenario {scenario.name!r}{rows}: the {scenario.plant.preset} actuator cannot "
        f"hold the initial speed {scenario.initial_speed} m/s (limits "
        f"{tuple(float(x) for x in limits)}); starting from the saturated command",
        StartWarning, stacklevel=3)


def unheld_start(pp: np.ndarray, cp: np.ndarray, prof: K.Profiles) -> tuple[float, float] | None:
    """``(command at zero error, holding command)`` of a PID-family controller
    vector whose first sample at zero error does not command what holds the
    initial speed, else None.

    The start preloads the integrator so the controller was producing the
    holding command; with ki = 0 there is nothing to preload, and the law
    commands ``phi(feedforward * v0)`` instead.
    """
    a0, _ = K.equilibrium_command(prof.v0, pp, prof)
    z0, u0 = K.controller_preload(a0, prof.v0, cp)
    _, u, _, _ = K.control_step(prof.v0, prof.v0, 0.0, z0, True, prof.ts, pp[K.P_CMD_LO],
                                pp[K.P_CMD_HI], cp)
    return None if abs(u - u0) <= 1e-9 * max(1.0, abs(u0)) else (float(u), float(u0))


def warn_unheld_start(scenario: Scenario, pp: np.ndarray, cp: np.ndarray, prof: K.Profiles,
                      rows: str = "") -> None:
    """StartWarning if :func:`unheld_start` finds the controller does not hold the start."""
    found = unheld_start(pp, cp, prof)
    if found is not None:
        warnings.warn(
            f"scenario {scenario.name!r}{rows}: the controller has no integral action "
            f"(ki = 0) and commands {found[0]:.4g} at zero error, not the {found[1]:.4g} "
            f"that holds the initial speed {scenario.initial_speed} m/s: the speed drifts "
            "from the start", StartWarning, stacklevel=3)

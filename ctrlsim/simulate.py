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
    """The actuator cannot hold the initial speed, so the run starts off equilibrium."""


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
        speed; the run then starts from the clipped command.

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
    diverged_at, feasible = rollout(scenario.plant.pack(), ctl.pack(), prof, out)
    if not feasible:
        warn_infeasible_start(scenario)
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


def check_setup(scenario: Scenario, controllers) -> None:
    """Warn about settings that are legal but give misleading numbers."""
    h = scenario.control_period / scenario.substeps
    tau = scenario.plant.actuator_tau
    if 0 < tau < h:
        warnings.warn(
            f"scenario {scenario.name!r}: the RK4 substep ({h:g} s) is longer than "
            f"actuator_tau ({tau:g} s): inaccurate, and unstable beyond 2.78*tau "
            f"(needs substeps >= {scenario.control_period / tau:.3g})",
            SetupWarning, stacklevel=3)


def warn_infeasible_start(scenario: Scenario) -> None:
    warnings.warn(
        f"scenario {scenario.name!r}: the {scenario.plant.preset} actuator cannot "
        f"hold the initial speed {scenario.initial_speed} m/s (limits "
        f"{scenario.plant.command_limits}); starting from the saturated command",
        StartWarning, stacklevel=3)

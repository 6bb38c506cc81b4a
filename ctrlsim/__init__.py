"""ctrlsim: a numba-compiled cruise-control simulator.

A robot (or Astrom & Murray's car) under ReLU, Leaky ReLU, linear,
learned (MLP, :mod:`ctrlsim.learn`) or user-defined control laws, with
step and tracking metrics. The README describes the model;
``ctrlsim.kernels`` holds its only implementation.
"""

from .controllers import (
    Controller,
    CustomController,
    LeakyReLUController,
    LinearController,
    ReLUController,
    controller,
)
from .cycles import load_cycle
from .loader import ScenarioError, load_scenario, shipped_scenarios
from .metrics import METRIC_KEYS, step_info
from .mlp import MLPController
from .plant import Plant, make_plant
from .scenario import Event, Reference, Road, Scenario, Sensor
from .simulate import SetupWarning, StartWarning, Trajectory, simulate
from .sweep import SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "Controller", "CustomController", "LeakyReLUController", "LinearController",
    "ReLUController", "MLPController", "controller", "METRIC_KEYS", "step_info", "Plant",
    "make_plant", "Event", "Reference", "Road", "Scenario", "Sensor",
    "SetupWarning", "StartWarning", "Trajectory", "simulate", "SweepResult", "sweep", "load_cycle",
    "ScenarioError", "load_scenario", "shipped_scenarios",
]

import gymnasium as _gymnasium  # noqa: E402

if "ctrlsim/CruiseControl-v0" not in _gymnasium.registry:
    _gymnasium.register(id="ctrlsim/CruiseControl-v0", entry_point="ctrlsim.envs:CruiseControlEnv",
                        vector_entry_point="ctrlsim.envs:CruiseControlVectorEnv")

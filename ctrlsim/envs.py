"""Gymnasium environments: cruise control as a reinforcement-learning task.

:class:`CruiseControlEnv` (one vehicle) and :class:`CruiseControlVectorEnv`
(many vehicles advanced in one compiled call) share the constants below and
the compiled :func:`ctrlsim.kernels.step_batch`, so a sub-env of the vector
env and a single env with the same seed and actions agree bit for bit, and
both agree with :func:`ctrlsim.simulate` of the env's scenario (``env.scenario``:
the one given, at the env's control period and substeps; same RK4 kernel). The
user manual is ``docs/env.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numba
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from . import kernels as K
from .controllers import Controller, as_controller
from .scenario import Reference, Scenario, as_scenario
from .validation import ParameterError, ParameterTypeError, finite_float, integer, positive_float

__all__ = ["CruiseControlEnv", "CruiseControlVectorEnv", "OBS_FIELDS", "SPEED_SCALE",
           "OBS_BOUND", "DIVERGENCE_PENALTY", "RANDOM_RANGES", "default_substeps"]

OBS_FIELDS = K.OBS_FIELDS
#: Speed scale S (m/s) per preset: e, y, r are divided by S, z by S*1 s,
#: d by S/1 s (so a 1-s-long error of S gives z = 1).
SPEED_SCALE = {"robot": 2.0, "car": 20.0}
#: Every scaled observation component is clipped to [-OBS_BOUND, OBS_BOUND].
OBS_BOUND = 100.0
#: Reward of the step on which the state diverges (negated).
DIVERGENCE_PENALTY = 100.0
#: Longest RK4 substep the default ``substeps`` allows, s.
MAX_SUBSTEP = 0.01
DEFAULT_CONTROL_PERIOD = 0.05
#: ``randomize=True`` ranges per preset: mass factor on the nominal mass,
#: constant road grade (deg), initial speed and reference levels (m/s),
#: number of reference steps, sensor-noise standard deviation (m/s).
RANDOM_RANGES = {
    "robot": dict(mass_factor=(0.7, 1.3), grade_deg=(-3.0, 3.0), speed=(0.0, 3.0),
                  n_steps=(1, 3), noise_std=(0.0, 0.05)),
    "car": dict(mass_factor=(0.7, 1.3), grade_deg=(-3.0, 3.0), speed=(5.0, 30.0),
                n_steps=(1, 3), noise_std=(0.0, 0.3)),
}


# Row modes of kernels.step_batch.
STEP, RESTART, HOLD = 0, 1, 2


def default_substeps(control_period: float) -> int:
    """Smallest substep count giving RK4 substeps of at most 10 ms."""
    return max(1, math.ceil(control_period / MAX_SUBSTEP - 1e-9))


def _check_weight(name: str, value: float) -> float:
    value = finite_float(name, value)
    if value < 0.0:
        raise ParameterError(name, f"must be finite and >= 0, got {value}")
    return value


class _Core:
    """State arrays of ``nb`` episodes and the call into ``kernels.step_batch``."""

    def __init__(self, nb: int, scenario, control_period, substeps, randomize,
                 base_controller, error_weight, effort_weight):
        sc = as_scenario(scenario)
        ts = (DEFAULT_CONTROL_PERIOD if control_period is None
              else positive_float("control_period", control_period))
        ss = default_substeps(ts) if substeps is None else integer("substeps", substeps, 1)
        if not isinstance(randomize, (bool, np.bool_)):
            raise ParameterTypeError("randomize", f"must be True or False, got {randomize!r}")
        n = max(1, round(sc.duration / ts))
        sc = dataclasses.replace(sc, control_period=ts, substeps=ss, duration=n * ts)
        self.scenario: Scenario = sc
        self.preset = sc.plant.preset
        self.prof = sc.pack()
        self.n = sc.n_steps
        self.time = sc.time
        self.pp = sc.plant.pack()
        self.lo, self.hi = sc.plant.command_limits
        self.randomize = bool(randomize)
        base = as_controller(base_controller)
        if base is not None and not isinstance(base, Controller):
            raise ParameterTypeError("base_controller", "must be a built-in controller (spec "
                                     "string or Controller); user laws and MLPs are not "
                                     "supported")
        self.base = None if base is None else sc.resolved_controller(base)
        self.use_base = self.base is not None
        self.cbase = self.base.pack() if self.use_base else np.zeros(K.N_PID)
        s = SPEED_SCALE[self.preset]
        self.scales = np.array([s, s, s, s, s, OBS_BOUND, s])
        self.weights = np.array([_check_weight("error_weight", error_weight),
                                 _check_weight("effort_weight", effort_weight),
                                 DIVERGENCE_PENALTY])
        self.nb = nb
        # Rows 64-byte aligned (see kernels.aligned_rows); columns past nb unused.
        self.plant = K.aligned_rows(self.pp.size, nb)
        self.plant[:, :nb] = self.pp[:, None]
        # (N + 1, nb): a step reads one sample of every row, so rows are adjacent.
        self.ref = np.ascontiguousarray(np.repeat(self.prof.ref[:, None], nb, axis=1))
        self.noise = np.ascontiguousarray(np.repeat(self.prof.noise[:, None], nb, axis=1))
        self.nominal_start = np.array(self._start(self.pp, self.prof) + (np.nan,))
        self.start = np.repeat(self.nominal_start[:, None], nb, axis=1)
        self.state = K.aligned_rows(8, nb)  # rows on cache lines (columns past nb unused)
        self.k = np.zeros(nb, dtype=np.int64)
        self.work = K.batch_work(nb)
        self._act = np.zeros(1)
        self.obs = np.zeros((nb, len(OBS_FIELDS)), dtype=np.float32)
        self.reward = np.zeros(nb)
        self.terminated = np.zeros(nb, dtype=np.bool_)
        self.truncated = np.zeros(nb, dtype=np.bool_)
        self.grade = np.full(nb, np.nan)   # constant grade (rad) or NaN: the road

    def _start(self, pp, prof) -> tuple[float, float, float]:
        """(v0, F0, base integrator) of the equilibrium cruise at ``prof.v0``."""
        if self.use_base:
            zb, f0, _ = K.initial_state(pp, self.cbase, prof)
        else:
            a0, _ = K.equilibrium_command(prof.v0, pp, prof)
            # The force of the command the actuator can give (as kernels.initial_state).
            f0 = K._plant_actuator(min(max(a0, pp[K.P_CMD_LO]), pp[K.P_CMD_HI]), prof.v0, pp)
            zb = 0.0
        return float(prof.v0), float(f0), float(zb)

    def prepare(self, i: int, rng: np.random.Generator | None) -> None:
        """Set row ``i``'s episode parameters: nominal, or drawn from ``rng``."""
        if not self.randomize:
            self.plant[:, i] = self.pp
            self.ref[:, i] = self.prof.ref
            self.noise[:, i] = self.prof.noise
            self.start[:, i] = self.nominal_start
            self.grade[i] = np.nan
            return
        rr = RANDOM_RANGES[self.preset]
        pp = self.pp.copy()
        pp[K.P_MASS] *= rng.uniform(*rr["mass_factor"])
        theta = math.radians(rng.uniform(*rr["grade_deg"]))
        v0 = float(rng.uniform(*rr["speed"]))
        count = int(rng.integers(rr["n_steps"][0], rr["n_steps"][1] + 1))
        times = np.sort(rng.uniform(0.0, self.scenario.duration, count))
        levels = rng.uniform(*rr["speed"], count)
        std = rng.uniform(*rr["noise_std"])
        noise = std * rng.standard_normal(self.n + 1)
        times = times + 1e-6 * np.arange(count)       # strictly increasing
        ref = Reference(tuple(zip(times.tolist(), levels.tolist()))).sample(self.time, v0)
        prof = self.prof._replace(v0=v0, ref=ref, noise=noise, grade_x=np.zeros(1),
                                  grade_th=np.array([theta]), grade_by_time=False)
        self.plant[:, i] = pp
        self.ref[:, i] = ref
        self.noise[:, i] = noise
        self.start[:, i] = self._start(pp, prof) + (theta,)
        self.grade[i] = theta

    def action(self, action, shape) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.size != self.nb or (self.nb > 1 and a.shape not in (shape, (self.nb,))):
            raise ValueError(f"action must have shape {shape}, got {np.shape(action)}")
        if self.nb == 1:  # the single env: scalar math is 4x cheaper than np.clip
            x = float(a.flat[0])
            if x != x:
                raise ValueError("action contains NaN")
            self._act[0] = min(max(x, -1.0), 1.0)
            return self._act
        a = a.reshape(self.nb)
        total = a.sum()  # NaN if any entry is (or if +inf meets -inf): then look
        if total != total and np.isnan(a).any():
            raise ValueError("action contains NaN")
        return np.ascontiguousarray(a)  # clipped to the box by the kernel

    def run(self, act: np.ndarray, reset: np.ndarray) -> None:
        K.step_batch(act, reset, self.state, self.k, self.plant, self.cbase, self.use_base,
                     self.start, self.ref, self.noise, self.prof, self.work, self.weights,
                     self.scales, self.obs, self.reward, self.terminated, self.truncated,
                     numba.get_num_threads() if self.nb >= 512 else 1)


def _spaces():
    act = spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs = spaces.Box(-OBS_BOUND, OBS_BOUND, (len(OBS_FIELDS),), np.float32)
    return act, obs


class CruiseControlEnv(gym.Env):
    """
    ## Description

    Cruise control of ctrlsim's robot (or Astrom & Murray's car) on a ctrlsim
    scenario: the agent is the digital controller. One step is one control
    period ``Ts``: the agent sees the observation built from the measured
    speed at ``t_k``, chooses the command, and the plant is integrated over
    ``[t_k, t_k+1]`` with the command held, by the same compiled RK4 kernel
    as :func:`ctrlsim.simulate` (same actions, same speeds).

    ## Action Space

    ``Box(-1, 1, (1,), float32)`` mapped linearly onto the actuator range:
    ``a = c + h*action`` with ``c, h`` the centre and half-width of
    ``[force_min, force_max]`` N (robot) or ``[-1, 1]`` (car: throttle > 0,
    brake < 0). Actions outside the box are clipped; NaN raises ``ValueError``.
    With ``base_controller`` the command is ``clip(u_base + h*action)``:
    the action is a residual on the base controller's output ``u_base``.

    ## Observation Space

    ``Box(-100, 100, (5,), float32)``: what a ctrlsim control law sees,
    ``(e, z, d, y, r)``: measured error ``r - y``, its integral
    (``z += Ts*e``, starting at 0, no anti-windup), its derivative
    ``(e_k - e_k-1)/Ts`` (0 at k = 0), the measured speed ``y`` (true speed
    plus sensor noise) and the set speed ``r``. Each is divided by the
    preset's speed scale S (:data:`SPEED_SCALE`: robot 2 m/s, car 20 m/s;
    z in S*s, d in S/s) and clipped to +-100 (non-finite values give 0).

    ## Rewards

    ``-(error_weight*((r - v)/S)^2 + effort_weight*((a - c)/h)^2)`` per
    step, from the true speed ``v`` and set speed at the end of the step and
    the command applied during it; ``-100`` on the step where the state
    diverges.

    ## Starting State

    Like :func:`ctrlsim.simulate`: position 0, speed = the scenario's initial
    speed, cruising in equilibrium (the actuator force is that of
    ``kernels.equilibrium_command``, or of ``kernels.initial_state`` of the
    base controller, which is preloaded as in ``simulate``).
    With ``randomize=True`` see :data:`RANDOM_RANGES`.

    ## Episode End

    Truncation after the scenario's duration (``N = duration/Ts`` steps);
    termination when the state diverges (non-finite or ``|v| > 1000 m/s``).

    ## Arguments

    ``gymnasium.make("ctrlsim/CruiseControl-v0", scenario="step",
    control_period=0.05, substeps=None, randomize=False,
    base_controller=None, error_weight=1.0, effort_weight=0.01,
    render_mode=None)``. ``scenario``: shipped name, TOML path or
    :class:`~ctrlsim.Scenario`; ``control_period``/``substeps`` override
    the scenario's (default substeps: the fewest giving <= 10 ms RK4 steps);
    ``randomize``: draw mass, constant grade, reference steps, initial speed
    and sensor noise per episode from ``np_random`` (the scenario's road is
    then replaced by the constant grade; its events are kept);
    ``render_mode="rgb_array"``: speed vs reference and road grade.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, scenario: Any = "step", control_period: float | None = None,
                 substeps: int | None = None, randomize: bool = False,
                 base_controller: Any = None, error_weight: float = 1.0,
                 effort_weight: float = 0.01, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ParameterError("render_mode", f"must be None or 'rgb_array', got "
                                 f"{render_mode!r}")
        self.render_mode = render_mode
        self._core = _Core(1, scenario, control_period, substeps, randomize,
                           base_controller, error_weight, effort_weight)
        self.scenario = self._core.scenario
        self.action_space, self.observation_space = _spaces()
        self.metadata = {**self.metadata,
                         "render_fps": max(1, round(1.0 / self.scenario.control_period))}
        self._reset_mode = np.full(1, RESTART, dtype=np.int8)
        self._step_mode = np.full(1, STEP, dtype=np.int8)
        self._zero = np.zeros(1)
        self._trace: list[tuple[float, float, float, float]] = []
        self._ended = True   # no episode yet: step() needs a reset() first

    def _info(self) -> dict[str, float]:
        c, s = self._core, self._core.state
        k = int(c.k[0])
        force = float(s[2, 0])
        if c.pp[K.P_TAU] <= 0.0 and k > 0:  # no lag: no force state; the last command's
            force = float(K._plant_actuator(s[7, 0], s[1, 0], c.pp))
        return {"time": k * self.scenario.control_period, "position": float(s[0, 0]),
                "speed": float(s[1, 0]), "force": force,
                "command": float(s[7, 0]), "reference": float(c.ref[min(k, c.n), 0])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        c = self._core
        c.prepare(0, self.np_random)
        c.run(self._zero, self._reset_mode)
        self._ended = False
        if self.render_mode is not None:
            self._trace = []
            self._record()
        return c.obs[0].copy(), self._info()

    def step(self, action):
        if self._ended:
            raise ResetNeeded("call reset() before step(): no episode is running (none "
                              "started, or the last one ended)")
        c = self._core
        c.run(c.action(action, self.action_space.shape), self._step_mode)
        self._ended = bool(c.terminated[0] or c.truncated[0])
        if self.render_mode is not None:
            self._record()
        return (c.obs[0].copy(), float(c.reward[0]), bool(c.terminated[0]),
                bool(c.truncated[0]), self._info())

    def _record(self) -> None:
        c = self._core
        k = int(c.k[0])
        self._trace.append((k * self.scenario.control_period, float(c.state[1, 0]),
                            float(c.ref[min(k, c.n), 0]), float(c.state[0, 0])))

    def grade_at(self, position: float, time: float) -> float:
        """Road grade (deg) under the vehicle: the episode's constant grade or the road's."""
        theta = self._core.grade[0]
        if theta == theta:
            return math.degrees(theta)
        road = self.scenario.road
        if not road.grade_deg:
            return 0.0
        xs, gs = np.array(road.grade_deg).T
        x = time if road.by == "time" else position
        return float(np.interp(x, xs, gs))

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        tr = np.array(self._trace).reshape(-1, 4)
        fig = Figure(figsize=(6.4, 4.0), dpi=80)
        canvas = FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(2, 1)
        ax1.plot(tr[:, 0], tr[:, 2], "k--", lw=1, label="reference")
        ax1.plot(tr[:, 0], tr[:, 1], "C0", lw=1.5, label="speed")
        ax1.set_xlim(0, self.scenario.duration)
        ax1.set_ylabel("m/s")
        ax1.legend(loc="lower right", fontsize=7)
        grades = [self.grade_at(x, t) for t, x in zip(tr[:, 0], tr[:, 3])]
        ax2.plot(tr[:, 0], grades, "C2", lw=1.5)
        ax2.set_xlim(0, self.scenario.duration)
        ax2.set_ylabel("grade under vehicle, deg")
        ax2.set_xlabel("t, s")
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class CruiseControlVectorEnv(VectorEnv):
    """``num_envs`` independent :class:`CruiseControlEnv` episodes in struct-of-arrays.

    All sub-envs are advanced by one compiled call (``kernels.step_batch``)
    per step; autoreset is ``NEXT_STEP``. ``reset(seed=s)`` gives sub-env i
    what a single env gets from ``reset(seed=s + i)``; with ``randomize``
    each sub-env draws its episodes from its own generator. Arguments as
    :class:`CruiseControlEnv` (no rendering). Infos are empty.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, scenario: Any = "step",
                 control_period: float | None = None, substeps: int | None = None,
                 randomize: bool = False, base_controller: Any = None,
                 error_weight: float = 1.0, effort_weight: float = 0.01,
                 render_mode: str | None = None):
        if render_mode is not None:
            raise ParameterError("render_mode", "the vector env does not render; use "
                                 "CruiseControlEnv")
        self.num_envs = integer("num_envs", num_envs, 1)
        self.render_mode = None
        self._core = _Core(self.num_envs, scenario, control_period, substeps, randomize,
                           base_controller, error_weight, effort_weight)
        self.scenario = self._core.scenario
        self.single_action_space, self.single_observation_space = _spaces()
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._rngs = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._all = np.full(self.num_envs, RESTART, dtype=np.int8)
        self._zero = np.zeros(self.num_envs)
        self._started = False   # step() needs a reset() first

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict | None = None):
        n = self.num_envs
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"need {n} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seeds[0])
        c = self._core
        for i in range(n):
            c.prepare(i, self._rngs[i])
        c.run(self._zero, self._all)
        self._autoreset[:] = False
        self._started = True
        return c.obs.copy(), {}

    def step(self, actions):
        if not self._started:
            raise ResetNeeded("call reset() before the first step()")
        c = self._core
        act = c.action(actions, self.action_space.shape)
        mode = self._autoreset.view(np.int8)        # STEP = 0, RESTART = 1 (no copy)
        if c.randomize and mode.any():
            for i in np.flatnonzero(mode):
                c.prepare(int(i), self._rngs[i])
        c.run(act, mode)
        np.logical_or(c.terminated, c.truncated, out=self._autoreset)
        return (c.obs.copy(), c.reward.copy(), c.terminated.copy(), c.truncated.copy(), {})

    def restart_finished(self) -> np.ndarray:
        """Restart now the sub-envs whose episode ended on the last step.

        For same-step autoreset adapters (stable-baselines3): those sub-envs
        start their next episode (as the next :meth:`step` would have done),
        the others are left untouched. Returns the observations of all.
        """
        c = self._core
        mode = np.where(self._autoreset, RESTART, HOLD).astype(np.int8)
        if self._autoreset.any():
            if c.randomize:
                for i in np.flatnonzero(self._autoreset):
                    c.prepare(int(i), self._rngs[i])
            c.run(self._zero, mode)
            self._autoreset[:] = False
        return c.obs.copy()


def sb3_vec_env(venv: CruiseControlVectorEnv):
    """Wrap a :class:`CruiseControlVectorEnv` as a stable-baselines3 ``VecEnv``.

    SB3 expects same-step autoreset: on a step that ends an episode the
    sub-env restarts at once, its last observation goes to
    ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]``
    marks truncation. Needs the ``rl`` extra (imported lazily).
    """
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    class CruiseControlSB3VecEnv(VecEnv):
        def __init__(self, venv):
            self.venv = venv
            self._actions = None
            super().__init__(venv.num_envs, venv.single_observation_space,
                             venv.single_action_space)

        def reset(self):
            seeds = self._seeds
            seed = None if all(s is None for s in seeds) else seeds
            obs, _ = self.venv.reset(seed=seed)
            self._reset_seeds()
            self._reset_options()
            return obs

        def step_async(self, actions):
            self._actions = actions

        def step_wait(self):
            obs, rew, term, trunc, _ = self.venv.step(self._actions)
            done = term | trunc
            infos = [{} for _ in range(self.num_envs)]
            if done.any():
                for i in np.flatnonzero(done):
                    infos[i]["terminal_observation"] = obs[i].copy()
                    infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                obs = self.venv.restart_finished()
            return obs, rew.astype(np.float32), done, infos

        def close(self):
            self.venv.close()

        def get_attr(self, attr_name, indices=None):
            return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

        def set_attr(self, attr_name, value, indices=None):
            setattr(self.venv, attr_name, value)

        def env_method(self, method_name, *args, indices=None, **kwargs):
            raise NotImplementedError("sub-envs are rows of one array, not objects")

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(self._get_indices(indices))

    return CruiseControlSB3VecEnv(venv)

"""The gymnasium env: API checks, determinism, agreement with simulate, vector == single."""

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest

import ctrlsim
from ctrlsim import kernels as K
from ctrlsim.envs import CruiseControlEnv, CruiseControlVectorEnv, default_substeps
from ctrlsim.plant import make_plant
from ctrlsim.scenario import Event, Reference, Scenario
from ctrlsim.validation import ParameterError

ENV_ID = "ctrlsim/CruiseControl-v0"


def _scenario(name, ts=0.05):
    sc = ctrlsim.load_scenario(name)
    return dataclasses.replace(sc, control_period=ts, substeps=default_substeps(ts))


def _to_action(applied, plant):
    lo, hi = plant.command_limits
    return (applied - 0.5 * (lo + hi)) / (0.5 * (hi - lo))


def test_default_substeps():
    assert default_substeps(0.05) == 5
    assert default_substeps(0.01) == 1
    assert default_substeps(0.025) == 3
    env = CruiseControlEnv()
    assert env.scenario.control_period == 0.05 and env.scenario.substeps == 5


def test_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    for kwargs in ({}, {"randomize": True, "scenario": "payload"},
                   {"base_controller": "leaky:0.1", "render_mode": "rgb_array"}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(CruiseControlEnv(**kwargs), skip_render_check=True)
        assert not [str(w.message) for w in caught], kwargs


def test_sb3_check_env():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(CruiseControlEnv(randomize=True), warn=True)
    assert not [str(w.message) for w in caught]


def test_make_and_make_vec():
    env = gym.make(ENV_ID, scenario="step")
    obs, info = env.reset(seed=0)
    assert obs.shape == (5,) and obs.dtype == np.float32
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert type(reward) is float and type(term) is bool and type(trunc) is bool
    venv = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="vector_entry_point",
                        scenario="uphill")
    assert isinstance(venv.unwrapped, CruiseControlVectorEnv)
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, 5)
    obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert rew.shape == (3,) and term.dtype == bool
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP


def _rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    rows = [np.concatenate([obs, [info["speed"]]])]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        rows.append(np.concatenate([obs, [info["speed"], r, term, trunc]]))
        if term or trunc:
            obs, info = env.reset()
    return rows


def test_determinism():
    acts = np.random.default_rng(3).uniform(-1, 1, (700, 1)).astype(np.float32)
    runs = [_rollout(CruiseControlEnv(scenario="payload", randomize=True,
                                      control_period=0.1), 7, acts) for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    other = _rollout(CruiseControlEnv(scenario="payload", randomize=True,
                                      control_period=0.1), 8, acts)
    assert not np.array_equal(runs[0][0], other[0])


@pytest.mark.parametrize("name,spec", [("step", "leaky:0.1"), ("payload", "relu"),
                                       ("noisy", "linear"), ("fbs-hill", None),
                                       ("gust", "leaky:0.1"), ("hwfet-car", None)])
def test_agrees_with_simulate(name, spec):
    sc = _scenario(name)
    tr = ctrlsim.simulate(sc, spec)
    env = CruiseControlEnv(scenario=sc)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-6)):
        actions = _to_action(tr.applied, sc.plant).astype(dtype)
        _, info = env.reset(seed=0)
        assert info["speed"] == tr.speed[0]
        speeds = []
        for k in range(sc.n_steps):
            _, _, term, trunc, info = env.step(actions[k:k + 1])
            speeds.append(info["speed"])
            assert not term and trunc == (k == sc.n_steps - 1)
        np.testing.assert_allclose(speeds, tr.speed[1:], rtol=0, atol=tol)


@pytest.mark.parametrize("name,spec", [("step", "leaky:0.1"), ("fbs-windup", None),
                                       ("payload", "relu")])
def test_base_controller_with_zero_residual_is_simulate(name, spec):
    sc = _scenario(name)
    tr = ctrlsim.simulate(sc, spec)
    env = CruiseControlEnv(scenario=sc, base_controller=spec or sc.resolved_controller())
    env.reset(seed=0)
    speeds, applied = [], []
    for _ in range(sc.n_steps):
        info = env.step(np.zeros(1))[-1]
        speeds.append(info["speed"])
        applied.append(info["command"])
    np.testing.assert_array_equal(speeds, tr.speed[1:])
    np.testing.assert_array_equal(applied, tr.applied[:-1])


def _explosive():
    """Short scenario whose vehicle can diverge in a few steps, with an event."""
    return Scenario(reference=Reference([(0.0, 1.0), (0.4, 2.0)]), duration=1.0,
                    control_period=0.05, substeps=2,
                    plant=make_plant("robot", mass=1.0, force_min=-5e3, force_max=5e3,
                                     drag_linear=0.0, drag_quadratic=0.0),
                    events=(Event(at=0.3, until=0.6, force=3.0),))


@pytest.mark.parametrize("scenario,randomize", [("payload", True), ("uphill", False),
                                                ("explosive", True),
                                                ("explosive", False)])
def test_vector_equals_single(scenario, randomize):
    sc = _explosive() if scenario == "explosive" else scenario
    n, seed = 5, 11
    kw = dict(scenario=sc, randomize=randomize, control_period=0.05 if scenario ==
              "explosive" else 0.5)
    venv = CruiseControlVectorEnv(n, **kw)
    singles = [CruiseControlEnv(**kw) for _ in range(n)]
    vobs, _ = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        obs, _ = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs, vobs[i])
    rng = np.random.default_rng(0)
    bias = np.linspace(-0.1, 1.0, n)[:, None]
    done = np.zeros(n, bool)
    n_term = n_trunc = 0
    for _ in range(150):
        acts = np.clip(0.5 * rng.uniform(-1, 1, (n, 1)) + bias, -1, 1)
        vobs, vrew, vterm, vtrunc, _ = venv.step(acts)
        for i, env in enumerate(singles):
            if done[i]:
                obs, _ = env.reset()
                rew, term, trunc = 0.0, False, False
            else:
                obs, rew, term, trunc, _ = env.step(acts[i])
            np.testing.assert_array_equal(obs, vobs[i])
            assert (rew, term, trunc) == (vrew[i], vterm[i], vtrunc[i])
        done = vterm | vtrunc
        n_term += vterm.sum()
        n_trunc += vtrunc.sum()
    assert n_trunc > 0
    if scenario == "explosive":
        assert n_term > 0     # divergence desynchronises the sub-envs


def test_actions_nan_and_clipping():
    a, b = CruiseControlEnv(), CruiseControlEnv()
    a.reset(seed=0)
    b.reset(seed=0)
    with pytest.raises(ValueError):
        a.step(np.array([np.nan], np.float32))
    ia = a.step(np.array([5.0], np.float32))[-1]
    ib = b.step(np.array([1.0], np.float32))[-1]
    assert ia == ib and ia["command"] == 20.0
    v = CruiseControlVectorEnv(2)
    v.reset(seed=0)
    with pytest.raises(ValueError):
        v.step(np.array([[0.0], [np.nan]]))


def test_step_needs_a_running_episode():
    env = CruiseControlEnv(scenario=_explosive())
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1))
    env.reset(seed=0)
    done = False
    while not done:
        _, _, term, trunc, _ = env.step(np.zeros(1))
        done = term or trunc
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1))
    env.reset()
    env.step(np.zeros(1))


def test_vector_env_needs_a_reset_first():
    v = CruiseControlVectorEnv(2, scenario="payload")
    with pytest.raises(gym.error.ResetNeeded):
        v.step(np.zeros((2, 1)))
    v.reset(seed=0)
    v.step(np.zeros((2, 1)))


def test_info_force_without_actuator_lag_is_the_last_commands():
    env = CruiseControlEnv(scenario="hwfet-car")
    assert env.scenario.plant.actuator_tau == 0.0
    _, info = env.reset(seed=0)
    forces = [info["force"]]
    pp = env.scenario.plant.pack()
    for a in (1.0, 0.5, -0.5):
        info = env.step(np.array([a]))[-1]
        assert info["force"] == K._plant_actuator(info["command"], info["speed"], pp)
        forces.append(info["force"])
    assert len(set(forces)) == 4 and forces[-1] < 0.0   # it follows the commands (brakes)


def test_vector_actions_must_have_the_declared_shape():
    v = CruiseControlVectorEnv(2)
    v.reset(seed=0)
    v.step(np.zeros((2, 1)))
    v.step(np.zeros(2))
    for shape in ((1, 2), (2, 1, 1), (4,)):
        with pytest.raises(ValueError, match="shape"):
            v.step(np.zeros(shape))


def test_render_fps_is_positive_for_slow_control():
    env = CruiseControlEnv(control_period=3.0, render_mode="rgb_array")
    assert env.metadata["render_fps"] == 1


def test_start_force_is_one_the_actuator_can_give():
    """A start the actuator cannot hold begins at its limit, as simulate() begins it."""
    sc = dataclasses.replace(_scenario("payload"), plant=make_plant("robot", force_max=2.0))
    with pytest.warns(ctrlsim.StartWarning):
        tr = ctrlsim.simulate(sc, "leaky:0.1")
    _, info = CruiseControlEnv(scenario=sc).reset(seed=0)
    assert info["force"] == tr.force[0] == 2.0


@pytest.mark.parametrize("kwargs, key", [
    ({"substeps": 2.5}, "substeps"), ({"substeps": 0}, "substeps"),
    ({"randomize": "yes"}, "randomize"), ({"control_period": -0.1}, "control_period"),
    ({"control_period": "0.05"}, "control_period"), ({"error_weight": -1.0}, "error_weight"),
    ({"effort_weight": float("nan")}, "effort_weight"), ({"render_mode": "human"}, "render_mode"),
])
def test_env_arguments_are_checked_not_coerced(kwargs, key):
    with pytest.raises(ParameterError, match=f"^{key}: "):
        CruiseControlEnv(**kwargs)
    if key != "render_mode":
        with pytest.raises(ParameterError, match=f"^{key}: "):
            CruiseControlVectorEnv(2, **kwargs)
    with pytest.raises(ParameterError, match="^num_envs: "):
        CruiseControlVectorEnv(1.5)


def test_observation_contract():
    sc = _scenario("noisy")
    env = CruiseControlEnv(scenario=sc)
    obs, _ = env.reset(seed=0)
    prof = sc.pack()
    s = ctrlsim.envs.SPEED_SCALE[sc.plant.preset]
    y0 = prof.v0 + prof.noise[0]
    np.testing.assert_allclose(obs, np.float32([(prof.ref[0] - y0) / s, 0, 0, y0 / s,
                                                prof.ref[0] / s]), rtol=1e-6)
    obs1, *_, info = env.step(np.zeros(1))
    y1 = info["speed"] + prof.noise[1]
    e0, e1 = prof.ref[0] - y0, prof.ref[1] - y1
    np.testing.assert_allclose(obs1, np.float32([
        e1 / s, 0.05 * e0 / s, (e1 - e0) / 0.05 / s, y1 / s, prof.ref[1] / s]),
        rtol=1e-5, atol=1e-7)
    assert K.OBS_FIELDS == ("error", "integral", "derivative", "speed", "reference")


def test_render_frame():
    env = CruiseControlEnv(render_mode="rgb_array", scenario="fbs-hill")
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.ones(1))
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert frame.std() > 0


def test_sb3_training_smoke():
    pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from ctrlsim.envs import sb3_vec_env

    torch.set_num_threads(1)
    venv = VecMonitor(sb3_vec_env(CruiseControlVectorEnv(
        4, scenario="step", control_period=0.5, randomize=True)))
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=2, seed=0)
    model.learn(384)
    assert len(model.ep_info_buffer) > 0          # episodes ended and were restarted
    obs = venv.reset()
    act, _ = model.predict(obs, deterministic=True)
    assert act.shape == (4, 1)

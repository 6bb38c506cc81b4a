"""Learned controllers: the MLP law in the kernel, its files, training and analysis."""

import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ctrlsim
from ctrlsim import kernels as K
from ctrlsim import learn as L
from ctrlsim.cli import main
from ctrlsim.controllers import LeakyReLUController
from ctrlsim.mlp import MLPController, MLPFileError, load_mlp
from ctrlsim.scenario import Reference
from ctrlsim.sweep import pack_controllers
from ctrlsim.validation import ParameterError


def random_net(rng, activation="relu", output_activation="linear", hidden=(7, 6), scale=3.0):
    sizes = [5, *hidden, 1]
    ws = [rng.normal(size=(o, i)) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.normal(size=o) for o in sizes[1:]]
    return MLPController(weights=ws, biases=bs, activation=activation, alpha=0.07,
                         input_scale=rng.uniform(0.2, 2.0, 5),
                         output_activation=output_activation, output_scale=scale,
                         output_offset=0.3, kaw=0.5)


def short(duration=8.0, **kw):
    sc = ctrlsim.load_scenario("decel")
    return replace(sc, duration=duration, reference=Reference(((2.0, 1.0),)), **kw)


ACTS = [(a, o) for a in ("relu", "leaky", "tanh") for o in ("linear", "tanh")]


@pytest.mark.parametrize("act, out_act", ACTS)
def test_kernel_forward_equals_numpy(act, out_act):
    rng = np.random.default_rng(1)
    net = random_net(rng, act, out_act)
    cp = net.pack()
    x = rng.normal(size=(300, 5)) * 3
    kernel = np.array([K.mlp_forward(*row, cp) for row in x])
    np.testing.assert_allclose(kernel, net.forward(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("act, out_act", ACTS)
def test_closed_loop_commands_are_the_network_on_its_inputs(act, out_act):
    rng = np.random.default_rng(2)
    net = random_net(rng, act, out_act, scale=0.5)
    sc = short(sensor=ctrlsim.Sensor(speed_noise_std=0.01, seed=3))
    tr = ctrlsim.simulate(sc, net)
    out = np.stack([tr.position, tr.speed, tr.force, tr.command, tr.applied], axis=1)
    x = L.law_inputs(out, sc.pack(), net.kaw)
    np.testing.assert_allclose(tr.command[:len(x)], net.forward(x), rtol=0, atol=1e-12)


def test_preload_is_the_output_at_cruise():
    net = random_net(np.random.default_rng(3))
    z0, u0 = K.controller_preload(5.0, 2.0, net.pack())
    assert z0 == 0.0
    assert u0 == pytest.approx(net.forward(np.array([0, 0, 0, 2.0, 2.0])), abs=1e-12)


def test_a_holding_start_preloads_the_holding_command(tmp_path):
    net = replace(random_net(np.random.default_rng(3)), start="hold")
    assert K.controller_preload(5.0, 2.0, net.pack()) == (0.0, 5.0)
    net.save(tmp_path / "h.npz")
    back = load_mlp(tmp_path / "h.npz")
    assert back.start == "hold" and np.array_equal(back.pack(), net.pack())
    for bad in ("warm", np.array(["hold", "hold"])):
        with pytest.raises(ParameterError, match="start"):
            replace(net, start=bad)
    # The default start is not written: files stay readable by versions without it.
    replace(net, start="output").save(tmp_path / "o.npz")
    with np.load(tmp_path / "o.npz") as npz:
        assert "start" not in npz.files


def test_batch_mixes_mlp_and_pid_rows_bit_identically():
    rng = np.random.default_rng(4)
    sc = short()
    ctls = [random_net(rng, "tanh", scale=1.0), sc.resolved_controller(),
            random_net(rng, "leaky", hidden=(3,), scale=1.0)]
    prof, pp = sc.pack(), np.tile(sc.plant.pack(), (3, 1))
    cp = pack_controllers(ctls)
    out = np.empty((3, prof.ref.size, 5))
    div, feas = np.empty(3, np.int64), np.empty(3, np.bool_)
    K.rollout_batch(pp, cp, prof, out, div, feas)
    for i, c in enumerate(ctls):
        single = np.empty((prof.ref.size, 5))
        K.rollout(pp[i], c.pack(), prof, single)
        assert np.array_equal(single, out[i], equal_nan=True)


def test_save_load_round_trip_and_spec(tmp_path):
    net = random_net(np.random.default_rng(5), "leaky", "tanh")
    path = tmp_path / "a,b.npz"
    net.save(path)
    back = load_mlp(path)
    assert np.array_equal(back.pack(), net.pack())
    spec = ctrlsim.controller(f"mlp:{path}")
    assert np.array_equal(spec.pack(), net.pack()) and spec.spec == f"mlp:{path}"


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _good_arrays():
    net = random_net(np.random.default_rng(6), "leaky", hidden=(4,))
    return {"layers": np.array(1), "activation": np.array("leaky"), "alpha": np.array(0.1),
            "input_scale": net.input_scale, "output_scale": np.array(2.0),
            "W0": net.weights[0], "b0": net.biases[0], "W1": net.weights[1],
            "b1": net.biases[1]}


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


BAD = {
    "missing": (lambda a, m: a.pop("W1"), "W1", "missing"),
    "shape": (lambda a, m: a.update(W1=np.ones((1, 3))), "W1", "shape"),
    "bias shape": (lambda a, m: a.update(b0=np.ones(5)), "b0", "shape"),
    "dtype": (lambda a, m: a.update(W0=a["W0"].astype(np.int64)), "W0", "float"),
    "nan": (lambda a, m: a.update(b1=np.array([np.nan])), "b1", "NaN"),
    "inf scale": (lambda a, m: a.update(input_scale=np.full(5, np.inf)), "input_scale", "inf"),
    "activation": (lambda a, m: a.update(activation=np.array("gelu")), "activation",
                   "unknown activation"),
    "output activation": (lambda a, m: a.update(output_activation=np.array("sigmoid")),
                          "output_activation", "unknown activation"),
    "alpha missing": (lambda a, m: a.pop("alpha"), "alpha", "missing"),
    "start": (lambda a, m: a.update(start=np.array("warm")), "start", "unknown start"),
    "unknown array": (lambda a, m: a.update(W7=np.ones(2)), "W7", "unknown array"),
    "layers float": (lambda a, m: a.update(layers=np.array(1.0)), "layers", "integer"),
    "pickle": (lambda a, m: a.update(W0=np.array([Boom(m)], dtype=object)), "W0", "pickled"),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_files_name_file_and_array(tmp_path, case, capsys):
    arrays = _good_arrays()
    marker = tmp_path / "executed"
    change, key, fragment = BAD[case]
    change(arrays, str(marker))
    path = tmp_path / "bad.npz"
    _write(path, **arrays)
    with pytest.raises(MLPFileError, match=fragment) as info:
        load_mlp(path)
    assert info.value.key == key and str(path) in str(info.value)
    assert main(["run", "decel", "-c", f"mlp:{path}"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err and "Traceback" not in err
    assert not marker.exists()


def test_a_corrupt_member_names_the_array(tmp_path, capsys):
    import zipfile

    good, path = tmp_path / "good.npz", tmp_path / "bad.npz"
    _write(good, **_good_arrays())
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"garbage" if info.filename == "W0.npy" else src.read(info))
    with pytest.raises(MLPFileError, match="not a .npy array") as info:
        load_mlp(path)
    assert info.value.key == "W0"
    assert main(["run", "decel", "-c", f"mlp:{path}"]) == 2
    assert "W0" in capsys.readouterr().err


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(MLPFileError, match="cannot read"):
        load_mlp(path)
    with pytest.raises(MLPFileError, match="cannot read"):
        load_mlp(tmp_path / "missing.npz")


def test_scenario_file_loads_weights_relative_to_itself(tmp_path):
    sub = tmp_path / "nets"
    sub.mkdir()
    net = random_net(np.random.default_rng(7), "tanh", scale=1.0)
    net.save(sub / "n.npz")
    toml = ('duration = 4.0\ninitial_speed = 2.0\n[controller]\ntype = "mlp"\n'
            'weights = "nets/n.npz"\n[reference]\nsteps = [[1.0, 1.0]]\n')
    (tmp_path / "s.toml").write_text(toml)
    sc = ctrlsim.load_scenario(tmp_path / "s.toml")
    assert np.array_equal(sc.controller.pack(), net.pack())
    assert not ctrlsim.simulate(sc).diverged
    (tmp_path / "t.toml").write_text(toml.replace("nets/n.npz", "nets/none.npz"))
    with pytest.raises(ctrlsim.ScenarioError, match="controller.weights"):
        ctrlsim.load_scenario(tmp_path / "t.toml")
    (tmp_path / "u.toml").write_text(toml.replace('type = "mlp"', 'type = "mlp"\nkp = 1.0'))
    with pytest.raises(ctrlsim.ScenarioError, match="controller.kp"):
        ctrlsim.load_scenario(tmp_path / "u.toml")


@pytest.mark.parametrize("act, out_act", ACTS)
def test_backward_matches_finite_differences(act, out_act):
    rng = np.random.default_rng(8)
    net = random_net(rng, act, out_act, hidden=(4, 3))
    x = rng.normal(size=(20, 5))
    y = rng.normal(size=20)
    _, gw, gb = L.loss_and_grads(net, x, y)
    h = 1e-6
    params = list(net.weights) + list(net.biases)
    for k, grad in enumerate(gw + gb):
        for idx in [(0,) * grad.ndim, tuple(s - 1 for s in grad.shape)]:
            plus = [p.copy() for p in params]
            minus = [p.copy() for p in params]
            plus[k][idx] += h
            minus[k][idx] -= h
            nw = len(net.weights)
            lp = L.loss_and_grads(net.with_params(plus[:nw], plus[nw:]), x, y)[0]
            lm = L.loss_and_grads(net.with_params(minus[:nw], minus[nw:]), x, y)[0]
            assert grad[idx] == pytest.approx((lp - lm) / (2 * h), rel=1e-5, abs=1e-8)


def test_dead_unit_fraction_on_a_hand_built_network():
    w0 = np.array([[1.0, 0, 0, 0, 0],     # e: positive for e > 0 -> alive
                   [0.0, 0, 0, 0, 0],     # bias -1 only -> dead
                   [0.0, 0, 0, 1, 0],     # y + 1 > 0 -> alive
                   [1.0, 0, 0, 0, 0]])    # e - 10 <= 0 for |e| < 10 -> dead
    b0 = np.array([0.0, -1.0, 1.0, -10.0])
    net = MLPController(weights=(w0, np.ones((1, 4))), biases=(b0, np.zeros(1)),
                        activation="relu")
    x = np.array([[-1.0, 0, 0, 1, 1], [0.5, 0, 0, 2, 2], [2.0, 0, 0, 1, 1]])
    assert L.dead_unit_fraction(net, x) == 0.25 * 2
    tanh = replace(net, activation="tanh")
    # tanh: dead if the pre-activation stays within +-0.01; none here, one with tiny weights
    assert L.dead_unit_fraction(tanh, x) == 0.0
    tiny = replace(tanh, weights=(w0 * 1e-4, np.ones((1, 4))), biases=(b0 * 0, np.zeros(1)))
    assert L.dead_unit_fraction(tiny, x) == 1.0
    tr = ctrlsim.simulate(short(), replace(net, output_scale=5.0))
    assert 0.0 <= L.dead_unit_fraction(net, tr) <= 1.0


def test_short_training_lowers_the_cost():
    sc = short()
    vs = L.variants(sc, 2, seed=1, substeps=1)
    x, y = L.expert_data(sc.resolved_controller(), vs)
    net = L.init_mlp((6,), "leaky", 0.1, input_scale=L._fit_scales(x), output_scale=20.0)
    trained, log = L.imitate(net, x, y, epochs=3)
    assert log.loss[-1] < 0.5 * log.loss[0]
    before = L.evaluate([trained], vs).mean()
    for use_cma in (True, False):
        best, eslog = L.evolve(trained, vs, budget=30, max_generations=4, popsize=8,
                               use_cma=use_cma, seed=2)
        assert eslog.loss[-1] <= eslog.loss[0] == pytest.approx(before)
        assert L.evaluate([best], vs).mean() == pytest.approx(eslog.loss[-1])
    assert eslog.loss[-1] < before


PI_CASES = [(act, hidden, slope) for act in ("relu", "leaky") for hidden in ((3,), (4, 3))
            for slope in (0.0, 0.3, 1.0)]


@pytest.mark.parametrize("act, hidden, slope", PI_CASES)
def test_network_from_a_pi_is_that_pi_in_the_kernel(act, hidden, slope):
    pi = LeakyReLUController(alpha=slope, kp=60.0, ki=15.0, kd=2.0, kaw=0.0, feedforward=3.0)
    net = L.mlp_from_pi(pi, hidden, act, 0.1, input_scale=np.array([2.0, 1.0, 0.1, 0.5, 0.5]),
                        output_scale=20.0, seed=1)
    assert np.count_nonzero(net.weights[0]) > 2 * 4   # spare units are wired in, silent
    x = np.random.default_rng(10).normal(size=(400, 5)) * np.array([0.5, 1.0, 5.0, 1.0, 1.0])
    s = x @ np.array([60.0, 15.0, 2.0, 0.0, 3.0])
    want = np.where(s >= 0.0, s, slope * s)
    cp = net.pack()
    got = np.array([K.mlp_forward(*row, cp) for row in x])
    assert np.abs(want).max() > 20.0 and (s < 0).any() and (s > 0).any()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # Closed loop from rest on the flat: the PI's integrator preload is 0 as the
    # network's, so the whole runs agree (both saturate and brake here).
    sc = replace(short(), initial_speed=0.0, reference=Reference(((1.0, 1.0), (4.0, 0.5))))
    a, b = ctrlsim.simulate(sc, pi), ctrlsim.simulate(sc, net)
    assert a.applied.max() == 20.0 and (a.command.min() < 0.0 or slope == 0.0)
    np.testing.assert_allclose(b.command, a.command, rtol=0, atol=1e-12)


def test_network_from_a_pi_rejects_what_it_cannot_represent():
    pi = LeakyReLUController(alpha=0.3, kp=1.0, ki=1.0, kd=0.0, kaw=0.0, feedforward=0.0)
    with pytest.raises(ParameterError, match="alpha < 1"):
        L.mlp_from_pi(pi, (4,), "tanh")
    with pytest.raises(ParameterError, match="alpha < 1"):
        L.mlp_from_pi(pi, (4,), "leaky", alpha=1.0)
    with pytest.raises(ParameterError, match="2 units"):
        L.mlp_from_pi(pi, (4, 1), "relu")


def test_pid_law_search_starts_at_the_expert_and_only_improves():
    sc = short()
    vs = L.variants(sc, 2, seed=1, substeps=1)
    expert = sc.resolved_controller()
    laws = L.pid_laws(expert, feedforward=4.0)
    assert laws[0] == (expert, 0.0) and len(laws) > 100
    assert any(law.kd > 0 and law.feedforward == 4.0 and kaw > 0 for law, kaw in laws)

    def build(law):
        return replace(L.mlp_from_pi(law[0], (4,), output_scale=20.0), kaw=law[1])

    # The network equal to the expert costs more than the expert: its integrator
    # starts at 0, the PI's at the holding command.
    start = L.evaluate([build(laws[0])], vs).mean()
    assert start > L.evaluate([expert], vs).mean()
    best, cost, log = L.refine_pid(laws[0], vs, build, 4.0, generations=5)
    assert len(log.loss) == 6 and np.all(np.diff(log.loss) <= 0) and log.loss[-1] == cost
    assert log.loss[0] == pytest.approx(start, rel=1e-12) and cost < start
    assert L.evaluate([build(best)], vs).mean() == pytest.approx(cost, rel=1e-12)


def test_minibatch_evolution_is_elitist_on_all_scenarios():
    sc = short()
    vs = L.variants(sc, 3, seed=4, substeps=1)
    net = L.mlp_from_pi(sc.resolved_controller(), (4,), output_scale=20.0)
    best, log = L.evolve(net, vs, budget=30, max_generations=6, popsize=6, batch=1,
                         check_every=2, sigma0=0.1, seed=3)
    assert len(log.loss) == 7 and np.all(np.diff(log.loss) <= 0)
    assert L.evaluate([best], vs).mean() == pytest.approx(log.loss[-1], rel=1e-12)


def test_variants_are_deterministic_and_valid():
    sc = ctrlsim.load_scenario("decel")
    a, b = L.variants(sc, 5, seed=3, disturb=True), L.variants(sc, 5, seed=3, disturb=True)
    assert [v.plant.mass for v in a] == [v.plant.mass for v in b]
    assert len({v.plant.mass for v in a}) == 5 and all(len(v.events) == 2 for v in a)
    cyc = ctrlsim.load_scenario("udds-robot")
    scaled = L.variants(cyc, 2, seed=0)
    assert all(v.reference.kind == "cycle" for v in scaled)
    assert max(p[1] for p in scaled[0].reference.points) != max(
        p[1] for p in cyc.reference.points)


def test_sweep_over_a_plant_field_with_an_mlp():
    net = random_net(np.random.default_rng(9), "tanh", scale=1.0)
    res = ctrlsim.sweep(short(), {"mass": [20.0, 30.0]}, controller=net)
    assert res.diverged.shape == (2,)
    with pytest.raises(ValueError, match="no gains"):
        ctrlsim.sweep(short(), {"kp": [1.0]}, controller=net)


@pytest.mark.parametrize("algo", ["SAC", "TD3", "PPO"])
def test_from_sb3_matches_predict(algo):
    sb3 = pytest.importorskip("stable_baselines3")
    gym = pytest.importorskip("gymnasium")
    import torch

    class Env(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, seed=None, options=None):
            return np.zeros(5, np.float32), {}

        def step(self, action):
            return np.zeros(5, np.float32), 0.0, False, False, {}

    torch.manual_seed(0)
    kwargs = dict(policy_kwargs=dict(net_arch=[8, 8]), device="cpu")
    if algo == "PPO":
        kwargs["n_steps"] = 16
        kwargs["batch_size"] = 16
    model = getattr(sb3, algo)("MlpPolicy", Env(), **kwargs)
    with torch.no_grad():  # make the tanh squash and biases matter
        for p in model.policy.parameters():
            p.mul_(3.0)
    obs_scale = np.array([1.0, 2.0, 50.0, 3.0, 3.0])
    net = L.from_sb3(model, obs_scale=obs_scale, command_range=(-20.0, 20.0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)) * obs_scale
    obs = (x / obs_scale).astype(np.float32)
    act, _ = model.predict(obs, deterministic=True)
    want = 20.0 * act[:, 0].astype(float)
    got = np.clip(net.forward(obs.astype(float) * obs_scale), -20.0, 20.0)
    np.testing.assert_allclose(got, want, atol=1e-6 * 20)
    cp = net.pack()
    kern = np.clip([K.mlp_forward(*row, cp) for row in obs.astype(float) * obs_scale], -20, 20)
    np.testing.assert_allclose(kern, want, atol=1e-6 * 20)


@pytest.mark.parametrize("algo", ["SAC", "PPO"])
def test_from_sb3_policy_in_simulate_follows_its_env_episode(algo):
    """Exported with from_sb3, a policy run by simulate() on the env's scenario follows
    the episode the env gives it, from a cruise at 2 m/s (so the start matters)."""
    sb3 = pytest.importorskip("stable_baselines3")
    import torch

    from ctrlsim.envs import SPEED_SCALE, CruiseControlEnv

    env = CruiseControlEnv(scenario="payload")
    torch.manual_seed(1)
    kwargs = dict(policy_kwargs=dict(net_arch=[16, 16]), device="cpu")
    if algo == "PPO":
        kwargs.update(n_steps=16, batch_size=16)
    model = getattr(sb3, algo)("MlpPolicy", env, **kwargs)
    sc = env.scenario
    net = L.from_sb3(model, obs_scale=np.full(5, SPEED_SCALE[sc.plant.preset]),
                     command_range=sc.plant.command_limits)
    obs, info = env.reset(seed=0)
    speeds, forces, done = [info["speed"]], [info["force"]], False
    while not done:
        act, _ = model.predict(obs, deterministic=True)
        obs, _, term, trunc, info = env.step(act)
        speeds.append(info["speed"])
        forces.append(info["force"])
        done = term or trunc
    tr = ctrlsim.simulate(sc, net)
    assert tr.force[0] == forces[0]          # the same start, bit for bit
    assert len(speeds) == tr.speed.size
    # The env hands the policy float32 observations: agreement to their rounding.
    np.testing.assert_allclose(tr.speed, speeds, rtol=0, atol=1e-5)
    np.testing.assert_allclose(tr.force, forces, rtol=0, atol=1e-3)
    # Started from the network's own output instead, the run differs visibly.
    other = ctrlsim.simulate(sc, replace(net, start="output"))
    assert abs(other.force[0] - forces[0]) > 0.1


def test_cli_train_writes_network_plot_and_table(tmp_path):
    toml = ('duration = 6.0\ninitial_speed = 2.0\n[reference]\nsteps = [[1.0, 1.0]]\n')
    (tmp_path / "s.toml").write_text(toml)
    env = dict(os.environ, MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, "-m", "ctrlsim", "train", "s.toml", "--out",
                          "n.npz", "--budget", "2", "--hidden", "4", "--heldout", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "(tuned PI)" in res.stdout and "held-out" in res.stdout
    assert (tmp_path / "plots" / "s-train.png").stat().st_size > 0
    assert not ctrlsim.simulate(ctrlsim.load_scenario(tmp_path / "s.toml"),
                                load_mlp(tmp_path / "n.npz")).diverged
    bad = subprocess.run([sys.executable, "-m", "ctrlsim", "train", "s.toml", "--out",
                          "n.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and ".npz" in bad.stderr
    assert Path(tmp_path / "n.npz").is_file()

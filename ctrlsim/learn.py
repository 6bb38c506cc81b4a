"""Training and analysis of learned (MLP) controllers.

- :func:`variants`: randomised copies of a scenario (mass, grade, reference
  steps, initial speed; optionally force disturbances) for training and held-out
  evaluation.
- :func:`episode_costs` / :func:`evaluate`: the closed-loop training cost (ITAE
  plus command effort, below), a whole population per ``rollout_batch`` call.
- :func:`imitate`: supervised regression onto an expert controller's commands
  (numpy forward/backward pass, Adam).
- :func:`evolve`: closed-loop policy search with CMA-ES (the ``cma`` package,
  ``pip install ctrlsim[learn]``) or, without it, a simple evolution strategy.
- :func:`tune_pi`: the hand-tuned baseline, a sweep over kp, ki and alpha.
- :func:`mlp_from_pi`: a network that is exactly a given PID-family law;
  :func:`pid_laws` and :func:`refine_pid` pick the law ``train`` starts from.
- :func:`dead_unit_fraction`: the dead-ReLU measure.
- :func:`from_sb3`: a stable-baselines3 SAC / TD3 / PPO actor as an
  :class:`~ctrlsim.mlp.MLPController`.

Cost of one run (``docs/learning.md``), with ``T`` the duration, ``e`` the true
speed error, ``a`` the applied command and ``A`` the largest command magnitude::

    J = (1/T) * sum_k Ts * t_k * |e_k|  +  EFFORT_WEIGHT * (1/T) * sum_k Ts * (a_k / A)^2

A diverged run costs :data:`DIVERGED_COST`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from . import kernels as K
from .controllers import Controller, LeakyReLUController
from .mlp import N_INPUTS, MLPController
from .scenario import Event, Reference, Road, Scenario
from .sweep import pack_controllers
from .validation import ParameterError, ParameterTypeError

__all__ = ["variants", "episode_costs", "evaluate", "expert_data", "imitate", "evolve",
           "tune_pi", "dead_unit_fraction", "law_inputs", "from_sb3", "init_mlp",
           "mlp_from_pi", "pid_laws", "refine_pid", "loss_and_grads", "EFFORT_WEIGHT",
           "DIVERGED_COST", "TrainLog", "train", "TrainResult", "dead_relu_experiment"]

EFFORT_WEIGHT = 0.1
DIVERGED_COST = 1000.0


# --------------------------------------------------------------------------
# Randomised scenarios
# --------------------------------------------------------------------------
def variants(scenario: Scenario, n: int, seed: int = 0, disturb: bool = False,
             spread: float = 1.0, substeps: int | None = None) -> list[Scenario]:
    """``n`` randomised copies of ``scenario``.

    Each copy scales the mass by U(0.75, 1.35), adds a constant U(-2, 2) degree
    grade offset (robot; car: U(-3, 3)), scales each reference value by
    U(0.7, 1.3) and shifts each step time by U(-2, 2) s (kept in order and
    >= 0; a drive cycle is scaled as a whole), and scales the initial speed
    by U(0.8, 1.2). ``disturb`` adds two external force pulses (robot
    U(-6, 6) N, car U(-800, 800) N, 1-4 s long).
    ``spread`` scales all these ranges. ``substeps`` overrides the RK4
    substeps (training may use fewer: cheaper, and the cost barely moves while
    a substep stays well below ``actuator_tau``). Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    car = scenario.plant.preset == "car"
    out = []
    for i in range(n):
        mass = scenario.plant.mass * (1.0 + spread * rng.uniform(-0.25, 0.35))
        grade = spread * rng.uniform(-1, 1) * (3.0 if car else 2.0)
        road = scenario.road
        pts = road.grade_deg or ((0.0, 0.0),)
        road = Road(grade_deg=tuple((x, g + grade) for x, g in pts), by=road.by)
        ref = scenario.reference
        pts = []
        last = -1.0
        for t, v in ref.points:
            if ref.kind == "steps":
                t = max(t + spread * rng.uniform(-2, 2), last + 0.5, 0.0)
                t = min(t, scenario.duration)
            pts.append((t, max(v * (1.0 + spread * rng.uniform(-0.3, 0.3)), 0.0)))
            last = t
        if ref.kind == "cycle":  # one scale for the whole cycle keeps its shape
            k = 1.0 + spread * rng.uniform(-0.3, 0.3)
            pts = [(t, v * k) for t, v in ref.points]
        events = scenario.events
        if disturb:
            amp = 800.0 if car else 6.0
            extra = []
            for _ in range(2):
                at = rng.uniform(0, scenario.duration * 0.9)
                extra.append(Event(at=at, until=at + rng.uniform(1, 4),
                                   force=spread * rng.uniform(-amp, amp)))
            events = events + tuple(extra)
        out.append(replace(
            scenario, plant=scenario.plant.with_(mass=mass), road=road, events=events,
            reference=Reference(tuple(pts), kind=ref.kind, name=ref.name),
            initial_speed=scenario.initial_speed * (1.0 + spread * rng.uniform(-0.2, 0.2)),
            substeps=substeps or scenario.substeps, name=f"{scenario.name}#{seed}.{i}"))
    return out


# --------------------------------------------------------------------------
# Closed-loop cost
# --------------------------------------------------------------------------
def episode_costs(out: np.ndarray, ref: np.ndarray, ts: float, command_max: float,
                  diverged: np.ndarray) -> np.ndarray:
    """Training cost of each run of a batch output ``out`` (B, N + 1, 5) (module docstring)."""
    n1 = ref.size
    t = np.arange(n1) * ts
    duration = t[-1]
    err = np.abs(ref[None, :] - out[:, :, 1])
    itae = (err * t[None, :]).sum(axis=1) * ts / duration
    effort = ((out[:, :, 4] / command_max) ** 2).sum(axis=1) * ts / duration
    cost = itae + EFFORT_WEIGHT * effort
    bad = np.asarray(diverged) | ~np.isfinite(cost)
    return np.where(bad, DIVERGED_COST, cost)


def _command_max(scenario: Scenario) -> float:
    lo, hi = scenario.plant.command_limits
    return max(abs(lo), abs(hi))


def evaluate(controllers: Sequence, scenarios: Sequence[Scenario],
             return_outputs: bool = False):
    """Cost of each controller on each scenario: array (len(controllers), len(scenarios)).

    All controllers run in one ``rollout_batch`` call per scenario (they must
    be built-in or MLP controllers: one kernel). With ``return_outputs`` also
    returns the list of per-scenario ``(out, diverged_at)``.
    """
    ctls = list(controllers)
    for c in ctls:
        if c.kernels()[1] is not K.rollout_batch:
            raise ParameterTypeError("controllers", "custom laws cannot be batched here")
    costs = np.empty((len(ctls), len(scenarios)))
    outs = []
    for j, sc in enumerate(scenarios):
        resolved = [sc.resolved_controller(c) for c in ctls]
        cp = pack_controllers(resolved)
        prof = sc.pack()
        pp = np.tile(sc.plant.pack(), (len(ctls), 1))
        out = np.empty((len(ctls), prof.ref.size, len(K.OUT_FIELDS)))
        div = np.empty(len(ctls), dtype=np.int64)
        feas = np.empty(len(ctls), dtype=np.bool_)
        K.rollout_batch(pp, cp, prof, out, div, feas)
        costs[:, j] = episode_costs(out, prof.ref, prof.ts, _command_max(sc), div >= 0)
        if return_outputs:
            outs.append((out, div))
    return (costs, outs) if return_outputs else costs


# --------------------------------------------------------------------------
# Law inputs and the dead-unit measure
# --------------------------------------------------------------------------
def law_inputs(out: np.ndarray, prof: K.Profiles, kaw: float = 0.0) -> np.ndarray:
    """The inputs ``(e, z, d, y, r)`` an MLP controller sees along a run.

    ``out`` is one kernel output (N + 1, 5); ``z`` follows the MLP integrator
    ``z_{k+1} = z_k + Ts*(e_k + kaw*(a_k - u_k))`` from 0. Rows after a
    divergence are dropped.
    """
    ok = np.all(np.isfinite(out), axis=1)
    n = int(np.argmin(ok)) if not ok.all() else out.shape[0]
    header = np.zeros(K.N_PID)   # an integrator dz = e + kaw*(a - u), phi_inv = identity
    header[K.C_INTEGRATE], header[K.C_AW_GAIN], header[K.C_SLOPE] = 1.0, kaw, 1.0
    return K.law_inputs(np.ascontiguousarray(out[:n, 1]), np.ascontiguousarray(out[:n, 3]),
                        np.ascontiguousarray(out[:n, 4]), prof, header)


def dead_unit_fraction(controller: MLPController, inputs_or_trajectory,
                       tanh_band: float = 0.01) -> float:
    """Share of hidden units that are dead over the given inputs.

    A ``relu`` or ``leaky`` unit is dead if its pre-activation is never
    positive; a ``tanh`` unit if its pre-activation never leaves
    ``[-tanh_band, tanh_band]``.

    Parameters
    ----------
    controller : MLPController
    inputs_or_trajectory : array (n, 5) of ``(e, z, d, y, r)``, or a Trajectory
        A :class:`~ctrlsim.Trajectory` run with this controller: its inputs are
        rebuilt (:func:`law_inputs`, using the scenario's sensor noise).
    """
    if not isinstance(controller, MLPController):
        raise ParameterTypeError("controller", "must be an MLPController")
    if hasattr(inputs_or_trajectory, "scenario"):
        tr = inputs_or_trajectory
        out = np.stack([tr.position, tr.speed, tr.force, tr.command, tr.applied], axis=1)
        x = law_inputs(out, tr.scenario.pack(), controller.kaw)
    else:
        x = np.asarray(inputs_or_trajectory, dtype=float)
        if x.ndim != 2 or x.shape[1] != N_INPUTS or x.shape[0] == 0:
            raise ParameterError("inputs", f"must have shape (n, 5), got {x.shape}")
    pre = controller.preactivations(x)
    if not pre:
        return 0.0
    if controller.activation == "tanh":
        dead = [np.all(np.abs(s) <= tanh_band, axis=0) for s in pre]
    else:
        dead = [np.all(s <= 0.0, axis=0) for s in pre]
    return float(np.concatenate(dead).mean())


# --------------------------------------------------------------------------
# Numpy network: initialisation, loss and gradients
# --------------------------------------------------------------------------
def init_mlp(hidden: Sequence[int], activation: str = "relu", alpha: float = 0.1,
             input_scale=None, output_scale: float = 1.0, output_offset: float = 0.0,
             seed: int = 0, bias_init: float = 0.0, bias_spread: float = 0.0,
             kaw: float = 0.0) -> MLPController:
    """A fresh MLP: He-normal weights, hidden biases ``bias_init + bias_spread*N(0,1)``."""
    rng = np.random.default_rng(seed)
    sizes = [N_INPUTS, *hidden, 1]
    ws, bs = [], []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        ws.append(rng.normal(0.0, (1.0 if last else math.sqrt(2.0)) / math.sqrt(n_in),
                             (n_out, n_in)))
        bs.append(np.zeros(n_out) if last else
                  bias_init + bias_spread * rng.standard_normal(n_out))
    return MLPController(weights=tuple(ws), biases=tuple(bs), activation=activation,
                         alpha=alpha if activation == "leaky" else 0.0,
                         input_scale=np.ones(N_INPUTS) if input_scale is None else input_scale,
                         output_scale=output_scale, output_offset=output_offset, kaw=kaw)


def mlp_from_pi(pi: Controller, hidden: Sequence[int], activation: str = "leaky",
                alpha: float = 0.1, input_scale=None, output_scale: float = 1.0,
                seed: int = 0, spare_scale: float = 1.0) -> MLPController:
    """An MLP whose law is exactly the PID-family controller ``pi``.

    Two units per hidden layer carry ``act(s/S)`` and ``act(-s/S)`` with
    ``s = kp*e + ki*z + kd*d + feedforward*r``; for ``relu`` and ``leaky`` with
    ``alpha < 1`` their difference is ``(1 + alpha) s/S`` and the first alone
    gives the positive part, so the output layer rebuilds ``phi(s)`` exactly
    (to rounding). The other units get random input weights (He-normal, scaled
    by ``spare_scale``) and zero output weights: they change nothing yet, but a
    perturbation of their output weights changes the law at first order, which
    is what an evolution strategy started here needs. ``S`` balances the two
    layers (row norm of the pair = magnitude of its output weights).

    Parameters
    ----------
    pi : Controller
        A resolved built-in controller. Its anti-windup maps to the network's
        ``kaw = pi.kaw / pi.ki``; the two agree exactly only when ``kaw = 0`` or
        the command clips on the positive side (the PI's anti-windup works on
        the pre-activation).
    hidden : sequence of int
        Hidden widths, each at least 2.
    activation : {"relu", "leaky"}
    alpha : float
        Leaky slope of the hidden units, below 1.
    input_scale : array (5,), optional
        Multiplies ``(e, z, d, y, r)`` (default ones).
    output_scale : float
        The network's ``output_scale`` (e.g. the largest command).
    seed : int
        Seed of the spare units' weights.
    spare_scale : float
        Scale of the spare units' input weights.

    Returns
    -------
    MLPController
        Its ``forward`` equals ``pi``'s output ``phi(s)`` at every input, and
        its integrator starts at 0 (the PI's is preloaded to the holding command).
    """
    if not isinstance(pi, Controller) or not pi.resolved:
        raise ParameterTypeError("pi", "must be a resolved built-in controller")
    a = alpha if activation == "leaky" else 0.0
    if activation not in ("relu", "leaky") or not 0.0 <= a < 1.0:
        raise ParameterError("activation", "an exact PI needs relu or leaky units "
                             f"with alpha < 1, got {activation} (alpha {alpha})")
    if not hidden or min(hidden) < 2:
        raise ParameterError("hidden", f"need at least 2 units per layer, got {hidden}")
    scale = np.ones(N_INPUTS) if input_scale is None else np.asarray(input_scale, float)
    beta = pi.slope
    # The PI's gains on the scaled inputs.
    gains = np.array([pi.kp, pi.ki, pi.kd, 0.0, pi.feedforward]) / scale
    norm = float(np.linalg.norm(gains))
    if norm == 0.0:
        raise ParameterError("pi", "has all gains zero")
    big_s = math.sqrt(norm * abs(output_scale))
    net = init_mlp(hidden, activation, alpha, input_scale=scale,
                   output_scale=output_scale, seed=seed)
    ws = [w.copy() for w in net.weights]
    bs = [np.zeros_like(b) for b in net.biases]
    ws[0] *= spare_scale
    ws[0][:2] = np.outer([1.0, -1.0], gains / big_s)
    for w in ws[1:-1]:
        w *= spare_scale
        w[:2] = 0.0
        w[:, :2] = 0.0
        w[:2, :2] = np.array([[1.0, -1.0], [-1.0, 1.0]]) / (1.0 + a)
    # u/S = (1-beta) relu(s/S) + beta s/S, with s/S = (h+ - h-)/(1+a) and
    # relu(s/S) = (h+ - a s/S)/(1-a).
    k = (beta - a) / ((1.0 - a) * (1.0 + a))
    ws[-1][:] = 0.0
    ws[-1][0, :2] = np.array([(1.0 - beta) / (1.0 - a) + k, -k]) * big_s / output_scale
    kaw = pi.kaw / pi.ki if pi.kaw and pi.ki else 0.0
    return replace(net.with_params(ws, bs), kaw=kaw)


def _act_grad(s: np.ndarray, h: np.ndarray, name: str, alpha: float) -> np.ndarray:
    if name == "relu":
        return (s > 0.0).astype(float)
    if name == "leaky":
        return np.where(s >= 0.0, 1.0, alpha)
    if name == "tanh":
        return 1.0 - h * h
    return np.ones_like(s)


def loss_and_grads(ctl: MLPController, x: np.ndarray, target: np.ndarray):
    """Mean squared error of ``ctl.forward(x)`` against ``target``, in output units.

    The loss is ``mean(((u - target)/output_scale)^2)``. Returns
    ``(loss, grads_w, grads_b)`` with one gradient per weight and bias array.
    """
    from .mlp import _np_act

    h = x * ctl.input_scale
    hs, pres = [h], []
    for w, b in zip(ctl.weights[:-1], ctl.biases[:-1]):
        s = h @ w.T + b
        h = _np_act(s, ctl.activation, ctl.alpha)
        pres.append(s)
        hs.append(h)
    s_out = (h @ ctl.weights[-1].T + ctl.biases[-1])[:, 0]
    o = _np_act(s_out, ctl.output_activation, 0.0)
    u = ctl.output_offset + ctl.output_scale * o
    n = x.shape[0]
    resid = (u - target) / ctl.output_scale
    loss = float(np.mean(resid ** 2))
    g = 2.0 * resid / n                                 # d loss / d o
    g = g * _act_grad(s_out, o, ctl.output_activation, 0.0)
    g = g[:, None]
    gw = [None] * len(ctl.weights)
    gb = [None] * len(ctl.weights)
    for i in range(len(ctl.weights) - 1, -1, -1):
        gw[i] = g.T @ hs[i]
        gb[i] = g.sum(axis=0)
        if i > 0:
            gh = g @ ctl.weights[i]
            g = gh * _act_grad(pres[i - 1], hs[i], ctl.activation, ctl.alpha)
    return loss, gw, gb


# --------------------------------------------------------------------------
# Imitation
# --------------------------------------------------------------------------
def expert_data(expert, scenarios: Sequence[Scenario], kaw: float = 0.0):
    """Inputs (n, 5) and the expert's applied commands (n,) along its runs."""
    _, outs = evaluate([expert], scenarios, return_outputs=True)
    xs, ys = [], []
    for sc, (out, _) in zip(scenarios, outs):
        x = law_inputs(out[0], sc.pack(), kaw)
        xs.append(x)
        ys.append(out[0, :x.shape[0], 4])
    return np.concatenate(xs), np.concatenate(ys)


@dataclass
class TrainLog:
    """Learning curve: one entry per epoch (imitation) or generation (ES)."""

    step: list
    loss: list
    dead: list
    seconds: list

    def record(self, step: int, loss: float, started: float, dead: float = math.nan) -> None:
        """Append one entry (``started``: the ``perf_counter`` at the start)."""
        self.step.append(step)
        self.loss.append(loss)
        self.dead.append(dead)
        self.seconds.append(time.perf_counter() - started)


def imitate(ctl: MLPController, x: np.ndarray, target: np.ndarray, epochs: int = 30,
            batch: int = 256, lr: float = 3e-3, seed: int = 0, budget: float = math.inf,
            dead_inputs: np.ndarray | None = None,
            progress: Callable[[int, float], None] | None = None):
    """Fit ``ctl`` to ``target`` commands at inputs ``x`` by Adam on minibatches.

    Returns ``(controller at the epoch of least loss, TrainLog)``; the log holds the full-data
    loss and the dead-unit fraction (over ``dead_inputs``, default ``x``) after
    each epoch (entry 0: before training). Stops early when ``budget``
    seconds have passed.
    """
    rng = np.random.default_rng(seed)
    params = [np.array(a) for a in (*ctl.weights, *ctl.biases)]
    nw = len(ctl.weights)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    dead_x = x if dead_inputs is None else dead_inputs
    start = time.perf_counter()

    def cur():
        return ctl.with_params(params[:nw], params[nw:])

    log = TrainLog([0], [loss_and_grads(ctl, x, target)[0]], [dead_unit_fraction(ctl, dead_x)],
                   [0.0])
    best = [p.copy() for p in params]
    t = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(x.shape[0])
        for lo in range(0, x.shape[0], batch):
            idx = order[lo:lo + batch]
            _, gw, gb = loss_and_grads(cur(), x[idx], target[idx])
            t += 1
            for i, g in enumerate(gw + gb):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                params[i] -= lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
        now = cur()
        log.record(epoch, loss_and_grads(now, x, target)[0], start,
                   dead_unit_fraction(now, dead_x))
        if log.loss[-1] <= min(log.loss):
            best = [p.copy() for p in params]
        if progress is not None:
            progress(epoch, log.loss[-1])
        if log.seconds[-1] > budget:
            break
    params = best
    return cur(), log


# --------------------------------------------------------------------------
# Evolution strategies
# --------------------------------------------------------------------------
def _flat(ctl: MLPController) -> np.ndarray:
    return np.concatenate([a.ravel() for a in (*ctl.weights, *ctl.biases)])


def _unflat(ctl: MLPController, theta: np.ndarray) -> MLPController:
    arrays, pos = [], 0
    for a in (*ctl.weights, *ctl.biases):
        arrays.append(theta[pos:pos + a.size].reshape(a.shape))
        pos += a.size
    nw = len(ctl.weights)
    return ctl.with_params(arrays[:nw], arrays[nw:])


def _have_cma(use_cma: bool | None) -> bool:
    """``use_cma``, or when None whether the ``cma`` package is installed."""
    if use_cma is not None:
        return use_cma
    try:
        import cma  # noqa: F401
    except ImportError:
        return False
    return True


def evolve(ctl: MLPController, scenarios: Sequence[Scenario], budget: float = 60.0,
           sigma0: float = 0.05, popsize: int | None = None, seed: int = 0,
           max_generations: int = 10_000, use_cma: bool | None = None,
           batch: int | None = None, check_every: int = 10,
           progress: Callable[[int, float], None] | None = None):
    """Minimise the mean closed-loop cost over ``scenarios`` from ``ctl``.

    CMA-ES (``cma``) when installed (or ``use_cma=True``), else a (mu, lambda)
    evolution strategy with antithetic sampling. Each generation is one
    ``rollout_batch`` call per scenario with the whole population. Runs until
    ``budget`` seconds or ``max_generations``.

    With ``batch``, each generation ranks the population on ``batch`` of the
    scenarios drawn at random, the same ones for every member (common random
    numbers: the ranking compares laws, not luck): more, cheaper generations.
    The search distribution's mean and the generation's winner are then scored
    on all scenarios every ``check_every`` generations (and at the end), and
    only that full score decides the returned controller, so it never costs
    more than ``ctl`` on ``scenarios``.

    Returns ``(best controller, TrainLog)`` with the best mean cost over all
    scenarios so far per generation (entry 0: ``ctl``).
    """
    use_cma = _have_cma(use_cma)
    start = time.perf_counter()
    theta0 = _flat(ctl)
    best_theta = theta0
    best = float(evaluate([ctl], scenarios).mean())
    log = TrainLog([0], [best], [math.nan], [time.perf_counter() - start])
    rng = np.random.default_rng(seed)
    dim = theta0.size
    lam = popsize or 4 + int(3 * math.log(dim))
    if use_cma:
        import cma

        es = cma.CMAEvolutionStrategy(theta0, sigma0, {
            "popsize": lam, "seed": seed + 1, "verbose": -9, "CMA_diagonal": dim > 200})
    else:
        mean, sigma = theta0.copy(), sigma0
        lam += lam % 2
        mu = lam // 2
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w /= w.sum()
    scenarios = list(scenarios)
    sub = batch is not None and 0 < batch < len(scenarios)
    gen = 0
    while gen < max_generations and time.perf_counter() - start < budget:
        gen += 1
        if use_cma:
            pop = np.array(es.ask())
        else:
            half = rng.standard_normal((lam // 2, dim))
            pop = mean + sigma * np.concatenate([half, -half])
        chosen = ([scenarios[j] for j in rng.choice(len(scenarios), batch, replace=False)]
                  if sub else scenarios)
        costs = evaluate([_unflat(ctl, p) for p in pop], chosen).mean(axis=1)
        if use_cma:
            es.tell(list(pop), costs.tolist())
        else:
            order = np.argsort(costs)
            mean = w @ pop[order[:mu]]
            sigma *= 0.99
        i = int(np.argmin(costs))
        if not sub and costs[i] < best:
            best, best_theta = float(costs[i]), pop[i].copy()
        last = gen == max_generations or time.perf_counter() - start >= budget
        if sub and (gen % check_every == 0 or last):
            centre = np.asarray(es.mean if use_cma else mean, dtype=float)
            cands = [centre, pop[i]]
            full = evaluate([_unflat(ctl, p) for p in cands], scenarios).mean(axis=1)
            j = int(np.argmin(full))
            if full[j] < best:
                best, best_theta = float(full[j]), cands[j].copy()
        log.record(gen, best, start)
        if progress is not None:
            progress(gen, best)
    return _unflat(ctl, best_theta), log


# --------------------------------------------------------------------------
# Hand-tuned baseline
# --------------------------------------------------------------------------
def tune_pi(scenario: Scenario, scenarios: Sequence[Scenario],
            kp_factors=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
            ki_factors=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
            alphas=(0.0, 0.1, 0.3, 1.0)):
    """Best Leaky ReLU / linear PI on ``scenarios`` by a grid over kp, ki and alpha.

    The grid multiplies the scenario's resolved kp and ki by the factors (kd,
    kaw and feedforward kept); a second, finer grid around the best point
    (kp and ki x 0.6-1.8, alpha +-0.2) refines it. Returns ``(best
    controller, its mean cost)``.
    """
    base = scenario.resolved_controller()
    if not isinstance(base, Controller):
        base = scenario.resolved_controller(LeakyReLUController())
    best, cost = _best_pi(base, scenarios, [base.kp * f for f in kp_factors],
                          [base.ki * f for f in ki_factors], alphas)
    fine = (0.6, 0.75, 0.9, 1.0, 1.15, 1.3, 1.5, 1.8)
    near = sorted({min(max(best.alpha + d, 0.0), 1.0)
                   for d in (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)})
    return _best_pi(base, scenarios, [best.kp * f for f in fine],
                    [best.ki * f for f in fine], near)


def _best_pi(base: Controller, scenarios: Sequence[Scenario], kps, kis, alphas):
    """The cheapest PI of the grid ``kps x kis x alphas`` and its mean cost."""
    grid = [LeakyReLUController(alpha=a, kp=kp, ki=ki, kd=base.kd, kaw=base.kaw,
                                feedforward=base.feedforward)
            for kp in kps for ki in kis for a in alphas]
    costs = evaluate(grid, scenarios).mean(axis=1)
    i = int(np.argmin(costs))
    return grid[i], float(costs[i])


PIDLaw = tuple  # (LeakyReLUController, network anti-windup kaw)


def pid_laws(expert: Controller, feedforward: float) -> list[PIDLaw]:
    """PID laws around ``expert`` that a network can be made to equal: ES starts.

    Each is ``(controller, kaw)``: a resolved :class:`LeakyReLUController` and
    the anti-windup gain of the network's integrator (``dz = e + kaw*(a - u)``).
    The expert itself (first), and a grid that adds what a network sees but
    the baseline PI does not use: kp x1 and x4, ki x1 to x256, a derivative
    lead ``kd/kp`` of 0, 0.03 or 0.1 s, reference feedforward 0 or
    ``feedforward`` (the holding command per m/s: the network's integrator
    starts at 0, the PI's is preloaded), braking slope ``expert.alpha`` or 1,
    and ``kaw`` 0, 1/kp or 3/kp (the clip residual is about kp times the error,
    so these keep the integrator from winding up during a long brake without
    freezing it).
    """
    base_kaw = expert.kaw / expert.ki if expert.kaw and expert.ki else 0.0
    laws = [(expert, base_kaw)]
    if expert.kp <= 0.0:  # the grid is relative to kp
        return laws
    for fp, fi, lead, ff, slope, g in itertools.product(
            (1.0, 4.0), (1.0, 16.0, 64.0, 256.0), (0.0, 0.03, 0.1), (0.0, feedforward),
            sorted({expert.slope, 1.0}), (0.0, 1.0, 3.0)):
        kp = expert.kp * fp
        laws.append((LeakyReLUController(alpha=slope, kp=kp, ki=expert.ki * fi, kd=kp * lead,
                                          kaw=0.0, feedforward=ff), g / kp))
    return laws


def refine_pid(law: PIDLaw, scenarios: Sequence[Scenario],
               build: Callable[[PIDLaw], MLPController], feedforward: float,
               budget: float = 30.0, generations: int = 100, seed: int = 0,
               progress: Callable[[int, float], None] | None = None):
    """CMA-ES over the six numbers of a PID law, from ``law``, on ``scenarios``.

    Searches kp and ki (log2 factors), the lead ``kd/kp`` (steps of 0.03 s),
    the feedforward (steps of ``feedforward``), ``kaw*kp`` and the braking
    slope, each law scored as the network ``build(law)`` (exactly that law).
    A handful of parameters: a few dozen generations suffice, where the same
    search over every weight of the network would need thousands.

    Returns ``(best law, its mean cost, TrainLog)``; the best is ``law``
    itself unless something cheaper was found.
    """
    import cma

    pid, kaw = law
    start = time.perf_counter()
    best_law, best = law, float(evaluate([build(law)], scenarios).mean())
    log = TrainLog([0], [best], [math.nan], [time.perf_counter() - start])
    if pid.kp <= 0.0:  # the search is relative to kp
        return best_law, best, log

    def make(p: np.ndarray) -> PIDLaw:
        kp = pid.kp * 2.0 ** p[0]
        lead = max(pid.kd / pid.kp + 0.03 * p[2], 0.0)
        ctl = LeakyReLUController(alpha=float(np.clip(pid.slope + 0.3 * p[5], 0.0, 1.0)),
                                  kp=kp, ki=pid.ki * 2.0 ** p[1], kd=kp * lead, kaw=0.0,
                                  feedforward=pid.feedforward + feedforward * p[3])
        return ctl, max(kaw * pid.kp + p[4], 0.0) / kp

    es = cma.CMAEvolutionStrategy(np.zeros(6), 0.5, {"popsize": 12, "seed": seed + 1,
                                                     "verbose": -9})
    for gen in range(1, generations + 1):
        if time.perf_counter() - start >= budget:
            break
        pop = es.ask()
        laws = [make(p) for p in pop]
        costs = evaluate([build(w) for w in laws], scenarios).mean(axis=1)
        es.tell(pop, costs.tolist())
        i = int(np.argmin(costs))
        if costs[i] < best:
            best, best_law = float(costs[i]), laws[i]
        log.record(gen, best, start)
        if progress is not None:
            progress(gen, best)
    return best_law, best, log


# --------------------------------------------------------------------------
# stable-baselines3
# --------------------------------------------------------------------------
def from_sb3(model, obs_scale=None, command_range: tuple[float, float] = (-1.0, 1.0),
             kaw: float = 0.0) -> MLPController:
    """A stable-baselines3 SAC, TD3 or PPO policy as an :class:`MLPController`.

    Parameters
    ----------
    model : stable_baselines3 SAC, TD3 or PPO
        With an ``MlpPolicy`` on a flat ``Box`` observation of 5 values and a
        1-D ``Box`` action; hidden layers all ReLU, LeakyReLU or Tanh.
    obs_scale : array (5,), optional
        The environment's observation is ``(e, z, d, y, r) / obs_scale``
        (default: all ones), so the network's ``input_scale`` is ``1/obs_scale``.
    command_range : (lo, hi)
        Command the environment maps the action to: action -1 -> ``lo`` and
        +1 -> ``hi``, linearly (robot ``(force_min, force_max)``, car ``(-1, 1)``).
        If the model's action space is not [-1, 1], its bounds are mapped onto
        ``command_range`` the same way.
    kaw : float
        Anti-windup of the controller's integrator. The environment's
        integrator has none (the agent owns the command), so 0 reproduces it.

    The controller starts a run as the environment starts an episode
    (``start="hold"``: the actuator holding the initial speed). With action
    and observations in the env's terms, ``ctrlsim.simulate(env.unwrapped.scenario,
    net)`` then follows the policy's episode; the network sees float64
    inputs where the env hands the policy float32 ones clipped to +-100.

    The deterministic action (``model.predict(obs, deterministic=True)``)
    mapped to the command equals the controller's command, to rounding; SAC
    and TD3 squash with tanh (``output_activation="tanh"``). PPO's action is
    clipped to the action space by ``predict``; the controller leaves that to
    the command limits, so the *applied* commands agree.
    """
    import torch.nn as nn

    name = type(model).__name__
    policy = model.policy
    space = model.action_space
    if getattr(space, "shape", None) != (1,):
        raise ParameterError("model", f"needs a 1-D action space, got {space}")
    if name == "SAC":
        layers = list(policy.actor.latent_pi) + [policy.actor.mu]
        squash = True
    elif name == "TD3":
        layers = list(policy.actor.mu)
        squash = isinstance(layers[-1], nn.Tanh)
        if squash:
            layers = layers[:-1]
    elif name == "PPO":
        layers = list(policy.mlp_extractor.policy_net) + [policy.action_net]
        squash = False
    else:
        raise ParameterError("model", f"supported: SAC, TD3, PPO; got {name}")
    extractor = getattr(policy, "features_extractor", None) or getattr(
        policy.actor, "features_extractor", None)
    if extractor is not None and type(extractor).__name__ != "FlattenExtractor":
        raise ParameterError("model", f"unsupported features extractor "
                             f"{type(extractor).__name__}")
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    acts = [m for m in layers if not isinstance(m, nn.Linear)]
    kinds = {type(a) for a in acts}
    if len(kinds) > 1 or len(acts) != len(linears) - 1:
        raise ParameterError("model", "hidden layers must be Linear + one activation type")
    activation, alpha = "relu", 0.0
    if kinds == {nn.Tanh}:
        activation = "tanh"
    elif kinds == {nn.LeakyReLU}:
        activation, alpha = "leaky", float(acts[0].negative_slope)
    elif kinds and kinds != {nn.ReLU}:
        raise ParameterError("model", f"unsupported activation {kinds.pop().__name__}")
    ws = [m.weight.detach().cpu().double().numpy() for m in linears]
    bs = [m.bias.detach().cpu().double().numpy() for m in linears]
    if ws[0].shape[1] != N_INPUTS:
        raise ParameterError("model", f"needs 5 observations, got {ws[0].shape[1]}")
    # action a in [low, high] -> command: lo + (a - low) * (hi - lo) / (high - low);
    # SAC/TD3: a = low + (t + 1) * (high - low) / 2 with t = tanh(out), so the command
    # is (lo + hi)/2 + t*(hi - lo)/2; PPO (unsquashed): a = out.
    lo, hi = (float(c) for c in command_range)
    low, high = float(space.low[0]), float(space.high[0])
    if squash:
        scale, offset = (hi - lo) / 2.0, (hi + lo) / 2.0
    else:
        scale = (hi - lo) / (high - low)
        offset = lo - low * scale
    obs = np.ones(N_INPUTS) if obs_scale is None else np.asarray(obs_scale, dtype=float)
    if obs.shape != (N_INPUTS,) or not np.all(np.isfinite(obs)) or np.any(obs == 0):
        raise ParameterError("obs_scale", "must be 5 finite non-zero numbers")
    return MLPController(weights=tuple(ws), biases=tuple(bs), activation=activation,
                         alpha=alpha, input_scale=1.0 / obs,
                         output_activation="tanh" if squash else "linear",
                         output_scale=scale, output_offset=offset, kaw=kaw,
                         start="hold")


# --------------------------------------------------------------------------
# The whole recipe (``ctrlsim train``)
# --------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    controller: MLPController
    expert: Controller
    expert_cost: float
    imitation: TrainLog | None
    es: TrainLog | None
    train_scenarios: list
    seconds: float
    pid: TrainLog | None = None


def _fit_scales(x: np.ndarray) -> np.ndarray:
    """Input scales 1/std (robust: 1/(std + 1e-3)), so every input is O(1)."""
    return 1.0 / (x.std(axis=0) + 1e-3)


def _holding_per_speed(scenarios: Sequence[Scenario]) -> float:
    """Mean over ``scenarios`` of the command that holds the initial speed, per m/s."""
    ratios = []
    for sc in scenarios:
        prof = sc.pack()
        if prof.v0 > 0.0:
            a0, _ = K.equilibrium_command(prof.v0, sc.plant.pack(), prof)
            ratios.append(a0 / prof.v0)
    return float(np.mean(ratios)) if ratios else 0.0


def _pid_start(expert: Controller, train_vs: list, hidden: Sequence[int], activation: str,
               alpha: float, scales: np.ndarray, cmd_max: float, seed: int, budget: float,
               tick: Callable[[str, float], None]):
    """The ES start: best network-as-PID-law (:func:`pid_laws`), then :func:`refine_pid`.

    Returns ``(network, refine TrainLog or None)``; no refinement when
    ``budget`` is 0 (no ``cma``).
    """
    def build(law: PIDLaw) -> MLPController:
        return replace(mlp_from_pi(law[0], hidden, activation, alpha, scales, cmd_max,
                                   seed=seed), kaw=law[1])

    ff = _holding_per_speed(train_vs)
    laws = pid_laws(expert, ff)
    costs = evaluate([build(w) for w in laws], train_vs).mean(axis=1)
    law = laws[int(np.argmin(costs))]
    tick("start", float(costs.min()))
    log = None
    if budget > 0.0:
        law, _, log = refine_pid(law, train_vs, build, ff, seed=seed, budget=budget,
                                 progress=lambda g, c: tick("pid", c))
    return build(law), log


def train(scenario: Scenario, hidden: Sequence[int] = (8,), activation: str = "leaky",
          alpha: float = 0.1, method: str = "es", seed: int = 0, budget: float = 240.0,
          n_train: int = 16, imitation_share: float = 0.25, use_cma: bool | None = None,
          sigma0: float = 0.05, batch: int | None = None, pid_share: float = 0.15,
          progress: Callable[[str, float, float], None] | None = None) -> TrainResult:
    """Train an MLP controller for ``scenario`` within ``budget`` seconds.

    1. ``n_train`` randomised variants (:func:`variants`, RK4 with one substep).
    2. The expert: the best Leaky ReLU / linear PI on them (:func:`tune_pi`),
       the baseline the result is compared with.
    3. The start. ``method="es"`` with ``relu`` or ``leaky`` units: networks
       that exactly equal a PID law (:func:`mlp_from_pi`). The cheapest on the
       variants of the expert and a grid around it (:func:`pid_laws`: adds the
       derivative lead, reference feedforward and integrator anti-windup the
       PI does not use), refined by CMA-ES over the law's six numbers
       (:func:`refine_pid`, ``pid_share`` of the budget; needs ``cma``). The
       network equal to the expert costs more than the expert when a run starts
       at speed (its integrator starts at 0, the PI's at the holding command);
       the feedforward and faster integrators in the grid make up for that.
       Otherwise (``tanh`` cannot represent the PI's kink, or
       ``method="imitation"``): imitation of the expert along its runs on the
       variants and on copies with force disturbances, for
       ``imitation_share`` of the budget (all of it for ``method="imitation"``).
    4. ``method="es"``: :func:`evolve` from there for the rest of the budget
       (``sigma0``, ``batch`` as there). It is elitist on the variants, so the
       result never costs more on them than the start.

    ``progress(stage, seconds_so_far, value)`` is called after each epoch or
    generation.
    """
    if method not in ("imitation", "es"):
        raise ParameterError("method", f"must be imitation or es, got {method!r}")
    start = time.perf_counter()
    tick = (lambda stage, v: progress(stage, time.perf_counter() - start, v)) \
        if progress else (lambda stage, v: None)
    train_vs = variants(scenario, n_train, seed=seed, substeps=1)
    expert, expert_cost = tune_pi(scenario, train_vs)
    tick("tune", expert_cost)
    perturbed = variants(scenario, n_train, seed=seed + 1, disturb=True, substeps=1)
    x, y = expert_data(expert, train_vs + perturbed)
    cmd_max = _command_max(scenario)
    imlog = pidlog = None
    if method == "es" and activation in ("relu", "leaky") and min(hidden) >= 2 \
            and (activation == "relu" or alpha < 1.0):
        net, pidlog = _pid_start(
            expert, train_vs, hidden, activation, alpha, _fit_scales(x), cmd_max, seed,
            pid_share * (budget - (time.perf_counter() - start)) if _have_cma(use_cma) else 0.0,
            tick)
    else:
        net = init_mlp(hidden, activation, alpha, input_scale=_fit_scales(x),
                       output_scale=cmd_max, seed=seed)
        share = 1.0 if method == "imitation" else imitation_share
        left = budget - (time.perf_counter() - start)
        net, imlog = imitate(net, x, y, epochs=10_000, seed=seed,
                             budget=max(share * left, 1.0),
                             progress=lambda ep, loss: tick("imitation", loss))
    eslog = None
    if method == "es":
        left = budget - (time.perf_counter() - start)
        net, eslog = evolve(net, train_vs, budget=max(left, 0.0), sigma0=sigma0, seed=seed,
                            use_cma=use_cma, batch=batch,
                            progress=lambda g, c: tick("es", c))
    return TrainResult(net, expert, expert_cost, imlog, eslog, train_vs,
                       time.perf_counter() - start, pidlog)


def dead_relu_experiment(scenario: Scenario, hidden: Sequence[int] = (16, 16),
                         alpha: float = 0.1, bias_init: float = -6.0,
                         bias_spread: float = 1.0, epochs: int = 40, seed: int = 0,
                         n_train: int = 4) -> dict[str, tuple[MLPController, TrainLog, float]]:
    """ReLU vs Leaky ReLU hidden units, both initialised with negative biases.

    Same data (the scenario's own PI along :func:`variants` of it, with and
    without disturbances), same initial weights, same minibatches: only the
    hidden activation differs. Returns, per activation, the trained
    controller, its log (loss and dead-unit fraction per epoch) and its mean
    closed-loop cost on the variants.
    """
    train_vs = variants(scenario, n_train, seed=seed, substeps=1)
    perturbed = variants(scenario, n_train, seed=seed + 1, disturb=True, substeps=1)
    expert = scenario.resolved_controller()
    x, y = expert_data(expert, train_vs + perturbed)
    out = {}
    for act in ("relu", "leaky"):
        net = init_mlp(hidden, act, alpha, input_scale=_fit_scales(x),
                       output_scale=_command_max(scenario), seed=seed,
                       bias_init=bias_init, bias_spread=bias_spread)
        net, log = imitate(net, x, y, epochs=epochs, seed=seed)
        cost = float(evaluate([net], train_vs).mean())
        out[act] = (net, log, cost)
    return out

"""Learned controllers: a multilayer perceptron evaluated inside the compiled kernel.

:class:`MLPController` maps the law inputs ``(e, z, d, y, r)`` (error, integrator
state, error derivative, measured speed, reference) to the command ``u``, which is
then clipped like any command. Its parameters travel in the controller vector
(:data:`ctrlsim.kernels.MLP_LAYOUT`), so every network runs in the same cached
kernel as the built-in controllers and a population of networks is one
``rollout_batch`` call. Files are ``.npz`` archives (``docs/learning.md``), read
with ``allow_pickle=False`` and checked array by array.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import ClassVar

import numpy as np

from . import kernels as K
from .validation import ParameterError, ParameterTypeError, finite_float, safe_text, text

__all__ = ["MLPController", "load_mlp", "save_mlp", "HIDDEN_ACTIVATIONS",
           "OUTPUT_ACTIVATIONS", "MLPFileError"]

HIDDEN_ACTIVATIONS = {"relu": K.ACT_RELU, "leaky": K.ACT_LEAKY, "tanh": K.ACT_TANH}
OUTPUT_ACTIVATIONS = {"linear": K.ACT_LINEAR, "tanh": K.ACT_TANH}
STARTS = ("output", "hold")
N_INPUTS = 5
INPUT_NAMES = ("e", "z", "d", "y", "r")
# Bounds on what a file may ask for (memory and per-step work stay small).
MAX_HIDDEN_LAYERS = 8
MAX_WIDTH = 1024
MAX_PARAMS = 1_000_000
MAX_FILE_BYTES = 64_000_000


class MLPFileError(ParameterError):
    """A weights file that cannot be used: names the file and the array."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        super().__init__(key, reason, message=f"{file}: {key}: {reason}")


def _np_act(x: np.ndarray, name: str, alpha: float) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "leaky":
        return np.where(x >= 0.0, x, alpha * x)
    if name == "tanh":
        return np.tanh(x)
    return x


@dataclass(frozen=True, eq=False, kw_only=True)
class MLPController:
    """A multilayer perceptron control law ``u = f(e, z, d, y, r)``.

    Parameters
    ----------
    weights : sequence of ndarray
        ``W0 (h1, 5), W1 (h2, h1), ..., WL (1, hL)``; ``len(weights) - 1`` hidden layers.
    biases : sequence of ndarray
        ``b0 (h1,), ..., bL (1,)``.
    activation : {"relu", "leaky", "tanh"}
        Hidden-layer activation.
    alpha : float
        Negative-side slope of ``leaky`` (ignored otherwise).
    input_scale : array (5,)
        The inputs ``(e, z, d, y, r)`` are multiplied by this first.
    output_activation : {"linear", "tanh"}
    output_scale, output_offset : float
        ``u = output_offset + output_scale * output_activation(last layer)``.
    kaw : float
        Anti-windup of the integrator ``dz = e + kaw*(a - u)``; z starts at 0.
    start : {"output", "hold"}
        How a run starts (the plant cruising at the initial speed either way):
        ``"output"``, the actuator at the network's own command at zero error
        (the rule for every controller, ``docs/model.md``); ``"hold"``, the
        actuator at the force that holds the initial speed, as the gymnasium
        env starts an episode (what :func:`ctrlsim.learn.from_sb3` sets).
    source : str
        File the network was loaded from ("" if built in memory); used in ``spec``.
    """

    weights: tuple
    biases: tuple
    activation: str = "relu"
    alpha: float = 0.0
    input_scale: np.ndarray = field(default_factory=lambda: np.ones(N_INPUTS))
    output_activation: str = "linear"
    output_scale: float = 1.0
    output_offset: float = 0.0
    kaw: float = 0.0
    start: str = "output"
    source: str = ""

    kind: ClassVar[str] = "mlp"

    def __post_init__(self) -> None:
        setv = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise ParameterError("activation", f"unknown activation {self.activation!r} "
                                 f"(expected one of {', '.join(HIDDEN_ACTIVATIONS)})")
        if not isinstance(self.start, str) or self.start not in STARTS:
            raise ParameterError("start", f"unknown start {self.start!r} (expected output "
                                 "or hold)")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ParameterError("output_activation", "unknown output activation "
                                 f"{self.output_activation!r} (expected linear or tanh)")
        for name in ("alpha", "output_scale", "output_offset", "kaw"):
            setv(name, finite_float(name, getattr(self, name)))
        if self.kaw < 0:
            raise ParameterError("kaw", f"must be >= 0, got {self.kaw}")
        if self.activation == "leaky" and not 0.0 <= self.alpha <= 1.0:
            raise ParameterError("alpha", f"must be in [0, 1], got {self.alpha}")
        text("source", self.source, 4096)
        ws, bs = list(self.weights), list(self.biases)
        if not ws or len(ws) != len(bs):
            raise ParameterError("weights", "need as many weight matrices as bias vectors "
                                 "(at least one)")
        if len(ws) - 1 > MAX_HIDDEN_LAYERS:
            raise ParameterError("layers", f"at most {MAX_HIDDEN_LAYERS} hidden layers")
        n_in = N_INPUTS
        for i, (w, b) in enumerate(zip(ws, bs)):
            w, b = _float_array(f"W{i}", w), _float_array(f"b{i}", b)
            n_out = 1 if i == len(ws) - 1 else (w.shape[0] if w.ndim == 2 else -1)
            if w.ndim != 2 or w.shape != (n_out, n_in) or not 1 <= n_out <= MAX_WIDTH:
                raise ParameterError(f"W{i}", f"must have shape ({'h' if n_out != 1 else 1}, "
                                     f"{n_in}) with 1 <= h <= {MAX_WIDTH}, got {w.shape}")
            if b.shape != (n_out,):
                raise ParameterError(f"b{i}", f"must have shape ({n_out},), got {b.shape}")
            ws[i], bs[i] = w, b
            n_in = n_out
        if sum(w.size + b.size for w, b in zip(ws, bs)) > MAX_PARAMS:
            raise ParameterError("weights", f"more than {MAX_PARAMS} parameters")
        scale = _float_array("input_scale", self.input_scale)
        if scale.shape != (N_INPUTS,):
            raise ParameterError("input_scale", f"must have shape (5,), got {scale.shape}")
        setv("weights", tuple(ws))
        setv("biases", tuple(bs))
        setv("input_scale", scale)

    # -- controller interface ------------------------------------------------
    @property
    def hidden(self) -> tuple[int, ...]:
        """Hidden layer widths."""
        return tuple(w.shape[0] for w in self.weights[:-1])

    @property
    def spec(self) -> str:
        if self.source:
            return f"mlp:{self.source}"
        return f"mlp[{self.activation},{'x'.join(map(str, self.hidden)) or 'linear'}]"

    def resolve(self, base, preset: str) -> MLPController:
        return self

    def kernels(self):
        """The built-in ``(rollout, rollout_batch)``: no per-network compilation."""
        return K.rollout, K.rollout_batch

    def pack(self) -> np.ndarray:
        """The controller vector (:data:`ctrlsim.kernels.MLP_LAYOUT`, layers, scratch)."""
        width = max((N_INPUTS,) + self.hidden)
        n_layers = sum(2 + w.size + b.size for w, b in zip(self.weights, self.biases))
        scratch = K.N_MLP_HEADER + n_layers
        cp = np.zeros(scratch + 2 * width)
        head = dict(law=K.LAW_MLP, integrate=1.0, aw_gain=self.kaw, aw_slope=1.0,
                    n_weight_layers=len(self.weights),
                    activation=HIDDEN_ACTIVATIONS[self.activation], alpha=self.alpha,
                    out_activation=OUTPUT_ACTIVATIONS[self.output_activation],
                    out_scale=self.output_scale, out_offset=self.output_offset,
                    scratch=scratch, width=width, start_hold=float(self.start == "hold"))
        for i, name in enumerate(K.MLP_LAYOUT[:-N_INPUTS]):
            cp[i] = head[name]
        cp[K.N_MLP_HEADER - N_INPUTS:K.N_MLP_HEADER] = self.input_scale
        pos = K.N_MLP_HEADER
        for w, b in zip(self.weights, self.biases):
            cp[pos], cp[pos + 1] = w.shape
            cp[pos + 2:pos + 2 + w.size] = w.ravel()
            cp[pos + 2 + w.size:pos + 2 + w.size + b.size] = b
            pos += 2 + w.size + b.size
        return cp

    # -- numpy reference -----------------------------------------------------
    def lipschitz(self, control_period: float) -> float:
        """Bound on the command change per unit of measured-speed error, over one sample.

        Same notion as :func:`ctrlsim.analysis.lipschitz` for the built-ins:
        measurement errors ``|n| <= eps`` on samples k-1 and k, the state before
        them fixed. The network is at most ``L_net = |output_scale| * prod_l
        ||W_l||_2`` Lipschitz in its scaled inputs (relu, leaky with alpha <= 1,
        tanh and the output tanh are all 1-Lipschitz). The errors move the
        scaled inputs by at most ``eps * sqrt(s_e^2 + s_y^2 + (2 s_d/Ts)^2 +
        (s_z Ts (1 + kaw L1))^2)``: e and y by n_k, d by (n_{k-1} - n_k)/Ts,
        and z through e_{k-1} and the anti-windup term, whose clip residual
        ``a - u`` moves at most as much as u_{k-1} (``L1 = L_net * ||(s_e, s_y,
        s_d/Ts)||``).
        """
        ts = finite_float("control_period", control_period)
        if ts <= 0:
            raise ParameterError("control_period", f"must be positive, got {ts}")
        l_net = abs(self.output_scale)
        for w in self.weights:
            l_net *= float(np.linalg.norm(w, 2))
        s_e, s_z, s_d, s_y, _ = (abs(float(x)) for x in self.input_scale)
        l1 = l_net * math.sqrt(s_e ** 2 + s_y ** 2 + (s_d / ts) ** 2)
        dz = s_z * ts * (1.0 + self.kaw * l1)
        return l_net * math.sqrt(s_e ** 2 + s_y ** 2 + (2.0 * s_d / ts) ** 2 + dz ** 2)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Command ``u`` (before clipping) for inputs of shape (..., 5), in numpy."""
        h = np.asarray(inputs, dtype=float) * self.input_scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = _np_act(h @ w.T + b, self.activation, self.alpha)
        out = h @ self.weights[-1].T + self.biases[-1]
        return self.output_offset + self.output_scale * _np_act(
            out[..., 0], self.output_activation, 0.0)

    def preactivations(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Pre-activations of each hidden layer for inputs (n, 5): list of (n, h)."""
        h = np.atleast_2d(np.asarray(inputs, dtype=float)) * self.input_scale
        pre = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            s = h @ w.T + b
            pre.append(s)
            h = _np_act(s, self.activation, self.alpha)
        return pre

    def with_params(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
        return replace(self, weights=tuple(weights), biases=tuple(biases), source="")

    def save(self, path: str | PathLike) -> None:
        save_mlp(self, path)


def _float_array(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise ParameterTypeError(name, "must be an array of numbers") from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ParameterTypeError(name, f"must be an array of floats, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=float)  # a copy: the controller owns its arrays
    if not np.all(np.isfinite(arr)):
        raise ParameterError(name, "contains NaN or inf")
    return arr


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------
def save_mlp(ctl: MLPController, path) -> None:
    """Write ``ctl`` as an ``.npz`` archive (layout in ``docs/learning.md``).

    ``path`` is a path or a binary file object.
    """
    arrays = {"layers": np.array(len(ctl.weights) - 1, dtype=np.int64),
              "activation": np.array(ctl.activation), "alpha": np.array(ctl.alpha),
              "input_scale": ctl.input_scale,
              "output_activation": np.array(ctl.output_activation),
              "output_scale": np.array(ctl.output_scale),
              "output_offset": np.array(ctl.output_offset), "kaw": np.array(ctl.kaw)}
    if ctl.start != "output":  # only then: earlier versions read the other files as before
        arrays["start"] = np.array(ctl.start)
    for i, (w, b) in enumerate(zip(ctl.weights, ctl.biases)):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


_SCALARS = {"alpha": None, "output_scale": None, "output_offset": 0.0, "kaw": 0.0}
_STRINGS = {"activation": None, "output_activation": "linear", "start": "output"}


def load_mlp(path: str | PathLike, label: str | None = None) -> MLPController:
    """Read an :class:`MLPController` from an ``.npz`` file.

    Parameters
    ----------
    path : str or Path
    label : str, optional
        How the file is named in errors and in the controller's ``spec``
        (default: ``path``).

    Raises
    ------
    MLPFileError
        (a :class:`~ctrlsim.validation.ParameterError`) naming the file and the
        array: unreadable file, missing or unknown array, wrong shape or dtype,
        NaN/inf, unknown activation, pickled object array (never unpickled).
    """
    label = safe_text(str(path) if label is None else label)
    fail = lambda key, reason: MLPFileError(label, key, reason)  # noqa: E731
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            "not an .npz archive" if isinstance(exc, zipfile.BadZipFile) else str(exc)
        raise fail("(file)", f"cannot read: {reason}") from None
    if total > MAX_FILE_BYTES:
        raise fail("(file)", f"its arrays hold more than {MAX_FILE_BYTES // 10**6} MB")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise fail("(file)", f"cannot read: {exc}") from None
    with npz:
        arrays = {}
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError as exc:
                reason = ("is a pickled object array (not loaded)" if "pickle" in str(exc)
                          else f"cannot read: {exc}")
                raise fail(name, reason) from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise fail(name, f"cannot read: {exc}") from None
            if not isinstance(arrays[name], np.ndarray):  # numpy hands back raw bytes
                raise fail(name, "cannot read: not a .npy array")
    return _from_arrays(arrays, fail, label)


def _from_arrays(arrays: dict, fail, label: str) -> MLPController:
    def get(name):
        if name not in arrays:
            raise fail(name, "missing")
        return arrays[name]

    def scalar(name, default):
        if name not in arrays and default is not None:
            return default
        arr = get(name)
        if arr.shape != () or arr.dtype.kind not in "fiu":
            raise fail(name, f"must be a number (0-d float array), got dtype {arr.dtype} "
                       f"shape {arr.shape}")
        value = float(arr)
        if not math.isfinite(value):
            raise fail(name, "is NaN or inf")
        return value

    def string(name, default, allowed, what="activation"):
        if name not in arrays and default is not None:
            return default
        arr = get(name)
        if arr.shape != () or arr.dtype.kind != "U":
            raise fail(name, f"must be a string, got dtype {arr.dtype} shape {arr.shape}")
        value = str(arr)
        if value not in allowed:
            raise fail(name, f"unknown {what} {safe_text(value[:40])!r} "
                       f"(expected one of {', '.join(allowed)})")
        return value

    layers_arr = get("layers")
    if layers_arr.shape != () or layers_arr.dtype.kind not in "iu":
        raise fail("layers", f"must be an integer, got dtype {layers_arr.dtype} "
                   f"shape {layers_arr.shape}")
    n_hidden = int(layers_arr)
    if not 0 <= n_hidden <= MAX_HIDDEN_LAYERS:
        raise fail("layers", f"must be from 0 to {MAX_HIDDEN_LAYERS}, got {n_hidden}")
    known = {"layers", "input_scale", *_SCALARS, *_STRINGS}
    known |= {f"{p}{i}" for p in "Wb" for i in range(n_hidden + 1)}
    for name in arrays:
        if name not in known:
            raise fail(safe_text(name[:60]), "unknown array (expected layers, W0..W"
                       f"{n_hidden}, b0..b{n_hidden}, activation, alpha, input_scale, "
                       "output_activation, output_scale, output_offset, kaw, start)")
    activation = string("activation", None, HIDDEN_ACTIVATIONS)
    out_act = string("output_activation", "linear", OUTPUT_ACTIVATIONS)
    start = string("start", "output", STARTS, what="start")
    alpha = scalar("alpha", None) if activation == "leaky" else scalar("alpha", 0.0)
    values = {k: scalar(k, d) for k, d in _SCALARS.items() if k != "alpha"}
    n_in = N_INPUTS
    weights, biases = [], []
    for i in range(n_hidden + 1):
        w, b = get(f"W{i}"), get(f"b{i}")
        for name, arr in ((f"W{i}", w), (f"b{i}", b)):
            if arr.dtype.kind != "f":
                raise fail(name, f"must be a float array, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)):
                raise fail(name, "contains NaN or inf")
        last = i == n_hidden
        if w.ndim != 2 or w.shape[1] != n_in or (last and w.shape[0] != 1) \
                or not 1 <= w.shape[0] <= MAX_WIDTH:
            want = f"(1, {n_in})" if last else f"(h, {n_in}) with 1 <= h <= {MAX_WIDTH}"
            raise fail(f"W{i}", f"must have shape {want}, got {w.shape}")
        if b.shape != (w.shape[0],):
            raise fail(f"b{i}", f"must have shape ({w.shape[0]},), got {b.shape}")
        weights.append(w)
        biases.append(b)
        n_in = w.shape[0]
    scale = get("input_scale")
    if scale.dtype.kind != "f" or scale.shape != (N_INPUTS,):
        raise fail("input_scale", f"must be a float array of shape (5,), got dtype "
                   f"{scale.dtype} shape {scale.shape}")
    if not np.all(np.isfinite(scale)):
        raise fail("input_scale", "contains NaN or inf")
    try:
        return MLPController(weights=tuple(weights), biases=tuple(biases),
                             activation=activation, alpha=alpha, input_scale=scale,
                             output_activation=out_act, start=start, source=label,
                             **values)
    except ParameterError as exc:
        raise fail(exc.key, exc.reason) from None


def mlp_from_spec(path: str) -> MLPController:
    """``mlp:PATH`` spec: the file at ``PATH`` (relative to the working directory)."""
    if not path.strip():
        raise ParameterError("controller", "mlp needs a weights file: mlp:FILE.npz")
    return load_mlp(Path(path.strip()), label=path.strip())

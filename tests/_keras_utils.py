"""Helpers for the Keras callback tests: tiny seeded models and data, and callbacks that set or record weights.

Everything here is seeded through explicit initializer seeds and ``numpy.random.default_rng``: no global RNG.
The backend is whatever ``KERAS_BACKEND`` says (tests/conftest.py defaults it to tensorflow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

BACKEND = keras.backend.backend()


def make_data(n: int = 64, d_in: int = 16, d_out: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small float32 regression problem ``y = tanh(x @ w) + noise``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32) / math.sqrt(d_in)
    y = (np.tanh(x @ w) + 0.05 * rng.standard_normal((n, d_out))).astype(np.float32)
    return x, y


def _init(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=seed)


def tiny_mlp(d_in: int = 16, hidden: Sequence[int] = (48, 32), d_out: int = 4, seed: int = 0) -> keras.Model:
    """A seeded MLP whose dense layers all have at least 8 eigenvalues except the last (``d_out``)."""
    layers: list[keras.layers.Layer] = [keras.Input((d_in,))]
    for i, width in enumerate(hidden):
        layers.append(
            keras.layers.Dense(
                width, activation="tanh", kernel_initializer=_init(seed + i), name=f"hidden{i}"
            )
        )
    layers.append(keras.layers.Dense(d_out, kernel_initializer=_init(seed + 100), name="head"))
    return keras.Sequential(layers, name="tiny_mlp")


def single_dense(d_in: int = 120, d_out: int = 60, seed: int = 0) -> keras.Model:
    """One ``Dense(d_in -> d_out)`` layer without bias: the whole summary is that one layer's metrics."""
    return keras.Sequential(
        [
            keras.Input((d_in,)),
            keras.layers.Dense(d_out, use_bias=False, kernel_initializer=_init(seed), name="fc"),
        ],
        name="single_dense",
    )


def compile_model(model: keras.Model, lr: float = 0.05, optimizer: str = "sgd") -> keras.Model:
    opt = (
        keras.optimizers.SGD(learning_rate=lr)
        if optimizer == "sgd"
        else keras.optimizers.Adam(learning_rate=lr)
    )
    model.compile(optimizer=opt, loss="mse")
    return model


def heavy_tailed(shape: tuple[int, int], df: float, seed: int) -> np.ndarray:
    """A matrix of Student-t entries: the smaller ``df``, the heavier the ESD tail and the smaller its alpha."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(df, size=shape) / math.sqrt(shape[0])).astype(np.float32)


class SetKernel(keras.callbacks.Callback):
    """At the end of epoch ``e``, overwrite ``layer.kernel`` with ``kernels[e]`` (if given).

    Put it before the callback under test: the weights analyzed at epoch ``e`` are then exactly ``kernels[e]``,
    whatever training did, so each test controls the metric trajectory.
    """

    def __init__(self, layer_name: str, kernels: Sequence[np.ndarray | None]) -> None:
        super().__init__()
        self.layer_name = layer_name
        self.kernels = list(kernels)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < len(self.kernels) and self.kernels[epoch] is not None:
            self.model.get_layer(self.layer_name).kernel.assign(self.kernels[epoch])


class RecordWeights(keras.callbacks.Callback):
    """Keeps ``model.get_weights()`` at the end of every epoch (put it after the callback under test)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []
        self.logs: list[dict] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.weights, self.logs = [], []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.weights.append([np.array(w, copy=True) for w in self.model.get_weights()])
        self.logs.append(dict(logs or {}))


class OnEpochEnd(keras.callbacks.Callback):
    """Calls ``fn(model, epoch, logs)`` at each epoch end (a typed LambdaCallback)."""

    def __init__(self, fn: Callable[[keras.Model, int, dict], None]) -> None:
        super().__init__()
        self.fn = fn

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.fn(self.model, epoch, logs if logs is not None else {})


def weights_equal(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b, strict=True)
    )


def is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)

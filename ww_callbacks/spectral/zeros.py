"""What "numerically zero" means for an ESD: the one definition every non-weightwatcher consumer uses.

Eigenvalues are computed in float64 from ``WᵀW`` (or an SVD for rank-deficient slices, `esd.slice_eigenvalues`).
The Gram route keeps each eigenvalue to about ``n·ε·λmax`` absolute, so the eigenvalues of a rank-deficient
layer that should be exactly zero come out as rounding noise: tiny positive numbers, or exactly 0 where a
negative one was clipped, and how many of each depends on the BLAS kernel (OpenBLAS picks different ones on
AVX-512 and AVX2 CPUs). An eigenvalue is therefore **numerically zero** when

    λ ≤ max(N, M) · ε · λmax        (ε = float64 machine epsilon, λmax = the largest eigenvalue of the ESD)

the eigenvalue analogue of `numpy.linalg.matrix_rank`'s default tolerance. Measured on rank-deficient float64
and float32 layers from 30x20 to 2000x1000, the noise of either route stays below 5% of this bound (float32
weights' own rounding: about 1e-16·λmax), while a real eigenvalue above it is resolved, so counts made with it
are the same on every kernel.

Used by everything that is not a weightwatcher column: the "≈ 0 left out" of `ww_callbacks.plots.plot_esd`
and the ESD histograms of `ww_callbacks.sinks.wandb.WandbSink`.

weightwatcher's own thresholds stay where its columns need them (parity with 0.7.7, see the algorithms notes):
``rank_loss`` and ``matrix_rank`` count singular values ``σ > σmax·N·ε`` and ``weak_rank_loss`` counts
``λ < 1e-6`` (`metrics.py`); the power-law fit ignores ``λ ≤ 1e-5`` (`powerlaw.EVALS_THRESH`); ``entropy`` adds
``1e-10``. The SVD fallback threshold in `esd.py` (``RANK_DEFICIENT_MARGIN·n·ε·λmax`` per slice) chooses how
eigenvalues are computed, not which of them are zero.
"""

from __future__ import annotations

import numpy as np

#: float64 machine epsilon: the eigenvalues are computed in float64 whatever the weights' dtype.
EPS = float(np.finfo(np.float64).eps)


def zero_tolerance(lambda_max: float, N: int, M: int) -> float:
    """Eigenvalues at or below this are numerically zero: ``max(N, M) · ε · lambda_max``.

    Example:
        >>> zero_tolerance(1.0, N=30, M=20) == 30 * EPS
        True
    """
    return max(int(N), int(M)) * EPS * max(float(lambda_max), 0.0)


def split_zeros(evals: np.ndarray | None, N: int, M: int) -> tuple[np.ndarray, int]:
    """The eigenvalues of an ESD that are not numerically zero, and how many are.

    Non-finite values are dropped and not counted; exact zeros (clipped rounding noise) count as zero like tiny
    positive ones, so the count does not depend on the BLAS kernel.

    Args:
        evals: the eigenvalues (any order), e.g. ``LayerResult.evals``; None for none.
        N, M: the sides of the layer's matrices (``LayerResult.N``, ``LayerResult.M``).

    Returns:
        ``(nonzero, num_zero)``: the eigenvalues above `zero_tolerance`, in their input order, and the count of the
        others.

    Example:
        >>> split_zeros(np.array([0.0, 1e-30, 2e-16, 0.5, 4.0]), N=3, M=2)
        (array([0.5, 4. ]), 3)
    """
    if evals is None:
        return np.empty(0), 0
    arr = np.asarray(evals, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return arr, 0
    keep = arr > zero_tolerance(float(arr.max()), N, M)
    return arr[keep], int(arr.size - np.count_nonzero(keep))

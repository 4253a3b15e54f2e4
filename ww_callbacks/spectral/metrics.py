"""Per-layer numbers computed from the eigenvalues: ESD statistics, norm metrics and the random-ESD distance."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import rel_entr

#: Machine epsilon of float64, used by the rank tests.
EPS = float(np.finfo(np.float64).eps)
#: Eigenvalues below this count as weak rank loss.
WEAK_RANK_TOL = 1e-6
#: Added to every probability of the entropy (weightwatcher's CPU value).
ENTROPY_EPSILON = 1e-10


def esd_statistics(slice_evals: np.ndarray, N: int) -> dict[str, float]:
    """ESD columns from per-slice eigenvalues ``(rf, k)``: sv_max, sv_min, rank_loss, weak_rank_loss, lambda_max.

    ``sv_min`` is the largest of the per-slice smallest singular values (weightwatcher's convention).

    Example:
        >>> esd_statistics(np.array([[1.0, 4.0]]), N=2)["sv_max"]
        2.0
    """
    sv = np.sqrt(slice_evals)
    sv_max_slice = sv.max(axis=1)
    rank_loss = int((sv.shape[1] - np.count_nonzero(sv > (sv_max_slice * N * EPS)[:, None], axis=1)).sum())
    return {
        "sv_max": float(sv_max_slice.max()),
        "sv_min": float(sv.min(axis=1).max()),
        "rank_loss": rank_loss,
        "weak_rank_loss": int(np.count_nonzero(slice_evals < WEAK_RANK_TOL)),
        "lambda_max": float(slice_evals.max()),
    }


def norm_metrics(evals: np.ndarray, alpha: float, N: int) -> dict[str, float]:
    """Norm-based metrics of a pooled, sorted ESD (``alpha`` may be NaN when the fit failed).

    Example:
        >>> m = norm_metrics(np.array([1.0, 10.0]), alpha=2.0, N=2)
        >>> m["log_spectral_norm"], m["stable_rank"]
        (1.0, 1.1)
    """
    evals = np.asarray(evals)
    total = float(evals.sum())
    lam_max = float(evals.max())
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_spectral = math.log10(lam_max) if lam_max > 0 else -math.inf
        sv = np.sqrt(evals)
        rank = int(np.count_nonzero(sv > sv.max() * N * EPS))
        p = evals / total + ENTROPY_EPSILON
        entropy = float(-(p * np.log(p)).sum() / math.log(rank + ENTROPY_EPSILON))
        alpha_norm = float((evals**alpha).sum()) if math.isfinite(alpha) else math.nan
    return {
        "norm": total,
        "log_norm": math.log10(total) if total > 0 else -math.inf,
        "spectral_norm": lam_max,
        "log_spectral_norm": log_spectral,
        "alpha_weighted": alpha * log_spectral,
        "log_alpha_norm": math.log10(alpha_norm)
        if alpha_norm > 0
        else (math.nan if math.isnan(alpha_norm) else -math.inf),
        "stable_rank": total / lam_max,
        "matrix_rank": rank,
        "entropy": entropy,
    }


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, in [0, sqrt(ln 2)]) between two vectors read as distributions.

    ``rand_distance`` pairs the i-th smallest eigenvalue of the layer with the i-th smallest of its shuffled copy.

    Example:
        >>> jensen_shannon_distance(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
        0.0
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    pn, qn, mn = p / p.sum(), q / q.sum(), m / m.sum()
    divergence = float(rel_entr(pn, mn).sum() + rel_entr(qn, mn).sum()) / 2
    return math.sqrt(max(divergence, 0.0))

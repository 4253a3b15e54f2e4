"""Power-law fit of an ESD tail, as weightwatcher 0.7.7's in-house fit (``pl_package='ww'``) does it.

For every candidate ``xmin`` (every eigenvalue but the largest, duplicates included) the exponent is the continuous
MLE ``alpha = 1 + n / sum(log(x / xmin))`` and the candidate's quality is the one-sided Kolmogorov-Smirnov distance
``D`` between the tail and the fitted power law; the first candidate with the smallest ``D`` wins. Spectra with fewer
than 20 points take the small-sample path (bias-corrected alpha, tails of at least 8 points).

The naive scan is O(n^2). We get the same argmin much faster by bounding ``D`` for every candidate from a strided
sample of the tail (a lower bound from the sampled points, an upper bound from the monotonicity of both CDFs between
samples), dropping candidates whose lower bound exceeds the best upper bound, refining the stride for the rest, and
evaluating ``D`` exactly only for the few candidates left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Eigenvalues at or below this absolute threshold are ignored by the fit (weightwatcher's EVALS_THRESH).
EVALS_THRESH = 1e-5
#: Below this many points the small-sample path runs.
SMALL_N = 20
#: Smallest tail the small-sample path considers.
SMALL_N_MIN_TAIL = 8
#: Spectra up to this size are scanned exactly without bounds (the bounding pass would not pay off).
_EXACT_SCAN_MAX = 512
#: Number of matrix entries evaluated per block (bounds peak memory of the scan).
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class PowerLawFit:
    """Result of `fit_power_law`. On failure ``alpha`` and friends are NaN and ``reason`` says why.

    Example:
        >>> fit = fit_power_law(np.array([]))
        >>> fit.ok, fit.reason
        (False, 'fewer than 2 eigenvalues above 1e-05')
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def _failed(reason: str) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, nan, -1, reason)


def _ks_rows(x: np.ndarray, alphas: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact one-sided KS distance for the candidates ``idx`` (sorted), in blocks of bounded size."""
    n_all = x.size
    out = np.empty(idx.size)
    pos = 0
    while pos < idx.size:
        first = int(idx[pos])
        width = n_all - first
        rows = max(1, min(idx.size - pos, _BLOCK_ELEMENTS // max(width, 1)))
        block = idx[pos : pos + rows]
        tail = x[first:]
        k = np.arange(width, dtype=np.float64)[None, :] - (block - first)[:, None]
        n = (n_all - block).astype(np.float64)[:, None]
        # |1 - (tail/xmin)^(1-alpha) - k/n|, evaluated in place (the hot loop of small fits)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            err = np.divide(tail[None, :], x[block][:, None])
            np.power(err, 1.0 - alphas[block][:, None], out=err)
            np.subtract(1.0, err, out=err)
            err -= k / n
            np.abs(err, out=err)
        err[k < 0] = 0.0  # entries left of each candidate's xmin are not part of its tail
        out[pos : pos + rows] = err.max(axis=1)
        pos += rows
    return out


def _ks_bounds(
    x: np.ndarray, alphas: np.ndarray, idx: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the KS distance of each candidate from every ``stride``-th tail point."""
    n_all = x.size
    lower = np.empty(idx.size)
    upper = np.empty(idx.size)
    max_cols = (n_all - int(idx[0]) - 1) // stride + 2
    rows_per_block = max(1, _BLOCK_ELEMENTS // max_cols)
    for start in range(0, idx.size, rows_per_block):
        block = idx[start : start + rows_per_block]
        n = (n_all - block).astype(np.float64)[:, None]
        last_k = n - 1.0
        k = np.minimum(
            np.arange(max_cols, dtype=np.float64)[None, :] * stride, last_k
        )  # ends at each last point
        j = (block[:, None] + k).astype(np.intp)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            cdf = 1.0 - (x[j] / x[block][:, None]) ** (1.0 - alphas[block][:, None])
        emp = k / n
        lower[start : start + rows_per_block] = np.abs(cdf - emp).max(axis=1)
        # between consecutive samples both CDFs increase: bound by crossing the extremes
        gap_up = cdf[:, 1:] - emp[:, :-1]
        gap_down = k[:, 1:] / n - cdf[:, :-1]
        upper[start : start + rows_per_block] = np.maximum(np.abs(gap_up), np.abs(gap_down)).max(axis=1)
    return lower, upper


def _standard_scan(x: np.ndarray) -> tuple[int, np.ndarray, float]:
    """Scan every candidate of a spectrum with at least `SMALL_N` points; return (index, alphas, D)."""
    n_all = x.size
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # sum of logs from i to the end, accurate for short tails
    cand = np.arange(n_all - 1)
    n = (n_all - cand).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / (suffix[:-1] - n * logs[:-1])
    valid = alphas > 1.0  # alpha <= 1 (or NaN) is no power law: D = 1
    ds = np.ones(n_all - 1)
    idx = cand[valid]
    if idx.size == 0:
        return 0, alphas, 1.0
    if n_all <= _EXACT_SCAN_MAX:
        ds[idx] = _ks_rows(x, alphas, idx)
    else:
        # Refine: bound every surviving candidate from a strided sample of its tail, drop those whose lower
        # bound exceeds the best upper bound, and repeat with a finer stride; the few left are scanned exactly.
        survivors = idx
        best_upper = 1.0
        stride = max(8, int(math.sqrt(n_all) / 2))
        while stride > 1 and survivors.size > 16:
            lower, upper = _ks_bounds(x, alphas, survivors, stride)
            best_upper = min(best_upper, float(upper.min()))
            survivors = survivors[lower <= best_upper + 1e-12]  # margin for rounding in the upper bound
            stride //= 4
        ds[:] = np.inf
        ds[~valid] = 1.0
        ds[survivors] = _ks_rows(x, alphas, survivors)
    best = int(np.argmin(ds))
    return best, alphas, float(ds[best])


def _small_scan(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, float]:
    """Small-sample path: bias-corrected alphas over tails of at least 8 points; returns (i, alphas, sigmas, D)."""
    n_all = x.size
    logs = np.log(x)
    alphas = np.zeros(n_all - 1)
    ds = np.ones(n_all - 1)
    fitted = []
    for i in range(n_all - SMALL_N_MIN_TAIL + 1):  # tails of at least SMALL_N_MIN_TAIL points
        n = n_all - i
        s = float(logs[i:].sum() - n * logs[i])
        if s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        if alphas[i] > 1.0:
            fitted.append(i)
    found = bool(fitted)
    if found:  # every candidate's KS distance at once (row by row the same numbers)
        idx = np.array(fitted)
        ds[idx] = _ks_rows(x, alphas, idx)
    sigmas = (alphas - 1.0) / np.sqrt(n_all - np.arange(n_all - 1))
    if not found:
        # no tail of 8 points: the whole spectrum is the tail (its sigma keeps the placeholder value)
        s = float(np.sum(logs) - n_all * logs[0])
        if s > 1e-12:
            alphas[0] = 1.0 + (n_all - 1.0) / s
            ds[0] = _ks_rows(x, alphas, np.array([0]))[0]
    best = int(np.argmin(ds))
    return best, alphas, sigmas, float(ds[best])


def fit_power_law(evals: np.ndarray, *, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """Fit a power law to the eigenvalues above ``thresh`` (weightwatcher 0.7.7's default fit).

    Returns alpha, xmin, xmax (largest eigenvalue), D (KS distance), sigma (standard error of alpha) and
    num_pl_spikes (eigenvalues >= xmin). Fails (NaN, with a reason) with fewer than 2 eigenvalues above the
    threshold or a non-finite alpha.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> fit = fit_power_law(rng.pareto(2.0, size=500) + 1.0)
        >>> 2.5 < fit.alpha < 3.5
        True
    """
    evals = np.asarray(evals, dtype=np.float64)
    x = np.sort(evals[evals > thresh])
    if x.size < 2:
        return _failed(f"fewer than 2 eigenvalues above {thresh:g}")
    if x.size < SMALL_N:
        best, alphas, sigmas, d = _small_scan(x)
        sigma = float(sigmas[best])
    else:
        best, alphas, d = _standard_scan(x)
        sigma = float((alphas[best] - 1.0) / math.sqrt(x.size - best))
    alpha = float(alphas[best])
    if not math.isfinite(alpha):
        return _failed("degenerate tail: its eigenvalues are all equal")
    xmin = float(x[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=xmin,
        xmax=float(x[-1]),
        D=d,
        sigma=sigma,
        num_pl_spikes=int(np.count_nonzero(evals >= xmin)),
    )

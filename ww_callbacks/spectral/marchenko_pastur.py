"""Marchenko-Pastur fit of the bulk of an ESD (weightwatcher 0.7.7's ``mp_fit``).

The ESD is rescaled to unit mean, smoothed with a linear-kernel density estimate (bandwidth 0.1, 1000 grid
points), and the MP scale ``sigma`` is found by a grid search followed by a Nelder-Mead polish, exactly the search
weightwatcher runs. What makes ours fast: the density estimate does not depend on ``sigma``, so it is computed once
per fit (weightwatcher refits it for each of the ~200 trial values), and the grid is evaluated in one vectorized
pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

#: Kernel bandwidth and grid size of the density estimate.
BANDWIDTH = 0.1
GRID_POINTS = 1000
#: Grid points whose density is below this are ignored by the residual.
DENSITY_FLOOR = 0.01
#: Residual used when the MP edges fall outside the data.
_PENALTY = 1000.0


@dataclass(frozen=True)
class MPFit:
    """Result of `fit_marchenko_pastur` (``sigma_mp`` and the edges in unit-mean units, bulk edges in original units).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> w = rng.standard_normal((400, 100))
        >>> fit = fit_marchenko_pastur(np.linalg.eigvalsh(w.T @ w), N=400, M=100)
        >>> fit.num_spikes
        0
    """

    sigma_mp: float
    W_scale: float
    bulk_max: float
    bulk_min: float
    num_spikes: int
    mp_softrank: float
    reason: str = ""


def linear_kde(data: np.ndarray, grid: np.ndarray, bandwidth: float = BANDWIDTH) -> np.ndarray:
    """Density of ``data`` on the uniform ``grid`` with the linear (triangular) kernel of half-width ``bandwidth``.

    Each point contributes only to the few grid points within one bandwidth, so the cost is O(n * bandwidth/step).

    Example:
        >>> grid = np.linspace(0.0, 1.0, 11)
        >>> float(linear_kde(np.array([0.5]), grid)[5])
        10.0
    """
    data = np.asarray(data, dtype=np.float64)
    step = float(grid[1] - grid[0])
    reach = int(math.ceil(bandwidth / step)) + 1
    # every (offset, point) pair at once: grid index and kernel weight, then one weighted bincount
    idx = np.floor(data / step).astype(np.intp)[None, :] + np.arange(-reach, reach + 1)[:, None]
    ok = (idx >= 0) & (idx < grid.size)
    idx = idx[ok]
    w = 1.0 - np.abs(grid[idx] - np.broadcast_to(data, ok.shape)[ok]) / bandwidth
    pos = w > 0
    dens = np.bincount(idx[pos], weights=w[pos], minlength=grid.size)
    return dens / (data.size * bandwidth)


def _nan_to_num(x: np.ndarray) -> np.ndarray:
    """`numpy.nan_to_num` in place, paying for it only where something is not finite (the objective's hot path)."""
    bad = ~np.isfinite(x)
    if bad.any():
        x[bad] = np.nan_to_num(x[bad])
    return x


class _Objective:
    """Sum of squared residuals between the MP density of scale sigma and the fixed density estimate."""

    def __init__(self, data: np.ndarray, Q: float):
        grid = np.linspace(0.0, float(np.max(data)) + 0.5, GRID_POINTS)
        dens = linear_kde(data, grid)
        kept = dens > DENSITY_FLOOR
        self.t = grid[kept]
        self.y = dens[kept]
        self.Q = Q
        self.quarter_circle = Q == 1
        self.t_peak = float(self.t[np.argmax(self.y)])
        self.t_last = float(self.t.max())
        self.penalty = _PENALTY**2 * self.t.size
        self._t_row = self.t[None, :]

    def values(self, sigmas: np.ndarray) -> np.ndarray:
        """Objective for an array of sigmas (the grid search), one row per sigma. Call under `np.errstate`."""
        return self._evaluate(np.asarray(sigmas, dtype=np.float64).reshape(-1, 1), self._t_row)

    def __call__(self, sigma: np.ndarray | float) -> float:
        """Objective for one sigma (the Nelder-Mead polish calls this). Call under `np.errstate`."""
        s = sigma[0] if isinstance(sigma, np.ndarray) else sigma
        return float(self._evaluate(np.array([[s]], dtype=np.float64), self._t_row)[0])

    def _evaluate(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        # same operations, in the same order, as weightwatcher's residual, so the search takes the same path
        if self.quarter_circle:
            rho = _nan_to_num((1.0 / (np.pi * s * s)) * np.sqrt(4.0 - t**2))
            return np.sum((rho - self.y) ** 2, axis=1)
        inv = np.sqrt(1.0 / self.Q)  # weightwatcher's spelling here (1/sqrt(Q) for the edges): same rounding
        a = (s * (1.0 - inv)) ** 2
        b = (s * (1.0 + inv)) ** 2
        # sigmas whose MP edges miss the data's peak or support get the flat penalty: skip their density
        bad = (b[:, 0] < self.t_peak) | (b[:, 0] > self.t_last) | (a[:, 0] > self.t_peak)
        out = np.full(s.shape[0], self.penalty)
        good = ~bad
        if good.any():
            s, a, b = s[good], a[good], b[good]
            rho = _nan_to_num((1.0 / (2.0 * np.pi * s * s * t * (1.0 / self.Q))) * np.sqrt((b - t) * (t - a)))
            out[good] = np.sum((rho - self.y) ** 2, axis=1)
        return out


def fit_marchenko_pastur(evals: np.ndarray, *, N: int, M: int) -> MPFit:
    """Fit the MP bulk to ``evals`` of a layer with weightwatcher's labels ``N``, ``M`` (``Q = N / M``).

    Returns sigma_mp, W_scale, the bulk edges (original units), num_spikes (eigenvalues above the bulk edge plus
    the Tracy-Widom margin) and mp_softrank (bulk edge / largest eigenvalue). Failures give NaNs and a reason.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> w = rng.standard_normal((300, 300))
        >>> fit = fit_marchenko_pastur(np.linalg.eigvalsh(w.T @ w), N=300, M=300)
        >>> 0.5 < fit.mp_softrank < 1.5
        True
    """
    nan = float("nan")
    evals = np.asarray(evals, dtype=np.float64)
    try:
        if evals.size == 0 or M <= 0:
            raise ValueError("no eigenvalues")
        total = float(np.sum(evals))
        if not total > 0:
            raise ValueError("eigenvalues sum to zero")
        Q = N / M
        w_scale = math.sqrt(evals.size) / math.sqrt(total)
        x = (w_scale * w_scale) * evals
        lam_max = float(np.max(x))
        data = np.sqrt(x) if Q == 1 else x
        objective = _Objective(data, Q)
        s0 = math.sqrt(lam_max / (1.0 + 1.0 / math.sqrt(Q)) ** 2)
        grid = np.mgrid[slice(0.05 * s0, 2.0 * s0, 0.01 * s0)]
        # out-of-support points give NaN/inf that the objective maps like numpy.nan_to_num: silence them once
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            start = grid[int(np.argmin(objective.values(grid)))]
            sigma = float(optimize.fmin(objective, start, full_output=True, disp=False)[0][0])
        inv = 1.0 / math.sqrt(Q)
        bulk_max = (sigma * (1.0 + inv)) ** 2
        bulk_min = (sigma * (1.0 - inv)) ** 2
        tw = inv * bulk_max ** (2.0 / 3.0) * M ** (-2.0 / 3.0)
        num_spikes = int(np.count_nonzero(x > bulk_max + math.sqrt(tw)))
        return MPFit(
            sigma_mp=sigma,
            W_scale=w_scale,
            bulk_max=bulk_max / (w_scale * w_scale),
            bulk_min=bulk_min / (w_scale * w_scale),
            num_spikes=num_spikes,
            mp_softrank=bulk_max / lam_max,
        )
    except (ValueError, FloatingPointError, ZeroDivisionError, IndexError) as exc:
        return MPFit(nan, nan, nan, nan, -1, nan, reason=f"MP fit failed: {exc}")

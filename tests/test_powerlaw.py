"""The power-law fit against weightwatcher's own fit (WWFit) on the same eigenvalues, and against its definition."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from ww_callbacks.spectral.powerlaw import EVALS_THRESH, fit_power_law


def _wwfit(x: np.ndarray):
    from weightwatcher.WW_powerlaw import WWFit

    with contextlib.redirect_stdout(io.StringIO()):  # WWFit prints on its small-N path
        return WWFit(x)


def _spectra():
    rng = np.random.default_rng(1234)
    out = {
        "pareto-3000": rng.pareto(1.5, 3000) + 1.0,  # large: the bounded scan prunes candidates
        "pareto-800": (rng.pareto(2.5, 800) + 1.0) * 0.01,
        "student-t-gram": np.linalg.eigvalsh((lambda w: w.T @ w)(rng.standard_t(2.5, size=(600, 300)))),
        "gaussian-gram": np.linalg.eigvalsh((lambda w: w.T @ w)(rng.standard_normal((1200, 700)))),
        "ties": np.repeat(rng.pareto(2.0, 150) + 1.0, 3),  # duplicates are candidates too
        "n=19": rng.pareto(2.0, 19) + 1.0,
        "n=12": rng.lognormal(size=12),
        "n=8": rng.lognormal(size=8),
        "n=5": rng.lognormal(size=5),
        "n=2": np.array([0.5, 3.0]),
    }
    return out


@pytest.mark.parity
@pytest.mark.parametrize("name", list(_spectra()))
def test_fit_matches_weightwatcher_fit(name):
    x = np.sort(_spectra()[name])
    ours = fit_power_law(x)
    theirs = _wwfit(x[x > EVALS_THRESH])
    assert ours.ok
    assert ours.alpha == pytest.approx(float(theirs.alpha), rel=1e-9)
    assert ours.xmin == pytest.approx(float(theirs.xmin), rel=1e-12)
    assert ours.D == pytest.approx(float(theirs.D), rel=1e-9, abs=1e-15)
    assert ours.sigma == pytest.approx(float(theirs.sigma), rel=1e-9)
    assert ours.xmax == x[-1]
    assert ours.num_pl_spikes == int(np.sum(x >= ours.xmin))


def _naive_standard(x: np.ndarray) -> tuple[float, float, float]:
    """The definition, one candidate at a time (independent of the vectorized and bounded scan)."""
    best = (math.inf, 0.0, 0.0)
    n_all = len(x)
    for i in range(n_all - 1):
        n = n_all - i
        alpha = 1 + n / sum(math.log(v / x[i]) for v in x[i:])
        if alpha <= 1:
            d = 1.0
        else:
            d = max(abs(1 - (x[i + k] / x[i]) ** (1 - alpha) - k / n) for k in range(n))
        if d < best[0]:
            best = (d, alpha, x[i])
    return best


@pytest.mark.parametrize("seed", range(6))
def test_bounded_scan_finds_the_exact_argmin(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(np.concatenate([rng.lognormal(0, 0.5, 700), rng.pareto(1.0 + seed * 0.5, 60) + 5]))
    d, alpha, xmin = _naive_standard(list(x))
    fit = fit_power_law(x)
    assert fit.xmin == xmin
    assert fit.alpha == pytest.approx(alpha, rel=1e-10)
    assert fit.D == pytest.approx(d, rel=1e-9)


def test_small_sample_path_uses_bias_corrected_alpha():
    x = np.array([1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0])
    fit = fit_power_law(x)
    # the first tail of at least 8 points with the smallest D; alpha = 1 + (n-1)/sum(log(x/xmin))
    tail = x[x >= fit.xmin]
    assert len(tail) >= 8
    assert fit.alpha == pytest.approx(1 + (len(tail) - 1) / np.sum(np.log(tail / fit.xmin)))


def test_fewer_than_eight_points_fit_everything_with_negative_sigma():
    x = np.array([1.0, 2.0, 4.0, 9.0])
    fit = fit_power_law(x)
    assert fit.xmin == 1.0
    assert fit.alpha == pytest.approx(1 + 3 / np.sum(np.log(x)))
    assert fit.sigma == pytest.approx(-1 / 2.0)


@pytest.mark.parametrize(
    "evals, reason",
    [
        (np.array([]), "fewer than 2"),
        (np.array([3.0]), "fewer than 2"),
        (np.full(50, 1e-7), "fewer than 2"),  # the threshold is absolute
        (np.full(40, 2.0), "degenerate"),
    ],
)
def test_failures_are_reported_not_raised(evals, reason):
    fit = fit_power_law(evals)
    assert not fit.ok
    assert reason in fit.reason
    assert math.isnan(fit.alpha)


def test_threshold_filters_small_eigenvalues_but_spikes_count_all():
    rng = np.random.default_rng(3)
    big = rng.pareto(2.0, 100) + 1.0
    evals = np.concatenate([np.full(30, 1e-9), big])
    fit = fit_power_law(evals)
    assert fit.ok
    assert fit.alpha == fit_power_law(big).alpha
    assert fit.num_pl_spikes == int(np.sum(evals >= fit.xmin))

"""Shared helpers for the history, plot and W&B sink tests: small real reports from `ww_callbacks.analyze`."""

from __future__ import annotations

import functools
import math

import numpy as np

import ww_callbacks
from ww_callbacks import SpectralReport

#: Layer longnames of `training_like_reports`; "head" is too degenerate to fit (status "failed", NaN alpha).
LAYERS = ("encoder.fc1", "encoder.fc2", "head")


@functools.lru_cache(maxsize=4)
def _reports(n_epochs: int, mp_fit: bool) -> tuple[SpectralReport, ...]:
    rng = np.random.default_rng(1234)
    base1 = rng.normal(size=(200, 100))
    u, v = rng.normal(size=200), rng.normal(size=100)
    base2 = rng.standard_t(3, size=(120, 80))
    reports = []
    for epoch in range(n_epochs):
        # A growing rank-one signal makes the fc1 tail heavier epoch by epoch, as training does.
        weights = {
            "encoder.fc1.weight": base1 + 0.5 * epoch * np.outer(u, v),
            "encoder.fc2.weight": base2 * (1 + 0.1 * epoch),
            "head.weight": np.ones((30, 20)),
        }
        reports.append(ww_callbacks.analyze(weights, seed=epoch, mp_fit=mp_fit))
    return tuple(reports)


def training_like_reports(n_epochs: int = 4, *, mp_fit: bool = False) -> list[SpectralReport]:
    """``n_epochs`` reports of a 3-layer model whose metrics change from epoch to epoch (cached)."""
    return list(_reports(n_epochs, mp_fit))


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN and compares floats to 1e-12 relative."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b

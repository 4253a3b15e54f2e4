"""The scalars a report is logged as: ``{prefix}{metric}`` summaries and ``{prefix}{layer}/{metric}`` values.

Example:
    >>> import numpy as np, ww_callbacks
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(90, 40))}, seed=0)
    >>> values, missing = report_scalars(report, metrics=("alpha",), prefix="ww/", per_layer=True)
    >>> sorted(values), missing
    (['ww/alpha', 'ww/fc/alpha'], [])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..spectral.catalog import SUMMARY_COUNTS
from ..spectral.report import SpectralReport
from ..spectral.weights import LayerWeights

__all__ = ["report_scalars", "scalar_keys"]


def report_scalars(
    report: SpectralReport,
    *,
    metrics: Sequence[str],
    prefix: str,
    per_layer: bool,
    summary: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """(the finite scalars to log, the summary metrics left out because they are not finite); ``summary``:
    ``report.summary`` when the caller has it already."""
    out: dict[str, float] = {}
    summary = report.summary if summary is None else summary
    missing = []
    for metric in metrics:
        value = float(summary.get(metric, math.nan))
        if math.isfinite(value):
            out[f"{prefix}{metric}"] = value
        else:
            missing.append(metric)
    if per_layer:
        for layer in report.layers:
            for metric in metrics:
                value = float(getattr(layer, metric, math.nan))
                if math.isfinite(value):
                    out[f"{prefix}{layer.longname}/{metric}"] = value
    return out, missing


def scalar_keys(
    layers: Sequence[LayerWeights], *, metrics: Sequence[str], prefix: str, per_layer: bool
) -> list[str]:
    """The keys `report_scalars` gives when every value is finite: the summary metrics, and each layer's with
    ``per_layer`` (counts such as ``num_nonfinite_layers`` have no per-layer value).

    Example:
        >>> scalar_keys([], metrics=("alpha", "num_nonfinite_layers"), prefix="ww/", per_layer=True)
        ['ww/alpha', 'ww/num_nonfinite_layers']
    """
    keys = [f"{prefix}{metric}" for metric in metrics]
    if per_layer:
        layer_metrics = [m for m in metrics if m not in SUMMARY_COUNTS]
        keys += [f"{prefix}{lw.longname}/{m}" for lw in layers for m in layer_metrics]
    return keys

"""The summary metrics and every fact about them, in one table that the rest of the package reads.

`METRICS` maps each summary metric (weightwatcher's column name) to a `MetricInfo`: the analysis option it needs,
which direction is better, whether the callbacks log it (and the plots show it) by default, whether the
``ww-callbacks history`` table shows it, and its healthy range. `SUMMARY_METRICS` is the table's key order.
Whatever needs one of these facts (the engine, the stopping rules, the report's summary, W&B, plots, the CLI)
asks this module instead of keeping its own list.

Example:
    >>> METRICS["rand_distance"].needs, METRICS["alpha"].healthy
    ('randomize', (2.0, 6.0))
    >>> default_metrics(randomize=False)
    ('alpha', 'alpha_weighted', 'log_spectral_norm', 'num_nonfinite_layers')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METRICS",
    "OPTION_DEFAULTS",
    "SUMMARY_COUNTS",
    "SUMMARY_METRICS",
    "MetricInfo",
    "default_metrics",
    "metric_available",
    "missing_option",
]


@dataclass(frozen=True)
class MetricInfo:
    """What the package knows about one summary metric.

    Attributes:
        name: weightwatcher's column name (also the ``LayerResult`` attribute and the logged ``{prefix}{name}``).
        needs: the `ww_callbacks.analyze` option that must be on for the metric to exist (None: always there).
        better: ``"min"`` or ``"max"`` where one direction is clearly better (W&B keeps that extreme as the
            run summary); None where only the trend matters.
        default: logged by the callbacks and shown by `ww_callbacks.plots.plot_history` unless told otherwise.
        history_table: shown by ``ww-callbacks history`` (when the file has values for it).
        healthy: the range weightwatcher calls well trained, or None. Below/above it a layer is flagged
            over-/under-trained (its ``warning``) and plots shade it.
        count: a count over all layers (``num_nonfinite_layers``), not a mean over the fitted ones; it has no
            per-layer value.

    Example:
        >>> MetricInfo("alpha", better="min").needs is None
        True
    """

    name: str
    needs: str | None = None
    better: str | None = None
    default: bool = False
    history_table: bool = False
    healthy: tuple[float, float] | None = None
    count: bool = False


#: The summary metrics, in the order `SpectralReport.summary` lists them.
METRICS: Mapping[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("alpha", better="min", default=True, history_table=True, healthy=(2.0, 6.0)),
        MetricInfo("alpha_weighted", default=True, history_table=True),
        MetricInfo("log_norm"),
        MetricInfo("log_spectral_norm", default=True, history_table=True),
        MetricInfo("log_alpha_norm"),
        MetricInfo("stable_rank", history_table=True),
        MetricInfo("rand_distance", needs="randomize", better="max", default=True, history_table=True),
        MetricInfo("mp_softrank", needs="mp_fit", history_table=True),
        # Diverged training: layers whose weights hold NaN/Inf (not analyzed, so never in the means).
        MetricInfo("num_nonfinite_layers", better="min", default=True, count=True),
    )
}

#: Metrics averaged into `SpectralReport.summary` (weightwatcher's ``get_summary`` columns plus rand_distance).
SUMMARY_METRICS: tuple[str, ...] = tuple(name for name, info in METRICS.items() if not info.count)

#: Counts over all layers that every summary holds next to the means (layers whose weights hold NaN/Inf).
SUMMARY_COUNTS: tuple[str, ...] = tuple(name for name, info in METRICS.items() if info.count)

#: Defaults of the options metrics depend on (those of `ww_callbacks.analyze`), for reports that do not say.
OPTION_DEFAULTS: Mapping[str, bool] = {"randomize": True, "mp_fit": False}


def metric_available(metric: str, options: Mapping[str, Any] | Any) -> bool:
    """Whether ``metric`` is computed under ``options`` (a mapping, or an object with option attributes).

    Example:
        >>> metric_available("rand_distance", {"randomize": False}), metric_available("alpha", {})
        (False, True)
    """
    option = METRICS[metric].needs
    if option is None:
        return True
    default = OPTION_DEFAULTS.get(option, False)
    value = (
        options.get(option, default) if isinstance(options, Mapping) else getattr(options, option, default)
    )
    return bool(value)


def missing_option(metric: str) -> str:
    """How to turn ``metric`` on, for error messages (``"randomize=True"``).

    Example:
        >>> missing_option("mp_softrank")
        'mp_fit=True'
    """
    option = METRICS[metric].needs if metric in METRICS else None
    return f"{option}=True" if option else "another option"


def default_metrics(**options: Any) -> tuple[str, ...]:
    """The metrics logged by default under ``options`` (those that need an option that is off are left out).

    Example:
        >>> default_metrics()
        ('alpha', 'alpha_weighted', 'log_spectral_norm', 'rand_distance', 'num_nonfinite_layers')
    """
    return tuple(name for name, info in METRICS.items() if info.default and metric_available(name, options))

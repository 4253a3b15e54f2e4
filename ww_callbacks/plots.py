"""Matplotlib figures of the spectral diagnostics (optional extra ``plot``).

* `plot_esd`: one layer's eigenvalue density on log-log axes, with the fitted power-law tail, the randomized ESD,
  ``xmin`` and the Marchenko-Pastur bulk edge.
* `plot_history`: summary metrics over the analyses, one panel each, the 2-6 alpha band shaded.
* `plot_alpha_heatmap`: alpha per layer and analysis.

Both put the analyses on epochs, or on global steps when the history comes from a step schedule (several
analyses in one epoch; `history_x_axis`), or as asked with ``x=``.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing is registered with pyplot's
figure manager: no window opens, nothing leaks, and it works headless. Save it with ``fig.savefig("esd.png")``.
Importing this module without matplotlib raises an ImportError that says what to install.

Example:
    >>> import numpy as np, ww_callbacks
    >>> from ww_callbacks.plots import plot_esd
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(256, 128))}, seed=0)
    >>> fig = plot_esd(report["fc"])
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    # Only the object-oriented API: pyplot would pick a GUI backend and keep every figure alive.
    from matplotlib.figure import Figure
except ImportError as exc:
    raise ImportError(
        "ww_callbacks.plots needs matplotlib: pip install 'ww-callbacks[plot]' (or pip install matplotlib)"
    ) from exc

from ._util import finite_or_none
from .history import as_records, is_per_layer, summarize_history
from .spectral.catalog import METRICS, SUMMARY_METRICS
from .spectral.report import LayerResult
from .spectral.zeros import split_zeros

#: Metrics `plot_history` shows by default (those with at least one finite value): the metric table's defaults.
DEFAULT_HISTORY_METRICS = tuple(name for name, info in METRICS.items() if info.default and not info.count)

#: weightwatcher's "well trained" alpha range (the metric table's healthy range), shaded on alpha panels.
ALPHA_BAND: tuple[float, float] = METRICS["alpha"].healthy or (2.0, 6.0)

#: The ``gid`` of the shaded alpha band, so tools and tests can find it.
ALPHA_BAND_GID = "ww-alpha-band"

_ESD_COLOR = "#1f77b4"
_RAND_COLOR = "#ff7f0e"
_FIT_COLOR = "#d62728"
_BULK_COLOR = "#2ca02c"


def _figure(figsize: tuple[float, float]) -> Any:
    # A bare Figure (not pyplot.figure) is never registered with pyplot: no GUI backend, no leak.
    return Figure(figsize=figsize, layout="constrained")


def _log_bins(*arrays: np.ndarray, max_bins: int = 100) -> np.ndarray:
    """Log-spaced bin edges covering all arrays; about sqrt(n) bins, at least 10."""
    data = np.concatenate([a for a in arrays if a.size])
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo * (1 + 1e-9):  # a single value: give it a visible width
        lo, hi = lo / 1.5, hi * 1.5
    n = int(np.clip(np.sqrt(max(a.size for a in arrays)) * 2, 10, max_bins))
    return np.logspace(math.log10(lo), math.log10(hi), n + 1)


def _esd_label(count: int, omitted: int) -> str:
    label = f"ESD ({count} eigenvalue{'s' if count != 1 else ''}"
    return label + (f", {omitted} ≈ 0 left out)" if omitted else ")")


def _bin_edges(bins: int | Sequence[float] | None, evals: np.ndarray, rand: np.ndarray) -> np.ndarray:
    """``bins`` as log-spaced edges over both ESDs (a count, or None for about 2 sqrt(n)), or as given."""
    if bins is None or isinstance(bins, int):
        edges = (
            _log_bins(evals, rand, max_bins=100) if bins is None else _log_bins(evals, rand, max_bins=bins)
        )
        if isinstance(bins, int):
            edges = np.logspace(np.log10(edges[0]), np.log10(edges[-1]), bins + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    return edges


def plot_esd(layer_result: LayerResult, ax: Any = None, *, bins: int | Sequence[float] | None = None) -> Any:
    """Plot one layer's empirical spectral density (ESD) on log-log axes.

    Shows the density of ``layer_result.evals`` (log-spaced bins), the randomized ESD (``rand_evals``) when
    present, the fitted power law ``p(x) ~ x^-alpha`` for ``x >= xmin`` scaled to the share of eigenvalues in
    the tail, a vertical line at ``xmin`` and, when the Marchenko-Pastur fit ran, one at ``bulk_max``.
    Numerically zero eigenvalues (``λ ≤ max(N, M)·ε·λmax``, `ww_callbacks.spectral.zeros`) are left out, and the
    legend says how many.

    Args:
        layer_result: a `LayerResult` with ``evals`` (e.g. ``report["fc1"]``).
        ax: draw into this matplotlib Axes instead of a new figure.
        bins: number of log-spaced bins, or explicit edges (default: about 2 sqrt(n), 10 to 100).

    Returns:
        The Figure holding the plot.

    Example:
        >>> import numpy as np, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(256, 128))}, seed=0)
        >>> fig = plot_esd(report["fc"])
        >>> fig.axes[0].get_xscale()
        'log'
    """
    if ax is None:
        fig = _figure((6.0, 4.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    name = layer_result.longname or layer_result.name
    # Numerically zero eigenvalues (rank-deficient weights: exact zeros or rounding noise, spectral.zeros) have no
    # place on a log axis; the legend says how many were left out.
    evals, omitted = split_zeros(layer_result.evals, layer_result.N, layer_result.M)
    rand, _ = split_zeros(layer_result.rand_evals, layer_result.N, layer_result.M)
    if evals.size == 0:
        ax.text(
            0.5,
            0.5,
            f"no eigenvalues ({layer_result.status})",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        return fig

    edges = _bin_edges(bins, evals, rand)
    density, _ = np.histogram(evals, bins=edges, density=True)
    ax.stairs(density, edges, fill=True, alpha=0.35, color=_ESD_COLOR)
    ax.stairs(density, edges, color=_ESD_COLOR, linewidth=1.2, label=_esd_label(evals.size, omitted))
    if rand.size:
        rand_density, _ = np.histogram(rand, bins=edges, density=True)
        ax.stairs(
            rand_density, edges, color=_RAND_COLOR, linewidth=1.2, linestyle="--", label="randomized ESD"
        )

    _draw_fit_and_bulk(ax, layer_result, evals)
    ax.set_xscale("log")
    ax.set_yscale("log")
    positive_density = density[density > 0]
    if positive_density.size:
        ax.set_ylim(bottom=positive_density.min() / 3)
    ax.set_xlabel("eigenvalue  λ")
    ax.set_ylabel("density")
    title = f"{name}  ({layer_result.layer_type}, {layer_result.N}x{layer_result.M})"
    if layer_result.status != "success":
        title += f"  [{layer_result.status}]"
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _draw_fit_and_bulk(ax: Any, layer_result: LayerResult, evals: np.ndarray) -> None:
    """The ``xmin`` line, the fitted power law over the tail and the MP bulk edge, where they exist."""
    alpha = finite_or_none(layer_result.alpha)
    xmin = finite_or_none(layer_result.xmin)
    if xmin is not None and xmin > 0:
        ax.axvline(xmin, color=_FIT_COLOR, linestyle=":", linewidth=1.2, label=f"xmin = {xmin:.3g}")
        if alpha is not None and alpha > 1:
            # Tail pdf (alpha-1)/xmin (x/xmin)^-alpha, times the share of eigenvalues in the tail, so it sits on
            # the histogram (which is a density over all eigenvalues).
            tail_share = float(np.mean(evals >= xmin))
            x = np.logspace(np.log10(xmin), np.log10(evals.max()), 50)
            y = tail_share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
            ax.plot(x, y, color=_FIT_COLOR, linewidth=2, label=f"power law, alpha = {alpha:.2f}")
    bulk_max = finite_or_none(layer_result.bulk_max)
    if bulk_max is not None and bulk_max > 0:
        ax.axvline(
            bulk_max, color=_BULK_COLOR, linestyle="-.", linewidth=1.2, label=f"MP bulk edge = {bulk_max:.3g}"
        )


#: Balancing factors (`ww_callbacks.balance`), drawn after the metrics when the history has them.
FACTOR_COLUMNS = ("lr_factor", "wd_factor")


#: The x axes `plot_history` and `plot_alpha_heatmap` accept.
X_AXES = ("auto", "epoch", "step")


def history_x_axis(rows: Sequence[Any], x: str = "auto") -> str:
    """The x axis for history ``rows``: ``x`` itself, or for ``"auto"`` ``"step"`` when some epoch holds several
    analyses (a step schedule: they would collapse onto one epoch), ``"epoch"`` otherwise.

    Example:
        >>> history_x_axis([{"epoch": 0, "step": 3}, {"epoch": 0, "step": 7}, {"epoch": 1, "step": 11}])
        'step'
        >>> history_x_axis([{"epoch": 0, "step": 9}, {"epoch": 1, "step": 19}])
        'epoch'
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    if x != "auto":
        return x
    analyses = {(r["epoch"], int(r.get("step") or 0)) for r in rows}
    return "step" if len(analyses) > len({epoch for epoch, _ in analyses}) else "epoch"


def _x_values(rows: Sequence[dict[str, Any]], x: str) -> list[Any]:
    return [int(r.get("step") or 0) if x == "step" else r["epoch"] for r in rows]


def _epoch_summaries(history: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one summary per analysis, per-layer rows or []) from any accepted history form."""
    rows = as_records(history)
    if is_per_layer(rows):
        return summarize_history(rows, metrics=(*SUMMARY_METRICS, *FACTOR_COLUMNS)), rows
    return sorted(rows, key=lambda r: (r["epoch"], int(r.get("step") or 0))), []


def _column(rows: list[dict[str, Any]], metric: str) -> np.ndarray:
    """``metric`` over ``rows`` as floats, NaN where missing or not finite."""
    values = [finite_or_none(row.get(metric)) for row in rows]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _shade_alpha_band(ax: Any) -> None:
    ax.axhspan(
        *ALPHA_BAND,
        color="#2ca02c",
        alpha=0.12,
        gid=ALPHA_BAND_GID,
        label=f"{ALPHA_BAND[0]:g} ≤ alpha ≤ {ALPHA_BAND[1]:g}",
        zorder=0,
    )


def _draw_layer_lines(ax: Any, by_layer: dict[str, list[dict[str, Any]]], metric: str, x: str) -> None:
    """Each layer's values of ``metric`` (successful fits only) as a thin grey line behind the mean."""
    for layer, rows_of_layer in by_layer.items():
        rows_of_layer = sorted(rows_of_layer, key=lambda r: (r["epoch"], int(r.get("step") or 0)))
        xs = _x_values(rows_of_layer, x)
        ys = [
            v if (v := finite_or_none(r.get(metric))) is not None and r.get("status") == "success" else np.nan
            for r in rows_of_layer
        ]
        ax.plot(
            xs,
            ys,
            color="0.6",
            linewidth=0.8,
            alpha=0.5,
            zorder=1,
            label="layers" if layer == next(iter(by_layer)) else None,
        )


def plot_history(
    history: Any, metrics: Sequence[str] | None = None, *, show_layers: bool = True, x: str = "auto"
) -> Any:
    """Plot summary metrics over the analyses, one panel per metric, against epochs or steps.

    The alpha panel shades weightwatcher's well-trained range 2 <= alpha <= 6. Given per-layer rows, each
    layer is also drawn as a thin line behind the mean (``show_layers``).

    Args:
        history: the callback's ``history`` (a list of per-epoch dicts with ``epoch`` and metric keys), the
            per-layer rows of `ww_callbacks.load_history`, or either as a pandas DataFrame.
        metrics: which metrics to plot (default: alpha, alpha_weighted, log_spectral_norm, rand_distance, and the
            balancing factors ``lr_factor`` / ``wd_factor``; those without any finite value are left out).
        show_layers: draw each layer's values too, when ``history`` has per-layer rows.
        x: the x axis: ``"epoch"``, ``"step"`` (the global step of each analysis), or ``"auto"`` (default:
            steps when some epoch holds several analyses, as with ``every_n_train_steps``; see
            `history_x_axis`).

    Returns:
        The Figure, with one Axes per metric.

    Example:
        >>> history = [{"epoch": e, "step": 10 * e, "alpha": 6 - e, "log_spectral_norm": 0.1 * e} for e in range(4)]
        >>> fig = plot_history(history)
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['alpha', 'log_spectral_norm']
    """
    summaries, layer_rows = _epoch_summaries(history)
    if not summaries:
        raise ValueError("plot_history: the history is empty")
    explicit = metrics is not None
    wanted = list(metrics) if metrics is not None else [*DEFAULT_HISTORY_METRICS, *FACTOR_COLUMNS]
    x = history_x_axis(summaries, x)
    xs = np.array(_x_values(summaries, x), dtype=np.float64)

    if explicit:
        missing = [m for m in wanted if all(m not in s for s in summaries)]
        if missing:
            raise KeyError(f"plot_history: no values for {missing} in the history")
        shown = wanted
    else:
        shown = [m for m in wanted if np.isfinite(_column(summaries, m)).any()]
        if not shown:
            raise ValueError(f"plot_history: none of {wanted} has a finite value in the history")

    n = len(shown)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig = _figure((5.2 * cols, 3.0 * rows + 0.4))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    by_layer: dict[str, list[dict[str, Any]]] = {}
    if show_layers:
        for row in layer_rows:
            by_layer.setdefault(row["layer"], []).append(row)
    for ax, metric in zip(axes, shown, strict=True):
        if metric == "alpha":
            _shade_alpha_band(ax)
        _draw_layer_lines(ax, by_layer, metric, x)
        ax.plot(
            xs,
            _column(summaries, metric),
            marker="o",
            markersize=3.5,
            linewidth=1.8,
            color="#1f77b4",
            zorder=2,
            label="mean over layers",
        )
        ax.set_ylabel(metric)
        ax.set_xlabel(x)
        ax.grid(True, alpha=0.3)
        if metric == "alpha" or (by_layer and ax is axes[0]):
            ax.legend(fontsize="small")
        if len(xs) and np.all(np.mod(xs, 1) == 0):
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("WeightWatcher metrics over training", fontsize="medium")
    return fig


def _heatmap_grid(rows: list[dict[str, Any]], metric: str, x: str) -> tuple[list[str], list[Any], Any, Any]:
    """(layers in first-seen order, sorted column keys, values grid, status grid) of per-layer ``rows``."""
    key = (lambda r: int(r.get("step") or 0)) if x == "step" else (lambda r: r["epoch"])
    columns = sorted({key(r) for r in rows})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    grid = np.full((len(layers), len(columns)), np.nan)
    status = np.full(grid.shape, "", dtype=object)
    layer_index = {name: i for i, name in enumerate(layers)}
    column_index = {c: j for j, c in enumerate(columns)}
    for r in rows:
        i, j = layer_index[r["layer"]], column_index[key(r)]
        value = finite_or_none(r.get(metric))
        status[i, j] = r.get("status", "success")
        if value is not None and status[i, j] == "success":
            grid[i, j] = value
    return layers, columns, grid, status


def plot_alpha_heatmap(
    history: Any, *, metric: str = "alpha", annotate: bool | None = None, x: str = "auto"
) -> Any:
    """Plot a layers x analyses heatmap of alpha (or another per-layer ``metric``), columns labelled by epoch or
    by step.

    Layers whose fit did not succeed are left blank for that analysis.

    Args:
        history: per-layer rows (`ww_callbacks.load_history`, list of dicts or DataFrame) with ``epoch``,
            ``layer``, ``status`` and the metric.
        metric: the per-layer column to show (default ``alpha``).
        annotate: write each value in its cell (default: when the grid has at most 20 x 20 cells).
        x: columns per ``"epoch"`` or per ``"step"``; ``"auto"`` (default) as in `plot_history`.

    Returns:
        The Figure (heatmap Axes plus colorbar Axes).

    Example:
        >>> rows = [{"epoch": e, "step": e, "layer": l, "status": "success", "alpha": 2 + e + i}
        ...         for e in range(3) for i, l in enumerate(["fc1", "fc2"])]
        >>> fig = plot_alpha_heatmap(rows)
        >>> fig.axes[0].get_ylabel()
        'layer'
    """
    rows = as_records(history)
    if not rows:
        raise ValueError("plot_alpha_heatmap: the history is empty")
    if not is_per_layer(rows):
        raise ValueError(
            "plot_alpha_heatmap needs per-layer rows (ww_callbacks.load_history), not epoch summaries"
        )
    x = history_x_axis(rows, x)
    layers, columns, grid, status = _heatmap_grid(rows, metric, x)

    fig = _figure((max(4.5, 1.6 + 0.45 * len(columns)), max(2.6, 1.2 + 0.32 * len(layers))))
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set_facecolor("0.9")  # blank cells (failed fits) show as light grey
    fig.colorbar(image, ax=ax, label=metric)
    step_x = max(1, len(columns) // 20)
    ax.set_xticks(range(0, len(columns), step_x), [str(c) for c in columns[::step_x]])
    step_y = max(1, len(layers) // 40)
    ax.set_yticks(range(0, len(layers), step_y), layers[::step_y], fontsize="small")
    ax.set_xlabel(x)
    ax.set_ylabel("layer")
    ax.set_title(f"{metric} per layer (grey: no successful fit)", fontsize="medium")
    if annotate is None:
        annotate = len(layers) <= 20 and len(columns) <= 20
    if annotate:
        middle = (vmin + vmax) / 2
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                color = "black" if value > middle else "white"  # viridis is light at the top
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small", color=color)
            else:
                ax.text(
                    j, i, status[i, j] or "n/a", ha="center", va="center", fontsize="x-small", color="0.4"
                )
    return fig

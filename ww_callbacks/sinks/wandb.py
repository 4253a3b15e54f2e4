"""Log spectral reports to Weights & Biases: per-layer scalars, a per-layer table, ESD histograms and plots.

`WandbSink` is what the Lightning and Keras callbacks use when W&B logging is on; it can also be driven by
hand. ``wandb`` is imported only inside its methods, so this module imports without wandb installed, and no
W&B error ever stops training: the first one is reported with a warning, later ones go to the log.

Example (needs a W&B run, so it is not a doctest)::

    import numpy as np, wandb, ww_callbacks
    from ww_callbacks.sinks.wandb import WandbSink
    run = wandb.init(mode="offline")
    sink = WandbSink(run, step_metric="epoch")
    w = np.random.default_rng(0).normal(size=(128, 64))
    sink.log_report(ww_callbacks.analyze({"fc.weight": w}, seed=0), epoch=0, step=0)
    sink.finish()
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from .._util import jsonable
from ..spectral.catalog import METRICS
from ..spectral.report import SpectralReport
from .base import ReportSink
from .media import (
    DEFAULT_MEDIA_EVERY_N_EPOCHS,
    MAX_HISTOGRAM_BINS,
    FigureData,
    FinalFigures,
    MediaSchedule,
    ReportMedia,
)

__all__ = ["DEFAULT_MEDIA_EVERY_N_EPOCHS", "MAX_HISTOGRAM_BINS", "WandbSink"]

log = logging.getLogger(__name__)

# Metrics whose W&B summary should be the best value rather than the last one: the metric table's "better".
_SUMMARY_GOALS = {name: info.better for name, info in METRICS.items() if info.better is not None}


def _table(wandb: Any, report: SpectralReport, epoch: int, step: int) -> Any:
    """A ``wandb.Table`` with one row per layer: epoch, step, layer and every `LayerResult` column."""
    rows = [layer.to_row() for layer in report.layers]
    columns = ["epoch", "step", "layer"] + [c for c in rows[0] if c not in ("epoch", "step", "layer")]
    data = []
    for layer, row in zip(report.layers, rows, strict=True):
        values = [epoch, step, layer.longname]
        for column in columns[3:]:
            value = row.get(column)
            # numpy scalars become Python ones; NaN stays NaN (the table shows it as such).
            plain = jsonable(value)
            values.append(float("nan") if plain is None and isinstance(value, float) else plain)
        data.append(values)
    return wandb.Table(columns=columns, data=data)


class WandbSink(ReportSink):
    """Send each `SpectralReport` to a W&B run.

    For every analyzed epoch, one ``run.log`` call carries ``{step_metric: step}`` (so the values line up with
    the trainer's x-axis) and:

    * per-layer scalars ``{prefix}{layer}/{metric}`` for the summary metrics (``per_layer=True``); non-finite
      values (a failed fit) are left out;
    * the summary scalars ``{prefix}{metric}`` only with ``log_summary=True``: the callbacks already send them
      through the Lightning logger or the Keras ``logs``, and logging them twice would double the points;
    * ``{prefix}layers``: a ``wandb.Table`` with one row per layer (epoch, step, layer and every `LayerResult`
      column, status and warning included);
    * ``{prefix}{layer}/esd``: a ``wandb.Histogram`` of log10 of the layer's eigenvalues that are not numerically
      zero (`ww_callbacks.spectral.zeros`; at most 512 bins);
    * ``{prefix}{layer}/esd_plot``: a `ww_callbacks.plots.plot_esd` image, on the first analyzed epoch, then
      whenever at least ``media_every_n_epochs`` epochs (default 5) passed since the last images, and on the
      last report (``is_last=True``); ``media_every_n_epochs=0`` turns the images off. At most
      ``max_media_layers`` layers get an image.

    The first report also calls ``run.define_metric``: ``{prefix}*`` against ``step_metric``, and summaries
    ``min`` for alpha and ``max`` for rand_distance (model-level and per-layer keys). `finish` logs a layer x
    analysis heatmap of alpha (``{prefix}alpha_heatmap``) and the summary metrics over training
    (``{prefix}summary_plot``), on a step axis when ``x_axis="step"``. The sink never calls ``run.finish()``:
    the run belongs to its owner. Histograms and images come from a `ReportMedia` (computed once per analysis
    for every sink when `ww_callbacks.sinks.lifecycle.RunSinks` drives it). `log_report` never raises: W&B
    problems become a warning (once) and the rest of that report is skipped.

    Args:
        run: a ``wandb`` run, an object with an ``experiment`` run (Lightning's ``WandbLogger``), or None for the
            active ``wandb.run`` at each call.
        prefix: key prefix (default ``"ww/"``).
        per_layer: log per-layer scalars.
        media_every_n_epochs: spacing of the ESD images in epochs; None means 5; 0 disables them.
        step_metric: the x-axis key: ``"trainer/global_step"`` for Lightning, ``"epoch"`` for Keras.
        log_summary: also log the summary scalars.
        metrics: per-layer metrics to log (default: the report's summary metrics).
        log_table, log_histograms: turn the table or the histograms off.
        max_media_layers: the most layers that get an ESD image each time.
        x_axis: the end figures' x axis: ``"epoch"``, ``"step"`` or ``"auto"``.

    Example:
        >>> sink = WandbSink(None, step_metric="epoch", media_every_n_epochs=0)
        >>> sink.prefix, sink.step_metric
        ('ww/', 'epoch')
    """

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "ww/",
        per_layer: bool = True,
        media_every_n_epochs: int | None = None,
        step_metric: str = "trainer/global_step",
        log_summary: bool = False,
        metrics: Sequence[str] | None = None,
        log_table: bool = True,
        log_histograms: bool = True,
        max_media_layers: int = 16,
        x_axis: str = "auto",
    ) -> None:
        self._schedule = MediaSchedule(media_every_n_epochs)
        self._run = run
        self.prefix = prefix
        self.per_layer = per_layer
        self.media_every_n_epochs = media_every_n_epochs
        self.step_metric = step_metric
        self.log_summary = log_summary
        self.metrics = None if metrics is None else tuple(metrics)
        self.log_table = log_table
        self.log_histograms = log_histograms
        self.max_media_layers = max_media_layers
        self.x_axis = x_axis
        #: Epochs whose report got ESD images (for inspection).
        self.media_epochs: list[int] = []
        self._defined: set[str] = set()
        self._warned: set[str] = set()
        self._last_epoch: int | None = None
        self._last_step = 0
        self._data = FigureData()
        self._finished = False

    # -- plumbing -------------------------------------------------------------------------------------------

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            log.debug("WandbSink: %s", message)
            return
        self._warned.add(key)
        warnings.warn(f"WandbSink: {message}", RuntimeWarning, stacklevel=3)

    def _import_wandb(self) -> Any:
        try:
            import wandb
        except ImportError:
            self._warn_once(
                "import", "wandb is not installed (pip install 'ww-callbacks[wandb]'); nothing is logged"
            )
            return None
        return wandb

    def _resolve_run(self) -> Any:
        run = self._run
        if run is None:
            import wandb

            run = wandb.run
        elif not hasattr(run, "log") and hasattr(run, "experiment"):
            run = run.experiment  # Lightning's WandbLogger
        if run is None:
            self._warn_once("no-run", "no active W&B run (call wandb.init() first); nothing is logged")
        return run

    def _define_metrics(self, run: Any, report: SpectralReport) -> None:
        """define_metric once per key: the x-axis for ``{prefix}*`` and best-value summaries."""
        wanted: list[tuple[str, dict[str, Any]]] = []
        if not self._defined:
            wanted.append((self.step_metric, {}))
            wanted.append((f"{self.prefix}*", {"step_metric": self.step_metric}))
            for metric, goal in _SUMMARY_GOALS.items():
                wanted.append((f"{self.prefix}{metric}", {"step_metric": self.step_metric, "summary": goal}))
        if self.per_layer:
            metrics = self.layer_metrics(report)
            for layer in report.layers:
                for metric, goal in _SUMMARY_GOALS.items():
                    if metric in metrics:
                        key = f"{self.prefix}{layer.longname}/{metric}"
                        wanted.append((key, {"step_metric": self.step_metric, "summary": goal}))
        for name, kwargs in wanted:
            if name not in self._defined:
                run.define_metric(name, **kwargs)
                self._defined.add(name)

    # -- payload pieces -------------------------------------------------------------------------------------

    def _scalars(self, report: SpectralReport) -> dict[str, float]:
        return dict(self.scalar_values(report, summary=self.log_summary, per_layer=self.per_layer))

    def _media(self, wandb: Any, media: ReportMedia, *, histograms: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if histograms:
            for layer, (counts, edges, _) in media.histograms.items():
                out[f"{self.prefix}{layer}/esd"] = wandb.Histogram(np_histogram=(counts, edges))
        for layer, rgba in media.esd_images.items():
            out[f"{self.prefix}{layer}/esd_plot"] = wandb.Image(rgba, caption=media.caption(layer))
        return out

    # -- public API -----------------------------------------------------------------------------------------

    def _write(
        self, report: SpectralReport, *, epoch: int, step: int, is_last: bool, media: ReportMedia | None
    ) -> None:
        try:
            self._log_report(report, epoch=epoch, step=step, is_last=is_last, media=media)
        except Exception as exc:  # logging must never stop training
            self._warn_once("log", f"could not log the spectral report to W&B ({exc!r}); training continues")

    def _log_report(
        self, report: SpectralReport, *, epoch: int, step: int, is_last: bool, media: ReportMedia | None
    ) -> None:
        wandb = self._import_wandb()
        if wandb is None:
            return
        run = self._resolve_run()
        if run is None:
            return
        if media is None:
            images = self._schedule.claim(epoch, is_last, step)
            media = ReportMedia(
                report, epoch=epoch, step=step, images=images, max_layers=self.max_media_layers
            )

        repeat = self._last_epoch == epoch and self._last_step == step  # the same analysis sent again
        payload: dict[str, Any] = {self.step_metric: step}
        if not repeat:
            self._define_metrics(run, report)
            payload.update(self._scalars(report))
            if self.log_table and report.layers:
                payload[f"{self.prefix}layers"] = _table(wandb, report, epoch, step)
            self._data.add(report, epoch=epoch, step=step)
        if media.images and media.esd_images:
            self.media_epochs.append(epoch)
        payload.update(self._media(wandb, media, histograms=self.log_histograms and not repeat))
        self._last_epoch = epoch
        self._last_step = step
        if len(payload) > 1:
            run.log(payload)

    def finish(
        self, history: Sequence[dict[str, Any]] | None = None, figures: FinalFigures | None = None
    ) -> None:
        """Log the end-of-training figures: the alpha heatmap and the summary metrics over training.

        Args:
            history: the callback's per-analysis summaries (dicts with ``epoch``, ``step`` and summary metrics,
                with or without the prefix); default: the summaries of the reports this sink logged.
            figures: the figures already drawn for every sink (`FinalFigures`); default: drawn here.

        Calling it twice does nothing the second time; it does not finish the W&B run.

        Example:
            >>> sink = WandbSink(None)
            >>> sink.finish()  # nothing logged yet: nothing to do
        """
        if self._finished:
            return
        self._finished = True
        try:
            self._finish(history, figures)
        except Exception as exc:  # logging must never stop training
            self._warn_once("finish", f"could not log the end-of-training plots to W&B ({exc!r})")

    def _finish(self, history: Sequence[dict[str, Any]] | None, figures: FinalFigures | None) -> None:
        if figures is None:
            if not history and not self._data.layer_rows:
                return
            figures = self._data.figures(history, prefix=self.prefix, x=self.x_axis)
        if not figures.figures:
            return
        wandb = self._import_wandb()
        if wandb is None:
            return
        run = self._resolve_run()
        if run is None:
            return
        captions = {"alpha_heatmap": "alpha per layer", "summary_plot": "summary metrics"}
        payload: dict[str, Any] = {self.step_metric: self._last_step}
        for name, rgba in figures.arrays.items():
            payload[f"{self.prefix}{name}"] = wandb.Image(rgba, caption=captions[name])
        run.log(payload)

    def __repr__(self) -> str:
        return (
            f"WandbSink(prefix={self.prefix!r}, step_metric={self.step_metric!r}, per_layer={self.per_layer}, "
            f"media_every_n_epochs={self.media_every_n_epochs}, log_summary={self.log_summary})"
        )

"""`ReportSink`: what every dashboard sink (W&B, TensorBoard, MLflow) shares: the one entry point
`ReportSink.log_report` and the report's scalars under their keys.

A sink implements ``_write``; `ww_callbacks.sinks.lifecycle.RunSinks` calls ``log_report`` on every open sink with
the analysis' `ReportMedia`, computed once for all of them.

Example:
    >>> import numpy as np, ww_callbacks
    >>> class Printer(ReportSink):
    ...     def _write(self, report, *, epoch, step, is_last, media):
    ...         print(step, "ww/fc/alpha" in dict(self.scalar_values(report)))
    >>> weights = {"fc.weight": np.random.default_rng(0).normal(size=(80, 40))}
    >>> Printer().log_report(ww_callbacks.analyze(weights, seed=0), epoch=0, step=7)
    7 True
"""

from __future__ import annotations

from typing import Any

from .._util import finite_or_none
from ..spectral.report import SpectralReport
from .media import ReportMedia

__all__ = ["ReportSink"]


class ReportSink:
    """One dashboard that gets every analysis.

    Attributes:
        prefix: the key prefix (``"ww/"``).
        metrics: the per-layer metrics of `scalar_values` (None: the report's summary metrics).
    """

    prefix: str = "ww/"
    metrics: tuple[str, ...] | None = None

    def log_report(
        self,
        report: SpectralReport,
        *,
        epoch: int,
        step: int,
        is_last: bool = False,
        media: ReportMedia | None = None,
    ) -> None:
        """Send one analysis, taken at ``epoch`` / ``step``; ``is_last`` when training ends with it.

        Sent again for the same ``(epoch, step)`` (the callback learned later that it was the last), a sink only
        adds the ESD images that analysis has not had yet. ``media``: the analysis' histograms and images,
        shared with the other sinks (None: computed by this sink).
        """
        self._write(report, epoch=int(epoch), step=int(step), is_last=bool(is_last), media=media)

    def _write(
        self, report: SpectralReport, *, epoch: int, step: int, is_last: bool, media: ReportMedia | None
    ) -> None:
        raise NotImplementedError

    def layer_metrics(self, report: SpectralReport) -> tuple[str, ...]:
        """The per-layer metrics this sink sends: `metrics`, or the report's summary metrics."""
        return self.metrics if self.metrics is not None else tuple(report.summary)

    def scalar_values(
        self, report: SpectralReport, *, summary: bool = True, per_layer: bool = True
    ) -> list[tuple[str, float]]:
        """``(key, value)`` of the summary scalars ``{prefix}{metric}`` (with ``summary``) and of the per-layer
        ``{prefix}{layer}/{metric}`` of `layer_metrics` (with ``per_layer``); values that are not finite (a
        failed fit) are left out."""
        out: list[tuple[str, Any]] = (
            [(f"{self.prefix}{k}", v) for k, v in report.summary.items()] if summary else []
        )
        if per_layer:
            metrics = self.layer_metrics(report)
            for layer in report.layers:
                out += [(f"{self.prefix}{layer.longname}/{m}", getattr(layer, m, None)) for m in metrics]
        return [(key, number) for key, value in out if (number := finite_or_none(value)) is not None]

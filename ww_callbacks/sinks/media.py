"""What the dashboards draw from an analysis, computed once and shared by every sink.

One analysis feeds several dashboards (W&B, TensorBoard, MLflow); the eigenvalue histograms and the ESD images
are the same for all of them, so `ReportMedia` computes each at most once, lazily, on the thread that emits the
report (the background worker with ``background=True``; only rank 0 emits). `MediaSchedule` says which analyses
get ESD images: the first, then every ``media_every_n_epochs`` epochs, and the last. `FinalFigures` renders the
end-of-training figures (the summary metrics over training and the alpha heatmap) once for all sinks.

Example:
    >>> import numpy as np, ww_callbacks
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(128, 64))}, seed=0)
    >>> media = ReportMedia(report, epoch=0, step=0, images=False)
    >>> counts, edges, values = media.histograms["fc"]
    >>> int(counts.sum()) == values.size == 64, media.esd_images
    (True, {})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from ..spectral.report import SpectralReport
from ..spectral.zeros import split_zeros

__all__ = [
    "DEFAULT_MEDIA_EVERY_N_EPOCHS",
    "MAX_HISTOGRAM_BINS",
    "FinalFigures",
    "FigureData",
    "MediaSchedule",
    "ReportMedia",
    "figure_to_array",
]

log = logging.getLogger(__name__)

#: Default spacing, in epochs, of the ESD images when ``media_every_n_epochs`` is None.
DEFAULT_MEDIA_EVERY_N_EPOCHS = 5

#: The most histogram bins (W&B refuses more than 512).
MAX_HISTOGRAM_BINS = 512

#: Resolution of the rendered figures.
_DPI = 90


def figure_to_array(fig: Any, dpi: int = _DPI) -> np.ndarray:
    """A matplotlib Figure rendered to an RGBA ``uint8`` array (height x width x 4), without pyplot.

    Example:
        >>> from matplotlib.figure import Figure
        >>> figure_to_array(Figure(figsize=(2, 1)), dpi=50).shape
        (50, 100, 4)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def _histogram(values: np.ndarray, max_bins: int = MAX_HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """numpy histogram with numpy's "auto" bin count, capped at ``max_bins``."""
    n_bins = len(np.histogram_bin_edges(values, bins="auto")) - 1
    return np.histogram(values, bins=int(min(max(n_bins, 1), max_bins)))


class MediaSchedule:
    """Which analyses get ESD images: the first, then one at least ``every_n_epochs`` epochs after the last
    images (None: 5), and the last analysis of training (also when it shares its epoch with earlier images, as
    on step schedules); ``every_n_epochs=0``: none. An analysis never gets images twice.

    Example:
        >>> schedule = MediaSchedule(2)
        >>> [e for e in range(6) if schedule.claim(e, is_last=e == 5)]
        [0, 2, 4, 5]
    """

    def __init__(self, every_n_epochs: int | None = None) -> None:
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"media_every_n_epochs must be None or >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        #: The (epoch, step) of the analyses that got images.
        self.analyses: list[tuple[int, int]] = []

    @property
    def epochs(self) -> list[int]:
        """Epochs that got images."""
        return [epoch for epoch, _ in self.analyses]

    def wants(self, epoch: int, is_last: bool, step: int | None = None) -> bool:
        """Whether the analysis at ``epoch`` (and ``step``) gets images."""
        if self.every_n_epochs == 0:
            return False
        if is_last:
            return (epoch, step) not in self.analyses if step is not None else epoch not in self.epochs
        if not self.analyses:
            return True
        return epoch - self.analyses[-1][0] >= (self.every_n_epochs or DEFAULT_MEDIA_EVERY_N_EPOCHS)

    def claim(self, epoch: int, is_last: bool, step: int | None = None) -> bool:
        """`wants`, and remember the analysis when it does."""
        if self.wants(epoch, is_last, step):
            self.analyses.append((epoch, step if step is not None else -1))
            return True
        return False


class ReportMedia:
    """The histograms and ESD images of one analysis, each computed on first use and then shared.

    Args:
        report: the analysis.
        epoch, step: where it was taken (the images' captions).
        images: whether this analysis gets ESD images (`MediaSchedule`).
        max_layers: the most layers that get an image.

    Attributes:
        histograms: ``{layer: (counts, edges, log10 eigenvalues)}`` over the eigenvalues that are not
            numerically zero (`ww_callbacks.spectral.zeros`; log10 of a numerical zero is noise), numpy's
            "auto" bins capped at 512; layers without eigenvalues are left out.
        esd_images: ``{layer: RGBA uint8 array}`` of `ww_callbacks.plots.plot_esd` (empty when ``images`` is
            False or matplotlib is missing).

    Example:
        >>> import numpy as np, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.eye(40)[:, :30] * 3}, seed=0)
        >>> ReportMedia(report, epoch=2, step=20).caption("fc")
        'fc, epoch 2 (step 20)'
    """

    def __init__(
        self, report: SpectralReport, *, epoch: int, step: int, images: bool = True, max_layers: int = 16
    ) -> None:
        self.report = report
        self.epoch, self.step = int(epoch), int(step)
        self.images = bool(images)
        self.max_layers = int(max_layers)

    def caption(self, layer: str) -> str:
        return f"{layer}, epoch {self.epoch} (step {self.step})"

    @cached_property
    def histograms(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = {}
        for layer in self.report.layers:
            if layer.evals is None:
                continue
            evals, _ = split_zeros(layer.evals, layer.N, layer.M)
            if evals.size == 0:
                continue
            values = np.log10(evals)
            counts, edges = _histogram(values)
            out[layer.longname] = (counts, edges, values)
        return out

    @cached_property
    def esd_images(self) -> dict[str, np.ndarray]:
        if not self.images:
            return {}
        try:
            from ..plots import plot_esd
        except ImportError as exc:
            log.warning("no ESD images: %s", exc)
            return {}
        with_evals = [layer for layer in self.report.layers if layer.evals is not None]
        return {layer.longname: figure_to_array(plot_esd(layer)) for layer in with_evals[: self.max_layers]}


class FinalFigures:
    """The end-of-training figures, rendered once for every sink: ``summary_plot`` (`plot_history`, the metrics
    over training) and ``alpha_heatmap`` (`plot_alpha_heatmap`), each on a step axis when the history comes from
    a step schedule.

    Args:
        summaries: one summary per analysis (``epoch``, ``step``, metrics without prefix).
        layer_rows: per-layer rows (``epoch``, ``step``, ``layer``, ``status``, ``alpha``).
        x: ``"epoch"``, ``"step"`` or ``"auto"`` (`ww_callbacks.plots.history_x_axis`).

    Attributes:
        figures: ``{name: Figure}``; a figure that cannot be drawn (no finite value, no matplotlib) is left out.
        files: the file name each figure is saved under (`save`, the MLflow artifacts).

    Example:
        >>> rows = [{"epoch": 0, "step": s, "layer": "fc", "status": "success", "alpha": 3.0 + s}
        ...         for s in (3, 7)]
        >>> sorted(FinalFigures([], rows, x="auto").figures)
        ['alpha_heatmap']
    """

    files: Mapping[str, str] = {"summary_plot": "history.png", "alpha_heatmap": "alpha_heatmap.png"}

    def __init__(
        self,
        summaries: Sequence[Mapping[str, Any]],
        layer_rows: Sequence[Mapping[str, Any]],
        *,
        x: str = "auto",
    ) -> None:
        self.figures: dict[str, Any] = {}
        try:
            from ..plots import plot_alpha_heatmap, plot_history
        except ImportError as exc:
            log.warning("no end-of-training plots: %s", exc)
            return
        for name, plot, data in (
            ("summary_plot", plot_history, summaries),
            ("alpha_heatmap", plot_alpha_heatmap, layer_rows),
        ):
            if not data:
                continue
            try:
                self.figures[name] = plot([dict(row) for row in data], x=x)
            except (ValueError, KeyError) as exc:  # e.g. no finite value to draw: nothing worth an image
                log.debug("no %s (%s)", name, exc)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """``{name: RGBA uint8 array}``, rendered once."""
        return {name: figure_to_array(fig) for name, fig in self.figures.items()}

    def save(self, directory: Any) -> list[str]:
        """Save each figure as a PNG in ``directory`` (`files` names); returns the paths written."""
        import os

        os.makedirs(directory, exist_ok=True)
        paths = []
        for name, fig in self.figures.items():
            path = os.path.join(directory, self.files[name])
            fig.savefig(path, dpi=_DPI)
            paths.append(path)
        return paths


class FigureData:
    """What the end figures are drawn from, gathered analysis by analysis: the per-layer alpha rows and the
    summaries (prefix stripped).

    Example:
        >>> import numpy as np, ww_callbacks
        >>> data = FigureData()
        >>> data.add(ww_callbacks.analyze({"fc.weight": np.eye(40)[:, :30]}, seed=0), epoch=0, step=4)
        >>> data.layer_rows[0]["layer"], data.summaries[0]["step"]
        ('fc', 4)
    """

    def __init__(self) -> None:
        self.layer_rows: list[dict[str, Any]] = []
        self.summaries: list[dict[str, Any]] = []

    def add(self, report: SpectralReport, *, epoch: int, step: int) -> None:
        for layer in report.layers:
            self.layer_rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": layer.longname,
                    "status": layer.status,
                    "alpha": layer.alpha,
                }
            )
        self.summaries.append({"epoch": epoch, "step": step, **report.summary})

    def figures(
        self, history: Sequence[Mapping[str, Any]] | None = None, *, prefix: str = "", x: str = "auto"
    ) -> FinalFigures:
        """The end figures; ``history`` (the callback's summaries, keys with or without ``prefix``) replaces
        the summaries gathered here when given."""
        summaries = [_strip(row, prefix) for row in history] if history else self.summaries
        return FinalFigures(summaries, self.layer_rows, x=x)


def _strip(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    n = len(prefix)
    return {(k[n:] if prefix and k.startswith(prefix) else k): v for k, v in row.items()}

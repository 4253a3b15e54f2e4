"""Write spectral reports into a TensorBoard run: ESD histograms, ESD images, per-layer scalars, end figures.

`TensorBoardSink` writes through the writer the ecosystem already has: the run's own ``SummaryWriter``
(Lightning's ``TensorBoardLogger.experiment``, the Hugging Face ``TensorBoardCallback.tb_writer``), or, for a
directory (Keras' ``TensorBoard`` callback, the ``tensorboard_dir=`` option), a ``torch.utils.tensorboard``
``SummaryWriter`` or a ``tf.summary`` file writer opened there. Either way the events land in the directory the
user's logger writes, which TensorBoard shows as one run. No error here ever stops training.

Example:
    >>> import numpy as np, tempfile, ww_callbacks
    >>> sink = TensorBoardSink(log_dir=tempfile.mkdtemp(), scalars=True)
    >>> sink.log_report(ww_callbacks.analyze({"fc.weight": np.eye(40)[:, :30]}, seed=0), epoch=0, step=0)
    >>> sink.finish()
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..spectral.report import SpectralReport
from .base import ReportSink
from .media import FinalFigures, ReportMedia

__all__ = ["TensorBoardSink", "open_summary_writer"]

log = logging.getLogger(__name__)


class _TorchWriter:
    """A ``SummaryWriter`` (torch's or tensorboardX's: the same methods)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, global_step=step)

    def histogram(
        self, tag: str, counts: np.ndarray, edges: np.ndarray, values: np.ndarray, step: int
    ) -> None:
        # The histogram numpy already computed (the one W&B gets), not one rebinned by the writer.
        self.writer.add_histogram_raw(
            tag,
            min=float(values.min()),
            max=float(values.max()),
            num=int(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.square(values).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )

    def image(self, tag: str, rgba: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, rgba[..., :3], global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _TFWriter:
    """A ``tf.summary`` file writer (what Keras' ``TensorBoard`` callback writes with)."""

    def __init__(self, writer: Any) -> None:
        import tensorflow as tf

        self.writer, self.summary = writer, tf.summary

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self.writer.as_default():
            self.summary.scalar(tag, value, step=step)

    def histogram(
        self, tag: str, counts: np.ndarray, edges: np.ndarray, values: np.ndarray, step: int
    ) -> None:
        with self.writer.as_default():  # tf.summary bins the values itself: same data, same bin count
            self.summary.histogram(tag, values, step=step, buckets=len(counts))

    def image(self, tag: str, rgba: np.ndarray, step: int) -> None:
        with self.writer.as_default():
            self.summary.image(tag, rgba[None, ..., :3], step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_summary_writer(log_dir: str, prefer: str = "torch") -> Any:
    """A new event-file writer in ``log_dir``: torch's ``SummaryWriter``, or ``tf.summary``'s (``prefer="tf"``
    tries TensorFlow first); an ImportError says what to install when neither is there.

    Example:
        >>> import tempfile
        >>> writer = open_summary_writer(tempfile.mkdtemp()); writer.close()
    """
    order = ("tf", "torch") if prefer == "tf" else ("torch", "tf")
    for kind in order:
        try:
            if kind == "torch":
                from torch.utils.tensorboard import SummaryWriter

                return _TorchWriter(SummaryWriter(log_dir=log_dir))
            import tensorflow as tf

            return _TFWriter(tf.summary.create_file_writer(log_dir))
        except ImportError:
            continue
    raise ImportError(
        "writing TensorBoard events needs torch and tensorboard, or tensorflow: pip install tensorboard"
    )


def _wrap(writer: Any) -> Any:
    if writer is None or isinstance(writer, (_TorchWriter, _TFWriter)):
        return writer
    if hasattr(writer, "add_histogram_raw"):
        return _TorchWriter(writer)
    return _TFWriter(writer)


class TensorBoardSink(ReportSink):
    """Send each `SpectralReport` to a TensorBoard run, at the analysis' step.

    Per analysis: ``{prefix}{layer}/esd``, a histogram of log10 of the layer's eigenvalues that are not
    numerically zero (the bins W&B gets); ``{prefix}{layer}/esd_plot``, the `plot_esd` image, on the analyses
    `MediaSchedule` picks (first, every ``media_every_n_epochs`` epochs, last); with ``scalars=True`` the summary
    scalars ``{prefix}{metric}`` and per-layer ``{prefix}{layer}/{metric}`` (leave it False when the framework
    already writes the callback's values to this run, as Lightning's logger, the Trainer's ``on_log`` and Keras'
    epoch logs do). `finish` adds ``{prefix}summary_plot`` and ``{prefix}alpha_heatmap`` images, saves them as
    ``history.png`` and ``alpha_heatmap.png`` in the run directory, and copies the history file there when it
    lives elsewhere.

    Args:
        writer: the run's writer (a ``SummaryWriter``), a callable returning it (None once closed: then one is
            opened in ``log_dir``), or None to open one in ``log_dir``.
        log_dir: the run directory (for the files and a writer of our own).
        prefix: the key prefix (default ``"ww/"``).
        scalars: write the scalars too.
        metrics: the per-layer metrics with ``scalars`` (default: the report's summary metrics).
        prefer: ``"torch"`` or ``"tf"``: which library a writer of our own comes from first.

    Example:
        >>> TensorBoardSink(log_dir="runs/x").log_dir
        'runs/x'
    """

    def __init__(
        self,
        writer: Any = None,
        *,
        log_dir: str | None = None,
        prefix: str = "ww/",
        scalars: bool = False,
        metrics: Sequence[str] | None = None,
        prefer: str = "torch",
    ) -> None:
        if writer is None and log_dir is None:
            raise ValueError("TensorBoardSink needs a writer or a log_dir")
        self._live: Callable[[], Any] = writer if callable(writer) else (lambda: writer)
        self.log_dir = log_dir if log_dir is not None else _writer_dir(self._live())
        self.prefix, self.scalars, self.prefer = prefix, bool(scalars), prefer
        self.metrics = None if metrics is None else tuple(metrics)
        self._own: Any = None
        self._last: tuple[int, int] | None = None

    def _writer(self) -> Any:
        live = _wrap(self._live())
        if live is not None:
            return live
        if self._own is None:
            if self.log_dir is None:
                return None
            self._own = open_summary_writer(self.log_dir, prefer=self.prefer)
        return self._own

    def _write(
        self, report: SpectralReport, *, epoch: int, step: int, is_last: bool, media: ReportMedia | None
    ) -> None:
        writer = self._writer()
        if writer is None:
            return
        media = media if media is not None else ReportMedia(report, epoch=epoch, step=step)
        if self._last != (epoch, step):
            self._last = (epoch, step)
            for tag, value in self.scalar_values(report) if self.scalars else ():
                writer.scalar(tag, value, step)
            for layer, (counts, edges, values) in media.histograms.items():
                writer.histogram(f"{self.prefix}{layer}/esd", counts, edges, values, step)
        for layer, rgba in media.esd_images.items():
            writer.image(f"{self.prefix}{layer}/esd_plot", rgba, step)
        writer.flush()

    def finish(self, figures: FinalFigures | None = None, *, history_file: str | None = None) -> None:
        """Write the end figures at the last step, save them (and the history file) in the run directory,
        and close a writer this sink opened."""
        try:
            writer = self._writer() if figures is not None and figures.figures else None
            step = self._last[1] if self._last else 0
            if writer is not None and figures is not None:
                for name, rgba in figures.arrays.items():
                    writer.image(f"{self.prefix}{name}", rgba, step)
                writer.flush()
            if self.log_dir is not None:
                if figures is not None:
                    figures.save(self.log_dir)
                _copy_beside(history_file, self.log_dir)
        finally:
            own, self._own = self._own, None
            if own is not None:
                own.close()

    def __repr__(self) -> str:
        return f"TensorBoardSink(log_dir={self.log_dir!r}, scalars={self.scalars})"


def _writer_dir(writer: Any) -> str | None:
    """The directory a writer writes to (torch: ``log_dir``; tensorboardX: ``logdir``)."""
    for attribute in ("log_dir", "logdir"):
        value = getattr(writer, attribute, None)
        if value is not None and not callable(value):
            return str(value)
    get = getattr(writer, "get_logdir", None)
    return str(get()) if callable(get) else None


def _copy_beside(path: str | None, directory: str) -> None:
    """Copy the history file into ``directory`` unless it is there already."""
    if path is None or not os.path.exists(path):
        return
    if os.path.abspath(os.path.dirname(path)) != os.path.abspath(directory):
        shutil.copy(path, os.path.join(directory, os.path.basename(path)))

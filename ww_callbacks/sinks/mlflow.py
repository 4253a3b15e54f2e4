"""Send spectral reports to an MLflow run: ESD images per step, scalars where nobody else logs them, and at the
end the history file and the plots as the run's artifacts.

`MlflowSink` logs with an ``MlflowClient`` to one run id: Lightning's ``MLFlowLogger`` (its ``experiment`` and
``run_id``), the run the Hugging Face ``MLflowCallback`` started (``report_to=["mlflow"]``), or the active
``mlflow`` run. A client needs no active run, so the artifacts still reach a run its owner already ended (the
Trainer's ``MLflowCallback`` ends its run before later callbacks see ``on_train_end``). No error here ever stops
training.

Example (needs an MLflow store, so it is not a doctest)::

    import mlflow, numpy as np, ww_callbacks
    from ww_callbacks.sinks.mlflow import MlflowSink
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    with mlflow.start_run() as run:
        sink = MlflowSink(mlflow.MlflowClient(), run.info.run_id, scalars=True)
        sink.log_report(ww_callbacks.analyze({"fc.weight": np.eye(40)[:, :30]}, seed=0), epoch=0, step=0)
        sink.finish()
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from ..spectral.report import SpectralReport
from .base import ReportSink
from .media import FinalFigures, ReportMedia

__all__ = ["MlflowSink", "mlflow_key"]

log = logging.getLogger(__name__)

#: The folder of the run's artifacts that holds ours.
ARTIFACT_DIR = "ww"


def mlflow_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in metric and image keys replaced by ``_`` (as the Trainer's
    ``MLflowCallback`` does).

    Example:
        >>> mlflow_key("ww/blocks[0].fc/alpha")
        'ww/blocks_0_.fc/alpha'
    """
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", key)


class MlflowSink(ReportSink):
    """Send each `SpectralReport` to one MLflow run.

    Per analysis: ``{prefix}{layer}/esd_plot`` images (``client.log_image`` with the analysis' step, shown in
    the run's image view) on the analyses `MediaSchedule` picks; with ``scalars=True`` also the summary and
    per-layer scalars (leave it False when the framework's own MLflow logging carries the callback's values).
    MLflow has no histogram type: the eigenvalue histograms are not sent. `finish` logs the history file and
    ``history.png`` / ``alpha_heatmap.png`` under the run's ``ww/`` artifacts.

    Args:
        client: an ``mlflow.MlflowClient`` (None: a client for the current tracking URI).
        run_id: the run to log to.
        prefix: the key prefix (default ``"ww/"``).
        scalars: log the scalars too.
        metrics: the per-layer metrics with ``scalars`` (default: the report's summary metrics).

    Example:
        >>> MlflowSink(object(), "0123").run_id
        '0123'
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        prefix: str = "ww/",
        scalars: bool = False,
        metrics: Sequence[str] | None = None,
    ) -> None:
        self._client = client
        self.run_id = str(run_id)
        self.prefix, self.scalars = prefix, bool(scalars)
        self.metrics = None if metrics is None else tuple(metrics)
        self._last: tuple[int, int] | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient()
        return self._client

    def _write(
        self, report: SpectralReport, *, epoch: int, step: int, is_last: bool, media: ReportMedia | None
    ) -> None:
        media = media if media is not None else ReportMedia(report, epoch=epoch, step=step)
        if self._last != (epoch, step):
            self._last = (epoch, step)
            self._log_scalars(report, step)
        for layer, rgba in media.esd_images.items():
            key = mlflow_key(f"{self.prefix}{layer}/esd_plot")
            self.client.log_image(self.run_id, rgba, key=key, step=step)

    def _log_scalars(self, report: SpectralReport, step: int) -> None:
        if not self.scalars:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(key), value, now, step) for key, value in self.scalar_values(report)]
        for start in range(0, len(batch), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def finish(self, figures: FinalFigures | None = None, *, history_file: str | None = None) -> None:
        """Log the history file and the end figures as the run's artifacts (under ``ww/``)."""
        client = self.client
        if history_file is not None:
            client.log_artifact(self.run_id, history_file, artifact_path=ARTIFACT_DIR)
        if figures is not None:
            for name, rgba in figures.arrays.items():
                client.log_image(self.run_id, rgba, artifact_file=f"{ARTIFACT_DIR}/{figures.files[name]}")

    def __repr__(self) -> str:
        return f"MlflowSink(run_id={self.run_id!r}, scalars={self.scalars})"

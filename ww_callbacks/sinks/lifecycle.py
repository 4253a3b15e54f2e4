"""The sinks of one training run: open them, send every report, close them; and the choices callbacks share.

`RunSinks` holds the history file writer, the W&B sink and the TensorBoard and MLflow sinks of one ``fit`` (on
one process: rank 0), starts a W&B run only when asked (``wandb_init_kwargs``) and finishes only a run it
started. Each analysis's histograms and images are computed once (`ww_callbacks.sinks.media.ReportMedia`) and
shared by every sink, as are the end-of-training figures. `wandb_options` says what the W&B sink logs itself,
depending on whether the framework already sends the summaries there, and `summary_line` is the verbose log
line. No failure here ever stops training: each becomes a warning.

Example:
    >>> sinks = RunSinks(warn=print)
    >>> sinks.open(history_path=None, wandb_run=None); sinks.close()
    >>> wandb_options(per_layer=False, summaries_elsewhere=True)
    {'log_summary': False, 'per_layer': True}
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..spectral.report import SpectralReport
from .discover import Dashboard
from .media import FigureData, MediaSchedule, ReportMedia

__all__ = ["RunSinks", "summary_line", "wandb_options"]


def wandb_options(*, per_layer: bool, summaries_elsewhere: bool) -> dict[str, Any]:
    """What `ww_callbacks.sinks.wandb.WandbSink` logs itself.

    When the framework already sends the summaries to the run (Lightning's ``WandbLogger``, Keras ``logs``
    read by ``WandbMetricsLogger``), the sink adds only what the framework does not send: no summaries, and
    per-layer scalars only when the callback does not log them (``per_layer=False``). Otherwise (a run the
    callback started, or a bare ``wandb.run`` under Lightning) the sink logs everything.

    Example:
        >>> wandb_options(per_layer=True, summaries_elsewhere=False)
        {'log_summary': True, 'per_layer': True}
    """
    if summaries_elsewhere:
        return {"log_summary": False, "per_layer": not per_layer}
    return {"log_summary": True, "per_layer": True}


def summary_line(epoch: int, metrics: Mapping[str, float]) -> str:
    """The verbose log line of one analysis: the summary scalars (per-layer keys left out).

    Example:
        >>> summary_line(3, {"ww/alpha": 3.14159, "ww/fc1/alpha": 2.0})
        'WeightWatcherCallback epoch 3: ww/alpha=3.142'
    """
    summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.count("/") <= 1)
    return f"WeightWatcherCallback epoch {epoch}: {summary}"


class RunSinks:
    """The history file, the W&B sink and the dashboards (TensorBoard, MLflow) of one training run.

    Args:
        warn: how failures are reported (the engine's ``warn``: a ``RuntimeWarning``).

    Example:
        >>> import os, tempfile, numpy as np, ww_callbacks
        >>> path = os.path.join(tempfile.mkdtemp(), "h.jsonl")
        >>> sinks = RunSinks(warn=print)
        >>> sinks.open(history_path=path, wandb_run=None)
        >>> sinks.emit(ww_callbacks.analyze({"fc.weight": np.eye(20)}, seed=0), epoch=0, step=0, is_last=True)
        >>> sinks.close(); os.path.exists(path)
        True
    """

    def __init__(self, *, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self._history_writer: Any = None
        self._wandb_sink: Any = None
        self._dashboards: list[Any] = []
        self._owned_run: Any = None
        self._media = MediaSchedule()
        self._data = FigureData()
        self._prefix, self._x_axis, self._max_media_layers = "ww/", "auto", 16

    def resolve_wandb_run(
        self, candidate: Any = None, *, init_kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        """The W&B run to log to: ``candidate``, else an active ``wandb.run`` if wandb is already imported,
        else a new run when ``init_kwargs`` is given, else None. Never imports wandb otherwise."""
        if candidate is not None:
            return candidate
        wandb = sys.modules.get("wandb")
        active = getattr(wandb, "run", None) if wandb is not None else None
        if active is not None:
            return active
        if init_kwargs is not None:
            import wandb as wandb_module

            self._owned_run = wandb_module.init(**init_kwargs)
            return self._owned_run
        return None

    def owns(self, run: Any) -> bool:
        """True when ``run`` is the W&B run these sinks started (from ``init_kwargs``)."""
        return run is not None and run is self._owned_run

    def open(
        self,
        *,
        history_path: Any,
        wandb_run: Any,
        dashboards: Sequence[Dashboard] = (),
        **wandb_sink_options: Any,
    ) -> None:
        """Attach a history file, a W&B run (`WandbSink` options in ``wandb_sink_options``; their ``prefix``,
        ``metrics``, ``media_every_n_epochs``, ``max_media_layers`` and ``x_axis`` serve the dashboards too)
        and the ``dashboards`` (`ww_callbacks.sinks.discover.Dashboard`).

        Sinks left open by a previous run are closed first; a run `resolve_wandb_run` just started stays open.
        """
        self.close(finish_run=False)
        options = wandb_sink_options
        self._media = MediaSchedule(options.get("media_every_n_epochs"))
        self._data = FigureData()
        self._prefix = options.get("prefix", "ww/")
        self._x_axis = options.get("x_axis", "auto")
        self._max_media_layers = options.get("max_media_layers", 16)
        for dashboard in dashboards:
            try:
                self._dashboards.append(self._dashboard_sink(dashboard, options))
            except Exception as exc:
                self._warn(f"cannot log to {dashboard.kind} ({type(exc).__name__}: {exc})")
        if history_path is not None:
            try:
                from .history import HistoryWriter

                self._history_writer = HistoryWriter(history_path, append=True)
            except Exception as exc:
                self._warn(f"cannot write the history file {history_path} ({type(exc).__name__}: {exc})")
        if wandb_run is not None:
            try:
                from .wandb import WandbSink

                self._wandb_sink = WandbSink(wandb_run, **wandb_sink_options)
            except Exception as exc:
                self._warn(f"cannot log to W&B ({type(exc).__name__}: {exc})")

    @staticmethod
    def _dashboard_sink(dashboard: Dashboard, options: Mapping[str, Any]) -> Any:
        common = {"prefix": options.get("prefix", "ww/"), "metrics": options.get("metrics")}
        # Scalars only where the framework does not write ours already; then all of them, per layer too.
        scalars = not dashboard.carries_scalars
        if dashboard.kind == "tensorboard":
            from .tensorboard import TensorBoardSink

            return TensorBoardSink(
                dashboard.writer,
                log_dir=dashboard.log_dir,
                scalars=scalars,
                prefer=dashboard.prefer,
                **common,
            )
        from .mlflow import MlflowSink

        return MlflowSink(dashboard.client, str(dashboard.run_id), scalars=scalars, **common)

    @property
    def sinks(self) -> list[Any]:
        """The open report sinks (W&B first, then the dashboards)."""
        return ([self._wandb_sink] if self._wandb_sink is not None else []) + list(self._dashboards)

    def emit(self, report: SpectralReport, *, epoch: int, step: int, is_last: bool) -> None:
        """Send one report to every open sink; ``is_last`` means training ends with this analysis. Histograms
        and images are computed once here, for all sinks."""
        if self._history_writer is not None:
            try:
                self._history_writer.write(report, epoch=epoch, step=step)
            except Exception as exc:
                self._warn(f"writing the history file failed ({type(exc).__name__}: {exc})")
        sinks = self.sinks
        if not sinks:
            return
        images = self._media.claim(epoch, is_last, step)
        media = ReportMedia(report, epoch=epoch, step=step, images=images, max_layers=self._max_media_layers)
        self._data.add(report, epoch=epoch, step=step)
        for sink in sinks:
            try:
                sink.log_report(report, epoch=epoch, step=step, is_last=is_last, media=media)
            except Exception as exc:
                self._warn(f"logging to {_name(sink)} failed ({type(exc).__name__}: {exc})")

    def close(self, history: Sequence[Mapping[str, Any]] | None = None, *, finish_run: bool = True) -> None:
        """Flush and close the sinks: the end figures (drawn once) to W&B and the dashboards, the history file
        and the figures as MLflow artifacts and beside the TensorBoard events, and a run these sinks started is
        finished (with ``finish_run``)."""
        writer, sink, dashboards = self._history_writer, self._wandb_sink, self._dashboards
        run = self._owned_run if finish_run else None
        self._history_writer = self._wandb_sink = None
        self._dashboards = []
        if finish_run:
            self._owned_run = None
        history_file = None if writer is None else str(writer.path)
        figures: Any = None
        if (sink is not None or dashboards) and (history or self._data.layer_rows):
            try:
                figures = self._data.figures(
                    [dict(row) for row in history or ()], prefix=self._prefix, x=self._x_axis
                )
            except Exception as exc:
                self._warn(f"drawing the end-of-training plots failed ({type(exc).__name__}: {exc})")
        calls: list[tuple[str, Any]] = [
            ("history file", None if writer is None else writer.close),
            ("W&B summary", None if sink is None else (lambda: sink.finish(history, figures=figures))),
        ]
        for dashboard in dashboards:
            calls.append((_name(dashboard), lambda d=dashboard: d.finish(figures, history_file=history_file)))
        calls.append(("W&B run", None if run is None else run.finish))
        for what, call in calls:
            if call is None:
                continue
            try:
                call()
            except Exception as exc:
                self._warn(f"closing the {what} failed ({type(exc).__name__}: {exc})")


def _name(sink: Any) -> str:
    return {"WandbSink": "W&B", "TensorBoardSink": "TensorBoard", "MlflowSink": "MLflow"}.get(
        type(sink).__name__, type(sink).__name__
    )

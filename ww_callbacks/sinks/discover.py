"""Find the dashboards a training run already writes to: TensorBoard runs and MLflow runs.

Each framework keeps them in its own place: Lightning's loggers (``TensorBoardLogger``, ``MLFlowLogger``), the
Hugging Face Trainer's ``report_to`` callbacks (``TensorBoardCallback``, ``MLflowCallback``), Keras callbacks
(``keras.callbacks.TensorBoard``) and an active ``mlflow`` run. The functions here recognize them by class name
and attributes, without importing any framework, and describe each as a `Dashboard` for
`ww_callbacks.sinks.lifecycle.RunSinks`. ``carries_scalars`` says whether the framework already writes the
callback's scalars there (then the sink adds only the pictures).

Example:
    >>> class TensorBoardLogger:  # what Lightning's looks like from here
    ...     experiment, log_dir = None, "lightning_logs/version_0"
    >>> [(d.kind, d.log_dir, d.carries_scalars) for d in lightning_dashboards([TensorBoardLogger()])]
    [('tensorboard', 'lightning_logs/version_0', True)]
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Dashboard",
    "active_mlflow_run",
    "calling_callbacks",
    "keras_dashboards",
    "lightning_dashboards",
    "trainer_dashboards",
]


@dataclass
class Dashboard:
    """One dashboard run to send reports to.

    Attributes:
        kind: ``"tensorboard"`` or ``"mlflow"``.
        carries_scalars: the framework already writes the callback's scalars to this run.
        writer: TensorBoard: a callable returning the run's live writer (None once its owner closed it).
        log_dir: TensorBoard: the run directory (files go there; a writer of our own opens there).
        prefer: TensorBoard: ``"torch"`` or ``"tf"``, the library of a writer of our own.
        client, run_id: MLflow: an ``MlflowClient`` (None: one for the current tracking URI) and the run.
    """

    kind: str
    carries_scalars: bool
    writer: Callable[[], Any] | None = None
    log_dir: str | None = None
    prefer: str = "torch"
    client: Any = None
    run_id: str | None = None


def _attribute(obj: Any, name: str) -> Callable[[], Any]:
    """A getter of ``obj.name`` at call time (the live writer: created late, closed early by its owner)."""
    return lambda: getattr(obj, name, None)


def _is(obj: Any, name: str) -> bool:
    """``obj`` is an instance of a class called ``name`` (or of a subclass)."""
    return any(cls.__name__ == name for cls in type(obj).__mro__)


def calling_callbacks(callback: Any, depth: int = 8) -> list[Any] | None:
    """The callbacks of the container (Keras' ``CallbackList``, the Trainer's ``CallbackHandler``) whose method
    is calling ``callback``'s hook now: framework hooks do not receive their siblings, their caller holds them.

    Example:
        >>> class Holder:
        ...     def __init__(self, cb): self.callbacks = [cb]
        ...     def call(self, cb): return cb.hook()
        >>> class Callback:
        ...     def hook(self): return calling_callbacks(self)
        >>> cb = Callback(); Holder(cb).call(cb) == [cb]
        True
    """
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        holder = frame.f_locals.get("self")
        callbacks = getattr(holder, "callbacks", None)
        if holder is not callback and isinstance(callbacks, list) and any(c is callback for c in callbacks):
            return callbacks
        frame = frame.f_back
    return None


def active_mlflow_run(*, carries_scalars: bool = False) -> Dashboard | None:
    """The active ``mlflow`` run, if mlflow is already imported and a run is active (never imports mlflow).

    Example:
        >>> active_mlflow_run() is None or active_mlflow_run().kind == "mlflow"
        True
    """
    mlflow = sys.modules.get("mlflow")
    active = getattr(mlflow, "active_run", None)
    run = active() if callable(active) else None
    if run is None:
        return None
    return Dashboard("mlflow", carries_scalars, run_id=run.info.run_id)


def lightning_dashboards(loggers: Iterable[Any]) -> list[Dashboard]:
    """A Lightning trainer's ``TensorBoardLogger`` and ``MLFlowLogger`` runs (both namespaces); the
    callback's values reach them through ``log_metrics``."""
    out = []
    for logger in loggers:
        if _is(logger, "TensorBoardLogger"):
            out.append(
                Dashboard(
                    "tensorboard", True, writer=_attribute(logger, "experiment"), log_dir=logger.log_dir
                )
            )
        elif _is(logger, "MLFlowLogger") and logger.run_id is not None:
            out.append(Dashboard("mlflow", True, client=logger.experiment, run_id=str(logger.run_id)))
    return out


def trainer_dashboards(callbacks: Iterable[Any]) -> list[Dashboard]:
    """The Hugging Face Trainer's ``report_to`` TensorBoard writer and MLflow run (the callback's values reach
    them through ``on_log``)."""
    out = []
    for callback in callbacks:
        if _is(callback, "TensorBoardCallback"):
            writer = getattr(callback, "tb_writer", None)
            log_dir = getattr(writer, "log_dir", None) or getattr(writer, "logdir", None)
            if log_dir is not None:  # the Trainer closes its writer first at train end: ours opens there then
                out.append(
                    Dashboard("tensorboard", True, writer=_attribute(callback, "tb_writer"), log_dir=log_dir)
                )
        elif _is(callback, "MLflowCallback"):
            run = active_mlflow_run(carries_scalars=True)
            if run is not None:
                out.append(run)
    return out


def keras_dashboards(callbacks: Iterable[Any], owner: Any = None) -> list[Dashboard]:
    """A ``keras.callbacks.TensorBoard`` run (its ``train`` directory) and the active MLflow run. Keras' callback
    writes the epoch logs, which carry the values of ``owner`` (the WeightWatcher callback) only when ``owner``
    comes first in the list; the MLflow run carries them when an mlflow callback is there."""
    out = []
    callbacks = list(callbacks)
    position = next((i for i, c in enumerate(callbacks) if c is owner), len(callbacks))
    for i, callback in enumerate(callbacks):
        if _is(callback, "TensorBoard") and type(callback).__module__.startswith("keras"):
            train_dir = getattr(callback, "_train_dir", None) or os.path.join(str(callback.log_dir), "train")
            out.append(Dashboard("tensorboard", position < i, log_dir=str(train_dir), prefer="tf"))
    mlflow_logs = any(type(c).__module__.startswith("mlflow") for c in callbacks)
    run = active_mlflow_run(carries_scalars=mlflow_logs)
    return out + ([run] if run is not None else [])

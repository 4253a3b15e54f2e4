"""Keras 3 callback: WeightWatcher metrics in ``logs`` on every backend, with data-free early stopping.

Example::

    import keras
    from ww_callbacks.keras import WeightWatcherCallback
    from ww_callbacks.stopping import AlphaBelow

    model.fit(x, y, epochs=20, callbacks=[
        WeightWatcherCallback(metrics=("alpha", "rand_distance"), early_stopping=AlphaBelow(2.0),
                              restore_best_weights=True),
        keras.callbacks.EarlyStopping(monitor="ww/rand_distance", mode="max", patience=3),
        keras.callbacks.CSVLogger("log.csv"),
    ])

Importing this module imports keras (and so the configured backend); importing ``ww_callbacks`` does not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras

from .engine import EngineViews, Host, MonitorResult, ResultPath, SpectralMonitor, StepSchedule
from .engine.schedule import make_schedule
from .engine.signature import Unpack, WatchKwargs, watch_options, watch_signature, with_shared_options
from .sinks.discover import Dashboard, calling_callbacks, keras_dashboards

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger(__name__)

_NAN = float("nan")


class WeightWatcherCallback(keras.callbacks.Callback, EngineViews):
    """Data-free spectral diagnostics (WeightWatcher metrics) and early stopping for Keras 3 ``fit``.

    When it runs: at the end of every epoch of ``model.fit`` (not in ``evaluate``/``predict``), it writes
    ``{prefix}{metric}`` (and ``{prefix}{layer}/{metric}`` with ``per_layer=True``) into the epoch's ``logs``.
    Every ``every_n_epochs``-th epoch (epochs ``n-1, 2n-1, ...``, as in the Lightning callback) and at the first
    epoch of each ``fit``, it copies the weights of the analyzable layers (Dense, Conv1D, Conv2D, Embedding,
    EinsumDense and MultiHeadAttention projections, inside nested models and custom layers too) through Keras,
    so any backend works (TensorFlow, torch, JAX), and runs `ww_callbacks.analyze` on them; on the other epochs
    the values are NaN, so that every epoch has the same keys (``CSVLogger`` fixes its columns at the first
    epoch). A summary value is also NaN when no layer's power-law fit succeeded.

    Put it **before** the callbacks that read those keys: Keras calls callbacks in list order with one shared
    ``logs`` dict, so ``History``, ``CSVLogger``, ``TensorBoard``, ``EarlyStopping``, ``ModelCheckpoint``,
    ``ReduceLROnPlateau`` and W&B's ``WandbMetricsLogger`` placed after it all see the values. Those Keras
    callbacks take the first value they see as their best, even a NaN one, which would then never be beaten:
    that is why the first epoch is always analyzed. A NaN epoch never improves on the best but does count
    towards their ``patience``: with ``every_n_epochs=n``, give them a patience of at least ``n`` epochs.

    Early stopping: the ``early_stopping`` rule (`ww_callbacks.stopping`) sees every report; when it says stop,
    the callback sets ``model.stop_training``, records ``stopped_epoch`` and ``stop_reason`` and logs the reason
    (logger ``ww_callbacks.keras``). With ``restore_best_weights=True``, it keeps the weights
    (``model.get_weights()``) of the analyzed epoch with the best value of the rule's metric (the rule's
    ``monitor``, ``mode`` and ``is_better``: for ``AlphaBelow``, the lowest mean alpha still at or above the
    threshold; never an epoch with NaN/Inf weights) and restores them when training ends, stopped or not, as
    Keras' ``EarlyStopping`` does.

    Step schedule (``every_n_batches=n``): analyzes after every n-th batch, counting batches across epochs (and
    fits, unless ``on_train_begin`` starts afresh), like ``ModelCheckpoint(save_freq=n)``; history rows carry
    ``step`` (batches seen) and ``epoch``. The values go into that batch's ``logs`` (``TensorBoard(
    update_freq=n)`` and batch-level loggers see them at that batch) and into the epoch-end ``logs`` (the
    latest analysis of the epoch; NaN in an epoch without one).

    Background (``background=True``): at the analysis point only the analyzed matrices are copied; a worker
    thread analyzes, records (``history``, rule) and writes the history file and W&B sink at the analysis' own
    epoch/step. The values reach ``logs`` at the next epoch end (the first analysis of a fit is waited for, so
    stock callbacks never start from NaN), and the rule's decision sets ``model.stop_training`` at the next
    hook: one analysis later than synchronously. W&B summaries sent through ``logs`` (``WandbMetricsLogger``)
    are those of the next epoch end. With ``max_pending`` analyses pending the next analysis point waits
    (``background_waits`` in the history). ``on_train_end`` finishes the pending work. When ``fit`` raises
    (Ctrl-C too) Keras tells no callback: the running analysis completes on its daemon thread, writes the history
    file, and the thread exits. Same numbers as ``background=False``. With ``restore_best_weights`` the weights
    of each pending analysis are kept (``model.get_weights()``, on the host) until its result says whether they
    are the best.

    Distribution: under ``tf.distribute.MirroredStrategy`` Keras calls callbacks once per epoch, so the
    analysis runs once, on the mirrored values (``shard_layers`` has no effect here).

    Where things go: Keras has no log directory, so there is no default history file (``history_path=None``
    or False: none; a path: that file; True raises). W&B gets the active ``wandb.run``; the summary keys reach
    it through ``logs`` (add ``WandbMetricsLogger`` after this callback; the W&B step is the epoch, or the
    batch on step schedules), unless the callback started the run itself (``wandb_init_kwargs``).

    Args:
        every_n_batches: analyze after every n-th batch instead of at epoch ends.
        restore_best_weights: restore the weights of the best analyzed epoch at the end of training (needs a
            rule that monitors a metric).

    Attributes:
        engine: the `ww_callbacks.engine.SpectralMonitor` doing the work (``monitor`` is its former name).
        last_report: the latest `ww_callbacks.SpectralReport` (None before the first analysis).
        history: one dict per analyzed epoch (``epoch``, ``step`` (= epoch), summary metrics,
            ``num_summarized`` ...).
        stopped_epoch: the epoch at which the rule stopped training, or None.
        stop_reason: why ("" if it did not stop).
        best_epoch: with ``restore_best_weights``, the analyzed epoch whose weights are kept (None if none).

    Example:
        >>> import keras, numpy as np
        >>> from ww_callbacks.keras import WeightWatcherCallback
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64), keras.layers.Dense(16)])
        >>> model.compile("sgd", "mse")
        >>> ww = WeightWatcherCallback(metrics=("alpha",), seed=0)
        >>> x, y = np.ones((8, 32), "float32"), np.zeros((8, 16), "float32")
        >>> h = model.fit(x, y, epochs=2, verbose=0, callbacks=[ww])
        >>> len(h.history["ww/alpha"]), len(ww.history)
        (2, 2)
    """

    __doc__ = with_shared_options(__doc__)  # the shared options, documented once in WatchOptions

    @watch_signature
    def __init__(
        self,
        *args: Any,
        every_n_batches: int | None = None,
        restore_best_weights: bool = False,
        **options: Unpack[WatchKwargs],
    ) -> None:
        super().__init__()
        watch = watch_options(self, args, options, per_variable_optimizers=False)
        if watch.history_path is True:
            raise ValueError(
                "history_path=True asks for the default history file, but Keras has no log directory: "
                "pass a file path (or None/False for no file)"
            )
        rule = watch.early_stopping
        if restore_best_weights and (rule is None or rule.monitor is None):
            raise ValueError(
                "restore_best_weights=True needs an early_stopping rule that monitors a metric "
                "(AlphaBelow, Plateau, or AnyOf/AllOf of them)"
            )
        schedule = make_schedule(watch.every_n_epochs, every_n_batches, steps_name="every_n_batches")
        self.engine = SpectralMonitor(watch, schedule=schedule)
        self.results = ResultPath(self.engine)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = watch.verbose
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self._best_value: float | None = None
        self._keys: list[str] = []
        self._resumed = False
        self._first_epoch_pending = True
        self._on_steps = isinstance(schedule, StepSchedule)
        if self._on_steps:  # a batch hook turns off Keras' asynchronous steps: only on step schedules
            self.on_train_batch_end = self._step_batch_end  # type: ignore[method-assign]
        self.batches_seen = (
            0  # batches of all fits since the start (or the resumed state), for every_n_batches
        )
        self._epoch = 0
        self._latest: dict[str, float] = {}  # values for the next epoch-end logs
        self._batch_logs: dict[str, Any] | None = (
            None  # the logs of the batch being analyzed (step schedules)
        )
        self._pending_weights: dict[tuple[int, int], list[Any]] = {}  # background + restore_best_weights
        self._fit_callbacks: list[Any] = []  # the callbacks of the current fit (Keras TensorBoard: a sink)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """History, rule state, seed, stop and best epoch as plain Python values (the best weights are not kept).

        Example:
            >>> sorted(WeightWatcherCallback(seed=0).state_dict())[:3]
            ['batches', 'best_epoch', 'best_value']
        """
        state = self.engine.state_dict()
        return {
            **state,
            "best_epoch": self.best_epoch,
            "best_value": self._best_value,
            "batches": self.batches_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`; the next ``fit`` then continues that history and patience instead of resetting.

        Example:
            >>> ww = WeightWatcherCallback()
            >>> ww.load_state_dict(WeightWatcherCallback(seed=5).state_dict()); ww.seed
            5
        """
        self.engine.load_state_dict(state)
        best_epoch, best_value = state.get("best_epoch"), state.get("best_value")
        self.best_epoch = None if best_epoch is None else int(best_epoch)
        self._best_value = None if best_value is None else float(best_value)
        self.best_weights = None
        self.batches_seen = int(state.get("batches", 0))
        self._resumed = True

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.results.end()  # a previous fit that raised never reached on_train_end: finish it first
        if not self._resumed:
            # Like Keras' EarlyStopping: an instance reused for another fit starts afresh.
            self.engine.reset()
            self.best_epoch, self._best_value = None, None
            self.batches_seen = 0
        self._resumed = False
        self._latest, self._pending_weights = {}, {}
        self.best_weights = None
        self._keys = self.engine.logged_keys(self.model)
        self._first_epoch_pending = True
        self._fit_callbacks = calling_callbacks(self) or []  # Keras' TensorBoard, if any (sink discovery)
        self.results.begin(KerasHost(self))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        # The first epoch of fit too: Keras' monitoring callbacks would otherwise start from a NaN "best".
        if not self._on_steps and (self.engine.should_run(epoch) or self._first_epoch_pending):
            self._analyze(epoch, epoch, wait=self._first_epoch_pending)
        self._first_epoch_pending = False
        self.results.drain()  # after a submit that waited for the worker: its result too
        values, self._latest = self._latest, {}
        if logs is None:
            return
        for key in self._keys:
            logs[key] = values.get(key, _NAN)
        for key, value in values.items():  # layers that appeared after train begin
            logs.setdefault(key, value)

    def _step_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """``on_train_batch_end`` on step schedules only."""
        self.batches_seen += 1
        if self.engine.should_run(self.batches_seen):
            self._batch_logs = (
                logs  # at the batch analyzed: TensorBoard(update_freq=n) and batch loggers see it
            )
            try:
                self._analyze(self._epoch, self.batches_seen)
            finally:
                self._batch_logs = None
        self.results.drain()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.results.end()
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            log.info("WeightWatcherCallback: restored the weights of epoch %s", self.best_epoch)
        elif self.restore_best_weights and self.engine.history:
            self.engine.warn(
                f"restore_best_weights: no analyzed epoch qualified as best for {self.early_stopping!r}; "
                "the weights of the last epoch are kept"
            )

    # ------------------------------------------------------------------ the work
    def _analyze(self, epoch: int, step: int, *, wait: bool = False) -> None:
        """Analyze now, or hand a copy to the worker (its values then come through `ResultPath.drain`)."""
        # Keras has no global step in its callbacks: on epoch schedules the epoch is the step (W&B's x-axis).
        background = self.engine.background
        weights = self._weights() if background is not None and self.restore_best_weights else None
        if weights is not None:  # the worker's result says later whether these were the best
            self._pending_weights[(epoch, step)] = weights
        self.results.analyze(self.model, epoch=epoch, step=step, is_last=self._is_last(epoch, step))
        if background is not None and wait:  # the first analysis of a fit: no NaN "best" for Keras' callbacks
            background.finish()

    def _is_last(self, epoch: int, step: int) -> bool:
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if self._on_steps:
            return epochs is not None and steps is not None and step >= int(epochs) * int(steps)
        return epochs is not None and epoch + 1 >= int(epochs)

    def _weights(self) -> list[Any] | None:
        try:
            return list(self.model.get_weights())
        except Exception as exc:  # never stop training for the restore feature
            self.engine.warn(f"restore_best_weights: cannot copy the weights ({type(exc).__name__}: {exc})")
            return None

    def _track_best(self, result: MonitorResult) -> None:
        """Keep the weights of ``result``'s analysis when its value of the rule's metric is the best so far."""
        weights = self._pending_weights.pop((int(result.epoch or 0), int(result.step or 0)), None)
        report, rule = result.report, self.engine.early_stopping
        if report is None or rule is None or rule.monitor is None or report.nonfinite_layers:
            return  # NaN/Inf weights are never worth restoring, whatever the other layers' summary says
        current = float(report.summary.get(rule.monitor, _NAN))
        if not rule.is_better(current, self._best_value):
            return
        if self.engine.background is None:  # synchronous: the weights are those of this analysis now
            weights = self._weights()
        if weights is not None:
            self._best_value, self.best_epoch, self.best_weights = current, int(result.epoch or 0), weights

    def __repr__(self) -> str:
        return f"WeightWatcherCallback({self.engine!r}, restore_best_weights={self.restore_best_weights})"


class KerasHost(Host):
    """The engine's questions answered by a Keras callback: values go into ``logs`` (the next epoch end's, and
    the analyzed batch's on step schedules), a stop is ``model.stop_training``."""

    def __init__(self, callback: WeightWatcherCallback) -> None:
        self._callback = callback
        self.wandb_step_metric = "batch" if callback._on_steps else "epoch"

    def log(self, values: Mapping[str, float], *, epoch: int, step: int) -> None:
        callback = self._callback
        callback._latest.update(values)
        if callback._batch_logs is not None:
            callback._batch_logs.update(values)

    def observe(self, result: MonitorResult) -> None:
        if self._callback.restore_best_weights:
            self._callback._track_best(result)

    def stop(self, *, epoch: int, step: int, reason: str) -> bool:
        self._callback.model.stop_training = True
        return True

    def stopping(self) -> bool:
        return bool(getattr(self._callback.model, "stop_training", False))

    def model(self) -> Any:
        return self._callback.model

    def dashboards(self) -> list[Dashboard]:
        return keras_dashboards(self._callback._fit_callbacks, self._callback)

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from .engine import EngineViews, MonitorResult, SpectralMonitor, StepSchedule, WatchOptions
from .engine.options import HistoryPath
from .engine.schedule import make_schedule
from .sinks.lifecycle import summary_line, wandb_options
from .spectral.catalog import SUMMARY_COUNTS
from .spectral.report import STATUS_NON_FINITE, SpectralReport
from .stopping import StoppingRule

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger(__name__)

_NAN = float("nan")


class _StepsAndBackground:
    """The Keras callback's step-schedule and background parts (``every_n_batches``, ``background=True``)."""

    engine: SpectralMonitor
    model: Any
    params: dict[str, Any]
    verbose: bool
    restore_best_weights: bool
    batches_seen: int
    _on_steps: bool
    _epoch: int
    _latest: dict[str, float]
    _analyze: Callable[..., dict[str, float]]
    _track_best: Callable[[SpectralReport, int], None]

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = int(epoch)

    def _step_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """``on_train_batch_end`` on step schedules only (a batch hook turns off Keras' asynchronous steps)."""
        self.batches_seen += 1
        if self.engine.should_run(self.batches_seen):
            values = self._analyze(self._epoch, step=self.batches_seen)
            self._latest.update(values)
            if logs is not None:  # at the batch analyzed: TensorBoard(update_freq=n) and batch loggers see it
                logs.update(values)
        self._drain()

    def _use(self, result: MonitorResult) -> dict[str, float]:
        """Act on one recorded result: verbose line, best weights, stop; its values for the logs."""
        if result.report is None:
            return {}
        epoch = int(result.epoch or 0)
        if self.verbose:
            log.info("%s", summary_line(epoch, result.metrics))
        if self.restore_best_weights:
            self._track_best(result.report, epoch)
        if result.stop and result.decision is not None and self.engine.stopped_epoch is None:
            self.model.stop_training = True
            self.engine.record_stop(epoch, result.decision.reason)
            log.info("WeightWatcherCallback: stopping at epoch %d: %s", epoch, result.decision.reason)
        return result.metrics

    def _drain(self) -> None:
        """Background results finished so far: acted on now, their values go into the next epoch-end logs."""
        if self.engine.background is not None:
            for result in self.engine.background.collect():
                self._latest.update(self._use(result))

    def _is_last(self, epoch: int, step: int) -> bool:
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if self._on_steps:
            return epochs is not None and steps is not None and step >= int(epochs) * int(steps)
        return epochs is not None and epoch + 1 >= int(epochs)


class WeightWatcherCallback(_StepsAndBackground, keras.callbacks.Callback, EngineViews):
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
    file, and the thread exits. Same numbers as ``background=False``.

    Distribution: under ``tf.distribute.MirroredStrategy`` Keras calls callbacks once per epoch, so the
    analysis runs once, on the mirrored values.

    Args:
        every_n_epochs: analyze every n-th epoch (epochs ``n-1, 2n-1, ...``), and the first epoch of ``fit``;
            None: every epoch unless ``every_n_batches`` is given (setting both raises ``ValueError``).
        metrics: summary metrics to write (weightwatcher column names, `ww_callbacks.SUMMARY_METRICS`);
            default alpha, alpha_weighted, log_spectral_norm, rand_distance and num_nonfinite_layers (how many
            layers' weights hold NaN/Inf).
        per_layer: also write each layer's metrics as ``{prefix}{layer path}/{metric}``.
        prefix: prefix of the keys.
        early_stopping: a `ww_callbacks.stopping.StoppingRule` (``AlphaBelow``, ``Plateau``, ``AnyOf`` ...).
        every_n_batches: analyze after every n-th batch instead of at epoch ends.
        restore_best_weights: restore the weights of the best analyzed epoch at the end of training (needs a
            rule that monitors a metric).
        layers: only these layers (names, globs, kinds like ``"dense"``, ids; ``"-name"`` excludes).
        randomize, mp_fit, n_random: `ww_callbacks.analyze` options (``rand_distance`` needs randomize).
        seed: seed of the randomized ESDs (epoch ``e`` uses ``numpy.random.default_rng([seed, e])``, batch
            schedules ``[seed, step]``); None draws
            one from OS entropy.
        history_path: write every report to this JSON-lines file (`ww_callbacks.load_history` reads it). None
            (default) or False: no file (Keras has no log directory to put a default file in); a path: that
            file. Anything else (``True`` included) raises here.
        log_wandb: send each report (per-layer scalars, table, ESD histograms and plots) to the active
            ``wandb.run`` if wandb is already imported; wandb is never imported for this otherwise. The summary
            keys reach W&B through ``logs`` (add ``WandbMetricsLogger`` after this callback); the W&B step is the
            epoch.
        wandb_init_kwargs: start a W&B run with these ``wandb.init`` arguments when there is none (finished at the
            end of ``fit``; summaries are then logged by the callback itself).
        media_every_n_epochs: spacing of the ESD images sent to W&B (None: the sink's default; 0: none).
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...).
        verbose: log (INFO) each analysis' summary, not only the stop and the restore.
        shard_layers: a shared option for distributed Lightning runs; no effect here (each Keras worker
            analyzes its own replica of the weights).
        background: analyze in a worker thread (see above; not with ``restore_best_weights``).
        max_pending: analyses pending at most before an analysis point waits (default 1).

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

    def __init__(
        self,
        every_n_epochs: int | None = None,
        metrics: Sequence[str] | None = None,
        per_layer: bool = False,
        prefix: str = "ww/",
        early_stopping: StoppingRule | None = None,
        *,
        every_n_batches: int | None = None,
        restore_best_weights: bool = False,
        layers: Any = None,
        randomize: bool = True,
        mp_fit: bool = False,
        n_random: int = 1,
        seed: int | None = None,
        history_path: HistoryPath = None,
        log_wandb: bool = True,
        wandb_init_kwargs: Mapping[str, Any] | None = None,
        media_every_n_epochs: int | None = None,
        analyze_kwargs: Mapping[str, Any] | None = None,
        verbose: bool = False,
        shard_layers: bool = True,
        background: bool = False,
        max_pending: int = 1,
    ) -> None:
        super().__init__()
        if history_path is True:
            raise ValueError(
                "history_path=True asks for the default history file, but Keras has no log directory: "
                "pass a file path (or None/False for no file)"
            )
        schedule = make_schedule(every_n_epochs, every_n_batches, steps_name="every_n_batches")
        self.engine = SpectralMonitor(WatchOptions.pick(locals()), schedule=schedule)
        if restore_best_weights and (early_stopping is None or early_stopping.monitor is None):
            raise ValueError(
                "restore_best_weights=True needs an early_stopping rule that monitors a metric "
                "(AlphaBelow, Plateau, or AnyOf/AllOf of them)"
            )
        if restore_best_weights and background:
            raise ValueError(
                "restore_best_weights=True needs the weights of each analysis: use background=False"
            )
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = bool(verbose)
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self._best_value: float | None = None
        self._keys: list[str] = []
        self._resumed = False
        self._first_epoch_pending = True
        self._on_steps = isinstance(schedule, StepSchedule)
        if self._on_steps:
            self.on_train_batch_end = self._step_batch_end  # type: ignore[method-assign]
        self.batches_seen = (
            0  # batches of all fits since the start (or the resumed state), for every_n_batches
        )
        self._epoch = 0
        self._latest: dict[str, float] = {}  # values for the next epoch-end logs (step schedule, background)

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
        if self.engine.background is not None:  # a previous fit that raised may have left one running
            self.engine.background.finish()
            self.engine.background.collect()
        if not self._resumed:
            # Like Keras' EarlyStopping: an instance reused for another fit starts afresh.
            self.engine.reset()
            self.best_epoch, self._best_value = None, None
            self.batches_seen = 0
        self._resumed = False
        self._latest = {}
        self.best_weights = None
        self._keys = _fixed_keys(self.engine, self.model)
        self._first_epoch_pending = True
        self._open_sinks()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        values: dict[str, float] = {}
        # The first epoch of fit too: Keras' monitoring callbacks would otherwise start from a NaN "best".
        if not self._on_steps and (self.engine.should_run(epoch) or self._first_epoch_pending):
            values = self._analyze(epoch, wait=self._first_epoch_pending)
        self._first_epoch_pending = False
        self._drain()  # after a submit that waited for the worker: its result too
        values, self._latest = {**self._latest, **values}, {}
        if logs is None:
            return
        for key in self._keys:
            logs[key] = values.get(key, _NAN)
        for key, value in values.items():  # layers that appeared after train begin
            logs.setdefault(key, value)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            if self.engine.background is not None:
                self.engine.background.finish()
                self._drain()
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
                log.info("WeightWatcherCallback: restored the weights of epoch %s", self.best_epoch)
            elif self.restore_best_weights and self.engine.history:
                self.engine.warn(
                    f"restore_best_weights: no analyzed epoch qualified as best for {self.early_stopping!r}; "
                    "the weights of the last epoch are kept"
                )
        finally:
            self.engine.close_sinks()

    # ------------------------------------------------------------------ the work
    def _analyze(self, epoch: int, *, step: int | None = None, wait: bool = False) -> dict[str, float]:
        """Analyze now (or submit to the worker: then the values come later, through `_drain`)."""
        # Keras has no global step in its callbacks: on epoch schedules the epoch is the step (W&B's x-axis).
        step = epoch if step is None else step
        is_last = self._is_last(epoch, step)
        background = self.engine.background
        if background is not None:
            background.submit(self.model, epoch=epoch, step=step, is_last=is_last)
            if wait:  # the first analysis of a fit: Keras' monitoring callbacks must not start from NaN
                background.finish()
                self._drain()
            return {}
        report = self.engine.analyze(self.model, epoch=epoch, step=step)  # None (warned) if it failed
        return self._use(self.engine.process(report, epoch=epoch, step=step, is_last=is_last))

    def _track_best(self, report: SpectralReport, epoch: int) -> None:
        rule = self.engine.early_stopping
        if rule is None or rule.monitor is None:
            return
        if any(layer.status == STATUS_NON_FINITE for layer in report.layers):
            return  # NaN/Inf weights are never worth restoring, whatever the other layers' summary says
        current = float(report.summary.get(rule.monitor, _NAN))
        if not rule.is_better(current, self._best_value):
            return
        try:
            weights = self.model.get_weights()
        except Exception as exc:  # never stop training for the restore feature
            self.engine.warn(f"restore_best_weights: cannot copy the weights ({type(exc).__name__}: {exc})")
            return
        self._best_value, self.best_epoch, self.best_weights = current, epoch, weights

    def _open_sinks(self) -> None:
        self.engine.close_sinks()  # a previous fit that raised never reached on_train_end
        run = None
        try:
            run = self.engine.resolve_wandb_run()
        except Exception as exc:
            self.engine.warn(f"cannot start a W&B run ({type(exc).__name__}: {exc})")
        # Our own run: nobody else logs the summaries to it. The user's run: ``logs`` reach it through
        # WandbMetricsLogger (per-layer keys too with per_layer).
        options = wandb_options(
            per_layer=self.engine.per_layer, summaries_elsewhere=not self.engine.owns_wandb_run(run)
        )
        self.engine.open_sinks(
            history_path=self.engine.options.history_file(None),
            wandb_run=run,
            step_metric="batch" if self._on_steps else "epoch",
            **options,
        )

    def __repr__(self) -> str:
        return f"WeightWatcherCallback({self.engine!r}, restore_best_weights={self.restore_best_weights})"


def _fixed_keys(engine: SpectralMonitor, model: Any) -> list[str]:
    """Keys written every epoch: the summary metrics, and each layer's when ``per_layer``."""
    prefix, metrics = engine.prefix, engine.metrics
    keys = [f"{prefix}{metric}" for metric in metrics]
    if engine.per_layer and model is not None:
        layers = engine.snapshot(model) or []
        per_layer = [m for m in metrics if m not in SUMMARY_COUNTS]  # counts have no per-layer value
        keys += [f"{prefix}{lw.longname}/{metric}" for lw in layers for metric in per_layer]
    return keys

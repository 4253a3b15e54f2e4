"""`WeightWatcherCallback` for ``lightning.pytorch`` (the ``lightning`` package).

Importing this module imports ``lightning`` but never ``pytorch_lightning``; for that namespace use
`ww_callbacks.pytorch_lightning`, which holds the same callback; both
are written on `ww_callbacks._lightning_base.LightningWatcherMixin`.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from ww_callbacks.lightning import WeightWatcherCallback
    >>> from ww_callbacks.stopping import AlphaBelow
    >>> ww = WeightWatcherCallback(every_n_epochs=1, early_stopping=AlphaBelow(2.0))
    >>> trainer = Trainer(max_epochs=1, callbacks=[ww], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ._lightning_base import LightningWatcherMixin
from .engine import HISTORY_FILENAME, WatchOptions
from .engine.options import HistoryPath
from .stopping import StoppingRule

try:
    from typing import override  # type: ignore[attr-defined]  # Python 3.12+
except ImportError:  # pragma: no cover - depends on the Python version
    from typing_extensions import override

try:
    from lightning.pytorch.loggers import WandbLogger
except ImportError:  # pragma: no cover - depends on the Lightning version
    WandbLogger = None  # type: ignore[assignment,misc]

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]


class WeightWatcherCallback(Callback, LightningWatcherMixin):
    """Data-free spectral diagnostics (WeightWatcher metrics) and early stopping for lightning.pytorch.

    When it runs: at the end of every ``every_n_epochs``-th training epoch (``run_on="train_epoch_end"``, the
    default) or at the end of that epoch's validation (``run_on="validation_epoch_end"``), once per epoch and
    only while fitting: sanity checks, ``fast_dev_run``, ``validate()``, ``test()`` and ``predict()`` are skipped.
    With ``every_n_train_steps=n`` instead: in ``on_train_batch_end`` after the optimizer step that makes
    ``global_step`` a multiple of n (``ModelCheckpoint``'s convention; accumulating batches do not count).

    What it does: reads the weights of the analyzable layers (Linear, Conv1d/2d, Embedding ...), runs
    `ww_callbacks.analyze` on them and logs the summary metrics with ``pl_module.log`` as ``{prefix}{metric}``
    (plus ``{prefix}{layer}/{metric}`` with ``per_layer=True``), so they reach every logger (CSV,
    TensorBoard, MLflow, W&B ...) and ``trainer.callback_metrics``, where stock ``EarlyStopping`` and
    ``ModelCheckpoint`` can monitor them (they run after this callback). Values that are not finite (no layer's
    fit succeeded) are not logged. Lightning keeps the last logged value in ``callback_metrics``, so with
    ``every_n_epochs > 1`` a stock ``EarlyStopping`` also counts the epochs in between; the ``early_stopping``
    rules count analyses only. Optionally writes every report to a JSON-lines history file and to W&B.

    Step schedules: the values are logged through every logger with ``logger.log_metrics(..., step=s)``, where
    ``s`` is the loggers' step of that batch (``global_step - 1``: the row of that batch's training loss),
    whatever ``log_every_n_steps`` is, and put into ``trainer.callback_metrics``; history rows carry that
    ``step`` and the ``epoch``. A stock ``ModelCheckpoint(monitor="ww/...", every_n_train_steps=n)`` sees the
    new value at the analyzed step (checkpoint callbacks run last); a stock ``EarlyStopping`` checks at epoch
    (or validation) ends and sees the latest analysis then.

    Background (``background=True``): at the analysis point the callback only copies the analyzed matrices
    (CUDA: into pinned host memory, non-blocking) and a worker thread analyzes, records and writes the history
    file and W&B. The results are logged through the loggers at the step they belong to, and into
    ``callback_metrics``, at the next hook (the next batch end or epoch end; under DDP at the next analysis
    point or epoch end), and the rule's decision takes effect there: training stops one analysis later than
    it would synchronously. With ``max_pending`` analyses pending, the next analysis point waits for the oldest
    (never skipped; ``background_waits`` in the history counts the waits). At the end of ``fit`` the pending
    work is finished and logged before the sinks close; on an exception too (Ctrl-C: only the running
    analysis, for at most 30 s; then it is abandoned with a warning; its daemon thread never keeps the
    process alive). The numbers are exactly those of ``background=False``.

    Early stopping: the ``early_stopping`` rule (`ww_callbacks.stopping`) sees every report; when it says stop,
    the decision is reduced over ranks (``reduce_boolean_decision``, any rank stops all) and turned into
    ``trainer.should_stop`` once ``min_epochs``/``min_steps`` are met; ``stopped_epoch`` and ``stop_reason``
    record it and the reason is logged.

    Distributed (DDP, ``ModelParallelStrategy`` with FSDP2 ``fully_shard`` / tensor parallel): each rank analyzes
    a cost-balanced share of the layers (``shard_layers=True``; False: rank 0 analyzes them all) and the results
    are merged on every rank with the strategy's collectives (``all_gather_object``), so every rank logs the same
    values, feeds its rule the same report and stops at the same epoch. DTensor weights are gathered one layer
    at a time by the rank that analyzes it. ``FSDPStrategy`` (FSDP1) and DeepSpeed ZeRO-3 raise ``ValueError``
    at setup. The shuffles of epoch ``e`` come from ``numpy.random.default_rng([seed, e])``, one child per
    layer (step schedules: ``[seed, step]``), so they do not depend on the rank, on the sharding or on
    resuming.

    Resuming: ``state_dict()`` keeps the history, the rule's state (patience count ...), the seed and the last
    report; the ``state_key`` includes the prefix, so several instances can share a checkpoint.

    Args:
        every_n_epochs: analyze every n-th epoch (epochs ``n-1, 2n-1, ...``); None: every epoch unless
            ``every_n_train_steps`` is given (setting both raises ``ValueError``).
        metrics: summary metrics to log (weightwatcher column names); default alpha, alpha_weighted,
            log_spectral_norm, rand_distance and num_nonfinite_layers (how many layers' weights hold NaN/Inf).
        per_layer: also log each layer's metrics.
        prefix: prefix of the logged names and of the ``state_key``.
        early_stopping: a `ww_callbacks.stopping.StoppingRule` (``AlphaBelow``, ``Plateau``, ``AnyOf`` ...).
        every_n_train_steps: analyze after every n-th optimizer step instead of at epoch ends.
        run_on: ``"train_epoch_end"`` or ``"validation_epoch_end"`` (epoch schedules).
        layers: only these layers (names, globs, kinds like ``"dense"``, ids; ``"-name"`` excludes).
        randomize, mp_fit, n_random: `ww_callbacks.analyze` options (``rand_distance`` needs randomize).
        seed: seed of the randomized ESDs; None draws one from OS entropy (rank 0's is used everywhere).
        history_path: JSON-lines history file, written on rank 0 (`ww_callbacks.load_history` reads it): None
            (default) or True: ``<trainer.log_dir>/ww_history.jsonl``; False: no file; a path: that file. Anything
            else raises ``TypeError`` here.
        log_wandb: log reports (per-layer scalars, table, ESD histograms and plots) to the ``WandbLogger`` among
            ``trainer.loggers``, else to an active ``wandb.run``; wandb is never imported for this otherwise.
        wandb_init_kwargs: start a W&B run with these ``wandb.init`` arguments when there is none (the callback
            then finishes it at the end of ``fit``).
        media_every_n_epochs: spacing of the ESD images sent to W&B (None: the sink's default; 0: none).
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...).
        verbose: log (INFO, rank 0) each analysis' summary, not only the stop.
        shard_layers: share the layers among the ranks of a distributed run (see Distributed above).
        background: analyze in a worker thread (see above); same numbers, results one hook later.
        max_pending: analyses pending at most before an analysis point waits (default 1).

    Attributes:
        engine: the `ww_callbacks.engine.SpectralMonitor` doing the work (``monitor`` is its former name).
        last_report: the latest `ww_callbacks.SpectralReport`.
        history: one dict per analyzed epoch (epoch, step, summary metrics, num_summarized ...).
        stopped_epoch: the epoch at which the rule stopped training, or None.
        stop_reason: why ("" if it did not stop).

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import EarlyStopping
        from ww_callbacks.lightning import WeightWatcherCallback
        from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau

        ww = WeightWatcherCallback(
            early_stopping=AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3)),
        )
        trainer = Trainer(max_epochs=50, callbacks=[ww, EarlyStopping(monitor="ww/alpha", mode="min", patience=5)])
        trainer.fit(model, datamodule)
        print(ww.stopped_epoch, ww.stop_reason, ww.last_report.to_pandas())
    """

    _rank_zero_info = staticmethod(rank_zero_info)
    _wandb_logger_cls = WandbLogger

    def __init__(
        self,
        every_n_epochs: int | None = None,
        metrics: Sequence[str] | None = None,
        per_layer: bool = False,
        prefix: str = "ww/",
        early_stopping: StoppingRule | None = None,
        *,
        every_n_train_steps: int | None = None,
        run_on: str = "train_epoch_end",
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
        self._init_watch(WatchOptions.pick(locals()), run_on=run_on, every_n_train_steps=every_n_train_steps)

    @property
    @override
    def state_key(self) -> str:
        """Checkpoint key; includes the prefix so that several instances can coexist."""
        return self._generate_state_key(prefix=self.engine.prefix)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._setup_fit(trainer, stage)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._open_sinks(trainer)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_fit(trainer, pl_module)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._end_fit(trainer, pl_module, exception)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "train_epoch_end")

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "validation_epoch_end")

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

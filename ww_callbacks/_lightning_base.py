"""The Lightning callback, written once for both namespaces: its hooks, its `LightningHost` and its docstring.

`ww_callbacks.lightning` and `ww_callbacks.pytorch_lightning` each define ``class WeightWatcherCallback(
Callback, LightningWatcherMixin)`` with their namespace's ``Callback`` first (a real Lightning callback in every
respect); the mixin's hooks are defined once, here, and installed on each such class when it is created
(`LightningWatcherMixin.__init_subclass__`), where the namespace's no-op hooks would otherwise shadow them. All
that differs per namespace is the ``_namespace`` class attribute there (the docstring's names, where
``rank_zero_info`` and ``WandbLogger`` come from). This module imports neither namespace, so neither callback
module pulls in the other.
Everything that follows an analysis lives in the engine (`ww_callbacks.engine.ResultPath`); this module only
answers the engine's questions in Lightning's terms.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from .distributed import StrategyCollective
from .distributed import refuse_unsupported_strategy as _refuse_unsupported_strategy
from .engine import EngineViews, Host, ResultPath, SpectralMonitor, StepSchedule
from .engine.schedule import make_schedule
from .engine.signature import Unpack, WatchKwargs, watch_options, watch_signature, with_shared_options
from .sinks.discover import Dashboard, lightning_dashboards

try:
    from typing import override  # type: ignore[attr-defined]  # Python 3.12+
except ImportError:  # pragma: no cover - depends on the Python version
    from typing_extensions import override

__all__ = ["RUN_ON", "LightningHost", "LightningWatcherMixin", "lightning_doc"]

log = logging.getLogger(__name__)

#: The hooks the analysis can run at.
RUN_ON = ("train_epoch_end", "validation_epoch_end")


class LightningWatcherMixin(EngineViews):
    # The hooks around the engine (schedule, analysis points, background drains, checkpoint state), defined once:
    # a concrete callback is ``class WeightWatcherCallback(Callback, LightningWatcherMixin)`` with `_namespace`
    # set, and `__init_subclass__` installs the hooks on it (its own overrides kept) and its docstring: this
    # one, for its namespace (`lightning_doc`).
    """Data-free spectral diagnostics (WeightWatcher metrics) and early stopping for lightning.pytorch.

    When it runs: at the end of every ``every_n_epochs``-th training epoch (``run_on="train_epoch_end"``, the
    default) or at the end of that epoch's validation (``run_on="validation_epoch_end"``), once per epoch and
    only while fitting: sanity checks, ``fast_dev_run``, ``validate()``, ``test()`` and ``predict()`` are skipped.
    With ``every_n_train_steps=n`` instead: in ``on_train_batch_end`` after the optimizer step that makes
    ``global_step`` a multiple of n (``ModelCheckpoint``'s convention; accumulating batches do not count).

    What it does: reads the weights of the analyzable layers (Linear, Conv1d/2d, Embedding ...), runs
    `ww_callbacks.analyze` on them and puts the summary metrics, as ``{prefix}{metric}`` (plus
    ``{prefix}{layer}/{metric}`` with ``per_layer=True``), into ``trainer.callback_metrics``, where stock
    ``EarlyStopping`` and ``ModelCheckpoint`` can monitor them (they run after this callback), and into every
    logger (CSV, TensorBoard, MLflow, W&B ...) with ``log_metrics`` at the step Lightning logs that hook's
    metrics at (``global_step - 1`` at a training epoch end, the batch's own row on step schedules), with
    ``epoch``, whatever ``log_every_n_steps`` is. Values that are not finite (no layer's fit succeeded) are not
    logged. ``callback_metrics`` keeps the last value, so with ``every_n_epochs > 1`` a stock ``EarlyStopping``
    also counts the epochs in between; the ``early_stopping`` rules count analyses only. Optionally writes every
    report to a JSON-lines history file and to W&B.

    Background (``background=True``): at the analysis point the callback only copies the analyzed matrices
    (CUDA: into pinned host memory, non-blocking) and a worker thread analyzes, records and writes the history
    file and W&B. The results are logged at the step they belong to at the next hook (the next batch end or
    epoch end; under DDP at the next analysis point or epoch end), and the rule's decision takes effect there:
    training stops one analysis later than it would synchronously. Under DDP each rank's worker analyzes its
    share of the layers and the shares are merged at those points. With ``max_pending`` analyses pending, the
    next analysis point waits for the oldest (never skipped; ``background_waits`` in the history counts the
    waits). At the end of ``fit`` the pending work is finished and logged before the sinks close; on an
    exception too (Ctrl-C: only the running analysis, for at most 30 s). The numbers are exactly those of
    ``background=False``.

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

    Where things go: ``history_path=None`` writes ``<trainer.log_dir>/ww_history.jsonl`` on rank 0; W&B gets the
    ``WandbLogger``'s run among ``trainer.loggers``, else an active ``wandb.run``.

    Resuming: ``state_dict()`` keeps the history, the rule's state (patience count ...), the seed and the last
    report; the ``state_key`` includes the prefix, so several instances can share a checkpoint.

    Args:
        every_n_train_steps: analyze after every n-th optimizer step instead of at epoch ends.
        run_on: ``"train_epoch_end"`` or ``"validation_epoch_end"`` (epoch schedules).

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

    #: The Lightning hooks (and checkpoint methods) this mixin implements.
    HOOKS = (
        "state_key",
        "setup",
        "on_fit_start",
        "on_fit_end",
        "on_exception",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_validation_epoch_end",
        "state_dict",
        "load_state_dict",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in LightningWatcherMixin.HOOKS:
            if name not in cls.__dict__:  # the namespace's Callback comes first in the bases
                setattr(cls, name, LightningWatcherMixin.__dict__[name])
        if "_namespace" in cls.__dict__:  # a namespace's callback: the docstring written for that namespace
            cls.__doc__ = lightning_doc(cls._namespace)

    #: The callback's Lightning namespace: ``"lightning.pytorch"`` or ``"pytorch_lightning"``.
    _namespace: ClassVar[str] = "lightning.pytorch"

    @watch_signature
    def __init__(
        self,
        *args: Any,
        every_n_train_steps: int | None = None,
        run_on: str = "train_epoch_end",
        **options: Unpack[WatchKwargs],
    ) -> None:
        super().__init__()
        watch = watch_options(self, args, options)
        if run_on not in RUN_ON:
            raise ValueError(f"run_on must be one of {RUN_ON}, got {run_on!r}")
        schedule = make_schedule(watch.every_n_epochs, every_n_train_steps, steps_name="every_n_train_steps")
        self.engine = SpectralMonitor(watch, schedule=schedule)
        self.results = ResultPath(self.engine)
        self.run_on = run_on
        self.verbose = watch.verbose
        self._on_steps = isinstance(schedule, StepSchedule)
        self._state_key = f"{type(self).__qualname__}{ {'prefix': watch.prefix}!r}"  # Lightning's format
        self._last_epoch_run: int | None = None
        self._last_step_run: int | None = None

    @property
    @override
    def state_key(self) -> str:
        """Checkpoint key; includes the prefix so that several instances can coexist (computed once: Lightning
        reads it around every hook)."""
        return self._state_key

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        _refuse_unsupported_strategy(trainer.strategy)
        self._last_epoch_run = self._last_step_run = None
        if trainer.world_size > 1:
            # Rank 0's seed everywhere (a checkpoint's, loaded later, is the same on every rank anyway).
            self.engine.seed = int(trainer.strategy.broadcast(self.engine.seed, src=0))

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.results.begin(LightningHost(self, trainer), open_sinks=not trainer.fast_dev_run)

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.results.end()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.results.end(exception)

    @override
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._on_steps and self.engine.background is None:
            return  # the common case, every batch: nothing to do
        due = self._step_due(trainer)
        if due:
            self._analyze(trainer, pl_module, is_last=0 < (trainer.max_steps or -1) <= trainer.global_step)
        # Under several ranks results are merged with a collective: only where every rank comes.
        if self.engine.background is not None and (due or trainer.world_size <= 1):
            self.results.drain()

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_end(trainer, pl_module, "train_epoch_end")

    @override
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_end(trainer, pl_module, "validation_epoch_end")

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

    # ---------------------------------------------------------------- analysis points
    def _epoch_end(self, trainer: Any, pl_module: Any, hook: str) -> None:
        if trainer.sanity_checking:
            return
        if hook == self.run_on and self._epoch_due(trainer):
            max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1  # -1: no limit
            self._last_epoch_run = int(trainer.current_epoch)
            self._analyze(trainer, pl_module, is_last=0 < max_epochs <= trainer.current_epoch + 1)
        if self.engine.background is not None:
            self.results.drain()  # after a submit that waited for the worker: its result too

    def _epoch_due(self, trainer: Any) -> bool:
        # Every branch depends only on values all ranks share, so collectives always pair up.
        return not (
            trainer.fast_dev_run
            or trainer.state.fn != "fit"
            or self._on_steps
            or not self.engine.should_run(trainer.current_epoch)
            or self._last_epoch_run == trainer.current_epoch  # several validations in one epoch
        )

    def _step_due(self, trainer: Any) -> bool:
        if not self._on_steps or trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return False
        global_step = int(trainer.global_step)  # counts optimizer steps: accumulating batches repeat it
        if global_step == self._last_step_run or not self.engine.should_run(global_step):
            return False
        self._last_step_run = global_step
        return True

    def _analyze(self, trainer: Any, pl_module: Any, *, is_last: bool) -> None:
        self.results.analyze(
            pl_module, epoch=int(trainer.current_epoch), step=self._logged_step(trainer), is_last=is_last
        )

    def _logged_step(self, trainer: Any) -> int:
        """The step Lightning's loggers record this hook's metrics at, so history, W&B and loggers line up.

        Lightning logs epoch-end training metrics one step back (``FitLoop.on_advance_end``), and
        validation-end metrics at the current step; both count batches that stepped the optimizer. At
        ``on_train_batch_end`` (step schedules) the count does not include this batch yet: the batch's training
        loss is logged at that very step.
        """
        epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        stepped = int(getattr(epoch_loop, "_batches_that_stepped", trainer.global_step))
        if self._on_steps:
            return stepped
        return max(stepped - 1, 0) if self.run_on == "train_epoch_end" else stepped

    def __repr__(self) -> str:
        return f"WeightWatcherCallback({self.engine!r}, run_on={self.run_on!r})"


class LightningHost(Host):
    """The engine's questions answered by a Lightning ``Trainer``.

    Values go straight into ``trainer.callback_metrics`` (where stock ``EarlyStopping`` and ``ModelCheckpoint``
    read them) and to every logger with ``logger.log_metrics(values, step=...)``, as Lightning's own
    ``LearningRateMonitor`` does, with ``epoch`` added as Lightning adds it to its own logs: no ``self.log``
    result collection, and no sync is needed (every rank holds the same merged report).
    """

    wandb_step_metric = "trainer/global_step"

    def __init__(self, callback: LightningWatcherMixin, trainer: Any) -> None:
        self._callback = callback
        self.trainer = trainer
        self.is_main = bool(trainer.is_global_zero)
        self._collective = (
            StrategyCollective(trainer.global_rank, trainer.world_size, trainer.strategy.broadcast)
            if trainer.world_size > 1
            else None
        )
        self._from_logger: Any = None

    def collective(self) -> StrategyCollective | None:
        return self._collective

    def any_rank(self, flag: bool) -> bool:
        return bool(self.trainer.strategy.reduce_boolean_decision(bool(flag), all=False))

    def broadcast(self, obj: Any) -> Any:
        return self.trainer.strategy.broadcast(obj, src=0)

    def log(self, values: Mapping[str, float], *, epoch: int, step: int) -> None:
        import torch

        trainer = self.trainer
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        for logger in trainer.loggers:
            try:
                logger.log_metrics({**values, "epoch": epoch}, step=step)
            except Exception as exc:  # a broken logger never stops training
                self._callback.engine.warn(
                    f"{type(logger).__name__} failed to log ({type(exc).__name__}: {exc})"
                )

    def info(self, message: str) -> None:
        rank_zero_info = _from_namespace(self._callback._namespace, "utilities.rank_zero", "rank_zero_info")
        (rank_zero_info or log.info)(message)

    def stop(self, *, epoch: int, step: int, reason: str) -> bool:
        trainer = self.trainer
        if trainer.current_epoch + 1 < (trainer.min_epochs or 0) or trainer.global_step < (
            trainer.min_steps or 0
        ):
            self.info(
                f"WeightWatcherCallback: the stopping rule fired at epoch {epoch} ({reason}), but "
                f"min_epochs={trainer.min_epochs} / min_steps={trainer.min_steps} is not reached; going on"
            )
            return False
        trainer.should_stop = True
        return True

    def stopping(self) -> bool:
        return bool(self.trainer.should_stop)

    def log_dir(self) -> str | None:
        return self.trainer.log_dir or self.trainer.default_root_dir  # broadcasts: every rank calls it

    def balance_targets(self) -> tuple[Any, list[Any]] | None:
        return self.trainer.lightning_module, list(self.trainer.optimizers)

    def dashboards(self) -> list[Dashboard]:
        return lightning_dashboards(self.trainer.loggers)

    def model(self) -> Any:
        return self.trainer.lightning_module

    def wandb_run(self) -> Any:
        logger_cls = _from_namespace(self._callback._namespace, "loggers", "WandbLogger")
        for logger in self.trainer.loggers if logger_cls is not None else ():
            if isinstance(logger, logger_cls):
                self._from_logger = logger.experiment
                return self._from_logger
        return None

    def wandb_summaries_elsewhere(self, run: Any, *, owned: bool) -> bool:
        return run is not None and run is self._from_logger  # the WandbLogger gets them through `log`


def _from_namespace(namespace: str, module: str, name: str) -> Any:
    """``{namespace}.{module}.{name}`` (None where this Lightning version has none); the namespace is imported
    already, by the callback's own module."""
    try:
        return getattr(importlib.import_module(f"{namespace}.{module}"), name)
    except (ImportError, AttributeError):
        return None


def lightning_doc(namespace: str) -> str:
    """The callback's docstring for ``namespace`` (``lightning.pytorch`` or ``pytorch_lightning``): the mixin's,
    written for ``lightning.pytorch``, with the shared options put in."""
    doc = with_shared_options(LightningWatcherMixin.__doc__)
    if namespace == "pytorch_lightning":
        doc = doc.replace("lightning.pytorch", namespace).replace(
            "ww_callbacks.lightning ", "ww_callbacks.pytorch_lightning "
        )
    return doc

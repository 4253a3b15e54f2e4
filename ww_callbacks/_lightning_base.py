"""The Lightning plumbing both Lightning callbacks share, written once as a mixin.

`ww_callbacks.lightning` and `ww_callbacks.pytorch_lightning` each define ``class WeightWatcherCallback(
Callback, LightningWatcherMixin)`` with their namespace's ``Callback``: their hooks (``@override``) are
one-line calls into this mixin, and what differs per namespace (``rank_zero_info``, ``WandbLogger``) is a class
attribute there. This module imports neither namespace, so neither callback module pulls in the other.
Everything that is not Lightning plumbing lives in the engine (`ww_callbacks.engine.SpectralMonitor`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from .engine import EngineViews, MonitorResult, SpectralMonitor, StepSchedule, WatchOptions
from .engine.schedule import make_schedule
from .sinks.lifecycle import summary_line, wandb_options
from .spectral.report import SpectralReport
from .stopping import StopDecision

log = logging.getLogger(__name__)

__all__ = ["RUN_ON", "LightningWatcherMixin", "StrategyCollective"]

#: The hooks the analysis can run at.
RUN_ON = ("train_epoch_end", "validation_epoch_end")


class LightningWatcherMixin(EngineViews):
    """Lightning hooks around a `SpectralMonitor`: schedule, ranks analyze their shares and merge, log, stop, save.

    A concrete callback sets `_rank_zero_info` and `_wandb_logger_cls` for its namespace, calls `_init_watch`
    from ``__init__`` and forwards its hooks: ``setup`` to `_setup_fit`, ``on_fit_start`` to `_open_sinks`,
    ``on_fit_end``/``on_exception`` to `_end_fit`, the epoch-end hooks to `_epoch_end`,
    ``on_train_batch_end`` to `_batch_end`, and ``state_dict``/``load_state_dict`` to the engine's.
    """

    #: ``rank_zero_info`` of the callback's Lightning namespace.
    _rank_zero_info: ClassVar[Callable[[str], Any]]
    #: ``WandbLogger`` of the callback's Lightning namespace (None if it has none).
    _wandb_logger_cls: ClassVar[Any] = None

    engine: SpectralMonitor
    run_on: str
    verbose: bool

    def _init_watch(
        self, options: WatchOptions, *, run_on: str, every_n_train_steps: int | None = None
    ) -> None:
        if run_on not in RUN_ON:
            raise ValueError(f"run_on must be one of {RUN_ON}, got {run_on!r}")
        schedule = make_schedule(
            options.every_n_epochs, every_n_train_steps, steps_name="every_n_train_steps"
        )
        self.engine = SpectralMonitor(options, schedule=schedule)
        self.run_on = run_on
        self.verbose = options.verbose
        self._last_epoch_run: int | None = None
        self._last_step_run: int | None = None

    @property
    def _on_steps(self) -> bool:
        return isinstance(self.engine.schedule, StepSchedule)

    # ---------------------------------------------------------------- what the hooks call
    def _setup_fit(self, trainer: Any, stage: str) -> None:
        if stage != "fit":
            return
        _refuse_unsupported_strategy(trainer.strategy)
        self._last_epoch_run = self._last_step_run = None
        if trainer.world_size > 1:
            # Rank 0's seed everywhere (a checkpoint's, loaded later, is the same on every rank anyway).
            self.engine.seed = int(trainer.strategy.broadcast(self.engine.seed, src=0))

    def _open_sinks(self, trainer: Any) -> None:
        if trainer.fast_dev_run:
            return
        history_path = self._history_path(trainer)  # collective: every rank calls it
        if not trainer.is_global_zero:
            return
        run, from_logger = self._wandb_run(trainer)
        options = wandb_options(per_layer=self.engine.per_layer, summaries_elsewhere=from_logger)
        self.engine.open_sinks(
            history_path=history_path, wandb_run=run, step_metric="trainer/global_step", **options
        )

    def _epoch_end(self, trainer: Any, pl_module: Any, hook: str) -> None:
        if hook == self.run_on and not self._on_steps:
            self._maybe_run(trainer, pl_module)
        if self.engine.background is not None and not trainer.sanity_checking:
            self._drain(trainer, pl_module)  # after a submit that waited for the worker: its result too

    # ---------------------------------------------------------------- the work
    def _should_skip(self, trainer: Any) -> bool:
        return bool(
            trainer.sanity_checking
            or trainer.fast_dev_run
            or trainer.state.fn != "fit"
            or self._on_steps
            or not self.engine.should_run(trainer.current_epoch)
            or self._last_epoch_run == trainer.current_epoch  # several validations in one epoch
        )

    def _maybe_run(self, trainer: Any, pl_module: Any) -> None:
        # Every branch below depends only on values all ranks share, so collectives always pair up.
        if self._should_skip(trainer):
            return
        epoch, step = int(trainer.current_epoch), self._logged_step(trainer)
        self._last_epoch_run = epoch
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1  # -1: no limit
        if self.engine.background is not None:
            self._submit(trainer, pl_module, epoch=epoch, step=step, is_last=0 < max_epochs <= epoch + 1)
            return
        report = self._analyze_and_share(trainer, pl_module, epoch)
        result = self.engine.record(report, epoch=epoch, step=step)
        self._log_metrics(trainer, pl_module, result)
        stops = self.engine.early_stopping is not None and self._apply_decision(
            trainer, result.decision, epoch
        )
        # "last" means training ends here: not when a rule fired but min_epochs/min_steps keep it going.
        self.engine.emit(result, epoch=epoch, step=step, is_last=stops or 0 < max_epochs <= epoch + 1)

    def _analyze_and_share(
        self, trainer: Any, pl_module: Any, epoch: int, step: int | None = None
    ) -> SpectralReport | None:
        if trainer.world_size <= 1:
            return self.engine.analyze(pl_module, epoch=epoch, step=step)
        # Every rank analyzes its share (rank 0 all of it with shard_layers=False) and gets the merged report.
        collective = StrategyCollective(trainer)
        return self.engine.analyze(pl_module, epoch=epoch, step=step, collective=collective)

    def _log_metrics(self, trainer: Any, pl_module: Any, result: MonitorResult) -> None:
        distributed = trainer.world_size > 1
        for name, value in result.metrics.items():
            # Identical on every rank: "max" syncs them exactly (no mean rounding) and avoids Lightning's
            # "use sync_dist=True" warning.
            pl_module.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=False,
                logger=bool(trainer.loggers),  # logger=False trainers still get callback_metrics
                sync_dist=distributed,
                reduce_fx="max" if distributed else "mean",
            )
        if self.verbose and result.report is not None:
            type(self)._rank_zero_info(summary_line(trainer.current_epoch, result.metrics))

    def _apply_decision(self, trainer: Any, decision: StopDecision | None, epoch: int) -> bool:
        """Reduce the decision over ranks and stop if allowed; True when training stops after this epoch."""
        wants_stop = bool(decision is not None and decision.stop)
        wants_stop = bool(trainer.strategy.reduce_boolean_decision(wants_stop, all=False))
        if not wants_stop:
            return False
        reason = decision.reason if decision is not None and decision.stop else "another rank's rule"
        info = type(self)._rank_zero_info
        if not self._can_stop(trainer):
            info(
                f"WeightWatcherCallback: the stopping rule fired at epoch {epoch} ({reason}), but "
                f"min_epochs={trainer.min_epochs} / min_steps={trainer.min_steps} is not reached; going on"
            )
            return False
        trainer.should_stop = True
        self.engine.record_stop(epoch, reason)
        info(f"WeightWatcherCallback: stopping at epoch {epoch}: {reason}")
        return True

    def _logged_step(self, trainer: Any) -> int:
        """The step Lightning's loggers record this hook's metrics at, so history and W&B rows line up.

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

    @staticmethod
    def _can_stop(trainer: Any) -> bool:
        min_epochs = trainer.min_epochs or 0
        min_steps = trainer.min_steps or 0
        return trainer.current_epoch + 1 >= min_epochs and trainer.global_step >= min_steps

    def _history_path(self, trainer: Any) -> str | None:
        options, log_dir = self.engine.options, None
        if options.history_path is None or options.history_path is True:
            log_dir = trainer.log_dir or trainer.default_root_dir  # broadcasts: every rank must call it
        return options.history_file(log_dir)

    def _wandb_run(self, trainer: Any) -> tuple[Any, bool]:
        """(the run to log to, whether the trainer's ``WandbLogger`` already sends it the summaries)."""
        if not self.engine.options.log_wandb:
            return None, False
        logger_cls = type(self)._wandb_logger_cls
        if logger_cls is not None:
            for logger in trainer.loggers:
                if isinstance(logger, logger_cls):
                    try:
                        return logger.experiment, True
                    except Exception as exc:
                        self.engine.warn(f"cannot reach the WandbLogger's run ({type(exc).__name__}: {exc})")
                        return None, False
        try:
            return self.engine.resolve_wandb_run(), False
        except Exception as exc:
            self.engine.warn(f"cannot start a W&B run ({type(exc).__name__}: {exc})")
            return None, False

    # ---------------------------------------------------------------- step schedules, background analysis
    def _batch_end(self, trainer: Any, pl_module: Any) -> None:
        due = self._step_due(trainer)
        if due:
            self._run_at_step(trainer, pl_module)
        # Under DDP results are shared with a collective: only where every rank comes (analysis points).
        if self.engine.background is not None and (due or trainer.world_size <= 1):
            self._drain(trainer, pl_module)

    def _step_due(self, trainer: Any) -> bool:
        if not self._on_steps or trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return False
        global_step = int(trainer.global_step)  # counts optimizer steps: accumulating batches repeat it
        return global_step != self._last_step_run and self.engine.should_run(global_step)

    def _run_at_step(self, trainer: Any, pl_module: Any) -> None:
        self._last_step_run = int(trainer.global_step)
        epoch, step = int(trainer.current_epoch), self._logged_step(trainer)
        max_steps = trainer.max_steps if trainer.max_steps is not None else -1
        is_last = 0 < max_steps <= trainer.global_step
        if self.engine.background is not None:
            self._submit(trainer, pl_module, epoch=epoch, step=step, is_last=is_last)
            return
        report = self._analyze_and_share(trainer, pl_module, epoch, step)
        result = self.engine.record(report, epoch=epoch, step=step)
        self._log_at_step(trainer, result)
        stops = self.engine.early_stopping is not None and self._apply_decision(
            trainer, result.decision, epoch
        )
        self.engine.emit(result, epoch=epoch, step=step, is_last=stops or is_last)

    def _submit(self, trainer: Any, pl_module: Any, *, epoch: int, step: int, is_last: bool) -> None:
        background = self.engine.background
        if background is not None and trainer.is_global_zero:  # rank 0 analyzes, the others get the results
            background.submit(pl_module, epoch=epoch, step=step, is_last=is_last)

    def _drain(self, trainer: Any, pl_module: Any, *, act: bool = True, share: bool = True) -> None:
        """Log the background results finished so far at their own steps; act on their rules' decisions."""
        background = self.engine.background
        if background is None:
            return
        results = background.collect() if trainer.is_global_zero else []
        if share and trainer.world_size > 1:
            results = self._share_results(trainer, results)
        for result in results:
            if result.report is None:
                continue
            self._log_at_step(trainer, result)
            # The first stop counts: analyses that finish after it do not move the recorded stop.
            if act and self.engine.early_stopping is not None and not trainer.should_stop:
                self._apply_decision(trainer, result.decision, int(result.epoch or 0))

    def _share_results(self, trainer: Any, results: list[MonitorResult]) -> list[MonitorResult]:
        payload = None
        if trainer.is_global_zero:
            payload = []
            for r in results:
                try:
                    report = None if r.report is None else r.report.to_dict()
                except Exception as exc:  # never leave the other ranks waiting on a broken report
                    self.engine.warn(f"cannot share the report ({type(exc).__name__}: {exc})")
                    report = None
                payload.append((r.epoch, r.step, report))
        payload = trainer.strategy.broadcast(payload, src=0)
        if trainer.is_global_zero:
            return results
        return [
            self.engine.record(None if d is None else SpectralReport.from_dict(d), epoch=e, step=s)
            for e, s, d in payload
        ]

    def _log_at_step(self, trainer: Any, result: MonitorResult) -> None:
        """Log ``result`` through the trainer's loggers at its own step, and into ``callback_metrics``.

        ``pl_module.log`` cannot do this: step values reach the loggers only every ``log_every_n_steps``, and
        a background result belongs to an earlier step than the current one.
        """
        if not result.metrics:
            return
        import torch

        for logger in trainer.loggers:
            try:
                logger.log_metrics(dict(result.metrics), step=int(result.step or 0))
            except Exception as exc:
                self.engine.warn(f"logging to {type(logger).__name__} failed ({type(exc).__name__}: {exc})")
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in result.metrics.items()})
        if self.verbose and result.report is not None:
            type(self)._rank_zero_info(summary_line(int(result.epoch or 0), result.metrics))

    def _end_fit(self, trainer: Any, pl_module: Any, exception: BaseException | None = None) -> None:
        """Finish the background work (Ctrl-C: only the running analysis, briefly), log it, close the sinks."""
        try:
            background = self.engine.background
            if background is not None:
                if trainer.is_global_zero:
                    background.finish(interrupted=isinstance(exception, KeyboardInterrupt))
                # After an exception the other ranks may be gone: no collectives then.
                self._drain(trainer, pl_module, act=False, share=exception is None)
        finally:
            self.engine.close_sinks()

    def __repr__(self) -> str:
        return f"WeightWatcherCallback({self.engine!r}, run_on={self.run_on!r})"


class StrategyCollective:
    """`ww_callbacks.distributed.Collective` over a Lightning trainer's processes: torch.distributed's group
    that the strategy set up, else the strategy's own ``broadcast`` from each rank in turn.

    Example::

        report = monitor.analyze(pl_module, epoch=trainer.current_epoch, collective=StrategyCollective(trainer))
    """

    def __init__(self, trainer: Any) -> None:
        self.rank = int(trainer.global_rank)
        self.world_size = int(trainer.world_size)
        self._strategy = trainer.strategy

    def all_gather_object(self, obj: Any) -> list[Any]:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            out: list[Any] = [None] * self.world_size
            dist.all_gather_object(out, obj)
            return out
        return [self._strategy.broadcast(obj, src=rank) for rank in range(self.world_size)]


def _refuse_unsupported_strategy(strategy: Any) -> None:
    """Strategies whose ranks hold flat local shards the callback cannot gather: fail before training starts."""
    name = type(strategy).__name__
    if name == "FSDPStrategy":
        raise ValueError(
            "WeightWatcherCallback does not support FSDPStrategy (FSDP1: flat sharded parameters); use "
            "ModelParallelStrategy with torch.distributed.fsdp.fully_shard (FSDP2) in configure_model"
        )
    if name == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False):
        raise ValueError(
            "WeightWatcherCallback does not support DeepSpeedStrategy with ZeRO stage 3 (partitioned "
            "parameters); use stage 1 or 2, or ModelParallelStrategy (FSDP2)"
        )

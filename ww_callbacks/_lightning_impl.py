"""The Lightning callback, built once per Lightning namespace (``lightning.pytorch`` or ``pytorch_lightning``).

`build_callback_class` imports only the namespace it is given, so ``ww_callbacks.lightning`` never imports
``pytorch_lightning`` and ``ww_callbacks.pytorch_lightning`` never imports ``lightning``. Everything that is not
Lightning plumbing lives in `ww_callbacks._monitor.SpectralMonitor`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._monitor import MonitorResult, MonitorViews, SpectralMonitor
from .spectral.report import SpectralReport
from .stopping import StopDecision, StoppingRule

log = logging.getLogger(__name__)

HISTORY_FILENAME = "ww_history.jsonl"
_RUN_ON = ("train_epoch_end", "validation_epoch_end")

_DOC = """Data-free spectral diagnostics (WeightWatcher metrics) and early stopping for {namespace}.

    When it runs: at the end of every ``every_n_epochs``-th training epoch (``run_on="train_epoch_end"``, the
    default) or at the end of that epoch's validation (``run_on="validation_epoch_end"``), once per epoch and
    only while fitting: sanity checks, ``fast_dev_run``, ``validate()``, ``test()`` and ``predict()`` are skipped.

    What it does: reads the weights of the analyzable layers (Linear, Conv1d/2d, Embedding ...), runs
    `ww_callbacks.analyze` on them and logs the summary metrics with ``pl_module.log`` as ``{{prefix}}{{metric}}``
    (plus ``{{prefix}}{{layer}}/{{metric}}`` with ``per_layer=True``), so they reach every logger (CSV,
    TensorBoard, MLflow, W&B ...) and ``trainer.callback_metrics``, where stock ``EarlyStopping`` and
    ``ModelCheckpoint`` can monitor them (they run after this callback). Values that are not finite (no layer's
    fit succeeded) are not logged. Lightning keeps the last logged value in ``callback_metrics``, so with
    ``every_n_epochs > 1`` a stock ``EarlyStopping`` also counts the epochs in between; the ``early_stopping``
    rules count analyses only. Optionally writes every report to a JSON-lines history file and to W&B.

    Early stopping: the ``early_stopping`` rule (`ww_callbacks.stopping`) sees every report; when it says stop,
    the decision is reduced over ranks (``reduce_boolean_decision``, any rank stops all) and turned into
    ``trainer.should_stop`` once ``min_epochs``/``min_steps`` are met; ``stopped_epoch`` and ``stop_reason``
    record it and the reason is logged.

    Distributed: rank 0 analyzes and broadcasts the report; every rank then logs the same values, feeds its
    rule the same report and stops at the same epoch. The shuffles of epoch ``e`` come from
    ``numpy.random.default_rng([seed, e])``, so they do not depend on the rank or on resuming.

    Resuming: ``state_dict()`` keeps the history, the rule's state (patience count ...), the seed and the last
    report; the ``state_key`` includes the prefix, so several instances can share a checkpoint.

    Args:
        every_n_epochs: analyze every n-th epoch (epochs ``n-1, 2n-1, ...``).
        metrics: summary metrics to log (weightwatcher column names); default alpha, alpha_weighted,
            log_spectral_norm, rand_distance and num_nonfinite_layers (how many layers' weights hold NaN/Inf).
        per_layer: also log each layer's metrics.
        prefix: prefix of the logged names and of the ``state_key``.
        early_stopping: a `ww_callbacks.stopping.StoppingRule` (``AlphaBelow``, ``Plateau``, ``AnyOf`` ...).
        run_on: ``"train_epoch_end"`` or ``"validation_epoch_end"``.
        layers: only these layers (names, globs, kinds like ``"dense"``, ids; ``"-name"`` excludes).
        randomize, mp_fit, n_random: `ww_callbacks.analyze` options (``rand_distance`` needs randomize).
        seed: seed of the randomized ESDs; None draws one from OS entropy (rank 0's is used everywhere).
        history_path: JSON-lines history file, written on rank 0; None: ``<trainer.log_dir>/{history}``;
            False: none.
        log_wandb: log reports (per-layer scalars, table, ESD histograms and plots) to the ``WandbLogger`` among
            ``trainer.loggers``, else to an active ``wandb.run``; wandb is never imported for this otherwise.
        wandb_init_kwargs: start a W&B run with these ``wandb.init`` arguments when there is none (the callback
            then finishes it at the end of ``fit``).
        media_every_n_epochs: spacing of the ESD images sent to W&B (None: the sink's default; 0: none).
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...).
        verbose: log (INFO, rank 0) each analysis' summary, not only the stop.

    Attributes:
        last_report: the latest `ww_callbacks.SpectralReport`.
        history: one dict per analyzed epoch (epoch, step, summary metrics, num_summarized ...).
        stopped_epoch: the epoch at which the rule stopped training, or None.
        stop_reason: why ("" if it did not stop).

    Example::

        from {namespace} import Trainer
        from {namespace}.callbacks import EarlyStopping
        from {module} import WeightWatcherCallback
        from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau

        ww = WeightWatcherCallback(
            early_stopping=AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3)),
        )
        trainer = Trainer(max_epochs=50, callbacks=[ww, EarlyStopping(monitor="ww/alpha", mode="min", patience=5)])
        trainer.fit(model, datamodule)
        print(ww.stopped_epoch, ww.stop_reason, ww.last_report.to_pandas())
    """


def build_callback_class(namespace: str, module: str) -> type:
    """Build ``WeightWatcherCallback`` as a subclass of ``{namespace}.Callback``, presented as ``module``.

    Example:
        >>> cls = build_callback_class("lightning.pytorch", "my_package.callbacks")
        >>> cls.__module__, cls.__name__, cls.__mro__[1].__name__
        ('my_package.callbacks', 'WeightWatcherCallback', 'Callback')
    """
    pl = importlib.import_module(namespace)
    base: Any = pl.Callback
    rank_zero_info = importlib.import_module(f"{namespace}.utilities.rank_zero").rank_zero_info
    wandb_logger_cls = getattr(importlib.import_module(f"{namespace}.loggers"), "WandbLogger", None)

    class WeightWatcherCallback(base, MonitorViews):
        def __init__(
            self,
            every_n_epochs: int = 1,
            metrics: Sequence[str] | None = None,
            per_layer: bool = False,
            prefix: str = "ww/",
            early_stopping: StoppingRule | None = None,
            *,
            run_on: str = "train_epoch_end",
            layers: Any = None,
            randomize: bool = True,
            mp_fit: bool = False,
            n_random: int = 1,
            seed: int | None = None,
            history_path: str | os.PathLike[str] | bool | None = None,
            log_wandb: bool = True,
            wandb_init_kwargs: Mapping[str, Any] | None = None,
            media_every_n_epochs: int | None = None,
            analyze_kwargs: Mapping[str, Any] | None = None,
            verbose: bool = False,
        ) -> None:
            super().__init__()
            if run_on not in _RUN_ON:
                raise ValueError(f"run_on must be one of {_RUN_ON}, got {run_on!r}")
            if history_path is True:
                history_path = None
            self.monitor = SpectralMonitor(
                every_n_epochs=every_n_epochs,
                metrics=metrics,
                per_layer=per_layer,
                prefix=prefix,
                layers=layers,
                randomize=randomize,
                mp_fit=mp_fit,
                seed=seed,
                n_random=n_random,
                early_stopping=early_stopping,
                analyze_kwargs=analyze_kwargs,
                history_path=history_path,
                log_wandb=log_wandb,
                wandb_init_kwargs=wandb_init_kwargs,
                media_every_n_epochs=media_every_n_epochs,
            )
            self.run_on = run_on
            self.verbose = verbose
            self._last_epoch_run: int | None = None

        # ---------------------------------------------------------------- public views of the monitor
        @property
        def state_key(self) -> str:
            """Checkpoint key; includes the prefix so that several instances can coexist."""
            return self._generate_state_key(prefix=self.monitor.prefix)

        # ---------------------------------------------------------------- lifecycle
        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if stage != "fit":
                return
            self._last_epoch_run = None
            if trainer.world_size > 1:
                # Rank 0's seed everywhere (a checkpoint's, loaded later, is the same on every rank anyway).
                self.monitor.seed = int(trainer.strategy.broadcast(self.monitor.seed, src=0))

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.fast_dev_run:
                return
            history_path = self._history_path(trainer)  # collective: every rank calls it
            if not trainer.is_global_zero:
                return
            run, from_logger = self._wandb_run(trainer)
            options: dict[str, Any] = {"step_metric": "trainer/global_step"}
            if from_logger:
                # Summaries (and per-layer values with per_layer=True) already reach W&B through the logger.
                options.update(log_summary=False, per_layer=not self.monitor.per_layer)
            else:
                options.update(log_summary=True, per_layer=True)
            self.monitor.open_sinks(history_path=history_path, wandb_run=run, **options)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.monitor.close_sinks()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.monitor.close_sinks()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self.run_on == "train_epoch_end":
                self._maybe_run(trainer, pl_module)

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self.run_on == "validation_epoch_end":
                self._maybe_run(trainer, pl_module)

        def state_dict(self) -> dict[str, Any]:
            return self.monitor.state_dict()

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.monitor.load_state_dict(state_dict)

        # ---------------------------------------------------------------- the work
        def _should_skip(self, trainer: Any) -> bool:
            return bool(
                trainer.sanity_checking
                or trainer.fast_dev_run
                or trainer.state.fn != "fit"
                or not self.monitor.should_run(trainer.current_epoch)
                or self._last_epoch_run == trainer.current_epoch  # several validations in one epoch
            )

        def _maybe_run(self, trainer: Any, pl_module: Any) -> None:
            # Every branch below depends only on values all ranks share, so collectives always pair up.
            if self._should_skip(trainer):
                return
            epoch, step = int(trainer.current_epoch), self._logged_step(trainer)
            self._last_epoch_run = epoch
            report = self._analyze_and_share(trainer, pl_module, epoch)
            max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1  # -1: no limit
            is_last = 0 < max_epochs <= epoch + 1
            result = self.monitor.process(report, epoch=epoch, step=step, is_last=is_last)
            self._log_metrics(trainer, pl_module, result)
            if self.monitor.early_stopping is not None:
                self._apply_decision(trainer, result.decision, epoch)

        def _analyze_and_share(self, trainer: Any, pl_module: Any, epoch: int) -> SpectralReport | None:
            report = self.monitor.analyze(pl_module, epoch=epoch) if trainer.is_global_zero else None
            if trainer.world_size <= 1:
                return report
            payload = None
            if report is not None:
                try:
                    payload = report.to_dict()
                except Exception as exc:  # never leave the other ranks waiting on a broken report
                    self.monitor.warn(f"cannot share the report ({type(exc).__name__}: {exc})")
            payload = trainer.strategy.broadcast(payload, src=0)
            if trainer.is_global_zero:
                return report if payload is not None else None  # rank 0 keeps its eigenvalues
            return None if payload is None else SpectralReport.from_dict(payload)

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
                summary = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.count("/") <= 1)
                rank_zero_info(f"WeightWatcherCallback epoch {trainer.current_epoch}: {summary}")

        def _apply_decision(self, trainer: Any, decision: StopDecision | None, epoch: int) -> None:
            wants_stop = bool(decision is not None and decision.stop)
            wants_stop = bool(trainer.strategy.reduce_boolean_decision(wants_stop, all=False))
            if not wants_stop:
                return
            reason = decision.reason if decision is not None and decision.stop else "another rank's rule"
            if not self._can_stop(trainer):
                rank_zero_info(
                    f"WeightWatcherCallback: the stopping rule fired at epoch {epoch} ({reason}), but "
                    f"min_epochs={trainer.min_epochs} / min_steps={trainer.min_steps} is not reached; going on"
                )
                return
            trainer.should_stop = True
            self.monitor.record_stop(epoch, reason)
            rank_zero_info(f"WeightWatcherCallback: stopping at epoch {epoch}: {reason}")

        def _logged_step(self, trainer: Any) -> int:
            """The step Lightning's loggers record this hook's metrics at, so history and W&B rows line up.

            Lightning logs epoch-end training metrics one step back (``FitLoop.on_advance_end``), and
            validation-end metrics at the current step; both count batches that stepped the optimizer.
            """
            epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
            stepped = int(getattr(epoch_loop, "_batches_that_stepped", trainer.global_step))
            return max(stepped - 1, 0) if self.run_on == "train_epoch_end" else stepped

        @staticmethod
        def _can_stop(trainer: Any) -> bool:
            min_epochs = trainer.min_epochs or 0
            min_steps = trainer.min_steps or 0
            return trainer.current_epoch + 1 >= min_epochs and trainer.global_step >= min_steps

        def _history_path(self, trainer: Any) -> str | None:
            configured = self.monitor.history_path
            if configured is False:
                return None
            if configured is not None:
                return os.fspath(configured)
            log_dir = trainer.log_dir  # broadcasts: must run on every rank
            return os.path.join(log_dir or trainer.default_root_dir, HISTORY_FILENAME)

        def _wandb_run(self, trainer: Any) -> tuple[Any, bool]:
            if not self.monitor.log_wandb:
                return None, False
            if wandb_logger_cls is not None:
                for logger in trainer.loggers:
                    if isinstance(logger, wandb_logger_cls):
                        try:
                            return logger.experiment, True
                        except Exception as exc:
                            self.monitor.warn(
                                f"cannot reach the WandbLogger's run ({type(exc).__name__}: {exc})"
                            )
                            return None, False
            try:
                return self.monitor.resolve_wandb_run(), False
            except Exception as exc:
                self.monitor.warn(f"cannot start a W&B run ({type(exc).__name__}: {exc})")
                return None, False

        def __repr__(self) -> str:
            return f"WeightWatcherCallback({self.monitor!r}, run_on={self.run_on!r})"

    WeightWatcherCallback.__module__ = module
    WeightWatcherCallback.__qualname__ = "WeightWatcherCallback"
    WeightWatcherCallback.__doc__ = _DOC.format(namespace=namespace, module=module, history=HISTORY_FILENAME)
    return WeightWatcherCallback

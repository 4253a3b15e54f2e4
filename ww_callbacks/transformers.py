"""`WeightWatcherCallback` for the Hugging Face ``transformers.Trainer``.

Importing this module imports ``transformers`` (and torch); importing ``ww_callbacks`` does not. Install the
extra: ``pip install "ww-callbacks[transformers]"``.

Example::

    from transformers import Trainer, TrainingArguments
    from ww_callbacks.transformers import WeightWatcherCallback
    from ww_callbacks.stopping import Plateau

    ww = WeightWatcherCallback(every_n_steps=100, early_stopping=Plateau("alpha", mode="min", patience=3))
    args = TrainingArguments("out", max_steps=2000, report_to=["tensorboard", "wandb"])
    Trainer(model=model, args=args, train_dataset=data, callbacks=[ww]).train()
"""

from __future__ import annotations

import logging
import math
import sys
import types
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from .distributed import TorchCollective, any_process, broadcast, process_group
from .engine import EngineViews, Host, MonitorResult, ResultPath, SpectralMonitor, StepSchedule
from .engine.schedule import make_schedule
from .engine.signature import Unpack, WatchKwargs, watch_options, watch_signature, with_shared_options
from .sinks.discover import Dashboard, trainer_dashboards

__all__ = ["WeightWatcherCallback"]

log = logging.getLogger(__name__)

#: Hooks whose caller is searched for the Trainer's `CallbackHandler` (bounded: a few frames up).
_HANDLER_SEARCH_DEPTH = 6


def _calling_handler() -> CallbackHandler | None:
    """The `CallbackHandler` whose ``call_event`` is running this hook, None when there is none.

    ``TrainerCallback`` hooks do not receive the Trainer; the handler (which holds every callback) is the
    ``self`` of the ``call_event`` frame that calls the hook.
    """
    frame: types.FrameType | None = sys._getframe(2)
    for _ in range(_HANDLER_SEARCH_DEPTH):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            return candidate
        frame = frame.f_back
    return None


def _epoch_index(state: TrainerState) -> int:
    """The 0-based epoch the current step belongs to (``state.epoch`` is fractional, k+1 at the end of epoch k)."""
    return max(math.ceil(float(state.epoch or 0.0) - 1e-9) - 1, 0)


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def _best_key(args: TrainingArguments, prefix: str) -> str | None:
    """Our logged key named by ``metric_for_best_model`` (``eval_`` prefix or not), else None.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> _best_key(NS(metric_for_best_model="eval_ww/alpha"), "ww/"), _best_key(NS(metric_for_best_model="loss"), "ww/")
        ('ww/alpha', None)
    """
    name = args.metric_for_best_model
    if not name:
        return None
    bare = name[len("eval_") :] if name.startswith("eval_") else name
    return bare if bare.startswith(prefix) else None


class WeightWatcherCallback(TrainerCallback, EngineViews):
    """Data-free spectral diagnostics (WeightWatcher metrics) and early stopping for ``transformers.Trainer``.

    When it runs: after every ``every_n_steps``-th optimizer step (``state.global_step``), or, when
    ``every_n_steps`` is None (the default), at the end of every ``every_n_epochs``-th epoch; only in
    ``train()``. The analysis after step ``s`` shuffles with ``numpy.random.default_rng([seed, s])`` (epoch
    schedules: ``[seed, epoch]``).

    What it logs: ``{prefix}{metric}`` (plus ``{prefix}{layer}/{metric}`` with ``per_layer=True``) in one log
    event of its own at the step it analyzed: appended to ``trainer.state.log_history`` (with ``epoch`` and
    ``step``) and sent to the ``on_log`` of every callback of the Trainer, whatever their order, so every
    integration chosen with ``report_to`` (TensorBoard, W&B, MLflow ...; they write it as
    ``train/{prefix}{metric}``) and the progress printer see it once. The Trainer's own loss log at that step
    is left as it is. Non-finite values are not logged. With ``log_wandb`` the per-layer table, ESD histograms
    and images go to the active W&B run (the one ``report_to="wandb"`` started) at ``train/global_step``.

    Early stopping: the ``early_stopping`` rule (`ww_callbacks.stopping`) sees every report; the decision is
    reduced over processes (any process stops all, under ``torchrun``/``accelerate launch``) and sets
    ``control.should_training_stop``; ``stopped_epoch``, ``stopped_step`` and ``stop_reason`` record it.

    Best model: with ``metric_for_best_model="ww/alpha"`` (any logged key, with or without ``eval_``; set
    ``greater_is_better`` to the metric's better direction, False for alpha) the Trainer's best checkpoint
    follows the metric. Without an eval set use ``save_strategy="best"`` (``eval_strategy="no"``): the callback
    updates ``state.best_metric``/``best_global_step`` and asks for a checkpoint when the value improves, so
    ``load_best_model_at_end`` loads the best one. With an eval set (``eval_strategy == save_strategy``,
    ``eval_steps`` a multiple of ``every_n_steps``) it adds ``eval_{key}`` (the latest value) to the metrics
    of each evaluation, where the Trainer compares them.

    Distributed (``torchrun``/``accelerate launch``): every process analyzes a cost-balanced share of the layers
    (``shard_layers=True``; False: process 0 analyzes them all) and the results are merged on every process
    (`ww_callbacks.distributed`), so every process records the same history, feeds its rule the same report and
    stops at the same step. With ``background=True`` each process's worker analyzes its share and the shares are
    merged at the next analysis point (or the end of training).

    Where things go: ``history_path=None`` writes ``<args.output_dir>/ww_history.jsonl`` on process 0; W&B
    gets the active ``wandb.run`` (the one ``report_to="wandb"`` started) at ``train/global_step``.

    Background (``background=True``): at the analysis point only the analyzed matrices are copied; each result is
    logged at its own step at the next step end, and a stop takes effect there (one analysis late at most);
    ``on_train_end`` finishes the pending work. Same numbers as ``False``.

    Resuming: the history, the rule's state (patience ...) and the seed are kept in
    ``state.stateful_callbacks["WeightWatcherCallback[{prefix}]"]``, so they are saved in every checkpoint's
    ``trainer_state.json`` and ``train(resume_from_checkpoint=...)`` continues them (without
    ``restore_callback_states_from_checkpoint``, which would rebuild callbacks from saved arguments).

    Args:
        every_n_steps: analyze after every n-th optimizer step instead of at epoch ends.

    Attributes:
        engine: the `ww_callbacks.engine.SpectralMonitor` doing the work.
        last_report, history, stopped_epoch, stop_reason, seed: as in the Lightning and Keras callbacks
            (``history`` entries carry ``epoch`` (0-based) and ``step`` (``global_step``)).
        stopped_step: the ``global_step`` at which the rule stopped training, or None.

    Example::

        from transformers import Trainer, TrainingArguments
        from ww_callbacks.transformers import WeightWatcherCallback
        from ww_callbacks.stopping import Plateau

        ww = WeightWatcherCallback(every_n_steps=100, early_stopping=Plateau("alpha", mode="min", patience=3))
        args = TrainingArguments("out", max_steps=2000, save_strategy="best", metric_for_best_model="ww/alpha",
                                 greater_is_better=False, load_best_model_at_end=True, report_to=["tensorboard"])
        Trainer(model=model, args=args, train_dataset=data, callbacks=[ww]).train()
        print(ww.stopped_step, ww.stop_reason, ww.last_report.to_pandas())
    """

    __doc__ = with_shared_options(__doc__)  # the shared options, documented once in WatchOptions

    @watch_signature
    def __init__(self, *args: Any, every_n_steps: int | None = None, **options: Unpack[WatchKwargs]) -> None:
        watch = watch_options(self, args, options)
        schedule = make_schedule(watch.every_n_epochs, every_n_steps, steps_name="every_n_steps")
        self.engine = SpectralMonitor(watch, schedule=schedule)
        self.results = ResultPath(self.engine)
        self.steps = schedule if isinstance(schedule, StepSchedule) else None
        self.verbose = watch.verbose
        self.stopped_step: int | None = None
        self._handler: CallbackHandler | None = None
        self._last_step: int | None = None
        self.state_key = f"WeightWatcherCallback[{watch.prefix}]"  # in TrainerState.stateful_callbacks

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """History, rule state, seed and stop as JSON-safe values (what goes into ``trainer_state.json``).

        Example:
            >>> sorted(WeightWatcherCallback(seed=0).state_dict())[:3]
            ['factors', 'history', 'last_report']
        """
        return {**self.engine.state_dict(), "stopped_step": self.stopped_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict` (the rule continues its patience count).

        Example:
            >>> ww = WeightWatcherCallback()
            >>> ww.load_state_dict(WeightWatcherCallback(seed=5).state_dict()); ww.seed
            5
        """
        self.engine.load_state_dict(state)
        stopped = state.get("stopped_step")
        self.stopped_step = None if stopped is None else int(stopped)

    # ------------------------------------------------------------------ Trainer hooks
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self._handler = _calling_handler() or self._handler

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self._handler = _calling_handler() or self._handler
        if self._handler is None:
            self.engine.warn(
                "cannot find the Trainer's callback handler: ww/ values go to state.log_history only, "
                "not to the report_to integrations"
            )
        stateful: dict[str, Any] = state.stateful_callbacks  # type: ignore[assignment]  # a dict at run time
        saved = stateful.get(self.state_key) if state.global_step > 0 else None
        if saved is not None:
            self.load_state_dict(saved)  # resume_from_checkpoint: continue history and patience
        else:
            self.engine.reset()
            self.stopped_step = None
        self.engine.seed = int(broadcast(self.engine.seed))  # process 0's everywhere
        self._last_step = None
        host = TrainerHost(
            self, args, state, control, model=kwargs.get("model"), optimizer=kwargs.get("optimizer")
        )
        self.results.begin(
            host, open_sinks=False
        )  # at the first analysis: report_to's W&B run exists by then
        host.save_state()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        due = self.steps is not None and self.steps.should_run(state.global_step)
        if due:
            self._run(state, kwargs.get("model"))
        background = self.engine.background
        if background is None:
            return
        last = bool(control.should_training_stop)
        if last:  # the last step: finish now, while the integrations (TensorBoard ...) still take logs
            background.finish()
        if due or last or process_group() is None:  # several processes: only at points they all reach
            self.results.drain()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.steps is None and self.engine.should_run(_epoch_index(state)):
            self._run(state, kwargs.get("model"))
            self.results.drain()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        # The Trainer picks the best checkpoint from these metrics (``_determine_best_metric``).
        metrics, key = kwargs.get("metrics"), _best_key(args, self.engine.prefix)
        if metrics is not None and key is not None:
            report = self.engine.last_report
            latest = {} if report is None else self.engine.metrics_from(report)
            # NaN before the first analysis: never "better", and no KeyError in the Trainer's comparison.
            metrics.setdefault(f"eval_{key}", latest.get(key, math.nan))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self.results.end()  # pending background work is logged before the sinks close

    # ------------------------------------------------------------------ the work
    def _run(self, state: TrainerState, model: Any) -> None:
        # Every branch below depends only on values all processes share, so collectives always pair up.
        step = int(state.global_step)
        if step == self._last_step or model is None:
            return
        self._last_step = step
        self.results.analyze(model, epoch=_epoch_index(state), step=step, is_last=step >= state.max_steps)

    def __repr__(self) -> str:
        steps = None if self.steps is None else self.steps.every_n_steps
        return f"WeightWatcherCallback({self.engine!r}, every_n_steps={steps})"


class TrainerHost(Host):
    """The engine's questions answered by a ``transformers.Trainer`` (through the callback's hook arguments).

    Each analysis is one log event of its own at its step: appended to ``state.log_history`` and sent to every
    callback's ``on_log`` through the Trainer's `CallbackHandler`, so every ``report_to`` integration gets it
    once, at that step, whatever the callback order.
    """

    wandb_step_metric = "train/global_step"
    peer = "process"

    def __init__(
        self,
        callback: WeightWatcherCallback,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        *,
        model: Any = None,
        optimizer: Any = None,
    ) -> None:
        self._callback = callback
        self.args, self.state, self.control = args, state, control
        self.is_main = bool(state.is_world_process_zero)
        self._collective = TorchCollective() if process_group() is not None else None
        self._model, self._optimizer = model, optimizer

    def collective(self) -> TorchCollective | None:
        return self._collective

    def any_rank(self, flag: bool) -> bool:
        return any_process(flag, self.args.device)

    def broadcast(self, obj: Any) -> Any:
        return broadcast(obj)

    def log(self, values: Mapping[str, float], *, epoch: int, step: int) -> None:
        state, control, handler = self.state, self.control, self._callback._handler
        state.log_history.append({**values, "epoch": state.epoch, "step": step})
        if handler is None:
            return
        should_log = control.should_log  # CallbackHandler.on_log clears it: the Trainer's own log must stay
        current, state.global_step = state.global_step, step  # integrations log at state.global_step
        try:
            handler.on_log(self.args, state, control, dict(values))
        finally:
            control.should_log, state.global_step = should_log, current

    def info(self, message: str) -> None:
        if self.is_main:
            log.info("%s", message)

    def observe(self, result: MonitorResult) -> None:
        """Without evaluations, do with our value what ``Trainer._determine_best_metric`` does with eval metrics,
        and with ``save_strategy="best"`` ask for a checkpoint when it improved."""
        args, state, control = self.args, self.state, self.control
        key = _best_key(args, self._callback.engine.prefix)
        if key is None or _strategy(args.eval_strategy) != "no" or key not in result.metrics:
            return
        value, best = result.metrics[key], state.best_metric
        improved = best is None or (value > best if args.greater_is_better else value < best)
        if improved:
            state.best_metric, state.best_global_step = value, int(state.global_step)
        if _strategy(args.save_strategy) == "best":
            control.should_save = bool(improved) or control.should_save

    def stop(self, *, epoch: int, step: int, reason: str) -> bool:
        self.control.should_training_stop = True
        self._callback.stopped_step = step
        return True

    def stopping(self) -> bool:
        return bool(self.control.should_training_stop)

    def save_state(self) -> None:
        # Saved with every checkpoint's trainer_state.json (the Trainer dumps stateful_callbacks as they are).
        stateful: dict[str, Any] = self.state.stateful_callbacks  # type: ignore[assignment]  # a dict at run time
        stateful[self._callback.state_key] = self._callback.state_dict()

    def log_dir(self) -> str | None:
        return self.args.output_dir

    def model(self) -> Any:
        return self._model

    def dashboards(self) -> list[Dashboard]:
        handler = self._callback._handler
        return [] if handler is None else trainer_dashboards(handler.callbacks)

    def balance_targets(self) -> tuple[Any, list[Any]] | None:
        if self._model is None or self._optimizer is None:
            return None
        return self._model, [self._optimizer]

    def wandb_summaries_elsewhere(self, run: Any, *, owned: bool) -> bool:
        handler = self._callback._handler
        callbacks = [] if handler is None else handler.callbacks
        return not owned and any(type(cb).__name__ == "WandbCallback" for cb in callbacks)

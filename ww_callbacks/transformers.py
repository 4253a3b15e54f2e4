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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from .engine import EngineViews, MonitorResult, SpectralMonitor, StepSchedule, WatchOptions
from .engine.options import HistoryPath
from .engine.schedule import make_schedule
from .sinks.lifecycle import summary_line, wandb_options
from .spectral.report import SpectralReport
from .stopping import StoppingRule

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


def _process_group() -> Any:
    """``torch.distributed`` when a process group of more than one process is initialized, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def _broadcast(obj: Any) -> Any:
    """Process 0's ``obj`` on every process (as is without a process group)."""
    dist = _process_group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_process(flag: bool, device: Any) -> bool:
    """True on every process when ``flag`` is true on any (``all_reduce`` MAX on ``device``)."""
    dist = _process_group()
    if dist is None:
        return bool(flag)
    import torch

    value = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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


def _track_best(
    args: TrainingArguments,
    state: TrainerState,
    control: TrainerControl,
    key: str | None,
    values: dict[str, float],
) -> None:
    """Without evaluations, do with our value what ``Trainer._determine_best_metric`` does with eval metrics,
    and with ``save_strategy="best"`` ask for a checkpoint when it improved."""
    if key is None or _strategy(args.eval_strategy) != "no" or key not in values:
        return
    value, best = values[key], state.best_metric
    improved = best is None or (value > best if args.greater_is_better else value < best)
    if improved:
        state.best_metric, state.best_global_step = value, int(state.global_step)
    if _strategy(args.save_strategy) == "best":
        control.should_save = bool(improved) or control.should_save


class _LogAndStop:
    """What the callback does with each finished analysis: log it at its own step (log_history and every
    callback's ``on_log``), track the best model, reduce and apply the rule's decision; background results too."""

    engine: SpectralMonitor
    verbose: bool
    stopped_step: int | None
    _handler: CallbackHandler | None

    _save_state: Callable[[TrainerState], None]

    def _act(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        r: MonitorResult,
        *,
        decide: bool = True,
    ) -> bool:
        """Log ``r`` at its own step, track the best model, apply the rule (``decide``); True when it stops."""
        step = state.global_step if r.step is None else int(r.step)
        if r.metrics:
            self._log(args, state, control, r.metrics, step=step)
        if r.report is not None:
            _track_best(args, state, control, _best_key(args, self.engine.prefix), r.metrics)
        return (
            decide and self.engine.early_stopping is not None and self._apply_decision(args, control, r, step)
        )

    def _in_background(self) -> bool:
        if self.engine.background is None:
            return False
        if _process_group() is not None:  # several processes: the shared (collective) analysis runs in line
            self.engine.analyzer.warn_once(
                "hf-background", "background=True is not used under several processes"
            )
            return False
        return True

    def _drain(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        """Act on the background analyses finished so far (logged at their own steps); stops take effect now."""
        if self.engine.background is None:
            return
        results = self.engine.background.collect()
        for result in results:
            if result.report is not None:
                # the first stop counts (and at max_steps the Trainer already stops): then only log
                self._act(args, state, control, result, decide=not control.should_training_stop)
        if results:
            self._save_state(state)

    def _log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        values: dict[str, float],
        *,
        step: int,
    ) -> None:
        """One log event of our own at ``step``: log_history, then every callback's ``on_log``."""
        state.log_history.append({**values, "epoch": state.epoch, "step": step})
        if self.verbose and state.is_world_process_zero:
            log.info("%s", summary_line(_epoch_index(state), values))
        if self._handler is None:
            return
        should_log = control.should_log  # CallbackHandler.on_log clears it: the Trainer's own log must stay
        current, state.global_step = state.global_step, step  # integrations log at state.global_step
        try:
            self._handler.on_log(args, state, control, dict(values))
        finally:
            control.should_log, state.global_step = should_log, current

    def _apply_decision(
        self, args: TrainingArguments, control: TrainerControl, result: MonitorResult, step: int
    ) -> bool:
        """Reduce the decision over processes and stop; True when training stops after this step."""
        if not _any_process(result.stop, args.device):
            return False
        reason = (
            result.decision.reason
            if result.stop and result.decision is not None
            else "another process's rule"
        )
        control.should_training_stop = True
        epoch = int(self.engine.history[-1]["epoch"]) if self.engine.history else 0
        self.engine.record_stop(epoch, reason)
        self.stopped_step = step
        log.info("WeightWatcherCallback: stopping at step %d (epoch %d): %s", step, epoch, reason)
        return True


class WeightWatcherCallback(_LogAndStop, TrainerCallback, EngineViews):
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
    stops at the same step.

    Resuming: the history, the rule's state (patience ...) and the seed are kept in
    ``state.stateful_callbacks["WeightWatcherCallback[{prefix}]"]``, so they are saved in every checkpoint's
    ``trainer_state.json`` and ``train(resume_from_checkpoint=...)`` continues them (without
    ``restore_callback_states_from_checkpoint``, which would rebuild callbacks from saved arguments).

    Args:
        every_n_epochs: analyze at the end of every n-th epoch; None (default): every epoch unless
            ``every_n_steps`` is given (setting both raises ``ValueError``).
        metrics: summary metrics to log (weightwatcher column names); default alpha, alpha_weighted,
            log_spectral_norm and rand_distance.
        per_layer: also log each layer's metrics.
        prefix: prefix of the logged names and of the saved state's key.
        early_stopping: a `ww_callbacks.stopping.StoppingRule` (``AlphaBelow``, ``Plateau``, ``AnyOf`` ...).
        every_n_steps: analyze after every n-th optimizer step instead of at epoch ends.
        layers: only these layers (names, globs, kinds like ``"dense"``, ids; ``"-name"`` excludes).
        randomize, mp_fit, n_random: `ww_callbacks.analyze` options (``rand_distance`` needs randomize).
        seed: seed of the randomized ESDs; None draws one from OS entropy (process 0's is used everywhere).
        history_path: JSON-lines history file, written by process 0: None (default) or True:
            ``<args.output_dir>/ww_history.jsonl``; False: no file; a path: that file.
        log_wandb: log reports (per-layer scalars, table, ESD histograms and plots) to the active ``wandb.run``;
            wandb is never imported for this otherwise.
        wandb_init_kwargs: start a W&B run with these ``wandb.init`` arguments when there is none (finished at
            the end of training).
        media_every_n_epochs: spacing, in epochs, of the ESD images sent to W&B (None: the sink's default; 0: none).
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...).
        verbose: log (INFO, process 0) each analysis' summary, not only the stop.
        shard_layers: share the layers among the processes of a distributed run (see Distributed above).
        background: analyze in a worker thread (single process; under several processes the shared analysis
            runs in line): at the analysis point only the analyzed matrices are copied; each result is logged
            at its own step at the next step end, and a stop takes effect there (one analysis late at most);
            ``on_train_end`` finishes the pending work. Same numbers as ``False``.
        max_pending: analyses pending at most before an analysis point waits (default 1).

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

    def __init__(
        self,
        every_n_epochs: int | None = None,
        metrics: Sequence[str] | None = None,
        per_layer: bool = False,
        prefix: str = "ww/",
        early_stopping: StoppingRule | None = None,
        *,
        every_n_steps: int | None = None,
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
        options = WatchOptions.pick(locals())
        schedule = make_schedule(every_n_epochs, every_n_steps, steps_name="every_n_steps")
        self.engine = SpectralMonitor(options, schedule=schedule)
        self.steps = schedule if isinstance(schedule, StepSchedule) else None
        self.verbose = bool(verbose)
        self.stopped_step: int | None = None
        self._handler: CallbackHandler | None = None
        self._last_step: int | None = None
        self._sinks_open = False

    @property
    def state_key(self) -> str:
        """Key of this callback's state in ``TrainerState.stateful_callbacks`` (includes the prefix)."""
        return f"WeightWatcherCallback[{self.engine.prefix}]"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """History, rule state, seed and stop as JSON-safe values (what goes into ``trainer_state.json``).

        Example:
            >>> sorted(WeightWatcherCallback(seed=0).state_dict())[:3]
            ['history', 'last_report', 'rule']
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
        saved = state.stateful_callbacks.get(self.state_key) if state.global_step > 0 else None
        if saved is not None:
            self.load_state_dict(saved)  # resume_from_checkpoint: continue history and patience
        else:
            self.engine.reset()
            self.stopped_step = None
        self.engine.seed = int(_broadcast(self.engine.seed))  # process 0's everywhere
        self._last_step = None
        self._sinks_open = False
        self._save_state(state)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.steps is not None and self.steps.should_run(state.global_step):
            self._run(args, state, control, kwargs.get("model"))
        if control.should_training_stop and self.engine.background is not None:
            # the last step: finish now, while the integrations (TensorBoard ...) still take logs
            self.engine.background.finish()
        self._drain(args, state, control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.steps is None and self.engine.should_run(_epoch_index(state)):
            self._run(args, state, control, kwargs.get("model"))

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        # The Trainer picks the best checkpoint from these metrics (``_determine_best_metric``).
        metrics, key = kwargs.get("metrics"), _best_key(args, self.engine.prefix)
        if metrics is not None and key is not None:
            # NaN before the first analysis: never "better", and no KeyError in the Trainer's comparison.
            metrics.setdefault(f"eval_{key}", self._last_values().get(key, math.nan))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        try:
            if self.engine.background is not None:
                self.engine.background.finish()  # pending work is logged before the sinks close
                self._drain(args, state, control)
        finally:
            self.engine.close_sinks()
            self._sinks_open = False

    # ------------------------------------------------------------------ the work
    def _run(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any) -> None:
        # Every branch below depends only on values all processes share, so collectives always pair up.
        step, epoch = int(state.global_step), _epoch_index(state)
        if step == self._last_step:
            return
        self._last_step = step
        if self._in_background():
            self._open_sinks(args)  # the worker writes the history file and W&B as each analysis finishes
            assert self.engine.background is not None
            self.engine.background.submit(model, epoch=epoch, step=step, is_last=step >= state.max_steps)
            self._drain(args, state, control)
            return
        result = self.engine.record(self._analyze_and_share(model, epoch, step), epoch=epoch, step=step)
        stops = self._act(args, state, control, result)
        if state.is_world_process_zero:
            self._open_sinks(args)
            self.engine.emit(result, epoch=epoch, step=step, is_last=stops or step >= state.max_steps)
        self._save_state(state)

    def _analyze_and_share(self, model: Any, epoch: int, step: int) -> SpectralReport | None:
        if model is None:
            return None
        if _process_group() is None:
            return self.engine.analyze(model, epoch=epoch, step=step)
        from .distributed import TorchCollective

        # A collective: every process analyzes its share and gets the merged, single-process report.
        return self.engine.analyze(model, epoch=epoch, step=step, collective=TorchCollective())

    def _last_values(self) -> dict[str, float]:
        report = self.engine.last_report
        return {} if report is None else self.engine.metrics_from(report)

    def _open_sinks(self, args: TrainingArguments) -> None:
        """Attach the history file and W&B at the first analysis (``report_to``'s W&B run exists by then)."""
        if self._sinks_open:
            return
        self._sinks_open = True
        run, from_callback = None, False
        if self.engine.options.log_wandb:
            callbacks = [] if self._handler is None else self._handler.callbacks
            from_callback = any(type(cb).__name__ == "WandbCallback" for cb in callbacks)
            try:
                run = self.engine.resolve_wandb_run()
            except Exception as exc:
                self.engine.warn(f"cannot start a W&B run ({type(exc).__name__}: {exc})")
        options = wandb_options(
            per_layer=self.engine.per_layer,
            summaries_elsewhere=from_callback and not self.engine.owns_wandb_run(run),
        )
        self.engine.open_sinks(
            history_path=self.engine.options.history_file(args.output_dir),
            wandb_run=run,
            step_metric="train/global_step",
            **options,
        )

    def _save_state(self, state: TrainerState) -> None:
        # Saved with every checkpoint's trainer_state.json (the Trainer dumps stateful_callbacks as they are).
        state.stateful_callbacks[self.state_key] = self.state_dict()

    def __repr__(self) -> str:
        steps = None if self.steps is None else self.steps.every_n_steps
        return f"WeightWatcherCallback({self.engine!r}, every_n_steps={steps})"

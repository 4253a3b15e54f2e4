"""`SpectralMonitor`: the framework-free engine behind every callback.

What is the same in every framework lives here: the options (`WatchOptions`), the schedule, running the
spectral core on a snapshot with a per-analysis RNG, turning a report into logged scalars, the history of
summaries, feeding the stopping rule, the sinks (`ww_callbacks.sinks.lifecycle.RunSinks`) and the checkpoint
state. A callback only adds the framework plumbing: when to call, which rank computes, how to log and how to
stop.

The flow of one analyzed epoch::

    layers = monitor.snapshot(model)                      # copy the weights out (framework adapter)
    report = monitor.analyze(layers, epoch=epoch)         # None if the analysis failed (warned)
    result = monitor.record(report, epoch=epoch, step=step)       # history + the rule's decision
    ... the callback decides whether training really stops (ranks, min_epochs) ...
    monitor.emit(result, epoch=epoch, step=step, is_last=stops_here)   # history file, W&B
    log(result.metrics); if stopping: monitor.record_stop(epoch, result.decision.reason)

``monitor.process`` is `record` then `emit` (for callers that stop whenever the rule says so), and
``monitor.run(model, epoch=..., step=...)`` does it all at once.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..balance.rules import balance_factors, factor_scalars
from ..distributed import Collective
from ..layers import LayerWeights
from ..sinks.lifecycle import RunSinks
from ..spectral.report import SpectralReport
from ..stopping import StopDecision
from .analyzer import Analyzer
from .background import BackgroundAnalysis
from .jobs import prepare_background
from .options import WatchOptions
from .outcome import MonitorResult, SharedPart
from .scalars import report_scalars, scalar_keys
from .schedule import Schedule, StepSchedule, fresh_seed, make_schedule, rng_for
from .state import RunState

log = logging.getLogger(__name__)

__all__ = ["MonitorResult", "SharedPart", "SpectralMonitor"]


def _view(part: str, name: str, doc: str) -> Any:
    """A read-only property showing ``self.<part>.<name>``: the monitor's parts own that state."""
    return property(lambda self: getattr(getattr(self, part), name), doc=doc)


class SpectralMonitor:
    """Schedule, analyze, summarize, remember and decide: the state the callbacks share.

    Args:
        options: a `WatchOptions`; or pass its fields as keyword arguments (``SpectralMonitor(seed=0, ...)``).
        schedule: when to analyze (`StepSchedule` for step schedules); default ``EpochSchedule(every_n_epochs)``.

    Attributes:
        options: the checked `WatchOptions` (``metrics``, ``prefix``, ``per_layer``, ``early_stopping`` are
            also attributes of the monitor).
        schedule, analyzer, state, sinks, background: the parts (`EpochSchedule`, `Analyzer`, `RunState`,
            `RunSinks`, `BackgroundAnalysis` or None);
            ``seed``, ``history``, ``last_report``, ``stopped_epoch``, ``stop_reason`` read the state and
            ``analysis_time`` (seconds in snapshot + analysis) the analyzer.

    Example:
        >>> from ww_callbacks.stopping import AlphaBelow
        >>> monitor = SpectralMonitor(seed=0, early_stopping=AlphaBelow(2.0))
        >>> weights = {"fc.weight": np.random.default_rng(0).standard_normal((200, 100))}
        >>> result = monitor.run(weights, epoch=0, step=10)
        >>> sorted(result.metrics)[:2], result.stop
        (['ww/alpha', 'ww/alpha_weighted'], False)
        >>> monitor.history[0]["epoch"]
        0
    """

    def __init__(
        self, options: WatchOptions | None = None, *, schedule: Schedule | None = None, **kw: Any
    ) -> None:
        if options is not None and kw:
            raise TypeError("pass either a WatchOptions or its fields as keyword arguments, not both")
        self.options = options if options is not None else WatchOptions(**kw)
        self.schedule = schedule or make_schedule(self.options.every_n_epochs, None)
        self.background = (
            BackgroundAnalysis(
                functools.partial(prepare_background, self),
                max_pending=self.options.max_pending,
                warn=self.warn,
            )
            if self.options.background
            else None
        )
        self.analyzer = Analyzer(self.options, warn=self.warn)
        self.state = RunState(seed=fresh_seed() if self.options.seed is None else int(self.options.seed))
        self.sinks = RunSinks(warn=self.warn)

    # ------------------------------------------------------------------ options, read through
    @property
    def metrics(self) -> tuple[str, ...]:
        """The summary metrics logged as ``{prefix}{metric}``."""
        return tuple(self.options.metrics or ())

    prefix = _view("options", "prefix", "Prefix of every logged name.")
    per_layer = _view("options", "per_layer", "Whether per-layer values are logged too.")
    early_stopping = _view("options", "early_stopping", "The stopping rule (None: only log).")

    @property
    def seed(self) -> int:
        """The seed of the shuffles (``options.seed``, else drawn from OS entropy; saved in the state)."""
        return self.state.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.state.seed = int(value)

    history = _view("state", "history", "One dict per analyzed epoch (see `RunState`).")
    last_report = _view(
        "state", "last_report", "The latest `SpectralReport` (None before the first analysis)."
    )
    stopped_epoch = _view(
        "state", "stopped_epoch", "The epoch at which the rule stopped training (None if it did not)."
    )
    stop_reason = _view("state", "stop_reason", 'The rule\'s reason for stopping ("" if it did not).')

    @property
    def analysis_time(self) -> float:
        """Seconds spent in snapshot + analysis, for overhead reports."""
        return self.analyzer.analysis_time

    # ------------------------------------------------------------------ schedule
    def should_run(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based; the steps done on a step schedule) is an analysis point of the schedule.

        Example:
            >>> [e for e in range(6) if SpectralMonitor(every_n_epochs=2, seed=0).should_run(e)]
            [1, 3, 5]
        """
        return self.schedule.should_run(epoch)

    def rng_for(self, epoch: int, step: int | None = None) -> np.random.Generator:
        """The shuffles' generator, from (seed, epoch) or on step schedules (seed, step): ranks and resumes agree.

        Example:
            >>> m = SpectralMonitor(seed=3)
            >>> float(m.rng_for(2).random()) == float(m.rng_for(2).random())
            True
        """
        return rng_for(self.seed, self.schedule.position(epoch=epoch, step=step))

    # ------------------------------------------------------------------ analysis
    def snapshot(self, model: Any, *, copy: bool = False) -> list[LayerWeights] | None:
        """The analyzable weights of ``model`` (filtered by ``layers``); None (with a warning) on error.

        Read in place by default (the core never writes); ``copy=True``: a snapshot training cannot change.

        Example:
            >>> [lw.name for lw in SpectralMonitor(seed=0).snapshot({"fc.weight": np.ones((20, 10))})]
            ['fc']
        """
        return self.analyzer.snapshot(model, copy=copy)

    def analyze(
        self, model: Any, *, epoch: int, step: int | None = None, collective: Collective | None = None
    ) -> SpectralReport | None:
        """Run the spectral core on ``model`` (a model, a mapping or a `snapshot` list) for ``epoch`` / ``step``.

        Any exception becomes a warning and a None result: training never dies because of the analysis. With a
        ``collective`` (`ww_callbacks.distributed.Collective`) all ranks call it and get the same report.

        Example:
            >>> report = SpectralMonitor(seed=0).analyze({"fc.weight": np.eye(30)}, epoch=0)
            >>> report.layers[0].name
            'fc'
        """
        rng = self.rng_for(epoch, step)
        return self.analyzer.analyze(model, rng=rng, epoch=epoch, collective=collective)

    # ------------------------------------------------------------------ results
    def metrics_from(
        self, report: SpectralReport, summary: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """The scalars to log for ``report``: ``{prefix}{metric}`` (+ per layer); non-finite values left out.

        Example:
            >>> m = SpectralMonitor(seed=0, metrics=("alpha",), per_layer=True)
            >>> sorted(m.metrics_from(m.analyze({"fc.weight": np.random.default_rng(0).normal(size=(90, 40))}, epoch=0)))
            ['ww/alpha', 'ww/fc/alpha']
        """
        out, missing = report_scalars(
            report, metrics=self.metrics, prefix=self.prefix, per_layer=self.per_layer, summary=summary
        )
        if missing and report.layers:  # no layer at all was already reported by `analyze`
            self.analyzer.warn_once(
                "nan:" + ",".join(missing),
                f"summary {', '.join(missing)} not finite ({report.num_summarized} of {len(report.layers)} layers "
                "fitted); not logged when that happens",
            )
        return out

    def logged_keys(self, model: Any = None) -> list[str]:
        """The keys an analysis of ``model`` logs when every value is finite (`scalar_keys`).

        Example:
            >>> SpectralMonitor(seed=0, metrics=("alpha",), per_layer=True).logged_keys({"fc.weight": np.eye(9)})
            ['ww/alpha', 'ww/fc/alpha']
        """
        layers = (self.snapshot(model) or []) if self.per_layer and model is not None else []
        return scalar_keys(layers, metrics=self.metrics, prefix=self.prefix, per_layer=self.per_layer)

    def record(self, report: SpectralReport | None, *, epoch: int, step: int = 0) -> MonitorResult:
        """Record ``report`` for ``epoch``: history, ``last_report`` and the rule's decision (sinks: `emit`).

        A None report (failed analysis) records nothing and returns an empty result. The decision is only
        returned; callers that act on it call `record_stop`.

        Example:
            >>> SpectralMonitor(seed=0).record(None, epoch=0).metrics
            {}
        """
        if report is None:
            return MonitorResult(epoch=epoch, step=step)
        summary = report.summary  # once: the history and the logged scalars share it
        self.state.add(report, epoch=epoch, step=step, summary=summary)
        metrics = self.metrics_from(report, summary)
        rules = self.options.balance_rules
        if rules:  # a new mapping each analysis: the optimizer hooks see the change
            factors = self.state.factors = balance_factors(rules, report)
            metrics.update(factor_scalars(rules, factors, self.prefix, self.per_layer))
        return MonitorResult(metrics, report, self._decide(report, epoch), epoch=epoch, step=step)

    def emit(self, result: MonitorResult, *, epoch: int, step: int = 0, is_last: bool = False) -> None:
        """Send ``result``'s report to the open sinks; ``is_last`` only when training really ends there."""
        if result.report is not None:
            self.sinks.emit(result.report, epoch=int(epoch), step=int(step), is_last=bool(is_last))

    def process(
        self, report: SpectralReport | None, *, epoch: int, step: int = 0, is_last: bool = False
    ) -> MonitorResult:
        """`record` then `emit`, for callers that stop whenever the rule says so: the sinks are told the report
        is the last one when ``is_last`` or when the rule says stop."""
        result = self.record(report, epoch=epoch, step=step)
        self.emit(result, epoch=epoch, step=step, is_last=is_last or result.stop)
        return result

    def run(self, model: Any, *, epoch: int, step: int = 0, is_last: bool = False) -> MonitorResult:
        """`analyze` then `process`: the whole work of one analyzed epoch on one process.

        Example:
            >>> m = SpectralMonitor(seed=0, metrics=("alpha",))
            >>> list(m.run({"fc.weight": np.random.default_rng(1).normal(size=(80, 40))}, epoch=0).metrics)
            ['ww/alpha']
        """
        report = self.analyze(model, epoch=epoch, step=step)
        return self.process(report, epoch=epoch, step=step, is_last=is_last)

    def _decide(self, report: SpectralReport, epoch: int) -> StopDecision | None:
        try:
            return None if self.early_stopping is None else self.early_stopping.update(report, epoch=epoch)
        except Exception as exc:
            self.warn(
                f"stopping rule {self.early_stopping!r} failed at epoch {epoch} ({type(exc).__name__}: {exc})"
            )
            return None

    def record_stop(self, epoch: int, reason: str) -> None:
        """Remember that training stops at ``epoch`` because of the rule (callers log the reason).

        Example:
            >>> m = SpectralMonitor(seed=0); m.record_stop(4, "alpha below 2"); m.stopped_epoch, m.stop_reason
            (4, 'alpha below 2')
        """
        self.state.record_stop(epoch, reason)

    def reset(self) -> None:
        """Forget history, last report, stop and rule state (the seed is kept).

        Example:
            >>> m = SpectralMonitor(seed=0); m.record_stop(1, "x"); m.reset(); m.stopped_epoch is None
            True
        """
        self.state.reset()
        self.analyzer.analysis_time = 0.0
        if self.early_stopping is not None:
            self.early_stopping.reset()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """History, rule state, seed and stop, as plain Python values (safe for ``torch.save`` and JSON).

        Example:
            >>> sorted(SpectralMonitor(seed=0).state_dict())[:3]
            ['factors', 'history', 'last_report']
        """
        return self.state.state_dict(rule=self.early_stopping)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved; a resumed run continues the same history, patience and shuffles.

        Example:
            >>> a, b = SpectralMonitor(seed=7), SpectralMonitor()
            >>> b.load_state_dict(a.state_dict()); b.seed
            7
        """
        self.state.load_state_dict(state, rule=self.early_stopping)

    # ------------------------------------------------------------------ sinks
    def resolve_wandb_run(self, candidate: Any = None) -> Any:
        """The W&B run to log to (`RunSinks.resolve_wandb_run`; None with ``log_wandb=False``)."""
        if not self.options.log_wandb:
            return None
        return self.sinks.resolve_wandb_run(candidate, init_kwargs=self.options.wandb_init_kwargs)

    def owns_wandb_run(self, run: Any) -> bool:
        """True when ``run`` is the W&B run this monitor started itself (from ``wandb_init_kwargs``)."""
        return self.sinks.owns(run)

    def open_sinks(self, *, history_path: Any = None, wandb_run: Any = None, **options: Any) -> None:
        """Attach a history file, a W&B run and ``dashboards=[...]`` (`ww_callbacks.sinks.discover.Dashboard`)
        on rank 0 (`RunSinks.open`; the options default to the monitor's, the figures' x axis to steps on a step
        schedule); `emit` then sends every report to them. Failures become warnings.

        Example:
            >>> m = SpectralMonitor(seed=0); m.open_sinks(); m.close_sinks()
        """
        self.sinks.close(self.history, finish_run=False)  # a run `resolve_wandb_run` just started stays open
        x_axis = "step" if isinstance(self.schedule, StepSchedule) else "epoch"
        defaults = {
            "prefix": self.prefix,
            "per_layer": self.per_layer,
            "step_metric": "epoch",
            "x_axis": x_axis,
        }
        defaults["media_every_n_epochs"] = self.options.media_every_n_epochs
        self.sinks.open(history_path=history_path, wandb_run=wandb_run, **{**defaults, **options})

    def close_sinks(self) -> None:
        """Flush and close the sinks (``WandbSink.finish(history)``; a run we created is finished).

        Example:
            >>> SpectralMonitor(seed=0).close_sinks()
        """
        self.sinks.close(self.history, finish_run=True)

    # ------------------------------------------------------------------ warnings
    def warn(self, message: str) -> None:
        """Warn (``RuntimeWarning``, prefixed ``ww_callbacks:``) instead of raising: analysis never stops training."""
        warnings.warn(f"ww_callbacks: {message}", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        return f"SpectralMonitor({self.schedule!r}, {self.options!r})"

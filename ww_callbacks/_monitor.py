"""`SpectralMonitor`: the framework-free engine behind the Lightning and Keras callbacks.

Everything that is the same in both frameworks lives here: the options, the schedule (`should_run`), running
the spectral core on a snapshot with a per-epoch RNG, turning a report into logged scalars, the history of
summaries, feeding the stopping rule, the optional sinks (history file, W&B) and the checkpoint state. A
callback only adds the framework plumbing: when to call, which rank computes, how to log and how to stop.

The flow of one analyzed epoch::

    layers = monitor.snapshot(model)                      # copy the weights out (framework adapter)
    report = monitor.analyze(layers, epoch=epoch)         # None if the analysis failed (warned)
    result = monitor.process(report, epoch=epoch, step=step)
    log(result.metrics); if result.stop: ...; monitor.record_stop(epoch, result.decision.reason)

``monitor.run(model, epoch=..., step=...)`` does the three steps at once.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .analysis import analyze as _analyze
from .layers import LayerWeights, snapshot
from .spectral.report import SUMMARY_COUNTS, SUMMARY_METRICS, SpectralReport
from .stopping import StopDecision, StoppingRule

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METRICS", "MonitorResult", "MonitorViews", "SpectralMonitor"]

#: Summary metrics logged by default (``rand_distance`` only when ``randomize=True``).
DEFAULT_METRICS = ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance", "num_nonfinite_layers")

#: Metrics that only exist with an analysis option turned on.
_NEEDS_OPTION = {"rand_distance": "randomize", "mp_softrank": "mp_fit"}

#: Options `SpectralMonitor` passes to `ww_callbacks.analyze` itself; ``analyze_kwargs`` may not repeat them.
_OWN_ANALYZE_OPTIONS = ("layers", "randomize", "mp_fit", "seed", "rng", "n_random")

_STATE_VERSION = 1


@dataclass
class MonitorResult:
    """What one analyzed epoch produced.

    ``metrics`` maps logged names (``ww/alpha``, ``ww/fc1/alpha`` ...) to finite floats; it is empty when the
    analysis failed. ``decision`` is the stopping rule's answer (None without a rule or without a report).

    Example:
        >>> MonitorResult().stop
        False
    """

    metrics: dict[str, float] = field(default_factory=dict)
    report: SpectralReport | None = None
    decision: StopDecision | None = None

    @property
    def stop(self) -> bool:
        """True when the stopping rule asked to stop."""
        return bool(self.decision is not None and self.decision.stop)


def _is_layer_list(obj: Any) -> bool:
    return (
        isinstance(obj, Sequence)
        and not isinstance(obj, (str, bytes))
        and all(isinstance(item, LayerWeights) for item in obj)
    )


def _fresh_seed() -> int:
    # OS entropy, never the global numpy/random state; 63 bits keep it an ordinary int64 everywhere.
    entropy: Any = np.random.SeedSequence().entropy  # an int when no entropy is passed in
    return int(entropy) % (2**63)


class SpectralMonitor:
    """Schedule, analyze, summarize, remember and decide: the state the callbacks share.

    Args:
        every_n_epochs: analyze at the end of every n-th epoch (epochs 0-based: n-1, 2n-1, ...).
        metrics: summary metrics to log as ``{prefix}{metric}`` (weightwatcher column names, see
            `ww_callbacks.SUMMARY_METRICS`, or ``num_nonfinite_layers``: the count of layers whose weights hold
            NaN/Inf); default `DEFAULT_METRICS` (without ``rand_distance`` when ``randomize=False``).
        per_layer: also log ``{prefix}{layer longname}/{metric}``.
        prefix: prefix of every logged name.
        layers: layer filter passed to `ww_callbacks.snapshot` (names, globs, kinds, ids; ``-`` excludes).
        randomize, mp_fit, n_random: options of `ww_callbacks.analyze`.
        seed: seed of the shuffles; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``, so ranks and
            resumed runs draw the same shuffles. None draws one from OS entropy (kept in the state dict).
        early_stopping: a `ww_callbacks.stopping.StoppingRule` fed with every report.
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...);
            ``traps`` defaults to False here (pass ``{"traps": True}`` for ``num_traps`` and the ``rand_*`` columns).
        history_path, log_wandb, wandb_init_kwargs: sink options the callbacks resolve (see `open_sinks`).
        media_every_n_epochs: spacing of the W&B ESD images (None: the sink's default; 0: none).

    Attributes:
        history: one dict per analyzed epoch: ``epoch``, ``step``, the summary metrics, ``num_summarized``,
            ``num_layers``, ``elapsed`` (seconds of analysis).
        last_report: the latest `SpectralReport` (None before the first analysis).
        stopped_epoch: the epoch at which the rule stopped training (None if it did not).
        stop_reason: the rule's reason ("" if it did not stop).

    Example:
        >>> import numpy as np
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
        self,
        *,
        every_n_epochs: int = 1,
        metrics: Sequence[str] | None = None,
        per_layer: bool = False,
        prefix: str = "ww/",
        layers: Any = None,
        randomize: bool = True,
        mp_fit: bool = False,
        seed: int | None = None,
        n_random: int = 1,
        early_stopping: StoppingRule | None = None,
        analyze_kwargs: Mapping[str, Any] | None = None,
        history_path: Any = None,
        log_wandb: bool = True,
        wandb_init_kwargs: Mapping[str, Any] | None = None,
        media_every_n_epochs: int | None = None,
    ) -> None:
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random}")
        if early_stopping is not None and not isinstance(early_stopping, StoppingRule):
            raise TypeError(
                f"early_stopping must be a ww_callbacks.stopping.StoppingRule, got {type(early_stopping).__name__}"
            )
        if media_every_n_epochs is not None and int(media_every_n_epochs) < 0:
            raise ValueError(f"media_every_n_epochs must be >= 0 or None, got {media_every_n_epochs}")
        kwargs = dict(analyze_kwargs or {})
        clash = sorted(set(kwargs) & set(_OWN_ANALYZE_OPTIONS))
        if clash:
            raise ValueError(f"pass {', '.join(clash)} as arguments of the callback, not in analyze_kwargs")
        self.every_n_epochs = int(every_n_epochs)
        self.randomize = bool(randomize)
        self.mp_fit = bool(mp_fit)
        self.metrics = self._check_metrics(metrics)
        self.per_layer = bool(per_layer)
        self.prefix = str(prefix)
        self.layers = layers
        self.n_random = int(n_random)
        self.early_stopping = early_stopping
        if early_stopping is not None:
            self._check_rule(early_stopping)
        # The callbacks log summary metrics; the correlation-trap columns (the MP fit of the shuffled ESD) are
        # not among them and cost about half of the randomization: off unless asked for.
        kwargs.setdefault("traps", False)
        self.analyze_kwargs = kwargs
        self.seed = _fresh_seed() if seed is None else int(seed)
        self.history_path = history_path
        self.log_wandb = bool(log_wandb)
        self.wandb_init_kwargs = dict(wandb_init_kwargs) if wandb_init_kwargs is not None else None
        self.media_every_n_epochs = None if media_every_n_epochs is None else int(media_every_n_epochs)

        self.history: list[dict[str, Any]] = []
        self.last_report: SpectralReport | None = None
        self.stopped_epoch: int | None = None
        self.stop_reason: str = ""
        self.analysis_time = 0.0  # seconds spent in snapshot + analysis, for overhead reports
        self._history_writer: Any = None
        self._wandb_sink: Any = None
        self._owned_wandb_run: Any = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ options
    def _check_metrics(self, metrics: Sequence[str] | None) -> tuple[str, ...]:
        if metrics is None:
            return tuple(m for m in DEFAULT_METRICS if self._option_on(m))
        if isinstance(metrics, str):
            metrics = (metrics,)
        out = tuple(metrics)
        for metric in out:
            if metric not in SUMMARY_METRICS + SUMMARY_COUNTS:
                known = ", ".join(SUMMARY_METRICS + SUMMARY_COUNTS)
                raise ValueError(f"unknown metric {metric!r}: choose from {known}")
            if not self._option_on(metric):
                raise ValueError(f"metric {metric!r} needs {_NEEDS_OPTION[metric]}=True")
        return out

    def _check_rule(self, rule: StoppingRule) -> None:
        # A rule watching rand_distance without randomize=True would fail at its first check: fail now.
        children = getattr(rule, "rules", None)
        if children:
            for child in children:
                self._check_rule(child)
        elif rule.monitor is not None and not self._option_on(rule.monitor):
            raise ValueError(
                f"{rule!r} monitors {rule.monitor!r}, which needs {_NEEDS_OPTION[rule.monitor]}=True"
            )

    def _option_on(self, metric: str) -> bool:
        option = _NEEDS_OPTION.get(metric)
        return option is None or bool(getattr(self, option))

    # ------------------------------------------------------------------ schedule
    def should_run(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is an analysis epoch: every ``every_n_epochs``-th, counting from 1.

        Example:
            >>> [e for e in range(6) if SpectralMonitor(every_n_epochs=2, seed=0).should_run(e)]
            [1, 3, 5]
        """
        return (int(epoch) + 1) % self.every_n_epochs == 0

    def rng_for(self, epoch: int) -> np.random.Generator:
        """The shuffles' generator for ``epoch``: depends only on (seed, epoch), so ranks and resumes agree.

        Example:
            >>> m = SpectralMonitor(seed=3)
            >>> float(m.rng_for(2).random()) == float(m.rng_for(2).random())
            True
        """
        return np.random.default_rng([self.seed, int(epoch)])

    # ------------------------------------------------------------------ analysis
    def snapshot(self, model: Any, *, copy: bool = False) -> list[LayerWeights] | None:
        """The analyzable weights of ``model`` (filtered by ``layers``); None (with a warning) on error.

        `analyze` runs while training waits, so by default the weights are read in place (the core never writes
        to them; this saves a copy of every matrix each time). Pass ``copy=True`` to keep a snapshot that
        training will not change, e.g. to analyze it later or in another thread.

        Example:
            >>> [lw.name for lw in SpectralMonitor(seed=0).snapshot({"fc.weight": np.ones((20, 10))})]
            ['fc']
        """
        start = time.perf_counter()
        try:
            if _is_layer_list(model):
                return list(model)
            return snapshot(model, layers=self.layers, copy=copy)
        except Exception as exc:
            self.warn(f"could not snapshot the weights ({type(exc).__name__}: {exc}); no spectral metrics")
            return None
        finally:
            self.analysis_time += time.perf_counter() - start

    def analyze(self, model: Any, *, epoch: int) -> SpectralReport | None:
        """Run the spectral core on ``model`` (a model, a mapping or a `snapshot` list) for ``epoch``.

        Any exception becomes a warning and a None result: training never dies because of the analysis.

        Example:
            >>> report = SpectralMonitor(seed=0).analyze({"fc.weight": np.eye(30)}, epoch=0)
            >>> report.layers[0].name
            'fc'
        """
        layers = model if _is_layer_list(model) else self.snapshot(model)
        if layers is None:
            return None
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # "no analyzable layer" would repeat every epoch; it is said once below instead.
                warnings.filterwarnings("ignore", message="no analyzable layer", category=RuntimeWarning)
                report = _analyze(
                    layers,
                    randomize=self.randomize,
                    mp_fit=self.mp_fit,
                    n_random=self.n_random,
                    rng=self.rng_for(epoch),
                    **self.analyze_kwargs,
                )
        except Exception as exc:
            self.warn(
                f"spectral analysis failed at epoch {epoch} ({type(exc).__name__}: {exc}); training goes on"
            )
            log.debug("analysis failure", exc_info=True)
            return None
        finally:
            self.analysis_time += time.perf_counter() - start
        if not report.layers:
            self._warn_once("no-layers", "no analyzable layer (dense, conv1d, conv2d, embedding) was found")
        bad = [lr.longname for lr in report.nonfinite_layers]
        if bad:  # diverged weights: say which layers, once per set of layers
            self._warn_once(
                "non-finite:" + "\0".join(bad),
                f"epoch {epoch}: the weights of {len(bad)} of {len(report.layers)} layers hold NaN or Inf "
                f"({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}): training diverged; they are not "
                f"analyzed and are counted in {self.prefix}num_nonfinite_layers",
            )
        return report

    # ------------------------------------------------------------------ results
    def metrics_from(self, report: SpectralReport) -> dict[str, float]:
        """The scalars to log for ``report``: ``{prefix}{metric}`` (+ per layer); non-finite values left out.

        Example:
            >>> m = SpectralMonitor(seed=0, metrics=("alpha",), per_layer=True)
            >>> sorted(m.metrics_from(m.analyze({"fc.weight": np.random.default_rng(0).normal(size=(90, 40))}, epoch=0)))
            ['ww/alpha', 'ww/fc/alpha']
        """
        out: dict[str, float] = {}
        summary = report.summary
        missing = []
        for metric in self.metrics:
            value = float(summary.get(metric, math.nan))
            if math.isfinite(value):
                out[f"{self.prefix}{metric}"] = value
            else:
                missing.append(metric)
        if missing and report.layers:  # no layer at all was already reported by `analyze`
            self._warn_once(
                "nan:" + ",".join(missing),
                f"summary {', '.join(missing)} not finite ({report.num_summarized} of {len(report.layers)} layers "
                "fitted); not logged when that happens",
            )
        if self.per_layer:
            for layer in report.layers:
                for metric in self.metrics:
                    value = float(getattr(layer, metric, math.nan))
                    if math.isfinite(value):
                        out[f"{self.prefix}{layer.longname}/{metric}"] = value
        return out

    def process(
        self, report: SpectralReport | None, *, epoch: int, step: int = 0, is_last: bool = False
    ) -> MonitorResult:
        """Record ``report`` for ``epoch``: history, ``last_report``, the rule's decision and the sinks.

        A None report (failed analysis) records nothing and returns an empty result. The decision is only
        returned; callers that act on it call `record_stop`.

        Example:
            >>> m = SpectralMonitor(seed=0)
            >>> m.process(None, epoch=0).metrics
            {}
        """
        if report is None:
            return MonitorResult()
        self.last_report = report
        entry: dict[str, Any] = {"epoch": int(epoch), "step": int(step)}
        entry.update({k: float(v) for k, v in report.summary.items()})
        entry.update(
            num_summarized=report.num_summarized, num_layers=len(report.layers), elapsed=float(report.elapsed)
        )
        self.history.append(entry)
        decision = self._decide(report, epoch)
        self._emit(report, epoch=epoch, step=step, is_last=is_last or bool(decision and decision.stop))
        return MonitorResult(metrics=self.metrics_from(report), report=report, decision=decision)

    def run(self, model: Any, *, epoch: int, step: int = 0, is_last: bool = False) -> MonitorResult:
        """`analyze` then `process`: the whole work of one analyzed epoch on one process.

        Example:
            >>> m = SpectralMonitor(seed=0, metrics=("alpha",))
            >>> list(m.run({"fc.weight": np.random.default_rng(1).normal(size=(80, 40))}, epoch=0).metrics)
            ['ww/alpha']
        """
        return self.process(self.analyze(model, epoch=epoch), epoch=epoch, step=step, is_last=is_last)

    def _decide(self, report: SpectralReport, epoch: int) -> StopDecision | None:
        if self.early_stopping is None:
            return None
        try:
            return self.early_stopping.update(report, epoch=epoch)
        except Exception as exc:
            self.warn(
                f"stopping rule {self.early_stopping!r} failed at epoch {epoch} ({type(exc).__name__}: {exc})"
            )
            return None

    def record_stop(self, epoch: int, reason: str) -> None:
        """Remember that training stops at ``epoch`` because of the rule (callers log the reason).

        Example:
            >>> m = SpectralMonitor(seed=0)
            >>> m.record_stop(4, "mean alpha 1.9 is below 2")
            >>> m.stopped_epoch, m.stop_reason
            (4, 'mean alpha 1.9 is below 2')
        """
        self.stopped_epoch = int(epoch)
        self.stop_reason = str(reason)

    def best_epoch(self) -> int | None:
        """The epoch of the best value of the rule's monitored metric in `history` (None without a rule).

        Example:
            >>> SpectralMonitor(seed=0).best_epoch() is None
            True
        """
        if self.early_stopping is None:
            return None
        return self.early_stopping.best_epoch(self.history)

    def reset(self) -> None:
        """Forget history, last report, stop and rule state (the seed is kept).

        Example:
            >>> m = SpectralMonitor(seed=0); m.record_stop(1, "x"); m.reset(); m.stopped_epoch is None
            True
        """
        self.history = []
        self.last_report = None
        self.stopped_epoch = None
        self.stop_reason = ""
        self.analysis_time = 0.0
        if self.early_stopping is not None:
            self.early_stopping.reset()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """History, rule state, seed and stop, as plain Python values (safe for ``torch.save`` and JSON).

        Example:
            >>> sorted(SpectralMonitor(seed=0).state_dict())[:3]
            ['history', 'last_report', 'rule']
        """
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "history": [dict(entry) for entry in self.history],
            "rule": None if self.early_stopping is None else self.early_stopping.state_dict(),
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "last_report": None if self.last_report is None else self.last_report.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved; a resumed run continues the same history, patience and shuffles.

        Example:
            >>> a, b = SpectralMonitor(seed=7), SpectralMonitor()
            >>> b.load_state_dict(a.state_dict()); b.seed
            7
        """
        if state.get("seed") is not None:
            self.seed = int(state["seed"])
        self.history = [dict(entry) for entry in state.get("history", [])]
        rule_state = state.get("rule")
        if self.early_stopping is not None and rule_state is not None:
            self.early_stopping.load_state_dict(rule_state)
        elif rule_state is not None:
            log.info("checkpoint holds stopping-rule state but this monitor has no rule; ignored")
        stopped = state.get("stopped_epoch")
        self.stopped_epoch = None if stopped is None else int(stopped)
        self.stop_reason = str(state.get("stop_reason", ""))
        last = state.get("last_report")
        self.last_report = None if last is None else SpectralReport.from_dict(last)

    # ------------------------------------------------------------------ sinks
    def resolve_wandb_run(self, candidate: Any = None) -> Any:
        """The W&B run to log to: ``candidate``, else an active ``wandb.run`` if wandb is already imported,
        else a new run when ``wandb_init_kwargs`` was given, else None. Never imports wandb otherwise.

        Example:
            >>> SpectralMonitor(seed=0, log_wandb=False).resolve_wandb_run() is None
            True
        """
        if not self.log_wandb:
            return None
        if candidate is not None:
            return candidate
        wandb = sys.modules.get("wandb")
        active = getattr(wandb, "run", None) if wandb is not None else None
        if active is not None:
            return active
        if self.wandb_init_kwargs is not None:
            import wandb as wandb_module

            self._owned_wandb_run = wandb_module.init(**self.wandb_init_kwargs)
            return self._owned_wandb_run
        return None

    def open_sinks(self, *, history_path: Any = None, wandb_run: Any = None, **wandb_options: Any) -> None:
        """Attach a history file and/or a W&B run; `process` then writes every report to them.

        ``wandb_options`` go to `ww_callbacks.sinks.wandb.WandbSink` (``step_metric``, ``per_layer``,
        ``log_summary`` ...); ``prefix``, ``per_layer`` and ``media_every_n_epochs`` default to the monitor's.
        Call it on one process only (rank 0). Failures become warnings.

        Example:
            >>> m = SpectralMonitor(seed=0); m.open_sinks(); m.close_sinks()
        """
        self._close(finish_run=False)  # a run `resolve_wandb_run` just started stays open
        if history_path is not None:
            try:
                from .sinks.history import HistoryWriter

                self._history_writer = HistoryWriter(history_path, append=True)
            except Exception as exc:
                self.warn(f"cannot write the history file {history_path} ({type(exc).__name__}: {exc})")
        if wandb_run is not None:
            options: dict[str, Any] = {
                "prefix": self.prefix,
                "per_layer": self.per_layer,
                "media_every_n_epochs": self.media_every_n_epochs,
                "step_metric": "epoch",
            }
            options.update(wandb_options)
            try:
                from .sinks.wandb import WandbSink

                self._wandb_sink = WandbSink(wandb_run, **options)
            except Exception as exc:
                self.warn(f"cannot log to W&B ({type(exc).__name__}: {exc})")

    def _emit(self, report: SpectralReport, *, epoch: int, step: int, is_last: bool) -> None:
        if self._history_writer is not None:
            try:
                self._history_writer.write(report, epoch=epoch, step=step)
            except Exception as exc:
                self.warn(f"writing the history file failed ({type(exc).__name__}: {exc})")
        if self._wandb_sink is not None:
            try:
                self._wandb_sink.log_report(report, epoch=epoch, step=step, is_last=is_last)
            except Exception as exc:
                self.warn(f"logging to W&B failed ({type(exc).__name__}: {exc})")

    def close_sinks(self) -> None:
        """Flush and close the sinks (``WandbSink.finish(history)``; a run we created is finished).

        Example:
            >>> SpectralMonitor(seed=0).close_sinks()
        """
        self._close(finish_run=True)

    def _close(self, *, finish_run: bool) -> None:
        writer, sink = self._history_writer, self._wandb_sink
        run = self._owned_wandb_run if finish_run else None
        self._history_writer = self._wandb_sink = None
        if finish_run:
            self._owned_wandb_run = None
        for what, call in (
            ("history file", None if writer is None else writer.close),
            ("W&B summary", None if sink is None else (lambda: sink.finish(self.history))),
            ("W&B run", None if run is None else run.finish),
        ):
            if call is None:
                continue
            try:
                call()
            except Exception as exc:
                self.warn(f"closing the {what} failed ({type(exc).__name__}: {exc})")

    # ------------------------------------------------------------------ warnings
    def warn(self, message: str) -> None:
        """Warn (``RuntimeWarning``, prefixed ``ww_callbacks:``) instead of raising: analysis never stops training."""
        warnings.warn(f"ww_callbacks: {message}", RuntimeWarning, stacklevel=3)

    def owns_wandb_run(self, run: Any) -> bool:
        """True when ``run`` is the W&B run this monitor started itself (from ``wandb_init_kwargs``)."""
        return run is not None and run is self._owned_wandb_run

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    def __repr__(self) -> str:
        return (
            f"SpectralMonitor(every_n_epochs={self.every_n_epochs}, metrics={self.metrics}, "
            f"per_layer={self.per_layer}, prefix={self.prefix!r}, early_stopping={self.early_stopping!r})"
        )


class MonitorViews:
    """Read-only attributes both callbacks expose, delegated to their `SpectralMonitor` (``self.monitor``).

    Example:
        >>> class Demo(MonitorViews):
        ...     monitor = SpectralMonitor(seed=1)
        >>> Demo().seed, Demo().history
        (1, [])
    """

    monitor: SpectralMonitor

    @property
    def early_stopping(self) -> StoppingRule | None:
        """The stopping rule (None when the callback only logs)."""
        return self.monitor.early_stopping

    @property
    def last_report(self) -> SpectralReport | None:
        """The latest `SpectralReport` (under DDP, on ranks other than 0: without eigenvalue arrays)."""
        return self.monitor.last_report

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per analyzed epoch: epoch, step, summary metrics, num_summarized, num_layers, elapsed."""
        return self.monitor.history

    @property
    def stopped_epoch(self) -> int | None:
        """The epoch at which the rule stopped training (None if it did not)."""
        return self.monitor.stopped_epoch

    @property
    def stop_reason(self) -> str:
        """The rule's reason for stopping ("" if it did not)."""
        return self.monitor.stop_reason

    @property
    def seed(self) -> int:
        """Seed of the randomized ESDs (epoch e uses ``numpy.random.default_rng([seed, e])``)."""
        return self.monitor.seed

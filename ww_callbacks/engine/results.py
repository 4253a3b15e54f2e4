"""`ResultPath`: the one place where a finished analysis turns into its consequences, for every framework.

record -> log -> decide (reduced over ranks) -> stop -> emit to the sinks; background results drained and,
under several ranks, merged; the worker finished and the sinks closed at the end. An adapter gives it a `Host`
(its framework's primitives) and calls four methods from its hooks::

    path = ResultPath(monitor)
    path.begin(host)                                  # fit start (sinks may open now or at the first analysis)
    path.analyze(model, epoch=e, step=s, is_last=l)   # at an analysis point, on every rank
    path.drain()                                      # at later hooks: background results, logged at their steps
    path.end(exception)                               # fit end: finish the worker, drain, close the sinks

A new consequence of an analysis (a new sink, per-layer actions) is written here once and every framework gets it.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.engine import Host, SpectralMonitor
    >>> class Logged(Host):
    ...     def log(self, values, *, epoch, step):
    ...         print(epoch, step, sorted(values))
    >>> path = ResultPath(SpectralMonitor(seed=0, metrics=("alpha",)))
    >>> path.begin(Logged())
    >>> _ = path.analyze({"fc.weight": np.random.default_rng(0).normal(size=(80, 40))}, epoch=0, step=5)
    0 5 ['ww/alpha']
    >>> path.end()
"""

from __future__ import annotations

import logging
from typing import Any

from ..balance.optim import FactorHooks, batchnorm_followers
from ..distributed import merge_shares
from ..sinks.discover import Dashboard, active_mlflow_run
from ..sinks.lifecycle import summary_line, wandb_options
from ..spectral.report import SpectralReport
from .host import Host
from .monitor import SpectralMonitor
from .outcome import MonitorResult, SharedPart

__all__ = ["ResultPath"]

log = logging.getLogger(__name__)


class ResultPath:
    """What follows an analysis, written once: see the module docstring.

    Args:
        monitor: the engine doing the analyses and holding the state (`SpectralMonitor`).

    Attributes:
        host: the `Host` of the current fit (a plain `Host` until `begin`).
        stopped: a stop was applied in this fit (later background decisions are then only logged).
    """

    def __init__(self, monitor: SpectralMonitor) -> None:
        self.monitor = monitor
        self.host = Host()
        self.stopped = False
        self._sinks_open = False
        self._parts: list[SharedPart] = []  # this rank's finished shares, not merged yet (several ranks)
        self._hooks: FactorHooks | None = None  # the balancing factors' optimizer hooks (``balance``)

    # ---------------------------------------------------------------- fit start
    def begin(self, host: Host, *, open_sinks: bool = True) -> None:
        """Start a fit with ``host``; open the sinks now unless ``open_sinks=False`` (then at the first analysis:
        the Hugging Face W&B run exists only by then)."""
        self.host = host
        self.stopped = False
        self._parts = []
        self._sinks_open = False
        self.monitor.analyzer.forget()
        if self.monitor.options.delta_from is not None:  # "init": the weights as they are now, at fit start
            self.monitor.analyzer.set_base(host.model())
        self._install_balance()
        if open_sinks:
            self.open_sinks()

    def _install_balance(self) -> None:
        """Hook the balancing factors (the latest analysis', from the engine's state) into the optimizers."""
        rules = self.monitor.options.balance_rules
        if not rules or self._hooks is not None:
            return
        targets = self.host.balance_targets()
        if targets is None:
            self.monitor.warn("balance: no torch optimizer to apply the factors to; they are only logged")
            return
        model, optimizers = targets
        followers = batchnorm_followers(model) if any(rule.batchnorm for rule in rules) else {}
        state = self.monitor.state
        self._hooks = FactorHooks(model, optimizers, lambda: state.factors, followers=followers).install()

    def open_sinks(self) -> None:
        """Attach the history file and the W&B run (on the main process; every rank takes part: the log
        directory may be a collective); once per fit."""
        if self._sinks_open:
            return
        self._sinks_open = True
        monitor, host = self.monitor, self.host
        options = monitor.options
        log_dir = host.log_dir() if options.history_path in (None, True) else None
        if not host.is_main:
            return
        run = self._wandb_run() if options.log_wandb else None
        elsewhere = run is not None and host.wandb_summaries_elsewhere(run, owned=monitor.owns_wandb_run(run))
        monitor.open_sinks(
            history_path=options.history_file(log_dir),
            wandb_run=run,
            dashboards=self._dashboards(),
            step_metric=host.wandb_step_metric,
            **wandb_options(per_layer=monitor.per_layer, summaries_elsewhere=elsewhere),
        )

    def _dashboards(self) -> list[Dashboard]:
        """The TensorBoard and MLflow runs to send the media to: the framework's (``log_dashboards``) and the
        ``tensorboard_dir`` run (scalars included)."""
        options = self.monitor.options
        found: list[Dashboard] = []
        if options.log_dashboards:
            try:
                found = list(self.host.dashboards())
                if not any(d.kind == "mlflow" for d in found) and (run := active_mlflow_run()) is not None:
                    found.append(run)
            except Exception as exc:
                self.monitor.warn(f"cannot find the TensorBoard/MLflow runs ({type(exc).__name__}: {exc})")
        if options.tensorboard_dir is not None:
            found.append(Dashboard("tensorboard", False, log_dir=str(options.tensorboard_dir)))
        return found

    def _wandb_run(self) -> Any:
        try:
            return self.host.wandb_run() or self.monitor.resolve_wandb_run()
        except Exception as exc:
            self.monitor.warn(f"cannot start or reach a W&B run ({type(exc).__name__}: {exc})")
            return None

    # ---------------------------------------------------------------- analysis points
    def analyze(self, model: Any, *, epoch: int, step: int, is_last: bool = False) -> MonitorResult | None:
        """Analyze ``model`` now (every rank calls this at the same point) and act on it; with background
        analysis, copy it for the worker instead (None: its result comes through `drain`)."""
        monitor, host = self.monitor, self.host
        self.open_sinks()  # once per fit (the Hugging Face W&B run exists only by the first analysis)
        collective = host.collective()
        background = monitor.background
        if background is not None:
            if collective is not None or host.is_main:
                background.submit(model, epoch=epoch, step=step, is_last=is_last, collective=collective)
            return None
        report = monitor.analyze(model, epoch=epoch, step=step, collective=collective)
        result = monitor.record(report, epoch=epoch, step=step)
        stops = self.act(result)
        if host.is_main:
            monitor.emit(result, epoch=epoch, step=step, is_last=stops or is_last)
        host.save_state()
        return result

    def act(self, result: MonitorResult, *, decide: bool = True) -> bool:
        """Log ``result`` at its own step, let the framework observe it, apply the rule's decision (reduced over
        ranks) when ``decide``; True when training stops because of it."""
        if result.report is None:
            return False
        monitor, host = self.monitor, self.host
        epoch, step = int(result.epoch or 0), int(result.step or 0)
        if result.metrics:
            host.log(result.metrics, epoch=epoch, step=step)
            if monitor.options.verbose:
                host.info(summary_line(epoch, result.metrics))
        host.observe(result)
        if not decide or monitor.early_stopping is None:
            return False
        return self._decide(result, epoch, step)

    def _decide(self, result: MonitorResult, epoch: int, step: int) -> bool:
        host = self.host
        if not host.any_rank(result.stop):
            return False
        decision = result.decision
        reason = decision.reason if result.stop and decision is not None else f"another {host.peer}'s rule"
        if not host.stop(epoch=epoch, step=step, reason=reason):
            return False
        self.stopped = True
        self.monitor.record_stop(epoch, reason)
        host.info(f"WeightWatcherCallback: stopping at epoch {epoch} (step {step}): {reason}")
        return True

    # ---------------------------------------------------------------- background results
    def drain(self, *, act: bool = True, share: bool = True) -> list[MonitorResult]:
        """Act on the background results finished so far, in order (the first stop counts; later ones are only
        logged). Under several ranks every rank must call it at the same point: the finished shares are merged
        there (``share=False``: no collective, e.g. after an exception; unmerged shares are dropped)."""
        background = self.monitor.background
        if background is None:
            return []
        finished = background.collect()
        results = [r for r in finished if isinstance(r, MonitorResult)]
        if self.host.collective() is not None:
            results += self._merge([p for p in finished if isinstance(p, SharedPart)], share=share)
        for result in results:
            if result.report is not None:
                self.act(result, decide=act and not self.stopped and not self.host.stopping())
        if results:
            self.host.save_state()
        return results

    def _merge(self, parts: list[SharedPart], *, share: bool) -> list[MonitorResult]:
        """Merge the shares every rank has finished (a collective), record them here and emit them (main rank)
        on the worker."""
        self._parts.extend(parts)
        if not share:
            if self._parts:
                self.monitor.warn(f"background analysis: {len(self._parts)} shared analyses not merged")
            self._parts = []
            return []
        collective = self.host.collective()
        assert collective is not None
        ready = min(collective.all_gather_object(len(self._parts)))
        done, self._parts = self._parts[:ready], self._parts[ready:]
        return [self._record_part(part, collective) for part in done]

    def _record_part(self, part: SharedPart, collective: Any) -> MonitorResult:
        monitor = self.monitor
        layers, seconds = merge_shares(part.results, part.seconds, collective=collective, total=part.total)
        options = monitor.analyzer.analysis_options().as_dict()
        report = SpectralReport(layers=layers, elapsed=seconds, options=options)
        monitor.analyzer.review(report, part.epoch)
        with monitor.state.lock:
            result = monitor.record(report, epoch=part.epoch, step=part.step)
        if self.host.is_main and monitor.background is not None:
            is_last = part.is_last or result.stop
            monitor.background.run_later(
                lambda: monitor.emit(result, epoch=part.epoch, step=part.step, is_last=is_last)
            )
        return result

    # ---------------------------------------------------------------- fit end
    def end(self, exception: BaseException | None = None) -> None:
        """Finish the background work (Ctrl-C: only the running analysis, briefly), act on what it finished
        (log only), and close the sinks. After an exception the other ranks may be gone: no collectives."""
        try:
            background = self.monitor.background
            if background is not None:
                background.finish(interrupted=isinstance(exception, KeyboardInterrupt))
                self.drain(act=False, share=exception is None)
                background.finish(timeout=background.finish_timeout)  # emissions queued by the merge
        finally:
            self.monitor.close_sinks()
            self._sinks_open = False
            if self._hooks is not None:
                self._hooks.remove()
                self._hooks = None

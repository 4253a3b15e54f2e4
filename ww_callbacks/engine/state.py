"""`RunState`: what the engine remembers across analyses and saves in checkpoints.

The history of summaries, the last report, the stop and the seed, as plain values; the stopping rule keeps its
own state, saved alongside (see `RunState.state_dict`). A resumed run loads it and continues the same history,
patience and shuffles.

Example:
    >>> state = RunState(seed=7)
    >>> state.record_stop(3, "mean alpha below 2")
    >>> RunState.from_state_dict(state.state_dict(rule=None)).stopped_epoch
    3
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spectral.report import SpectralReport
from ..stopping import StoppingRule

__all__ = ["RunState"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass
class RunState:
    """The engine's memory of one training run.

    Attributes:
        seed: the seed of the shuffles (epoch ``e`` uses ``numpy.random.default_rng([seed, e])``).
        history: one dict per analyzed epoch: ``epoch``, ``step``, the summary metrics, ``num_summarized``,
            ``num_layers``, ``elapsed`` (seconds of analysis).
        last_report: the latest `SpectralReport` (None before the first analysis).
        stopped_epoch: the epoch at which the rule stopped training (None if it did not).
        stop_reason: the rule's reason ("" if it did not stop).
        lock: held by a background worker while it records; `state_dict` and `load_state_dict` take it too.
    """

    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_report: SpectralReport | None = None
    stopped_epoch: int | None = None
    stop_reason: str = ""
    #: The balancing factors of the latest analysis: ``{"lr": {layer: factor}, "weight_decay": {...}}``.
    factors: dict[str, dict[str, float]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def add(
        self, report: SpectralReport, *, epoch: int, step: int, summary: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Remember ``report`` as the analysis of ``epoch`` (at ``step``) and return its history entry.

        Example:
            >>> RunState(seed=0).add(SpectralReport(), epoch=2, step=20)["num_layers"]
            0
        """
        self.last_report = report
        entry: dict[str, Any] = {"epoch": int(epoch), "step": int(step)}
        entry.update({k: float(v) for k, v in (report.summary if summary is None else summary).items()})
        entry.update(
            num_summarized=report.num_summarized, num_layers=len(report.layers), elapsed=float(report.elapsed)
        )
        self.history.append(entry)
        return entry

    def record_stop(self, epoch: int, reason: str) -> None:
        """Remember that training stops at ``epoch`` because of the rule."""
        self.stopped_epoch = int(epoch)
        self.stop_reason = str(reason)

    def reset(self) -> None:
        """Forget history, last report and stop (the seed is kept)."""
        self.history = []
        self.last_report = None
        self.stopped_epoch = None
        self.stop_reason = ""
        self.factors = {}

    def state_dict(self, *, rule: StoppingRule | None) -> dict[str, Any]:
        """Plain Python values (safe for ``torch.save`` and JSON), with ``rule``'s state under ``"rule"``."""
        with self.lock:
            return self._state_dict(rule)

    def _state_dict(self, rule: StoppingRule | None) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "history": [dict(entry) for entry in self.history],
            "rule": None if rule is None else rule.state_dict(),
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "last_report": None if self.last_report is None else self.last_report.to_dict(),
            "factors": {key: dict(values) for key, values in self.factors.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, rule: StoppingRule | None) -> None:
        """Restore what `state_dict` saved (``rule``'s state too; the seed only when the state has one)."""
        with self.lock:
            self._load_state_dict(state, rule)

    def _load_state_dict(self, state: Mapping[str, Any], rule: StoppingRule | None) -> None:
        if state.get("seed") is not None:
            self.seed = int(state["seed"])
        self.history = [dict(entry) for entry in state.get("history", [])]
        rule_state = state.get("rule")
        if rule is not None and rule_state is not None:
            rule.load_state_dict(rule_state)
        elif rule_state is not None:
            log.info("checkpoint holds stopping-rule state but this monitor has no rule; ignored")
        stopped = state.get("stopped_epoch")
        self.stopped_epoch = None if stopped is None else int(stopped)
        self.stop_reason = str(state.get("stop_reason", ""))
        factors = state.get("factors") or {}
        self.factors = {str(k): {str(n): float(f) for n, f in v.items()} for k, v in factors.items()}
        last = state.get("last_report")
        self.last_report = None if last is None else SpectralReport.from_dict(last)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RunState:
        """A new `RunState` holding ``state`` (a rule's state in it is not restored: no rule to give it to)."""
        out = cls(seed=int(state.get("seed") or 0))
        out.load_state_dict({**state, "rule": None}, rule=None)
        return out

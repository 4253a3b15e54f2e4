"""Combinators: `AnyOf` and `AllOf` feed every report to each of their rules, so all their states advance.

Example:
    >>> from ww_callbacks.stopping import AlphaBelow, Plateau
    >>> AnyOf(AlphaBelow(2.0), Plateau("alpha", patience=2)).monitor
    'alpha'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spectral.report import SpectralReport
from .base import StopDecision, StoppingRule

__all__ = ["AllOf", "AnyOf"]


class _Combined(StoppingRule):
    """Shared plumbing of `AnyOf` and `AllOf`: every child sees every report, so all their states advance."""

    def __init__(self, *rules: StoppingRule) -> None:
        super().__init__()
        if len(rules) == 1 and isinstance(rules[0], (list, tuple)):
            rules = tuple(rules[0])
        if not rules:
            raise ValueError(f"{self.name} needs at least one rule")
        for rule in rules:
            if not isinstance(rule, StoppingRule):
                raise TypeError(f"{self.name} combines StoppingRule instances, got {type(rule).__name__}")
        self.rules: tuple[StoppingRule, ...] = tuple(rules)
        # The first child that monitors a metric speaks for the combination (restore_best_weights).
        self._lead = next((r for r in self.rules if r.monitor is not None), None)
        self.monitor = self._lead.monitor if self._lead is not None else None
        self.mode = self._lead.mode if self._lead is not None else "min"

    def _decisions(self, report: SpectralReport, epoch: int) -> list[StopDecision]:
        return [rule.update(report, epoch=epoch) for rule in self.rules]

    def is_better(self, current: float, best: float | None) -> bool:
        if self._lead is None:
            return super().is_better(current, best)
        return self._lead.is_better(current, best)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rules": [rule.state_dict() for rule in self.rules]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        states = state.get("rules", [])
        if len(states) != len(self.rules):
            raise ValueError(f"{self.name}: state holds {len(states)} rules, this one has {len(self.rules)}")
        for rule, sub in zip(self.rules, states, strict=True):
            rule.load_state_dict(sub)

    def reset(self) -> None:
        super().reset()
        for rule in self.rules:
            rule.reset()

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(repr(r) for r in self.rules)})"


class AnyOf(_Combined):
    """Stop as soon as any of the rules says stop; the reason lists the rules that did.

    Example:
        >>> from ww_callbacks.stopping import AlphaBelow, Plateau
        >>> rule = AnyOf(AlphaBelow(2.0), Plateau("alpha", patience=2))
        >>> rule.monitor
        'alpha'
    """

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        stopping = [d for d in self._decisions(report, epoch) if d.stop]
        if stopping:
            return StopDecision(True, "; ".join(f"{d.rule}: {d.reason}" for d in stopping))
        return StopDecision(False, "")


class AllOf(_Combined):
    """Stop only when every rule says stop at the same analyzed epoch.

    Example:
        >>> from ww_callbacks.stopping import AlphaBelow, Plateau
        >>> rule = AllOf(AlphaBelow(2.5), Plateau("rand_distance", mode="max", patience=2))
        >>> len(rule.rules)
        2
    """

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        decisions = self._decisions(report, epoch)
        if all(d.stop for d in decisions):
            return StopDecision(True, " and ".join(f"{d.rule}: {d.reason}" for d in decisions))
        waiting = [d.rule for d in decisions if not d.stop]
        return StopDecision(False, f"waiting on {', '.join(waiting)}")

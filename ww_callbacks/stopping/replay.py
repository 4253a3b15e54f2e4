"""Replay: what a rule would have done on a recorded history, and the rule the stopping benchmark recommends.

Reports are rebuilt from history rows by `ww_callbacks.history.history_reports` (re-exported here).

Example:
    >>> rows = [{"epoch": e, "step": e, "layer": "fc", "status": "success", "alpha": a}
    ...         for e, a in enumerate([4.0, 3.0, 2.5, 2.6])]
    >>> replay(recommended(), rows).stopped
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..history import history_reports
from .base import StopDecision, StoppingRule
from .rules import Plateau

__all__ = ["Replay", "history_reports", "recommended", "replay"]


@dataclass(frozen=True)
class Replay:
    """What a rule would have done on a recorded history (see `replay`).

    ``stop_epoch`` is the analyzed epoch at which it said stop (epochs as in the history, 0-based in the
    callbacks' files), None if it never did; ``decision`` is that decision. ``restore_epoch`` is the epoch whose
    weights it would keep: the best epoch of its monitored metric up to the stop (what the Keras callback's
    ``restore_best_weights`` restores), or the stop (or last) epoch for a rule that monitors nothing.
    ``decisions`` holds every ``(epoch, decision)`` up to the stop. ``stop_step`` is the training step of the
    stopping analysis when the history records steps (None otherwise).

    Example:
        >>> Replay(stop_epoch=None, restore_epoch=4, decision=None, decisions=()).stopped
        False
    """

    stop_epoch: int | None
    restore_epoch: int | None
    decision: StopDecision | None
    decisions: tuple[tuple[int, StopDecision], ...]
    stop_step: int | None = None

    @property
    def stopped(self) -> bool:
        """Whether the rule said stop at some epoch of the history."""
        return self.stop_epoch is not None


def replay(rule: StoppingRule, history: Any, *, reset: bool = True) -> Replay:
    """Feed a recorded history to ``rule``, epoch by epoch, as the callback would have; stop at its first stop.

    No training and no data: ``history`` is what `history_reports` accepts (a ``ww_history.jsonl`` file, its
    rows, or reports). The rule is `StoppingRule.reset` first unless ``reset=False``. Because a data-free rule
    sees only the weights' reports, and the weights up to an epoch do not depend on whether training goes on
    after it, the replayed stop is exactly where the rule would have stopped that run.

    Example:
        >>> rows = [{"epoch": e, "step": e, "layer": "fc", "status": "success", "alpha": a}
        ...         for e, a in enumerate([4.0, 3.0, 2.5, 2.6, 2.7, 2.8])]
        >>> result = replay(Plateau("alpha", mode="min", patience=2), rows)
        >>> result.stop_epoch, result.restore_epoch
        (4, 2)
    """
    if not isinstance(rule, StoppingRule):
        raise TypeError(f"rule must be a StoppingRule, got {type(rule).__name__}")
    if reset:
        rule.reset()
    decisions: list[tuple[int, StopDecision]] = []
    seen: list[dict[str, Any]] = []
    stop: int | None = None
    stop_step: int | None = None
    for epoch, report in history_reports(history):
        decision = rule.update(report, epoch=epoch)
        decisions.append((epoch, decision))
        seen.append({"epoch": epoch, **report.summary})
        if decision.stop:
            stop, stop_step = epoch, getattr(report, "step", None)
            break
    restore = rule.best_epoch(seen) if seen else None
    if restore is None and seen:
        restore = seen[-1]["epoch"]
    return Replay(
        stop_epoch=stop,
        restore_epoch=restore,
        decision=decisions[-1][1] if stop is not None else None,
        decisions=tuple(decisions),
        stop_step=stop_step,
    )


def recommended() -> StoppingRule:
    """A fresh instance of the rule the stopping benchmark chose: ``Plateau("alpha_weighted", mode="min",
    patience=8, start_from_epoch=3)``, keeping the weights where it stops.

    Chosen among 874 data-free configurations on the tuning half of ``benchmarks/stopping/`` (34 runs: MLPs
    with and without label noise, a CNN, grokking, Keras) and measured on the other half. It does **not**
    reach the benchmark's target (mean accuracy gap <= 0.02, worst <= 0.05, >= 25% of the epochs saved): on the
    held-out runs it loses 0.035 accuracy on average and 0.134 at worst (a grokking run stopped while validation
    accuracy was still climbing), saving 40% of the epochs. In most runs the weighted alpha rises from epoch 3
    on, so the rule stops after epoch 12 whatever happens; it waits longer only while the weighted alpha still
    falls (grokking). See ``docs/stopping.md`` before relying on it.

    Example:
        >>> rule = recommended()
        >>> rule.monitor, rule.mode, rule.patience, rule.start_from_epoch
        ('alpha_weighted', 'min', 8, 3)
    """
    return Plateau("alpha_weighted", mode="min", patience=8, start_from_epoch=3)

"""What one analysis produced: `MonitorResult` (a recorded analysis) and `SharedPart` (one rank's share of a
background analysis, before the ranks merge it).

Example:
    >>> MonitorResult(epoch=3).stop
    False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spectral.report import SpectralReport
from ..stopping import StopDecision

__all__ = ["MonitorResult", "SharedPart"]


@dataclass
class MonitorResult:
    """What one analyzed epoch produced.

    ``metrics`` maps logged names (``ww/alpha``, ``ww/fc1/alpha`` ...) to finite floats; it is empty when the
    analysis failed. ``decision`` is the stopping rule's answer (None without a rule or without a report).
    ``epoch`` and ``step`` say which analysis it is (set by `record`).

    Example:
        >>> MonitorResult().stop
        False
    """

    metrics: dict[str, float] = field(default_factory=dict)
    report: SpectralReport | None = None
    decision: StopDecision | None = None
    epoch: int | None = None
    step: int | None = None

    @property
    def stop(self) -> bool:
        """True when the stopping rule asked to stop."""
        return bool(self.decision is not None and self.decision.stop)


@dataclass
class SharedPart:
    """One rank's finished share of a background analysis under several ranks, waiting to be merged
    (`ww_callbacks.engine.results.ResultPath` merges the parts of every rank at a point they all reach)."""

    epoch: int
    step: int
    is_last: bool
    results: dict[int, Any]
    seconds: float
    total: int

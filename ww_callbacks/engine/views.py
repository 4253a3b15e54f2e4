"""`EngineViews`: the read-only attributes every callback exposes, read from its engine.

A callback keeps its `SpectralMonitor` as ``self.engine`` and inherits these properties, so the Lightning, Keras
(and any later) callbacks show the same attributes with the same meaning.
"""

from __future__ import annotations

from typing import Any

from ..spectral.report import SpectralReport
from ..stopping import StoppingRule
from .monitor import SpectralMonitor

__all__ = ["EngineViews"]


class EngineViews:
    """Read-only attributes both callbacks expose, delegated to their `SpectralMonitor` (``self.engine``).

    Example:
        >>> class Demo(EngineViews):
        ...     engine = SpectralMonitor(seed=1)
        >>> Demo().seed, Demo().history
        (1, [])
    """

    engine: SpectralMonitor

    @property
    def monitor(self) -> SpectralMonitor:
        """The engine under its former name (kept for compatibility; prefer ``engine``: a rule's ``monitor``
        is the name of the metric it watches)."""
        return self.engine

    @property
    def early_stopping(self) -> StoppingRule | None:
        """The stopping rule (None when the callback only logs)."""
        return self.engine.early_stopping

    @property
    def last_report(self) -> SpectralReport | None:
        """The latest `SpectralReport` (under DDP, on ranks other than 0: without eigenvalue arrays)."""
        return self.engine.last_report

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per analyzed epoch: epoch, step, summary metrics, num_summarized, num_layers, elapsed."""
        return self.engine.history

    @property
    def stopped_epoch(self) -> int | None:
        """The epoch at which the rule stopped training (None if it did not)."""
        return self.engine.stopped_epoch

    @property
    def stop_reason(self) -> str:
        """The rule's reason for stopping ("" if it did not)."""
        return self.engine.stop_reason

    @property
    def seed(self) -> int:
        """Seed of the randomized ESDs (epoch e uses ``numpy.random.default_rng([seed, e])``)."""
        return self.engine.seed

"""The rule protocol: `StopDecision`, `StoppingRule`, and what every rule shares (``mode``, ``min_delta``,
``start_from_epoch``, its state).

A rule sees one `SpectralReport` per analyzed epoch (through `StoppingRule.update`) and answers with a
`StopDecision`. A rule that watches a summary metric says which (``monitor``) and which direction is better
(``mode``, ``min_delta``); `improves` is the one comparison every rule, the Keras ``restore_best_weights`` and
the replay use. State: a rule lists its own fields and their initial values in ``_state`` and the base class
saves, restores and resets them.

Example:
    >>> improves(2.9, 3.0, "min"), improves(2.95, 3.0, "min", min_delta=0.1), improves(1.0, None, "max")
    (True, False, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..spectral.catalog import METRICS, missing_option
from ..spectral.report import SpectralReport

__all__ = ["StopDecision", "StoppingRule", "check_metric", "check_mode", "check_positive", "improves"]

_MODES = ("min", "max")


@dataclass(frozen=True)
class StopDecision:
    """The answer of a rule for one analyzed epoch.

    ``bool(decision)`` is ``decision.stop``; ``rule`` names the rule that decided.

    Example:
        >>> d = StopDecision(True, "mean alpha 1.90 < 2.0", rule="AlphaBelow")
        >>> bool(d), d.reason
        (True, 'mean alpha 1.90 < 2.0')
    """

    stop: bool
    reason: str = ""
    rule: str = ""

    def __bool__(self) -> bool:
        return self.stop


def improves(current: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``current`` beats ``best`` by more than ``min_delta`` in ``mode``'s direction (Lightning
    ``EarlyStopping``'s test); a non-finite ``current`` never does, anything beats no (or a non-finite) best."""
    if not math.isfinite(current):
        return False
    if best is None or not math.isfinite(best):
        return True
    return current < best - min_delta if mode == "min" else current > best + min_delta


def check_metric(metric: str) -> str:
    """``metric`` if it is a summary metric, else a ``ValueError`` listing them."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: rules monitor one of {', '.join(METRICS)}")
    return metric


def check_mode(mode: str) -> str:
    """``mode`` if it is ``"min"`` or ``"max"``, else a ``ValueError``."""
    if mode not in _MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def check_positive(value: int, name: str = "patience") -> int:
    """``value`` as an int when it is at least 1, else a ``ValueError`` naming ``name``."""
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def summary_value(report: SpectralReport, metric: str) -> float:
    """The summary value of ``metric``; a clear error when the analysis did not compute it."""
    summary = report.summary
    if metric not in summary:
        raise ValueError(
            f"metric {metric!r} is not in this report's summary: it needs {missing_option(metric)}"
        )
    return float(summary[metric])


class StoppingRule:
    """Base class of the data-free stopping rules; subclass it and implement `check` for your own rule.

    The callbacks call `update` once per analyzed epoch, with that epoch's `SpectralReport`. ``update`` calls
    `check`, which returns a `StopDecision` (or a bool). A rule with state lists its fields and their initial
    values in the class attribute ``_state`` (e.g. ``{"count": 0}``): `state_dict`, `load_state_dict` and
    `reset` handle them, so a resumed run continues with the same state. Rules that need more override those
    (call ``super()``).

    ``monitor`` (a summary metric, or None), ``mode`` (``"min"``/``"max"``) and ``min_delta`` say which metric
    the rule watches and when a value is better; `is_better` and `best_epoch` use them (the Keras callback's
    ``restore_best_weights`` finds its best epoch that way).

    Example:
        >>> class AlphaAbove(StoppingRule):
        ...     monitor, mode = "alpha", "max"
        ...     def check(self, report, *, epoch):
        ...         alpha = report.summary["alpha"]
        ...         return StopDecision(alpha > 6, f"mean alpha {alpha:.2f} > 6 at epoch {epoch}")
        >>> AlphaAbove().monitor
        'alpha'
    """

    monitor: str | None = None
    mode: str = "min"
    min_delta: float = 0.0
    #: The rule's own state fields and their initial values (saved, restored and reset by the base class).
    _state: ClassVar[Mapping[str, Any]] = {}

    def __init__(self) -> None:
        self.num_checks = 0
        self.last_decision: StopDecision | None = None
        for name, initial in self._state.items():
            setattr(self, name, copy.deepcopy(initial))

    @property
    def name(self) -> str:
        """The rule's class name, used in decisions and messages."""
        return type(self).__name__

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision | bool:
        """Decide from ``report`` (the analysis of ``epoch``) whether training should stop. Override this."""
        raise NotImplementedError(f"{self.name} must implement check(report, *, epoch)")

    def update(self, report: SpectralReport, *, epoch: int | None = None) -> StopDecision:
        """Feed the report of one analyzed epoch and return the decision.

        ``epoch`` defaults to the number of reports seen so far (0, 1, ...). A rule with a ``start_from_epoch``
        attribute ignores the epochs before it.

        Example:
            >>> import numpy as np, ww_callbacks
            >>> from ww_callbacks.stopping import AlphaBelow
            >>> report = ww_callbacks.analyze({"fc.weight": np.eye(40) + 0.01}, seed=0)
            >>> AlphaBelow(threshold=100.0).update(report).stop
            True
        """
        if epoch is None:
            epoch = self.num_checks
        start = getattr(self, "start_from_epoch", 0)
        if int(epoch) < start:
            decision: StopDecision | bool = StopDecision(False, f"epoch {epoch} < start_from_epoch={start}")
        else:
            decision = self.check(report, epoch=int(epoch))
        if not isinstance(decision, StopDecision):
            stop = bool(decision)
            decision = StopDecision(
                stop, f"{self.name} signalled stop at epoch {epoch}" if stop else "", self.name
            )
        elif not decision.rule:
            decision = StopDecision(decision.stop, decision.reason, self.name)
        self.num_checks += 1
        self.last_decision = decision
        return decision

    __call__ = update

    def is_better(self, current: float, best: float | None) -> bool:
        """Whether ``current`` is better than ``best`` (None: nothing yet) for this rule's ``mode`` and
        ``min_delta`` (`improves`)."""
        return improves(current, best, self.mode, self.min_delta)

    def best_epoch(self, history: Sequence[Mapping[str, Any]]) -> int | None:
        """The epoch of the best ``monitor`` value in ``history`` (dicts with ``"epoch"`` and metric keys).

        None when the rule monitors nothing or no entry holds a finite value. Ties keep the earliest epoch.

        Example:
            >>> from ww_callbacks.stopping import Plateau
            >>> Plateau("alpha", mode="min").best_epoch([{"epoch": 0, "alpha": 4.0}, {"epoch": 1, "alpha": 3.5}])
            1
        """
        if self.monitor is None:
            return None
        best: float | None = None
        best_epoch: int | None = None
        for entry in history:
            value = entry.get(self.monitor)
            if value is None:
                continue
            value = float(value)
            if self.is_better(value, best):
                best, best_epoch = value, int(entry["epoch"])
        return best_epoch

    def state_dict(self) -> dict[str, Any]:
        """The rule's state, plain Python values only (checkpoints, broadcasts)."""
        return {"num_checks": self.num_checks, **{k: copy.deepcopy(getattr(self, k)) for k in self._state}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by `state_dict`."""
        self.num_checks = int(state.get("num_checks", 0))
        self.last_decision = None
        for name, initial in self._state.items():
            setattr(self, name, copy.deepcopy(state.get(name, initial)))

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.num_checks = 0
        self.last_decision = None
        for name, initial in self._state.items():
            setattr(self, name, copy.deepcopy(initial))

    def __repr__(self) -> str:
        return f"{self.name}()"

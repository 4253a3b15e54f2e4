"""The data-free stopping rules: each a `StoppingRule` with its own test, state and reason.

`AlphaBelow` (weightwatcher's over-training rule), `Plateau` (Lightning ``EarlyStopping`` semantics on a summary
metric), `NonFinite` (diverged weights), and the rules the stopping benchmark measured: `Slowdown`,
`LayersPlateau`, `TrapsAppear`.

Example:
    >>> Plateau("rand_distance", mode="max", patience=3).state_dict()["wait_count"]
    0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..spectral.report import SpectralReport
from .base import (
    StopDecision,
    StoppingRule,
    check_metric,
    check_mode,
    check_positive,
    improves,
    summary_value,
)

__all__ = ["AlphaBelow", "LayersPlateau", "NonFinite", "Plateau", "Slowdown", "TrapsAppear"]


def _listed(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _check_min_delta(min_delta: float) -> float:
    if min_delta < 0:
        raise ValueError(f"min_delta must be >= 0, got {min_delta}")
    return float(min_delta)


def _check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return float(fraction)


class AlphaBelow(StoppingRule):
    """weightwatcher's rule: stop when layers look over-trained, i.e. their power-law ``alpha`` drops below 2.

    Only layers whose fit succeeded count. ``reduce="mean"`` stops when their mean alpha (the report's summary)
    is below ``threshold``; ``reduce="fraction"`` stops when at least ``fraction`` of them have alpha below it.
    ``consecutive`` asks for that many analyzed epochs in a row below the threshold (1: stop at the first);
    checks before ``start_from_epoch`` are ignored. A report with no successful fit never stops training.

    For ``best_epoch`` (Keras ``restore_best_weights``) the best epoch is the one with the lowest mean alpha
    still at or above the threshold: the last one before the over-trained regime.

    Example:
        >>> rule = AlphaBelow(2.0, reduce="fraction", fraction=0.5)
        >>> rule.monitor, rule.mode
        ('alpha', 'min')
    """

    monitor = "alpha"
    mode = "min"
    _state = {"count": 0}  # consecutive analyzed epochs below the threshold

    def __init__(
        self,
        threshold: float = 2.0,
        reduce: str = "mean",
        fraction: float = 0.5,
        *,
        consecutive: int = 1,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if reduce not in ("mean", "fraction"):
            raise ValueError(f"reduce must be 'mean' or 'fraction', got {reduce!r}")
        self.threshold = float(threshold)
        self.reduce = reduce
        self.fraction = _check_fraction(fraction)
        self.consecutive = check_positive(consecutive, "consecutive")
        self.start_from_epoch = int(start_from_epoch)
        self.count: int

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        fitted = [
            (lr.longname, float(lr.alpha)) for lr in report.summarized_layers if math.isfinite(lr.alpha)
        ]
        if not fitted:
            return StopDecision(False, f"no layer's power-law fit succeeded at epoch {epoch}; not counted")
        below = [(name, a) for name, a in fitted if a < self.threshold]
        if self.reduce == "mean":
            mean = sum(a for _, a in fitted) / len(fitted)
            hit = mean < self.threshold
            what = f"mean alpha {mean:.3f} over {len(fitted)} layers is below {self.threshold:g}"
        else:
            share = len(below) / len(fitted)
            hit = share >= self.fraction
            listed = _listed([f"{name} ({a:.2f})" for name, a in below])
            what = (
                f"{len(below)} of {len(fitted)} layers ({share:.0%} >= {self.fraction:.0%}) have alpha below "
                f"{self.threshold:g}: {listed}"
            )
        self.count = self.count + 1 if hit else 0
        if hit and self.count >= self.consecutive:
            run = f" for {self.count} analyzed epochs in a row" if self.consecutive > 1 else ""
            return StopDecision(True, f"{what}{run} at epoch {epoch}: the model may be over-trained")
        return StopDecision(False, what if hit else "")

    def is_better(self, current: float, best: float | None) -> bool:
        # Below the threshold is the over-trained regime: never "best".
        return current >= self.threshold and super().is_better(current, best)

    def __repr__(self) -> str:
        return (
            f"AlphaBelow(threshold={self.threshold:g}, reduce={self.reduce!r}, fraction={self.fraction:g}, "
            f"consecutive={self.consecutive}, start_from_epoch={self.start_from_epoch})"
        )


class Plateau(StoppingRule):
    """Stop when a summary metric stopped improving, with Lightning ``EarlyStopping`` semantics.

    Each analyzed epoch, ``current`` improves when it beats ``best`` by more than ``min_delta`` (``mode="min"``:
    ``current < best - min_delta``; ``"max"``: ``current > best + min_delta``); then ``best = current`` and
    ``wait_count = 0``, else ``wait_count += 1``, and training stops once ``wait_count >= patience``. Like
    Lightning's, patience counts analyses, not epochs. Checks before ``start_from_epoch`` are ignored (as in
    Keras). A NaN summary (no layer's fit succeeded) is neither an improvement nor counted.

    Example:
        >>> rule = Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3)
        >>> rule.monitor, rule.mode, rule.wait_count
        ('rand_distance', 'max', 0)
    """

    _state = {"wait_count": 0, "best_score": None, "best_epoch_seen": None}

    def __init__(
        self,
        metric: str,
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.monitor = check_metric(metric)
        self.mode = check_mode(mode)
        self.patience = check_positive(patience)
        self.min_delta = _check_min_delta(min_delta)
        self.start_from_epoch = int(start_from_epoch)
        self.wait_count: int
        self.best_score: float | None
        self.best_epoch_seen: int | None

    @property
    def metric(self) -> str:
        """The monitored summary metric (same as ``monitor``)."""
        assert self.monitor is not None
        return self.monitor

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        current = summary_value(report, self.metric)
        if not math.isfinite(current):
            return StopDecision(False, f"{self.metric} is {current} at epoch {epoch}; not counted")
        if self.is_better(current, self.best_score):
            self.best_score, self.best_epoch_seen, self.wait_count = current, epoch, 0
            return StopDecision(False, f"{self.metric} improved to {current:.4f}")
        self.wait_count += 1
        if self.wait_count >= self.patience:
            assert self.best_score is not None
            return StopDecision(
                True,
                f"{self.metric} did not improve ({self.mode}, min_delta={self.min_delta:g}) in the last "
                f"{self.wait_count} analyses; best {self.best_score:.4f} at epoch {self.best_epoch_seen}",
            )
        return StopDecision(False, f"{self.metric} did not improve ({self.wait_count}/{self.patience})")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "best_epoch_seen" not in state and "best_epoch" in state:  # older checkpoints: "best_epoch"
            state = {**state, "best_epoch_seen": state["best_epoch"]}
        super().load_state_dict(state)

    def __repr__(self) -> str:
        return (
            f"Plateau({self.metric!r}, mode={self.mode!r}, patience={self.patience}, "
            f"min_delta={self.min_delta:g}, start_from_epoch={self.start_from_epoch})"
        )


class NonFinite(StoppingRule):
    """Stop as soon as the weights of at least ``min_layers`` layers hold NaN or Inf: training diverged.

    Diverged weights are the clearest data-free alarm there is: once a weight is NaN or Inf, the following
    epochs only waste compute. The decision's reason names the layers. Use it alone or next to other rules, e.g.
    ``AnyOf(NonFinite(), AlphaBelow(2.0))``. It watches no summary metric (``monitor`` is None).

    Example:
        >>> import numpy as np, ww_callbacks
        >>> w = np.random.default_rng(0).standard_normal((60, 30))
        >>> rule = NonFinite()
        >>> rule.update(ww_callbacks.analyze({"fc.weight": w}, seed=0), epoch=0).stop
        False
        >>> w[2, 3] = np.nan
        >>> rule.update(ww_callbacks.analyze({"fc.weight": w}, seed=0), epoch=1).reason
        '1 of 1 layers hold NaN or Inf weights at epoch 1 (fc): training diverged'
    """

    def __init__(self, min_layers: int = 1) -> None:
        super().__init__()
        self.min_layers = check_positive(min_layers, "min_layers")

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        bad = [lr.longname for lr in report.nonfinite_layers]
        if len(bad) < self.min_layers:
            return StopDecision(False, "")
        return StopDecision(
            True,
            f"{len(bad)} of {len(report.layers)} layers hold NaN or Inf weights at epoch {epoch} "
            f"({_listed(bad)}): training diverged",
        )

    def __repr__(self) -> str:
        return f"NonFinite(min_layers={self.min_layers})"


class Slowdown(StoppingRule):
    """Stop when a summary metric's progress slows down: its average change per analysis over the last
    ``window`` analyses falls to ``ratio`` times the fastest such change seen so far.

    The change counts in the improving direction (``mode="max"``: rises, ``"min"``: falls). With ``ratio=0``
    the rule stops once the metric has not moved in its direction over the window: a smoothed minimum
    (``mode="min"``) or maximum. It needs ``window + 1`` finite values before it can decide; NaN summaries are
    skipped; ``patience`` asks for that many slow checks in a row; checks before ``start_from_epoch`` are
    ignored. Like `Plateau`, it counts analyses, not epochs. The best epoch (``restore_best_weights``) is the
    one with the best value of the metric.

    Example:
        >>> from ww_callbacks.stopping import replay
        >>> rows = [{"epoch": e, "layer": "fc", "rand_distance": v} for e, v in enumerate([0.1, 0.2, 0.3, 0.34, 0.35])]
        >>> replay(Slowdown("rand_distance", mode="max", window=2, ratio=0.25), rows).stop_epoch
        4
    """

    _state = {"values": [], "peak_rate": -math.inf, "count": 0}  # values: the last window + 1 finite ones

    def __init__(
        self,
        metric: str,
        mode: str = "max",
        window: int = 3,
        ratio: float = 0.25,
        patience: int = 1,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        self.monitor = check_metric(metric)
        self.mode = check_mode(mode)
        self.window = check_positive(window, "window")
        self.ratio = float(ratio)
        self.patience = check_positive(patience)
        self.start_from_epoch = int(start_from_epoch)
        self.values: list[float]
        self.peak_rate: float
        self.count: int

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        assert self.monitor is not None
        current = summary_value(report, self.monitor)
        if not math.isfinite(current):
            return StopDecision(False, f"{self.monitor} is {current} at epoch {epoch}; not counted")
        self.values = [*self.values, current][-(self.window + 1) :]
        if len(self.values) <= self.window:
            return StopDecision(False, f"{len(self.values)} of {self.window + 1} values needed")
        sign = 1.0 if self.mode == "max" else -1.0
        rate = sign * (self.values[-1] - self.values[0]) / self.window
        self.peak_rate = max(self.peak_rate, rate)
        slow = self.peak_rate > 0 and rate <= self.ratio * self.peak_rate
        self.count = self.count + 1 if slow else 0
        what = (
            f"{self.monitor} moved {rate:+.4g} per analysis ({self.mode}) over the last {self.window}, "
            f"fastest {self.peak_rate:.4g}"
        )
        if slow and self.count >= self.patience:
            return StopDecision(True, f"{what}: at most {self.ratio:g} of it at epoch {epoch}")
        return StopDecision(False, what)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["peak_rate"] = self.peak_rate if math.isfinite(self.peak_rate) else None  # JSON-safe
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.values = [float(v) for v in self.values]
        self.peak_rate = -math.inf if self.peak_rate is None else float(self.peak_rate)

    def __repr__(self) -> str:
        return (
            f"Slowdown({self.monitor!r}, mode={self.mode!r}, window={self.window}, ratio={self.ratio:g}, "
            f"patience={self.patience}, start_from_epoch={self.start_from_epoch})"
        )


class LayersPlateau(StoppingRule):
    """Stop when at least ``fraction`` of the layers stopped improving their own ``metric``.

    Each layer (by name) keeps a `Plateau` count of its own: its value improves when it beats the layer's best
    by more than ``min_delta`` in ``mode``'s direction, else its wait count grows. Training stops when the
    layers waiting ``patience`` analyses or more are at least ``fraction`` of the layers with a finite value
    this epoch. Only layers whose fit succeeded count (like the summary). The best epoch is that of the best
    summary value.

    Example:
        >>> from ww_callbacks.stopping import replay
        >>> rows = [{"epoch": e, "layer": name, "alpha": a}
        ...         for e, alphas in enumerate([(3.0, 3.0), (2.5, 3.1)]) for name, a in zip("ab", alphas)]
        >>> replay(LayersPlateau("alpha", mode="min", patience=1, fraction=0.5), rows).stop_epoch
        1
    """

    _state = {"best": {}, "wait": {}}

    def __init__(
        self,
        metric: str = "alpha",
        mode: str = "min",
        patience: int = 3,
        fraction: float = 0.5,
        min_delta: float = 0.0,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.monitor = check_metric(metric)
        self.mode = check_mode(mode)
        self.patience = check_positive(patience)
        self.fraction = _check_fraction(fraction)
        self.min_delta = _check_min_delta(min_delta)
        self.start_from_epoch = int(start_from_epoch)
        self.best: dict[str, float]
        self.wait: dict[str, int]

    def is_better(self, current: float, best: float | None) -> bool:
        # The best epoch is that of the best summary value; min_delta is for each layer's own count.
        return improves(current, best, self.mode)

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        assert self.monitor is not None
        summary_value(report, self.monitor)  # a clear error when the analysis did not compute the metric
        counted = []
        for layer in report.summarized_layers:
            value = float(getattr(layer, self.monitor))
            if not math.isfinite(value):
                continue
            name = layer.longname
            if improves(value, self.best.get(name), self.mode, self.min_delta):
                self.best[name], self.wait[name] = value, 0
            else:
                self.wait[name] = self.wait.get(name, 0) + 1
            counted.append(name)
        if not counted:
            return StopDecision(False, f"no layer has a finite {self.monitor} at epoch {epoch}; not counted")
        waiting = [name for name in counted if self.wait[name] >= self.patience]
        share = len(waiting) / len(counted)
        what = (
            f"{len(waiting)} of {len(counted)} layers ({share:.0%}) without a better {self.monitor} ({self.mode}) "
            f"for {self.patience}+ analyses"
        )
        if share >= self.fraction:
            return StopDecision(True, f"{what} at epoch {epoch}: {_listed(waiting)}")
        return StopDecision(False, what)

    def __repr__(self) -> str:
        return (
            f"LayersPlateau({self.monitor!r}, mode={self.mode!r}, patience={self.patience}, "
            f"fraction={self.fraction:g}, min_delta={self.min_delta:g}, start_from_epoch={self.start_from_epoch})"
        )


class TrapsAppear(StoppingRule):
    """Stop when correlation traps appear: at least ``min_traps`` of them over all layers (``num_traps``: the
    eigenvalues of a layer's shuffled weights above the Marchenko-Pastur bulk, a sign of a few very large
    entries).

    The trap count needs the trap part of the randomization: ``analyze(..., traps=True)`` (the default of
    `ww_callbacks.analyze`), in the callbacks ``analyze_kwargs={"traps": True}``; a report made without it is
    a ``ValueError``. ``consecutive`` asks for that many analyses in a row; checks before ``start_from_epoch``
    are ignored. The rule monitors no summary metric (``restore_best_weights`` needs another rule).

    Example:
        >>> from ww_callbacks.stopping import replay
        >>> rows = [{"epoch": e, "layer": name, "num_traps": n}
        ...         for e, counts in enumerate([(0, 0), (0, 2)]) for name, n in zip("ab", counts)]
        >>> replay(TrapsAppear(min_traps=1), rows).stop_epoch
        1
    """

    _state = {"count": 0}

    def __init__(self, min_traps: int = 1, consecutive: int = 1, start_from_epoch: int = 0) -> None:
        super().__init__()
        self.min_traps = check_positive(min_traps, "min_traps")
        self.consecutive = check_positive(consecutive, "consecutive")
        self.start_from_epoch = int(start_from_epoch)
        self.count: int

    def check(self, report: SpectralReport, *, epoch: int) -> StopDecision:
        if not report.options.get("randomize", True) or not report.options.get("traps", True):
            raise ValueError(
                "TrapsAppear needs num_traps: analyze with randomize=True and traps=True (in the callbacks: "
                "analyze_kwargs={'traps': True})"
            )
        counts = [(lr.longname, float(lr.num_traps)) for lr in report.layers if math.isfinite(lr.num_traps)]
        if not counts:
            return StopDecision(False, f"no layer has a trap count at epoch {epoch}; not counted")
        total = sum(n for _, n in counts)
        hit = total >= self.min_traps
        self.count = self.count + 1 if hit else 0
        trapped = ", ".join(f"{name} ({n:g})" for name, n in counts if n > 0)
        what = f"{total:g} correlation traps in {len(counts)} layers" + (f": {trapped}" if trapped else "")
        if hit and self.count >= self.consecutive:
            run = f" for {self.count} analyses in a row" if self.consecutive > 1 else ""
            return StopDecision(True, f"{what}{run} at epoch {epoch}")
        return StopDecision(False, what)

    def __repr__(self) -> str:
        return (
            f"TrapsAppear(min_traps={self.min_traps}, consecutive={self.consecutive}, "
            f"start_from_epoch={self.start_from_epoch})"
        )

"""Balancing rules: per-layer factors on an optimizer hyperparameter, computed from a spectral report.

`TempBalance` (Zhou et al., NeurIPS 2023) scales each layer's learning rate, `AlphaDecay` (2025) its weight decay,
both from the layer's heavy-tail exponent: a layer whose ESD tail is heavier (smaller alpha, "more trained") gets a
smaller learning rate and a weaker weight decay than one whose tail is lighter. The defaults are the papers' rules:

* the layers: Linear and Conv2d layers (kinds ``dense`` and ``conv2d``, not our extensions such as attention
  ``in_proj`` splits) in module order, without the first and the last, and only those with at least 50 eigenvalues;
* alpha: the Hill estimator with ``xmin`` at the median eigenvalue (`hill_alpha`), on the eigenvalues the analysis
  already computed (a Conv2d's pooled over its kernel positions, scaled by sqrt(1/2), as in the papers);
* the map: ``tb_linear_map``, a linear interpolation of alpha between the smallest and the largest alpha of the
  balanced layers onto ``[low, high]`` (``np.interp``, as the reference code does); also ``tb_sqrt``, ``tb_log2``
  and ``tb_step``;
* AlphaDecay averages alpha over the modules of one kind (the last part of the layer name: every ``q_proj`` ...)
  before mapping, as in its LLaMa pre-training runs, between ``low=0.6666`` and ``high=3`` times the weight decay.

A rule only computes factors; the callbacks apply them around each optimizer step (`ww_callbacks.balance.optim`),
keeping the user's optimizer and scheduler.

Example:
    >>> import numpy as np, ww_callbacks
    >>> rng = np.random.default_rng(0)
    >>> weights = {f"fc{i}.weight": rng.standard_t(2 + i, size=(200, 100)) for i in range(5)}
    >>> factors = TempBalance().factors(ww_callbacks.analyze(weights, seed=0, randomize=False))
    >>> sorted(factors), min(factors.values()), max(factors.values())
    (['fc1', 'fc2', 'fc3'], 0.5, 1.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..spectral.report import LayerResult, SpectralReport

__all__ = ["MAPS", "AlphaDecay", "BalanceRule", "TempBalance", "hill_alpha", "map_scores"]

#: Why a framework without per-variable hyperparameters (Keras 3) cannot balance.
NO_PER_VARIABLE_HYPERPARAMETERS = (
    "its optimizers have one learning rate and one weight decay for all variables, so per-layer factors cannot be "
    "applied faithfully; use the Lightning or Hugging Face callback, or ww_callbacks.balance in your own loop"
)

#: The maps from alpha to factors of the reference code.
MAPS = ("tb_linear_map", "tb_sqrt", "tb_log2", "tb_step")


def hill_alpha(evals: np.ndarray) -> float:
    """The papers' alpha: the Hill estimator with ``xmin`` at the median eigenvalue.

    With the eigenvalues sorted ascending, ``i = int(N / 2)``, ``n = N - i``:
    ``alpha = 1 + n / (sum(log(evals[i:])) - n * log(evals[i]))``. NaN when it is not finite (zero eigenvalues).

    Example:
        >>> round(hill_alpha(np.array([1.0, 2.0, 4.0, 8.0])), 4)  # 1 + 2 / (log 4 + log 8 - 2 log 4)
        3.8854
    """
    values = np.sort(np.asarray(evals, dtype=np.float64))
    i = len(values) // 2
    n = len(values) - i
    if n < 1 or not values[i] > 0:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 + n / (np.sum(np.log(values[i:])) - n * np.log(values[i]))
    return float(alpha) if math.isfinite(alpha) else math.nan


def map_scores(scores: Sequence[float], low: float, high: float, how: str = "tb_linear_map") -> list[float]:
    """Factors for ``scores`` (one per layer or group), as the reference code's ``get_layer_temps`` gives them
    divided by the untuned value.

    Example:
        >>> map_scores([2.0, 3.0, 4.0], 0.5, 1.5)
        [0.5, 1.0, 1.5]
    """
    values = np.asarray(scores, dtype=np.float64)
    n = len(values)
    if n == 0:
        return []
    if how == "tb_linear_map":
        out = np.interp(values, [values.min(), values.max()], [low, high])
    elif how == "tb_sqrt":
        out = np.sqrt(values) / np.sum(np.sqrt(values)) * n
    elif how == "tb_log2":
        out = np.log2(values) / np.sum(np.log2(values)) * n
    elif how == "tb_step":
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.argsort(values, kind="stable")] = np.arange(n)
        out = low + (high - low) * ranks / n
    else:
        raise ValueError(f"unknown map {how!r}: choose from {', '.join(MAPS)}")
    return [float(v) for v in out]


class BalanceRule:
    """Per-layer factors on one optimizer hyperparameter (``hyperparameter``: ``"lr"`` or ``"weight_decay"``).

    Args:
        low, high: the factors of the smallest and the largest alpha (``tb_linear_map``, ``tb_step``).
        map: one of `MAPS`.
        estimator: ``"hill"`` (the papers' median Hill estimator, from the layer's eigenvalues) or ``"alpha"``
            (the analysis' own power-law alpha, weightwatcher's).
        kinds: the layer kinds balanced (default Linear and Conv2d: ``("dense", "conv2d")``).
        skip_first, skip_last: leave the first / the last of those layers alone (the papers do).
        min_evals: balance only layers with at least this many eigenvalues.
        group_by: None (each layer its own alpha) or ``"kind"`` (the mean alpha of the layers sharing the last
            part of their name: every ``q_proj`` ...).
        batchnorm: a BatchNorm right after a balanced Conv2d follows its factor (applied with the optimizer).
        extensions: also balance our extension layers (``ww_parity=False``: attention ``in_proj`` splits ...).

    Example:
        >>> TempBalance(low=0.5, high=2.0).hyperparameter
        'lr'
    """

    hyperparameter = "lr"
    #: The column of `LayerResult` and the logged name of the factor.
    column = "lr_factor"

    def __init__(
        self,
        low: float = 0.5,
        high: float = 1.5,
        *,
        map: str = "tb_linear_map",
        estimator: str = "hill",
        kinds: Sequence[str] = ("dense", "conv2d"),
        skip_first: bool = True,
        skip_last: bool = True,
        min_evals: int = 50,
        group_by: str | None = None,
        batchnorm: bool = True,
        extensions: bool = False,
    ) -> None:
        if map not in MAPS:
            raise ValueError(f"unknown map {map!r}: choose from {', '.join(MAPS)}")
        if estimator not in ("hill", "alpha"):
            raise ValueError(f"estimator must be 'hill' or 'alpha', got {estimator!r}")
        if group_by not in (None, "kind"):
            raise ValueError(f"group_by must be None or 'kind', got {group_by!r}")
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high, self.map, self.estimator = float(low), float(high), map, estimator
        self.kinds, self.skip_first, self.skip_last = tuple(kinds), bool(skip_first), bool(skip_last)
        self.min_evals, self.group_by = int(min_evals), group_by
        self.batchnorm, self.extensions = bool(batchnorm), bool(extensions)

    def layers(self, report: SpectralReport) -> list[LayerResult]:
        """The layers this rule balances, in module order."""
        eligible = [
            lr for lr in report.layers if lr.layer_type in self.kinds and (self.extensions or lr.ww_parity)
        ]
        eligible = eligible[int(self.skip_first) : len(eligible) - int(self.skip_last)]
        return [lr for lr in eligible if lr.evals is not None and len(lr.evals) >= self.min_evals]

    def alpha(self, layer: LayerResult) -> float:
        """The layer's alpha for this rule (`hill_alpha` of its eigenvalues, or the analysis' alpha)."""
        if self.estimator == "alpha":
            return float(layer.alpha)
        return hill_alpha(layer.evals) if layer.evals is not None else math.nan

    def factors(self, report: SpectralReport) -> dict[str, float]:
        """``{layer longname: factor}`` for the layers balanced (others keep factor 1 and are left out)."""
        scored = [(lr.longname, self.alpha(lr)) for lr in self.layers(report)]
        scored = [(name, a) for name, a in scored if math.isfinite(a)]
        if not scored:
            return {}
        names, alphas = [name for name, _ in scored], [a for _, a in scored]
        if self.group_by is None:
            return dict(zip(names, map_scores(alphas, self.low, self.high, self.map), strict=True))
        groups: dict[str, list[float]] = {}
        for name, a in scored:
            groups.setdefault(name.rsplit(".", 1)[-1], []).append(a)
        keys = list(groups)
        means = [sum(groups[k]) / len(groups[k]) for k in keys]
        by_group = dict(zip(keys, map_scores(means, self.low, self.high, self.map), strict=True))
        return {name: by_group[name.rsplit(".", 1)[-1]] for name, _ in scored}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(low={self.low:g}, high={self.high:g}, map={self.map!r}, "
            f"estimator={self.estimator!r}, group_by={self.group_by!r})"
        )


class TempBalance(BalanceRule):
    """TempBalance: each balanced layer's learning rate is ``factor x`` the scheduled one, the factor mapped from
    its alpha onto ``[low, high]`` (default 0.5-1.5): a heavier tail (smaller alpha) trains slower.

    Example:
        >>> TempBalance()
        TempBalance(low=0.5, high=1.5, map='tb_linear_map', estimator='hill', group_by=None)
    """


class AlphaDecay(BalanceRule):
    """AlphaDecay: each balanced layer's weight decay is ``factor x`` the user's, the factor mapped from the mean
    alpha of its module kind (``group_by="kind"``) onto ``[low, high]`` (default 0.6666-3, the paper's runs): a
    lighter tail (larger alpha) is decayed more.

    Example:
        >>> AlphaDecay().hyperparameter, AlphaDecay().group_by
        ('weight_decay', 'kind')
    """

    hyperparameter = "weight_decay"
    column = "wd_factor"

    def __init__(
        self, low: float = 0.6666, high: float = 3.0, *, group_by: str | None = "kind", **kwargs: Any
    ) -> None:
        super().__init__(low, high, group_by=group_by, **kwargs)


def check_rules(balance: Any) -> tuple[BalanceRule, ...]:
    """``balance`` (None, a rule or a list of rules) as a tuple of rules, at most one per hyperparameter.

    Example:
        >>> [type(r).__name__ for r in check_rules([TempBalance(), AlphaDecay()])]
        ['TempBalance', 'AlphaDecay']
    """
    if balance is None:
        return ()
    rules = tuple(balance) if isinstance(balance, (list, tuple)) else (balance,)
    for rule in rules:
        if not isinstance(rule, BalanceRule):
            raise TypeError(
                f"balance takes ww_callbacks.balance rules (TempBalance, AlphaDecay), got {type(rule).__name__}"
            )
    targets = [rule.hyperparameter for rule in rules]
    if len(set(targets)) != len(targets):
        raise ValueError("balance: at most one rule per hyperparameter (one TempBalance, one AlphaDecay)")
    return rules


def balance_factors(rules: Sequence[BalanceRule], report: SpectralReport) -> dict[str, dict[str, float]]:
    """``{hyperparameter: {layer: factor}}`` of ``rules`` on ``report``, also written on the report's layers
    (``lr_factor`` / ``wd_factor``: history rows, W&B tables).

    Example:
        >>> balance_factors([TempBalance()], SpectralReport())
        {'lr': {}}
    """
    factors = {rule.hyperparameter: rule.factors(report) for rule in rules}
    for rule in rules:
        for layer in report.layers:
            setattr(layer, rule.column, factors[rule.hyperparameter].get(layer.longname, math.nan))
    return factors


def factor_scalars(
    rules: Sequence[BalanceRule], factors: dict[str, dict[str, float]], prefix: str, per_layer: bool
) -> dict[str, float]:
    """The logged scalars of the factors: ``{prefix}lr_factor/min|max`` (and per layer ``{prefix}{layer}/lr_factor``).

    Example:
        >>> factor_scalars([TempBalance()], {"lr": {"fc": 0.5, "fc2": 1.5}}, "ww/", False)
        {'ww/lr_factor/min': 0.5, 'ww/lr_factor/max': 1.5}
    """
    out: dict[str, float] = {}
    for rule in rules:
        values = factors.get(rule.hyperparameter) or {}
        if not values:
            continue
        out[f"{prefix}{rule.column}/min"] = min(values.values())
        out[f"{prefix}{rule.column}/max"] = max(values.values())
        if per_layer:
            out.update({f"{prefix}{layer}/{rule.column}": value for layer, value in values.items()})
    return out

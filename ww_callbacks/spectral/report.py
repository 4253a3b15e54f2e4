"""Per-layer results (`LayerResult`) and the whole-model `SpectralReport`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import SUMMARY_METRICS, metric_available

#: Layer status values. Only "success" layers enter the summary.
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"  # the power-law fit failed (too few eigenvalues above 1e-5, degenerate tail ...)
STATUS_NON_FINITE = "non-finite"  # NaN or Inf in the weights
STATUS_ZERO = "zero"  # all weights zero (rank 0)
STATUS_TOO_SMALL = "too-small"  # fewer than min_evals eigenvalues
STATUS_TOO_LARGE = "too-large"  # more than max_evals eigenvalues or N > max_N
STATUS_ERROR = "error"  # an unexpected exception; analysis of the other layers continues

NAN = float("nan")


@dataclass
class LayerResult:
    """Everything computed for one layer; attribute names are weightwatcher's column names.

    Metrics that were not computed (``randomize=False``, ``mp_fit=False``, a failed fit, a skipped layer) are
    NaN. ``status`` says whether the layer was analyzed and its fit succeeded; ``reason`` says why not.

    Example:
        >>> r = LayerResult(layer_id=1, name="fc1", longname="fc1", layer_type="dense", N=64, M=10)
        >>> r.status, math.isnan(r.alpha)
        ('success', True)
    """

    layer_id: int
    name: str
    longname: str
    layer_type: str
    N: int
    M: int
    rf: int = 1
    Q: float = NAN
    num_evals: int = 0
    status: str = STATUS_SUCCESS
    reason: str = ""
    warning: str = ""
    ww_parity: bool = True
    # ESD
    has_esd: bool = False
    sv_max: float = NAN
    sv_min: float = NAN
    rank_loss: float = NAN
    weak_rank_loss: float = NAN
    lambda_max: float = NAN
    # power-law fit
    alpha: float = NAN
    xmin: float = NAN
    xmax: float = NAN
    D: float = NAN
    sigma: float = NAN
    num_pl_spikes: float = NAN
    # norms
    norm: float = NAN
    log_norm: float = NAN
    spectral_norm: float = NAN
    log_spectral_norm: float = NAN
    alpha_weighted: float = NAN
    log_alpha_norm: float = NAN
    stable_rank: float = NAN
    matrix_rank: float = NAN
    entropy: float = NAN
    # randomize=True
    max_rand_eval: float = NAN
    rand_distance: float = NAN
    rand_distance_std: float = NAN
    ww_softrank: float = NAN
    ww_maxdist: float = NAN
    rand_num_spikes: float = NAN
    num_traps: float = NAN
    rand_sigma_mp: float = NAN
    rand_mp_softrank: float = NAN
    rand_W_scale: float = NAN
    rand_bulk_max: float = NAN
    rand_bulk_min: float = NAN
    # mp_fit=True
    num_spikes: float = NAN
    sigma_mp: float = NAN
    mp_softrank: float = NAN
    W_scale: float = NAN
    bulk_max: float = NAN
    bulk_min: float = NAN
    # balancing (`ww_callbacks.balance`): the factor on the layer's learning rate / weight decay (NaN: none)
    lr_factor: float = NAN
    wd_factor: float = NAN
    # arrays kept for plots; not part of rows
    evals: np.ndarray | None = field(default=None, repr=False, compare=False)
    rand_evals: np.ndarray | None = field(default=None, repr=False, compare=False)

    _ARRAY_FIELDS = ("evals", "rand_evals")

    @property
    def ok(self) -> bool:
        """True when the layer was analyzed and its power-law fit succeeded."""
        return self.status == STATUS_SUCCESS

    def to_row(self) -> dict[str, Any]:
        """Plain dict of every scalar column (arrays excluded)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in self._ARRAY_FIELDS
        }

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """Serializable dict (for checkpoints, broadcasts, history files)."""
        row = self.to_row()
        if include_arrays:
            for name in self._ARRAY_FIELDS:
                arr = getattr(self, name)
                row[name] = None if arr is None else np.asarray(arr).tolist()
        return row

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerResult:
        """Inverse of `to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for name in cls._ARRAY_FIELDS:
            if kwargs.get(name) is not None:
                kwargs[name] = np.asarray(kwargs[name], dtype=np.float64)
        return cls(**kwargs)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else NAN


@dataclass
class SpectralReport:
    """The result of one analysis: per-layer `LayerResult`s and a summary.

    ``summary[m]`` is the mean of metric ``m`` over the layers whose fit succeeded (``status == "success"``;
    weightwatcher averages failed fits as alpha = -1, we do not). ``num_summarized`` says how many layers that
    was. ``summary["num_nonfinite_layers"]`` counts the layers whose weights hold NaN or Inf (diverged
    training), among all layers.

    Example:
        >>> import numpy as np, ww_callbacks
        >>> rng = np.random.default_rng(0)
        >>> report = ww_callbacks.analyze({"fc.weight": rng.normal(size=(64, 32))}, seed=0)
        >>> report.num_summarized
        1
        >>> sorted(report.summary)[:2]
        ['alpha', 'alpha_weighted']
    """

    layers: list[LayerResult] = field(default_factory=list)
    elapsed: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> LayerResult:
        if isinstance(key, int):
            return self.layers[key]
        for layer in self.layers:
            if key in (layer.longname, layer.name):
                return layer
        raise KeyError(key)

    @property
    def summarized_layers(self) -> list[LayerResult]:
        return [lr for lr in self.layers if lr.ok]

    @property
    def num_summarized(self) -> int:
        """How many layers the summary averages."""
        return len(self.summarized_layers)

    @property
    def nonfinite_layers(self) -> list[LayerResult]:
        """The layers whose weights hold NaN or Inf (status "non-finite")."""
        return [lr for lr in self.layers if lr.status == STATUS_NON_FINITE]

    @property
    def summary(self) -> dict[str, float]:
        """Mean of each of `SUMMARY_METRICS` over layers whose fit succeeded (NaN where none), and the
        `SUMMARY_COUNTS` (``num_nonfinite_layers``)."""
        ok = self.summarized_layers
        out = {
            m: _nanmean([getattr(lr, m) for lr in ok])
            for m in SUMMARY_METRICS
            if metric_available(m, self.options)
        }
        out["num_nonfinite_layers"] = len(self.nonfinite_layers)
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain dict per layer with every scalar column."""
        return [lr.to_row() for lr in self.layers]

    def to_pandas(self) -> Any:
        """The per-layer table as a pandas DataFrame (requires pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("SpectralReport.to_pandas() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.to_rows())

    def to_dict(self, *, include_arrays: bool = False) -> dict[str, Any]:
        """Serializable dict; `from_dict` restores it."""
        return {
            "layers": [lr.to_dict(include_arrays=include_arrays) for lr in self.layers],
            "elapsed": self.elapsed,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpectralReport:
        return cls(
            layers=[LayerResult.from_dict(d) for d in data.get("layers", [])],
            elapsed=float(data.get("elapsed", 0.0)),
            options=dict(data.get("options", {})),
        )

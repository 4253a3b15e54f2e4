"""ww-callbacks: data-free spectral diagnostics (WeightWatcher metrics) inside the training loop.

Importing this package imports neither torch, keras, lightning nor wandb.

Example:
    >>> import numpy as np, ww_callbacks
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(128, 64))}, seed=0)
    >>> round(report.summary["alpha"], 1) > 1
    True
"""

from __future__ import annotations

from typing import Any

from .analysis import analyze
from .layers import LayerWeights, snapshot
from .spectral.report import SUMMARY_METRICS, LayerResult, SpectralReport
from .stopping import AllOf, AlphaBelow, AnyOf, NonFinite, Plateau, StopDecision, StoppingRule

__version__ = "0.1.0"

__all__ = [
    "SUMMARY_METRICS",
    "AllOf",
    "AlphaBelow",
    "AnyOf",
    "NonFinite",
    "Plateau",
    "StopDecision",
    "StoppingRule",
    "LayerResult",
    "LayerWeights",
    "SpectralReport",
    "analyze",
    "load_history",
    "snapshot",
    "__version__",
]


def load_history(path: Any, *, as_pandas: bool | None = None, dedupe: bool = True) -> Any:
    """Read a ``ww_history.jsonl`` file written by the callbacks: `ww_callbacks.sinks.history.load_history`.

    ``as_pandas``: a DataFrame (True), a list of dicts (False), or a DataFrame when pandas is installed (None).
    ``dedupe``: keep only the last line written for each (epoch, step, layer), as a resumed run re-analyzes.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "h.jsonl")
        >>> line = '{"epoch": 0, "step": 5, "layer": "fc", "alpha": %d}\\n'
        >>> _ = open(path, "w").write(line % 3 + line % 4)  # step 5 analyzed twice (a resumed run)
        >>> len(load_history(path, as_pandas=False)), len(load_history(path, as_pandas=False, dedupe=False))
        (1, 2)
    """
    from .sinks.history import load_history as _load

    return _load(path, as_pandas=as_pandas, dedupe=dedupe)

"""ww-callbacks: data-free spectral diagnostics (WeightWatcher metrics) inside the training loop.

Importing this package imports neither torch, keras, lightning nor wandb.

Example:
    >>> import numpy as np, ww_callbacks
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(128, 64))}, seed=0)
    >>> round(report.summary["alpha"], 1) > 1
    True
"""

from __future__ import annotations

from .analysis import analyze
from .history import load_history
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

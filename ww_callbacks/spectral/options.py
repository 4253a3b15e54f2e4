"""`AnalysisOptions`: the options of one analysis and their defaults, in one place.

`ww_callbacks.analyze` takes them as keyword arguments (its defaults are read from here), builds one
`AnalysisOptions` and passes it down to `ww_callbacks.spectral.layer.analyze_layers`; the report keeps
`AnalysisOptions.as_dict` as ``report.options``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["AnalysisOptions"]


@dataclass(frozen=True)
class AnalysisOptions:
    """What to compute for each layer (see `ww_callbacks.analyze` for the meaning of each option).

    Example:
        >>> opts = AnalysisOptions(mp_fit=True)
        >>> opts.randomize, opts.as_dict()["mp_fit"]
        (True, True)
    """

    randomize: bool = True
    mp_fit: bool = False
    min_evals: int = 8
    max_evals: int = 15000
    max_N: int = 50000
    n_random: int = 1
    traps: bool = True
    eigensolver: str = "auto"
    eigen_dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {self.n_random}")
        if self.eigensolver not in ("auto", "numpy", "torch"):
            raise ValueError(f"eigensolver must be 'auto', 'numpy' or 'torch', got {self.eigensolver!r}")
        if self.eigen_dtype not in ("float64", "float32"):
            raise ValueError(f"eigen_dtype must be 'float64' or 'float32', got {self.eigen_dtype!r}")
        if self.eigen_dtype == "float32" and self.eigensolver == "numpy":
            raise ValueError("eigen_dtype='float32' is for the torch eigensolver; numpy computes in float64")

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (``SpectralReport.options``)."""
        return dataclasses.asdict(self)

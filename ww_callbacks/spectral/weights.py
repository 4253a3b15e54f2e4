"""`LayerWeights`: the framework-free description of one analyzable layer, as the spectral core sees it.

The snapshot adapters (`ww_callbacks.layers`) and the weight loaders (`ww_callbacks.io`) turn models, state
dicts and files into lists of `LayerWeights`; everything in `ww_callbacks.spectral` works on these only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Layer kinds, with weightwatcher's ``layer_type`` spelling.
LAYER_KINDS = ("dense", "conv1d", "conv2d", "embedding")

#: weightwatcher's ``conv2d_norm`` factor (pooled): every conv slice is multiplied by sqrt(1/2).
CONV_SCALE = 0.5**0.5


@dataclass(frozen=True)
class LayerWeights:
    """The weights of one layer, as the spectral core analyzes them.

    ``matrices`` is a stack of equally shaped 2-D slices, shape ``(rf, rows, cols)``: one slice for dense and
    embedding layers, one per kernel position for convolutions. Each slice is in weightwatcher's orientation
    (torch ``Linear``: ``(out, in)``; Keras ``Dense``: ``(in, out)``; conv slices transposed to tall when
    ``out < in``), because randomization shuffles each slice in C order. It may be a numpy array or a torch
    tensor (on any device); the core never moves a tensor off its device except for the eigenvalues.

    ``N``, ``M`` and ``rf`` are weightwatcher's labels, including its conv labelling quirk (even ``rf`` with
    ``out < in`` gives ``N < M``); they feed ``Q``, the ``min_evals`` filter and the Marchenko-Pastur fit.
    ``scale`` multiplies every slice before the analysis (weightwatcher's ``conv2d_norm``: sqrt(1/2) for conv).
    ``rank``, when set, keeps only the ``rank`` largest eigenvalues of each slice (a LoRA update ``B @ A`` of
    rank ``r`` has at most ``r`` nonzero ones; weightwatcher's ``num_components``); the shuffled ESDs too. With
    ``extra["factors"] = (left, right)`` (``matrices[0] == left @ right``) those eigenvalues come from the
    factors (`ww_callbacks.spectral.esd.lowrank_eigenvalues`); the matrix is still what randomization shuffles.

    ``ww_parity`` is False for layers weightwatcher 0.7.7 does not analyze the same way (our extensions:
    attention ``in_proj`` splits, Keras ``EinsumDense`` kernels, torch ``Conv1d`` slices, ...).

    Example:
        >>> import numpy as np
        >>> w = np.ones((1, 20, 10), dtype=np.float32)
        >>> lw = LayerWeights(name="fc", longname="fc", kind="dense", layer_id=1, matrices=w, N=20, M=10)
        >>> lw.num_evals
        10
    """

    name: str
    longname: str
    kind: str
    layer_id: int
    matrices: Any
    N: int
    M: int
    rf: int = 1
    scale: float = 1.0
    ww_parity: bool = True
    module_type: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    rank: int | None = None

    @property
    def Q(self) -> float:
        """Aspect ratio N/M (weightwatcher's ``Q``), -1 when M is 0."""
        return self.N / self.M if self.M else -1.0

    @property
    def num_evals(self) -> int:
        """Number of eigenvalues of the pooled ESD: ``M * rf`` with weightwatcher's labels."""
        return self.M * self.rf

    @property
    def slice_shape(self) -> tuple[int, int]:
        shape = tuple(self.matrices.shape)
        return int(shape[-2]), int(shape[-1])

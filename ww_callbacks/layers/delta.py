"""Deltas: analyze ``W - W_base`` per layer, to see how far training (or fine-tuning) moved each matrix.

`delta_layers` matches the layers of a snapshot with those of a base snapshot by ``longname`` (biases are never
layers, so they are ignored), subtracts the base slices (moved to the weights' device and dtype) and keeps the
labels of the current layer. A shape mismatch is a ``ValueError`` that names the layer; a layer with no
counterpart in the base is left out with a warning (a new head, say); no layer in common is an error.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.layers import snapshot
    >>> now = snapshot({"fc.weight": np.full((20, 10), 3.0)})
    >>> base = snapshot({"fc.weight": np.ones((20, 10))})
    >>> float(delta_layers(now, base)[0].matrices.max())
    2.0
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import LayerWeights

__all__ = ["delta_layers", "host_copy"]

log = logging.getLogger(__name__)


def host_copy(layers: Sequence[LayerWeights]) -> list[LayerWeights]:
    """The layers with their matrices copied to host numpy (float64 kept as float64, others float32): a base
    kept once, wherever the weights live.

    Example:
        >>> import numpy as np
        >>> from ww_callbacks.layers import snapshot
        >>> type(host_copy(snapshot({"fc.weight": np.ones((20, 10))}))[0].matrices).__name__
        'ndarray'
    """
    out = []
    for lw in layers:
        matrices = lw.matrices
        if hasattr(matrices, "detach"):
            matrices = matrices.detach().cpu().numpy()
        out.append(dataclasses.replace(lw, matrices=np.array(matrices, copy=True)))
    return out


def _minus(current: Any, base: Any) -> Any:
    if hasattr(current, "detach"):  # a torch tensor: subtract on its device
        import torch

        return current - torch.as_tensor(base, device=current.device, dtype=current.dtype)
    return np.asarray(current) - np.asarray(base, dtype=np.asarray(current).dtype)


def delta_layers(layers: Sequence[LayerWeights], base: Sequence[LayerWeights]) -> list[LayerWeights]:
    """``layers`` with each matrix minus the matching layer's of ``base`` (see the module docstring)."""
    by_name = {lw.longname: lw for lw in base}
    out, missing = [], []
    for lw in layers:
        other = by_name.get(lw.longname)
        if other is None:
            missing.append(lw.longname)
            continue
        if tuple(other.matrices.shape) != tuple(lw.matrices.shape):
            raise ValueError(
                f"delta of layer {lw.longname}: shape {tuple(lw.matrices.shape)} but the base layer has "
                f"{tuple(other.matrices.shape)}"
            )
        if lw.extra.get("gather") is not None:
            raise ValueError(
                f"delta of layer {lw.longname}: sharded weights (FSDP2, DTensor) are not supported"
            )
        extra = {**lw.extra, "delta": True}
        out.append(dataclasses.replace(lw, matrices=_minus(lw.matrices, other.matrices), extra=extra))
    if layers and not out:
        raise ValueError(
            f"no layer of the model matches the base by name (model: {[lw.longname for lw in layers][:5]}, "
            f"base: {list(by_name)[:5]})"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} layers have no counterpart in the base and are left out of the delta analysis: "
            f"{', '.join(missing[:10])}",
            RuntimeWarning,
            stacklevel=3,
        )
    return out

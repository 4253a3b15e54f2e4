"""Snapshots: turn a model (torch, Keras, or a mapping of arrays) into a list of `LayerWeights`.

This package is the only place that knows framework types; every framework import happens lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..spectral.frameworks import is_keras_layer, is_torch_module
from .base import CONV_SCALE, LAYER_KINDS, LayerWeights, select_layers
from .peft import peft_layers, resolve_peft

__all__ = ["CONV_SCALE", "LAYER_KINDS", "LayerWeights", "select_layers", "snapshot"]

SUPPORTED = (
    "a torch.nn.Module, a Keras 3 Model or Layer, a mapping of layer names to arrays or tensors "
    "(e.g. a state dict), or a list of LayerWeights"
)


def snapshot(
    model: Any, *, layers: Any = None, copy: bool = True, peft: str | bool = "auto"
) -> list[LayerWeights]:
    """Copy the analyzable weights of ``model`` out as `LayerWeights`, optionally filtered by ``layers``.

    ``copy=True`` detaches and copies the weights (on their device) so that training can go on while they are
    analyzed. Framework modules are only imported if the model is of that framework. A model with LoRA layers
    (PEFT, Keras ``enable_lora``) gives its adapter updates or its effective weights (``peft``, see
    `ww_callbacks.layers.peft`; ``"auto"``: the adapters).

    Example:
        >>> import numpy as np
        >>> [lw.name for lw in snapshot({"fc.weight": np.ones((20, 10))})]
        ['fc']
    """
    if (
        isinstance(model, Sequence)
        and not isinstance(model, (str, bytes))
        and all(isinstance(lw, LayerWeights) for lw in model)
    ):
        found = list(model)
    elif (is_keras_layer(model) or is_torch_module(model)) and (mode := resolve_peft(model, peft)) != "none":
        found = peft_layers(model, mode, copy=copy)
    elif is_keras_layer(model):  # before torch: on Keras' torch backend, Keras layers are torch modules too
        from .keras import snapshot_keras

        found = snapshot_keras(model, copy=copy)
    elif is_torch_module(model):
        from .torch import snapshot_torch

        found = snapshot_torch(model, copy=copy)
    elif isinstance(model, Mapping):
        from .mapping import snapshot_mapping

        found = snapshot_mapping(model, copy=copy)
    else:
        raise TypeError(f"cannot analyze an object of type {type(model).__name__}: expected {SUPPORTED}")
    return select_layers(found, layers)

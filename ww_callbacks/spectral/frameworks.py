"""Which framework an object belongs to, without importing any: the package's one home for framework type checks.

Each check looks at ``sys.modules`` only, so it is False (and free) when the framework was never imported:
an object of a framework cannot exist before its module is imported.

Example:
    >>> import numpy as np
    >>> is_torch_tensor(np.ones(2)), is_keras_layer(None), is_torch_module("model")
    (False, False, False)
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["is_dtensor", "is_keras_layer", "is_torch_module", "is_torch_tensor"]


def is_torch_tensor(obj: Any) -> bool:
    """True for a ``torch.Tensor``."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def is_torch_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module``."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_keras_layer(obj: Any) -> bool:
    """True for a Keras 3 ``Layer`` (``Model`` included)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.layers.Layer)


def is_dtensor(obj: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2, tensor parallel)."""
    tensor_module = sys.modules.get("torch.distributed.tensor")  # imported by whoever made a DTensor
    return tensor_module is not None and isinstance(obj, tensor_module.DTensor)

"""Small helpers several modules share: finite numbers, JSON-safe values, framework type checks.

Nothing here imports a framework: the type checks look at ``sys.modules`` only, so they are False (and free)
when the framework was never imported. ``is_torch_tensor`` lives in the core (`ww_callbacks.spectral.esd`),
which may import nothing outside itself; it is re-exported here for the rest of the package.

Example:
    >>> finite_or_none("2.5"), finite_or_none(float("nan")), jsonable({"a": float("inf"), "b": (1, 2)})
    (2.5, None, {'a': None, 'b': [1, 2]})
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .spectral.esd import is_torch_tensor

__all__ = [
    "finite_or_none",
    "first_line",
    "is_keras_layer",
    "is_torch_module",
    "is_torch_tensor",
    "jsonable",
]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite).

    Example:
        >>> finite_or_none(3), finite_or_none("x"), finite_or_none(None)
        (3.0, None, None)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def jsonable(value: Any) -> Any:
    """A plain JSON value: numpy and torch scalars become Python numbers, arrays lists, non-finite floats
    ``None`` (JSON has no NaN), mappings and sequences are converted item by item, anything else is its ``str``.

    Example:
        >>> jsonable(np.float32(1.5)), jsonable(np.array([1.0, np.nan])), jsonable(np.bool_(True))
        (1.5, [1.0, None], True)
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def is_keras_layer(obj: Any) -> bool:
    """True for a Keras 3 ``Layer`` (``Model`` included), without importing keras."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.layers.Layer)


def is_torch_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module``, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line error messages.

    Example:
        >>> first_line(ValueError("bad header\\ndetails ..."))
        'bad header'
    """
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()

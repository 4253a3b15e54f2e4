"""Small helpers several modules share: finite numbers, JSON-safe values, one-line error messages.

Framework type checks live in `ww_callbacks.spectral.frameworks`.

Example:
    >>> finite_or_none("2.5"), finite_or_none(float("nan")), jsonable({"a": float("inf"), "b": (1, 2)})
    (2.5, None, {'a': None, 'b': [1, 2]})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "finite_or_none",
    "first_line",
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line error messages.

    Example:
        >>> first_line(ValueError("bad header\\ndetails ..."))
        'bad header'
    """
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()

"""Layer selection (`select_layers`) over `LayerWeights`, the framework-free layer description.

`LayerWeights`, `LAYER_KINDS` and `CONV_SCALE` live in the core (`ww_callbacks.spectral.weights`) and are
re-exported here, where the adapters (``layers/torch.py``, ``layers/keras.py``, ``layers/mapping.py``) use them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from ..spectral.weights import CONV_SCALE, LAYER_KINDS, LayerWeights

__all__ = ["CONV_SCALE", "LAYER_KINDS", "LayerWeights", "select_layers"]


def _as_list(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, (str, int, re.Pattern)) or isinstance(spec, type):
        return [spec]
    return list(spec)


def _matches(layer: LayerWeights, item: Any) -> bool:
    if isinstance(item, re.Pattern):
        return bool(item.search(layer.longname) or item.search(layer.name))
    if isinstance(item, type):
        cls = layer.extra.get("module_class")
        if isinstance(cls, type):
            return issubclass(cls, item)
        return layer.module_type == item.__name__
    if isinstance(item, bool):
        raise TypeError("layer filters must be names, globs, regexes, kinds, ids or classes, not bool")
    if isinstance(item, int):
        return layer.layer_id == abs(item)
    item = str(item)
    if item.lower() in LAYER_KINDS:
        return layer.kind == item.lower()
    if item == layer.module_type:
        return True
    if item in (layer.name, layer.longname):
        return True
    if any(ch in item for ch in "*?["):
        return fnmatch.fnmatchcase(layer.longname, item) or fnmatch.fnmatchcase(layer.name, item)
    return False


def select_layers(layers: Sequence[LayerWeights], spec: Any) -> list[LayerWeights]:
    """Filter layers by name, glob, compiled regex, kind (``"dense"``...), class or layer id.

    Items starting with ``-`` (strings) or negative ids exclude; others include. With only exclusions, every
    other layer is kept.

    Example:
        >>> select_layers([], ["fc*", "-fc3"])
        []
    """
    items = _as_list(spec)
    if not items:
        return list(layers)
    include: list[Any] = []
    exclude: list[Any] = []
    for item in items:
        if isinstance(item, str) and item.startswith("-"):
            exclude.append(item[1:])
        elif isinstance(item, int) and not isinstance(item, bool) and item < 0:
            exclude.append(item)
        else:
            include.append(item)
    kept = []
    for layer in layers:
        if include and not any(_matches(layer, it) for it in include):
            continue
        if any(_matches(layer, it) for it in exclude):
            continue
        kept.append(layer)
    return kept

"""`LayerWeights`: the framework-free description of one analyzable layer.

Framework adapters (``layers/torch.py``, ``layers/keras.py``, ``layers/mapping.py``) turn a model into a list of
`LayerWeights`; the spectral core only ever sees these.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
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


def iter_names(layers: Iterable[LayerWeights]) -> list[str]:
    return [lw.longname for lw in layers]

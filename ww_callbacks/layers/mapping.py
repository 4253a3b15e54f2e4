"""Snapshot of a mapping of arrays (a state dict, a checkpoint dict, a dict of numpy arrays).

`unwrap_state_dict` finds the weights inside a checkpoint dict (``state_dict``, ``model``, ``module`` ...);
`snapshot_mapping` describes them as `LayerWeights`. The layer builders the torch and Keras adapters share live
in `ww_callbacks.layers.builders`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..spectral.frameworks import is_torch_tensor
from ..spectral.weights import LayerWeights
from .builders import conv2d_labels, conv2d_layer, dense_layer, mark_tied, storage_identity

__all__ = ["CHECKPOINT_KEYS", "conv2d_labels", "snapshot_mapping", "unwrap_state_dict"]

log = logging.getLogger(__name__)

#: Keys under which training loops nest the model's weights inside a checkpoint dict, in the order they are
#: tried (Lightning: ``state_dict``; many loops: ``model_state_dict`` or ``model``; DeepSpeed: ``module``).
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module")


def snapshot_mapping(mapping: Mapping[Any, Any], *, copy: bool = True) -> list[LayerWeights]:
    """Describe the 2-D and 4-D arrays of a state dict as `LayerWeights`, as weightwatcher reads state dicts.

    Follows weightwatcher 0.7.7's state-dict reader: layer ids count from 1, one id per candidate key; when any
    key ends in ``.weight`` only those keys are candidates and a layer is named by its key without ``.weight``;
    otherwise every key is a candidate, named by the key itself. A 2-D value is a dense layer ``(1, out, in)``
    as stored; a 4-D value is a conv2d weight in torch layout ``(out, in, kh, kw)``, sliced and scaled like
    torch ``Conv2d``. Other values (1-D norms, scalars, non-arrays such as checkpoint metadata) are skipped.
    Values may be numpy arrays (or anything with ``__array__``) or torch tensors, which stay tensors on their
    device. A checkpoint dict is unwrapped first (`unwrap_state_dict`). Weights shared by several
    keys (tied embeddings) appear once; the other keys are listed in ``extra["tied"]``. Names are those of the
    user's module: the ``_orig_mod.`` of a ``torch.compile``d module is dropped, and so is the ``module.``
    prefix of a DDP/DataParallel state dict (when every key has it).

    Example:
        >>> import numpy as np
        >>> sd = {"fc.weight": np.ones((20, 10)), "fc.bias": np.ones(20), "conv.weight": np.ones((8, 4, 3, 3))}
        >>> [(lw.layer_id, lw.name, lw.kind, lw.matrices.shape) for lw in snapshot_mapping(sd)]
        [(1, 'fc', 'dense', (1, 20, 10)), (2, 'conv', 'conv2d', (9, 8, 4))]
    """
    state = unwrap_state_dict(mapping)
    keys = list(state.keys())
    by_weight = any(_is_weight_key(key) for key in keys)
    names = _user_names(keys)
    found: list[LayerWeights] = []
    owners: dict[tuple[Any, ...], int] = {}  # storage identity -> index in found
    ties: dict[int, list[str]] = {}
    layer_id = 1
    for key in keys:
        if by_weight and not _is_weight_key(key):
            continue
        value = state[key]
        if value is None:  # weightwatcher gives None values no id
            continue
        this_id, layer_id = layer_id, layer_id + 1
        name = names[key][: -len(".weight")] if by_weight else names[key]
        array = _as_array(value)
        if array is None or array.ndim not in (2, 4):
            log.debug("state dict key %r skipped: not a 2-D or 4-D array", key)
            continue
        if not _is_real_numeric(array):
            log.debug("state dict key %r skipped: dtype %s is not real", key, array.dtype)
            continue
        identity = storage_identity(array)
        if identity is not None and identity in owners:
            ties.setdefault(owners[identity], []).append(name)
            continue
        # weightwatcher types a value whose first dimension is below 2 as unknown and skips it.
        parity = int(array.shape[0]) >= 2
        if array.ndim == 2:
            layer = dense_layer(
                array, name=name, longname=name, layer_id=this_id, copy=copy, ww_parity=parity
            )
        else:
            layer = conv2d_layer(
                array, name=name, longname=name, layer_id=this_id, copy=copy, ww_parity=parity
            )
        if identity is not None:
            owners[identity] = len(found)
        found.append(layer)
    return mark_tied(found, ties)


def unwrap_state_dict(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """The state dict inside a checkpoint dict: the first of `CHECKPOINT_KEYS` whose value is a mapping holding
    arrays or tensors (Lightning's ``{"state_dict": ...}``, ``{"model": ...}``, ``{"module": ...}`` ...);
    ``mapping`` itself when there is none. The library (`ww_callbacks.analyze`) and the command line read
    checkpoints through this one function.

    Example:
        >>> import numpy as np
        >>> sd = {"fc.weight": np.ones((3, 2))}
        >>> unwrap_state_dict({"model": sd, "epoch": 3}) is sd, unwrap_state_dict(sd) is sd
        (True, True)
    """
    for key in CHECKPOINT_KEYS:
        inner = mapping.get(key)
        if isinstance(inner, Mapping) and any(_is_array_like(v) for v in inner.values()):
            return inner
    return mapping


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


#: What wrappers add to state dict keys: ``torch.compile`` (anywhere) and DDP / DataParallel (at the front).
_COMPILE_PART = "_orig_mod"
_DDP_PREFIX = "module."


def _user_names(keys: list[Any]) -> dict[Any, str]:
    """Each key as the user's module would name it (no wrapper parts); non-string keys as ``str(key)``."""
    names = {key: ".".join(p for p in str(key).split(".") if p != _COMPILE_PART) for key in keys}
    if names and all(isinstance(k, str) and n.startswith(_DDP_PREFIX) for k, n in names.items()):
        names = {key: name[len(_DDP_PREFIX) :] for key, name in names.items()}
    return names


def _is_weight_key(key: Any) -> bool:
    return isinstance(key, str) and key.endswith(".weight")


def _as_array(value: Any) -> Any:
    """A torch tensor (detached) or a numpy array for array-like values, None for anything else."""
    if is_torch_tensor(value):
        return value.detach()
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            return np.asarray(value)
        except Exception:  # an exotic array type: not analyzable, not fatal
            return None
    return None


def _is_real_numeric(array: Any) -> bool:
    if is_torch_tensor(array):
        strided = array.layout == sys.modules["torch"].strided
        return strided and not array.is_complex() and not array.is_quantized
    return np.dtype(array.dtype).kind in "fiub" or np.dtype(array.dtype).name == "bfloat16"

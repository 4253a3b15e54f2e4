"""Layer builders the snapshot adapters share: weightwatcher's conv slicing and N/M labels, dtypes, copies, ties.

Every function works on numpy arrays and on torch tensors alike (``weight`` is either), without importing torch.

Example:
    >>> import numpy as np
    >>> dense_layer(np.ones((10, 30)), name="fc", longname="fc", layer_id=1, copy=True).matrices.shape
    (1, 10, 30)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..spectral.frameworks import is_torch_tensor
from ..spectral.weights import CONV_SCALE, LayerWeights

__all__ = [
    "as_float",
    "conv1d_layer",
    "conv2d_labels",
    "conv2d_layer",
    "conv_slices",
    "dense_layer",
    "mark_tied",
    "owned",
    "storage_identity",
]


def dense_layer(
    weight: Any,
    *,
    name: str,
    longname: str,
    layer_id: int,
    copy: bool,
    kind: str = "dense",
    ww_parity: bool = True,
    module_type: str = "",
    extra: dict[str, Any] | None = None,
) -> LayerWeights:
    """A one-slice layer from a 2-D weight, as stored (no transpose), with ``N = max``, ``M = min``.

    Example:
        >>> import numpy as np
        >>> lw = dense_layer(np.ones((10, 30)), name="fc", longname="fc", layer_id=1, copy=True)
        >>> lw.matrices.shape, lw.N, lw.M
        ((1, 10, 30), 30, 10)
    """
    source = weight
    weight = as_float(weight)
    rows, cols = (int(d) for d in weight.shape)
    matrices = owned(weight[None], source, copy)
    return LayerWeights(
        name=name,
        longname=longname,
        kind=kind,
        layer_id=layer_id,
        matrices=matrices,
        N=max(rows, cols),
        M=min(rows, cols),
        ww_parity=ww_parity,
        module_type=module_type,
        extra=dict(extra or {}),
    )


def conv2d_layer(
    weight: Any,
    *,
    name: str,
    longname: str,
    layer_id: int,
    copy: bool,
    ww_parity: bool = True,
    module_type: str = "",
    extra: dict[str, Any] | None = None,
) -> LayerWeights:
    """A conv2d layer from a torch-layout weight ``(out, in, kh, kw)``: ``kh*kw`` slices, scaled by sqrt(1/2).

    N and M are weightwatcher's labels (see `conv2d_labels`).

    Example:
        >>> import numpy as np
        >>> lw = conv2d_layer(np.ones((8, 16, 2, 2)), name="c", longname="c", layer_id=1, copy=True)
        >>> lw.matrices.shape, lw.rf, (lw.N, lw.M)
        ((4, 16, 8), 4, (8, 16))
    """
    out, inp, kh, kw = (int(d) for d in weight.shape)
    stack = owned(conv_slices(as_float(weight)), weight, copy)
    n, m = conv2d_labels(out, inp, kh, kw)
    labels = {"name": name, "longname": longname, "layer_id": layer_id, "module_type": module_type}
    return _conv_layer(stack, "conv2d", (n, m, kh * kw), labels, ww_parity=ww_parity, extra=extra)


def conv1d_layer(
    weight: Any,
    *,
    name: str,
    longname: str,
    layer_id: int,
    copy: bool,
    module_type: str = "",
    extra: dict[str, Any] | None = None,
) -> LayerWeights:
    """A conv1d layer from a torch-layout weight ``(out, in, k)``: ``k`` slices like conv2d (an extension).

    weightwatcher 0.7.7 mishandles 3-D weights, so these layers have ``ww_parity=False`` and honest labels
    ``N = max(out, in)``, ``M = min(out, in)`` (no label toggling).

    Example:
        >>> import numpy as np
        >>> lw = conv1d_layer(np.ones((8, 16, 3)), name="c", longname="c", layer_id=1, copy=True)
        >>> lw.matrices.shape, lw.rf, (lw.N, lw.M), lw.ww_parity
        ((3, 16, 8), 3, (16, 8), False)
    """
    out, inp, k = (int(d) for d in weight.shape)
    stack = owned(conv_slices(as_float(weight)[..., None]), weight, copy)
    labels = {"name": name, "longname": longname, "layer_id": layer_id, "module_type": module_type}
    return _conv_layer(
        stack, "conv1d", (max(out, inp), min(out, inp), k), labels, ww_parity=False, extra=extra
    )


def _conv_layer(
    stack: Any,
    kind: str,
    shape: tuple[int, int, int],
    labels: dict[str, Any],
    *,
    ww_parity: bool,
    extra: dict[str, Any] | None,
) -> LayerWeights:
    """A convolution's slices as a layer: weightwatcher's (N, M, rf) ``shape``, the conv scale sqrt(1/2)."""
    n, m, rf = shape
    return LayerWeights(
        kind=kind,
        matrices=stack,
        N=n,
        M=m,
        rf=rf,
        scale=CONV_SCALE,
        ww_parity=ww_parity,
        extra=dict(extra or {}),
        **labels,
    )


def conv2d_labels(out: int, inp: int, kh: int, kw: int) -> tuple[int, int]:
    """weightwatcher 0.7.7's (N, M) labels for a conv weight ``(out, in, kh, kw)``.

    Slices are transposed to tall when ``out < in`` and weightwatcher swaps its N/M labels once per transposed
    slice, so an even number of slices leaves ``N = out < M = in``. With fewer channels than kernel taps
    (``out + in < kh + kw``) it reports ``N = out``, ``M = in`` as they are.

    Example:
        >>> conv2d_labels(8, 16, 3, 3), conv2d_labels(8, 16, 2, 2), conv2d_labels(6, 1, 5, 5)
        ((16, 8), (8, 16), (6, 1))
    """
    if out + inp < kh + kw:
        return out, inp
    if out < inp and (kh * kw) % 2 == 1:
        return inp, out
    return out, inp


def conv_slices(weight: Any) -> Any:
    """The ``(kh*kw, rows, cols)`` stack of slices ``W[:, :, i, j]`` (i over kh, then j), each tall.

    One permute and reshape, plus a transpose when ``out < in``: a view of the weight where possible (no copy of
    the whole layer; `snapshot` copies when asked to). Randomization flattens each slice in C order of this
    logical layout, whatever its strides.

    Example:
        >>> import numpy as np
        >>> w = np.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
        >>> bool((conv_slices(w)[1] == w[:, :, 0, 1].T).all())
        True
    """
    out, inp, kh, kw = (int(d) for d in weight.shape)
    if is_torch_tensor(weight):
        stack = weight.permute(2, 3, 0, 1).reshape(kh * kw, out, inp)
        if out < inp:
            stack = stack.transpose(1, 2)
        return stack
    stack = np.asarray(weight).transpose(2, 3, 0, 1).reshape(kh * kw, out, inp)
    if out < inp:
        stack = stack.transpose(0, 2, 1)
    return stack


def mark_tied(found: list[LayerWeights], ties: Mapping[int, list[str]]) -> list[LayerWeights]:
    """Record shared weights: the first occurrence gets ``extra["tied"]``; the others are dropped.

    The kept layer is analyzed exactly as weightwatcher analyzes it (which analyzes every occurrence), so it
    keeps ``ww_parity``.

    Example:
        >>> mark_tied([], {})
        []
    """
    for index, others in ties.items():
        kept = found[index]
        found[index] = dataclasses.replace(
            kept, extra={**kept.extra, "tied": [*kept.extra.get("tied", []), *others]}
        )
    return found


def as_float(array: Any) -> Any:
    """Half precision to float32 (weightwatcher feeds float32), integers to float64; other floats as they are.

    Example:
        >>> as_float(np.ones(2, dtype=np.float16)).dtype, as_float(np.ones(2, dtype=np.int64)).dtype
        (dtype('float32'), dtype('float64'))
    """
    if is_torch_tensor(array):
        torch = sys.modules["torch"]
        if array.dtype in (torch.float16, torch.bfloat16):
            return array.float()
        if not array.is_floating_point():
            return array.double()
        return array
    dtype = np.dtype(array.dtype)
    if (dtype.kind == "f" and dtype.itemsize < 4) or dtype.name == "bfloat16":
        return array.astype(np.float32)
    if dtype.kind in "iub":
        return array.astype(np.float64)
    return array


def owned(result: Any, source: Any, copy: bool) -> Any:
    """``result`` itself, or a copy of it when ``copy`` and it still shares memory with ``source``.

    Example:
        >>> w = np.ones((3, 2))
        >>> np.shares_memory(owned(w[None], w, copy=True), w), np.shares_memory(owned(w[None], w, copy=False), w)
        (False, True)
    """
    if not copy:
        return result
    if is_torch_tensor(result):
        if is_torch_tensor(source) and _shares_torch_storage(result, source):
            if result.device.type == "cpu":
                # a plain memcpy: torch's clone wakes its thread pool, which costs milliseconds between epochs
                return sys.modules["torch"].from_numpy(result.detach().numpy().copy())
            return result.clone()
        return result
    if isinstance(source, np.ndarray) and np.may_share_memory(result, source):
        return result.copy()
    if not isinstance(source, np.ndarray) and result is source:
        return np.array(result, copy=True)
    return result


def _shares_torch_storage(a: Any, b: Any) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return True


def storage_identity(array: Any) -> tuple[Any, ...] | None:
    """What makes two arrays the same weights: memory address, shape, strides, dtype (None if empty).

    Example:
        >>> w = np.ones((3, 2))
        >>> storage_identity(w) == storage_identity(w[:]), storage_identity(w) == storage_identity(w.copy())
        (True, False)
    """
    if is_torch_tensor(array):
        try:
            if array.numel() == 0:
                return None
            return (
                "torch",
                str(array.device),
                array.data_ptr(),
                tuple(array.shape),
                array.stride(),
                array.dtype,
            )
        except (RuntimeError, NotImplementedError):  # tensor subclasses without plain storage
            return None
    if array.size == 0:
        return None
    address = array.__array_interface__["data"][0]
    return ("numpy", address, array.shape, array.strides, array.dtype.str)


def tensor_version(*tensors: Any) -> tuple[Any, ...] | None:
    """What says that frozen torch tensors have not changed: per tensor, its memory address, shape and version
    counter (every ordinary in-place write, ``load_state_dict`` or ``copy_``, bumps it). None when a tensor
    requires grad: fused optimizers (``AdamW(fused=True)``, the Trainer's default) update parameters without
    bumping the counter, so a trainable weight is never taken as unchanged. None for anything else too.

    Example:
        >>> import torch
        >>> w = torch.zeros(3, 2); before = tensor_version(w)
        >>> _ = w.add_(1); before == tensor_version(w), tensor_version(torch.nn.Parameter(w))
        (False, None)
    """
    out = []
    for tensor in tensors:
        version = getattr(tensor, "_version", None)
        if version is None or not hasattr(tensor, "data_ptr") or getattr(tensor, "requires_grad", True):
            return None
        out.append((int(tensor.data_ptr()), tuple(tensor.shape), int(version)))
    return tuple(out)

"""Snapshot of a Keras 3 model or layer, on any backend (TensorFlow, torch, JAX).

Weights are read through Keras (``keras.ops.convert_to_numpy``), so the matrices are numpy arrays whatever
the backend. keras is imported inside the functions only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from math import prod
from typing import Any

import numpy as np

from .base import LayerWeights
from .builders import conv1d_layer, conv2d_layer, dense_layer, mark_tied

log = logging.getLogger(__name__)


def snapshot_keras(model: Any, *, copy: bool = True) -> list[LayerWeights]:
    """Copy the analyzable weights of a Keras 3 model (or layer) out as `LayerWeights`, in model order.

    The walk goes depth-first through ``model.layers`` (functional and Sequential models, in graph order) and
    through the tracked sublayers of custom layers and subclassed models; ``layer_id`` is the position in that
    walk (the root is 0, every visited layer takes an id), ``longname`` the path of layer names
    (``"encoder/dense_1"``), ``name`` the layer's own name. A layer object met twice is analyzed once.

    * ``Dense``: the kernel ``(in, out)`` as stored, one slice.
    * ``Embedding``: the embeddings ``(input_dim, output_dim)`` as stored.
    * ``Conv2D``: kernel ``(kh, kw, in, out)``, one slice per kernel position, each tall (``max x min``),
      scaled by sqrt(1/2), with weightwatcher's N/M labels: exactly what the torch adapter gives for a
      ``Conv2d`` holding the same weights.
    * ``Conv1D`` (``ww_parity=False``): kernel ``(k, in, out)``, ``k`` tall slices, scaled by sqrt(1/2).
    * ``EinsumDense``, and so ``MultiHeadAttention``'s query/key/value/output projections
      (``ww_parity=False``): the kernel reshaped to 2-D, (contracted input axes) x (output axes), e.g. a query
      kernel ``(d_model, heads, head_dim)`` becomes ``(d_model, heads*head_dim)``.

    Unbuilt and quantized layers are skipped. Matrices are float numpy arrays (half precision becomes float32);
    with ``copy=True`` they never share memory with the backend's variables. A variable shared by two layers
    is analyzed once, at its first layer, with the other paths in ``extra["tied"]``.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(30, name="fc")])
        >>> [(lw.name, lw.matrices.shape) for lw in snapshot_keras(model)]
        [('fc', (1, 20, 30))]
    """
    import keras

    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"snapshot_keras expects a Keras 3 Model or Layer, got {type(model).__name__}")
    found: list[LayerWeights] = []
    owners: dict[int, int] = {}  # id(variable) -> index in found
    ties: dict[int, list[str]] = {}
    used_names: set[str] = set()
    for layer_id, (path, layer) in enumerate(_walk(model, keras)):
        built = _layer_weights(layer, path or layer.name, layer_id, copy, keras)
        if built is None:
            continue
        variable, lw = built
        if lw.longname in used_names:  # two sibling layers with one name: keep paths unique
            lw = dataclasses.replace(lw, longname=_unique(lw.longname, used_names))
        used_names.add(lw.longname)
        if variable is not None and id(variable) in owners:
            ties.setdefault(owners[id(variable)], []).append(lw.longname)
            continue
        if variable is not None:
            owners[id(variable)] = len(found)
        found.append(lw)
    return mark_tied(found, ties)


def einsum_kernel_matrix(kernel: np.ndarray, equation: str) -> np.ndarray | None:
    """An ``EinsumDense`` kernel as a 2-D ``(contracted input axes, output axes)`` matrix, or None.

    None when the equation has a kernel axis that is both an input and an output axis (an elementwise scale,
    not a matrix) or when one side is empty.

    Example:
        >>> k = np.zeros((16, 2, 8))
        >>> einsum_kernel_matrix(k, "abc,cde->abde").shape, einsum_kernel_matrix(k.reshape(2, 8, 16), "abcd,cde->abe").shape
        ((16, 16), (16, 16))
    """
    try:
        inputs, output = equation.replace(" ", "").split("->")
        input_spec, kernel_spec = inputs.split(",")
    except ValueError:
        return None
    if len(kernel_spec) != kernel.ndim:
        return None
    contracted = [i for i, axis in enumerate(kernel_spec) if axis in input_spec and axis not in output]
    produced = [i for i, axis in enumerate(kernel_spec) if axis in output and axis not in input_spec]
    if not contracted or not produced or len(contracted) + len(produced) != kernel.ndim:
        return None
    rows = prod(kernel.shape[i] for i in contracted)
    cols = prod(kernel.shape[i] for i in produced)
    return kernel.transpose(contracted + produced).reshape(rows, cols)


def _walk(root: Any, keras: Any) -> Iterator[tuple[str, Any]]:
    """(path, layer) depth-first from ``root`` (path ""), each layer object once."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield path, layer
        if _kind(layer, keras) is not None:
            continue
        children = [
            (f"{path}/{child.name}" if path else child.name, child) for child in _children(layer, keras)
        ]
        stack.extend(reversed(children))


def _children(layer: Any, keras: Any) -> list[Any]:
    try:
        if isinstance(layer, keras.Model):
            return list(layer.layers)  # graph order for functional models; no InputLayer for Sequential
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # private API moved: fall back to the tracked list
        return list(getattr(layer, "_layers", []) or [])


def _kind(layer: Any, keras: Any) -> str | None:
    layers = keras.layers
    if isinstance(layer, layers.Dense):
        return "dense"
    if isinstance(layer, layers.EinsumDense):
        return "einsum"
    if isinstance(layer, layers.Conv2D):
        return "conv2d"
    if isinstance(layer, layers.Conv1D):
        return "conv1d"
    if isinstance(layer, layers.Embedding):
        return "embedding"
    return None


def _layer_weights(
    layer: Any, longname: str, layer_id: int, copy: bool, keras: Any
) -> tuple[Any, LayerWeights] | None:
    """(the variable, for tie detection, or None; the layer's `LayerWeights`), or None when not analyzable."""
    kind = _kind(layer, keras)
    if kind is None:
        if not getattr(layer, "_layers", None) and getattr(layer, "weights", None):
            log.debug("%s (%s) skipped: not a layer type analyzed", longname, type(layer).__name__)
        return None
    if getattr(layer, "quantization_mode", None):
        log.debug("%s skipped: quantized (%s)", longname, layer.quantization_mode)
        return None
    try:
        variable = layer.embeddings if kind == "embedding" else layer.kernel
        array = np.asarray(keras.ops.convert_to_numpy(variable))
    except Exception as err:  # unbuilt layer (AttributeError) or an unreadable variable
        log.debug("%s skipped: weights not readable (%s)", longname, err)
        return None
    if np.dtype(array.dtype).kind not in "f" and np.dtype(array.dtype).name != "bfloat16":
        log.debug("%s skipped: dtype %s", longname, array.dtype)
        return None
    common = {
        "name": layer.name,
        "longname": longname,
        "layer_id": layer_id,
        "copy": copy,
        "module_type": type(layer).__name__,
        "extra": {"module_class": type(layer), "version": _frozen_fingerprint(layer, array)},
    }
    lw: LayerWeights | None = None
    if kind in ("dense", "embedding") and array.ndim == 2:
        lw = dense_layer(array, kind=kind, **common)
    elif kind == "einsum":
        matrix = einsum_kernel_matrix(array, getattr(layer, "equation", ""))
        if matrix is not None:
            lw = dense_layer(matrix, ww_parity=False, **common)
    elif kind == "conv2d" and array.ndim == 4:
        kh, kw, inp, out = array.shape
        # The torch layout gives the torch adapter's slices and labels. weightwatcher's Keras reader labels
        # the (kh + kw >= in + out) case differently (N = in, M = out): no parity there.
        torch_layout = array.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        lw = conv2d_layer(torch_layout, ww_parity=kh + kw < inp + out, **common)
    elif kind == "conv1d" and array.ndim == 3:
        lw = conv1d_layer(array.transpose(2, 1, 0), **common)  # (k, in, out) -> (out, in, k)
    if lw is None:
        log.debug("%s (%s) skipped: %d-D weight", longname, type(layer).__name__, array.ndim)
        return None
    return (variable if isinstance(variable, keras.Variable) else None), lw


def _frozen_fingerprint(layer: Any, array: np.ndarray) -> bytes | None:
    """What says that a frozen layer's weights have not changed since the last analysis: Keras variables have no
    version counter, so a fingerprint of the values (far cheaper than their eigenvalues). Only for layers without
    trainable weights (``trainable=False``, a frozen base), as torch's snapshot does: trainable weights change at
    every step, and hashing them would only add to every analysis (a LoRA layer's adapters are trainable: its
    effective kernel changes too)."""
    if layer.trainable_weights:
        return None
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def _unique(name: str, used: set[str]) -> str:
    n = 1
    while f"{name}_{n}" in used:
        n += 1
    return f"{name}_{n}"

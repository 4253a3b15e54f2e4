"""Snapshot of a ``torch.nn.Module``: weightwatcher 0.7.7's layer selection, plus a few marked extensions.

torch is imported inside the functions only, so importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .._util import is_keras_layer
from .base import LayerWeights
from .builders import conv1d_layer, conv2d_layer, dense_layer, mark_tied, storage_identity

log = logging.getLogger(__name__)

#: Builds one `LayerWeights` from a detached weight tensor (see `ww_callbacks.layers.mapping`).
_Builder = Callable[..., LayerWeights]


def snapshot_torch(module: Any, *, copy: bool = True) -> list[LayerWeights]:
    """Copy the analyzable weights of a ``torch.nn.Module`` out as `LayerWeights`, in ``named_modules()`` order.

    Selection and ids follow weightwatcher 0.7.7: every module of ``named_modules()`` gets an id (root = 0,
    containers and skipped modules included); ``name`` is the last component of the dotted path. Types are
    detected as weightwatcher does (``isinstance`` or a substring of the lowercase class path, first match
    wins): Linear (and any ``*linear*`` class, e.g. attention's ``out_proj``) is dense; HF ``Conv1D`` (GPT-2)
    is dense-like with kind ``"conv1d"``; ``Conv2d`` gives ``kh*kw`` slices scaled by sqrt(1/2), with
    weightwatcher's N/M labels; Embedding is as stored. Norms, ``ConvTranspose``, ``Conv3d``, RNNs and
    ``Bilinear`` are skipped (a ``logging`` debug line says so).

    Extensions (``ww_parity=False``): ``nn.MultiheadAttention``'s input projection becomes three dense layers
    ``<path>.q_proj``, ``.k_proj``, ``.v_proj`` (sharing the attention module's id); ``nn.Conv1d`` gives ``k``
    slices like ``Conv2d``; a weight shared by several modules (tied embeddings) is kept once, at its first
    occurrence, with the other paths in ``extra["tied"]``.

    Wrappers add nothing: a ``torch.compile``d module (``_orig_mod``), ``DistributedDataParallel`` and
    ``DataParallel`` (``module``), at the root or anywhere inside, are walked as the module they wrap, so names
    and ids are those of the user's module.

    Tensors stay on their device; half precision becomes float32. With ``copy=True`` the matrices own their
    memory, so training may go on while they are analyzed. The ``min_evals``/``max_evals``/``max_N`` limits are
    applied by the analysis, not here.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 10))
        >>> [(lw.layer_id, lw.name, tuple(lw.matrices.shape)) for lw in snapshot_torch(net)]
        [(1, '0', (1, 30, 20)), (3, '2', (1, 10, 30))]
    """
    import torch

    if is_keras_layer(module):  # on Keras' torch backend, Keras layers are torch modules too
        from .keras import snapshot_keras

        return snapshot_keras(module, copy=copy)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"snapshot_torch expects a torch.nn.Module, got {type(module).__name__}")
    found: list[LayerWeights] = []
    owners: dict[tuple[Any, ...], int] = {}  # weight storage -> index in found
    ties: dict[int, list[str]] = {}
    for layer_id, (path, mod) in enumerate(_named_modules(module, torch)):
        # weightwatcher names a root module that is itself a layer (a bare Linear) by its class name.
        longname = path or type(mod).__name__
        for suffix, weight, build, parity in _entries(mod, longname, torch):
            full = longname + suffix
            identity = storage_identity(weight)
            if identity is not None and identity in owners:
                ties.setdefault(owners[identity], []).append(full)
                continue
            layer = build(
                weight,
                name=full.rsplit(".", 1)[-1],
                longname=full,
                layer_id=layer_id,
                copy=copy,
                module_type=type(mod).__name__,
                extra={"module_class": type(mod)},
            )
            if not parity:
                layer = _without_parity(layer)
            if identity is not None:
                owners[identity] = len(found)
            found.append(layer)
    return mark_tied(found, ties)


def _unwrapped(module: Any, torch: Any) -> Any:
    """The user's module inside ``torch.compile`` / DDP / DataParallel wrappers (any nesting)."""
    while True:
        eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # imported once torch.compile ran
        if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
            module = module._orig_mod
        elif isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        else:
            return module


def _named_modules(module: Any, torch: Any) -> Iterator[tuple[str, Any]]:
    """``named_modules()`` (same order, shared modules once) of the module with its wrappers left out."""
    seen: set[int] = set()
    stack = [("", module)]
    while stack:
        path, mod = stack.pop()
        mod = _unwrapped(mod, torch)
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        yield path, mod
        children = [(f"{path}.{name}" if path else name, child) for name, child in mod._modules.items()]
        stack.extend(reversed([(p, c) for p, c in children if c is not None]))


def ww_layer_kind(module: Any) -> str | None:
    """weightwatcher 0.7.7's type for a torch module: dense, conv1d, conv2d, embedding, norm, or None.

    Example:
        >>> import torch
        >>> ww_layer_kind(torch.nn.Linear(2, 3)), ww_layer_kind(torch.nn.LayerNorm(3)), ww_layer_kind(torch.nn.ReLU())
        ('dense', 'norm', None)
    """
    import torch

    nn = torch.nn
    # weightwatcher matches substrings of str(type(module)), which includes the module path.
    typestr = str(type(module)).lower()
    if isinstance(module, nn.Linear) or "linear" in typestr:
        return "dense"
    if isinstance(module, nn.Conv1d) or "conv1d" in typestr:
        return "conv1d"
    if isinstance(module, nn.Conv2d) or "conv2d" in typestr:
        return "conv2d"
    if isinstance(module, nn.Embedding) or "embedding" in typestr:
        return "embedding"
    if "norm" in typestr:
        return "norm"
    return None


def _entries(mod: Any, longname: str, torch: Any) -> list[tuple[str, Any, _Builder, bool]]:
    """(path suffix, detached weight, builder, ww_parity) for each layer module ``mod`` contributes."""
    kind = ww_layer_kind(mod)
    if kind is None:
        if isinstance(mod, torch.nn.MultiheadAttention):
            return _attention_entries(mod)
        if next(iter(mod.parameters(recurse=False)), None) is not None:
            log.debug(
                "%s (%s) skipped: not a layer type weightwatcher analyzes", longname, type(mod).__name__
            )
        return []
    if kind == "norm":
        log.debug("%s (%s) skipped: normalization layer", longname, type(mod).__name__)
        return []
    weight = _weight_of(mod, torch)
    if weight is None:
        if hasattr(mod, "weight"):
            log.debug("%s (%s) skipped: no readable weight", longname, type(mod).__name__)
        return []
    ndim = weight.ndim
    if kind in ("dense", "embedding") and ndim == 2:
        return [("", weight, functools.partial(dense_layer, kind=kind), True)]
    if kind == "conv1d" and ndim == 2:  # HF transformers Conv1D: a dense layer stored (in, out)
        return [("", weight, functools.partial(dense_layer, kind="conv1d"), True)]
    if kind == "conv1d" and ndim == 3:  # torch Conv1d (out, in, k); weightwatcher mishandles it
        return [("", weight, conv1d_layer, False)]
    if kind == "conv2d" and ndim == 4:
        return [("", weight, conv2d_layer, True)]
    log.debug("%s (%s) skipped: %s with a %d-D weight", longname, type(mod).__name__, kind, ndim)
    return []


def _attention_entries(mod: Any) -> list[tuple[str, Any, _Builder, bool]]:
    """Query, key and value projections of ``nn.MultiheadAttention`` (weightwatcher ignores them)."""
    if getattr(mod, "_qkv_same_embed_dim", True) and mod.in_proj_weight is not None:
        weights = list(mod.in_proj_weight.detach().chunk(3, dim=0))
    else:
        weights = [mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight]
        weights = [w.detach() if w is not None else None for w in weights]
    return [
        (f".{proj}", w, dense_layer, False)
        for proj, w in zip(("q_proj", "k_proj", "v_proj"), weights, strict=True)
        if w is not None and w.ndim == 2
    ]


def _weight_of(mod: Any, torch: Any) -> Any:
    """The module's ``weight`` detached, or None when it is missing, not materialized or not a real tensor."""
    try:
        weight = getattr(mod, "weight", None)
    except Exception:  # a parametrization or property that fails to compute: skip, never break training
        return None
    if not isinstance(weight, torch.Tensor) or torch.nn.parameter.is_lazy(weight):
        return None
    if weight.layout != torch.strided or weight.is_complex() or weight.is_quantized or weight.is_meta:
        return None
    return weight.detach()


def _without_parity(layer: LayerWeights) -> LayerWeights:
    return dataclasses.replace(layer, ww_parity=False)

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

from ..spectral.frameworks import is_dtensor, is_keras_layer
from .base import LayerWeights
from .builders import conv1d_layer, conv2d_layer, dense_layer, mark_tied, storage_identity, tensor_version

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

    Sharded weights: a DTensor weight (FSDP2 ``fully_shard``, tensor parallel) is never read as its local shard.
    Its layer is built on a ``meta`` tensor of the full shape (so names, N, M and slices are known without any
    communication), with ``extra["gather"]``: a callable that gathers the full weight (``full_tensor()``, a
    collective: every rank of the mesh must call it, in the same order) and returns the real ``matrices``;
    `ww_callbacks.analyze` and the callbacks do that one layer at a time. FSDP1 (``FullyShardedDataParallel``)
    and DeepSpeed ZeRO-3 parameters raise ``TypeError``.

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
    _refuse_unsupported_sharding(module, torch)
    found: list[LayerWeights] = []
    owners: dict[tuple[Any, ...], int] = {}  # weight storage -> index in found
    ties: dict[int, list[str]] = {}
    for layer_id, (path, mod) in enumerate(_named_modules(module, torch)):
        # weightwatcher names a root module that is itself a layer (a bare Linear) by its class name.
        longname = path or type(mod).__name__
        module_class = _unsharded_class(mod, torch)
        # the detached weight shares the parameter's version counter; trainable modules get no version
        frozen = not any(p.requires_grad for p in mod.parameters(recurse=False))
        for suffix, weight, build, parity in _entries(mod, longname, torch):
            version = tensor_version(weight) if frozen else None
            full = longname + suffix
            identity = _identity(weight)
            if identity is not None and identity in owners:
                ties.setdefault(owners[identity], []).append(full)
                continue
            make = functools.partial(
                build,
                name=full.rsplit(".", 1)[-1],
                longname=full,
                layer_id=layer_id,
                module_type=module_class.__name__,
                extra={"module_class": module_class, "version": version},
            )
            layer = _sharded_layer(weight, make, torch) if _is_sharded(weight) else make(weight, copy=copy)
            if not parity:
                layer = _without_parity(layer)
            if identity is not None:
                owners[identity] = len(found)
            found.append(layer)
    return mark_tied(found, ties)


def module_ids(module: Any) -> dict[str, int]:
    """weightwatcher's layer id of every module path of ``module``: its position in ``named_modules()`` (the root
    is 0, containers count), wrappers left out, as `snapshot_torch` numbers them.

    Example:
        >>> import torch
        >>> module_ids(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
        {'': 0, '0': 1, '1': 2}
    """
    import torch

    return {path: layer_id for layer_id, (path, _) in enumerate(_named_modules(module, torch))}


def modules_by_path(module: Any) -> dict[str, Any]:
    """Every module of ``module`` by its path, wrappers left out (the names `snapshot_torch` gives layers).

    Example:
        >>> import torch
        >>> list(modules_by_path(torch.nn.Sequential(torch.nn.Linear(2, 3))))
        ['', '0']
    """
    import torch

    return dict(_named_modules(module, torch))


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
        if is_dtensor(mod.in_proj_weight):
            return [
                (f".{proj}", _ShardedPart(mod.in_proj_weight.detach(), i), dense_layer, False)
                for i, proj in enumerate(("q_proj", "k_proj", "v_proj"))
            ]
        weights = list(mod.in_proj_weight.detach().chunk(3, dim=0))
    else:
        weights = [mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight]
        weights = [
            None if w is None else _ShardedPart(w.detach()) if is_dtensor(w) else w.detach() for w in weights
        ]
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
    if is_dtensor(weight):
        return _ShardedPart(weight.detach()) if weight.ndim >= 2 and not weight.is_complex() else None
    if weight.layout != torch.strided or weight.is_complex() or weight.is_quantized or weight.is_meta:
        return None
    return weight.detach()


def _without_parity(layer: LayerWeights) -> LayerWeights:
    return dataclasses.replace(layer, ww_parity=False)


# ---------------------------------------------------------------------------------------------- sharded weights
class _ShardedPart:
    """A lazily gathered weight: ``part`` (None, or the index of an attention projection) of a DTensor."""

    def __init__(self, dtensor: Any, part: int | None = None) -> None:
        self.dtensor, self.part = dtensor, part

    @property
    def ndim(self) -> int:
        return int(self.dtensor.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.dtensor.shape)
        return shape if self.part is None else (shape[0] // 3, *shape[1:])

    def meta(self, torch: Any) -> Any:
        """A ``meta`` tensor of the gathered part's shape and dtype: builds the layer without any data."""
        return torch.empty(self.shape, dtype=self.dtensor.dtype, device="meta")

    def gather(self) -> Any:
        """The full weight, as a plain tensor on this rank (a collective over the DTensor's mesh)."""
        full = self.dtensor.full_tensor()
        return full if self.part is None else full.chunk(3, dim=0)[self.part]


class _Gather:
    """``extra["gather"]`` of a sharded layer: gathers the weight and returns the layer's real ``matrices``."""

    def __init__(self, source: _ShardedPart, make: Callable[..., LayerWeights]) -> None:
        self._source, self._make = source, make

    def __call__(self) -> Any:
        return self._make(self._source.gather(), copy=False).matrices  # the gathered tensor is ours already


def _is_sharded(weight: Any) -> bool:
    return isinstance(weight, _ShardedPart)


def _sharded_layer(weight: _ShardedPart, make: Callable[..., LayerWeights], torch: Any) -> LayerWeights:
    layer = make(weight.meta(torch), copy=False)
    return dataclasses.replace(layer, extra={**layer.extra, "gather": _Gather(weight, make)})


def _identity(weight: Any) -> tuple[Any, ...] | None:
    """`storage_identity`, through the local shard for a sharded weight (tied DTensors share it)."""
    if _is_sharded(weight):
        local = storage_identity(weight.dtensor.to_local())
        return None if local is None else ("sharded", weight.part, *local)
    return storage_identity(weight)


def _unsharded_class(mod: Any, torch: Any) -> type:
    """The module's own class: FSDP2 swaps in a subclass (``FSDPLinear``) that names would otherwise show."""
    fsdp_module = getattr(getattr(torch.distributed, "fsdp", None), "FSDPModule", None)
    cls = type(mod)
    if fsdp_module is not None and isinstance(mod, fsdp_module):
        for base in cls.__mro__[1:]:
            if base is not fsdp_module and issubclass(base, torch.nn.Module):
                return base
    return cls


def _refuse_unsupported_sharding(module: Any, torch: Any) -> None:
    """FSDP1 and DeepSpeed ZeRO-3 hold flat local shards: analyzing them as layers would be silently wrong."""
    fsdp1 = getattr(getattr(torch.distributed, "fsdp", None), "FullyShardedDataParallel", None)
    for mod in module.modules():
        if fsdp1 is not None and isinstance(mod, fsdp1):
            raise TypeError(
                "weights sharded by FSDP1 (FullyShardedDataParallel, Lightning's FSDPStrategy) are not supported: "
                "use FSDP2 (torch.distributed.fsdp.fully_shard, Lightning's ModelParallelStrategy)"
            )
        for param in mod.parameters(recurse=False):
            if hasattr(param, "ds_id"):
                raise TypeError(
                    "weights partitioned by DeepSpeed ZeRO-3 are not supported (each rank holds only a shard); "
                    "use ZeRO stage 1 or 2, or FSDP2"
                )

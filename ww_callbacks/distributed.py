"""The analysis shared by the processes of a distributed run: layer shares, sharded layers, merged results.

Every rank calls `analyze_shared` with the same layers (its own snapshot of the same model) at the same time:

1. the ranks check that they see the same layers (one ``all_gather_object``);
2. each layer gets an owner: a deterministic greedy assignment (largest cost first, to the least loaded rank;
   cost ~ ``rf * min(M, N)^2 * max(M, N)``, the eigenvalue work of its slices), or rank 0 for everything when
   ``shard=False`` or when the shuffles come from a legacy ``RandomState`` (drawn in weightwatcher's order);
3. each layer's shuffles come from its own child generator (`ww_callbacks.spectral.layer.layer_rngs`), so a
   layer's numbers do not depend on which rank analyzes it: the merged report equals the single-process one;
4. sharded layers (DTensor weights, see `ww_callbacks.layers.torch.snapshot_torch`) are gathered one at a time,
   in rounds that every rank walks in the same order (``full_tensor()`` is a collective): in each round every
   rank gathers the layers of that round, keeps its own and analyzes it; no rank ever holds the whole model;
5. the per-layer results are exchanged (``all_gather_object``) and merged in layer order on every rank.

For background analysis the same work is split in two: `share_layers` (the collective part, at the analysis
point: agree, assign, gather this rank's sharded layers) and `merge_shares` (a collective at a later point that
every rank reaches), with the analysis of this rank's share in between, on its worker thread.

This module is also the package's one home for ``torch.distributed`` checks: `process_group`, `broadcast`,
`any_process`. torch is imported lazily.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.layers import snapshot
    >>> layers = snapshot({"a.weight": np.ones((40, 30)), "b.weight": np.ones((90, 60))})
    >>> assign_layers(layers, world_size=2), [layer_cost(lw) for lw in layers]
    ([1, 0], [36000, 324000])
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .layers import LayerWeights
from .spectral.layer import analyze_layer, analyze_layers, analyze_with_generators, layer_result, layer_rngs
from .spectral.options import AnalysisOptions
from .spectral.report import STATUS_ERROR, LayerResult

log = logging.getLogger(__name__)

__all__ = [
    "Collective",
    "LocalShare",
    "StrategyCollective",
    "TorchCollective",
    "analyze_shared",
    "any_process",
    "assign_layers",
    "broadcast",
    "has_sharded_layers",
    "layer_cost",
    "merge_shares",
    "process_group",
    "refuse_unsupported_strategy",
    "share_layers",
]


def process_group() -> Any:
    """``torch.distributed`` when a process group of more than one process is initialized, else None.

    Never imports torch: without ``torch.distributed`` in ``sys.modules`` there can be no process group.

    Example:
        >>> process_group() is None
        True
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def broadcast(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` on every process (``obj`` itself without a process group).

    Example:
        >>> broadcast({"seed": 3})
        {'seed': 3}
    """
    dist = process_group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_process(flag: bool, device: Any = None) -> bool:
    """True on every process when ``flag`` is true on any (``all_reduce`` MAX; on ``device`` for NCCL).

    Example:
        >>> any_process(True), any_process(False)
        (True, False)
    """
    dist = process_group()
    if dist is None:
        return bool(flag)
    import torch

    value = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@runtime_checkable
class Collective(Protocol):
    """What the shared analysis needs from a process group: this rank, the world size, ``all_gather_object``."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        ...


class TorchCollective:
    """`Collective` over a ``torch.distributed`` process group (default: the whole world).

    Example::

        torch.distributed.init_process_group("gloo")
        ww_callbacks.analyze(model, collective=TorchCollective())
    """

    def __init__(self, group: Any = None) -> None:
        dist = sys.modules.get("torch.distributed")
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialized: call init_process_group first")
        self.group = group
        self.rank = int(dist.get_rank(group))
        self.world_size = int(dist.get_world_size(group))

    def all_gather_object(self, obj: Any) -> list[Any]:
        dist = sys.modules["torch.distributed"]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


class StrategyCollective:
    """`Collective` of a training framework's processes: torch.distributed's group when one is initialized, else
    the framework's own ``broadcast(obj, src=rank)`` from each rank in turn (Lightning strategies).

    Example:
        >>> StrategyCollective(0, 1, lambda obj, src: obj).all_gather_object("x")
        ['x']
    """

    def __init__(self, rank: int, world_size: int, broadcast: Any) -> None:
        self.rank, self.world_size = int(rank), int(world_size)
        self._broadcast = broadcast

    def all_gather_object(self, obj: Any) -> list[Any]:
        dist = process_group()
        if dist is not None:
            out: list[Any] = [None] * self.world_size
            dist.all_gather_object(out, obj)
            return out
        return [self._broadcast(obj, src=rank) for rank in range(self.world_size)]


def layer_cost(lw: LayerWeights) -> int:
    """Rough cost of analyzing ``lw``: ``min^2 * max`` flops per slice (Gram matrix and eigenvalues), summed.

    Example:
        >>> from ww_callbacks.layers import snapshot
        >>> layer_cost(snapshot({"fc.weight": np.ones((100, 10))})[0])
        10000
    """
    shape = tuple(int(d) for d in lw.matrices.shape)
    rows, cols = shape[-2:]
    slices = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return slices * min(rows, cols) ** 2 * max(rows, cols)


def assign_layers(layers: Sequence[LayerWeights], world_size: int) -> list[int]:
    """The rank that analyzes each layer: largest cost first, each to the least loaded rank (ties: the lower
    layer index, the lower rank). Deterministic: every rank computes the same assignment.

    Example:
        >>> from ww_callbacks.layers import snapshot
        >>> sizes = {"a.weight": np.ones((50, 50)), "b.weight": np.ones((40, 40)), "c.weight": np.ones((30, 30))}
        >>> assign_layers(snapshot(sizes), world_size=2)
        [0, 1, 1]
    """
    loads = [0] * max(1, int(world_size))
    owners = [0] * len(layers)
    for index in _largest_first(layers):
        rank = min(range(len(loads)), key=lambda r: (loads[r], r))
        owners[index] = rank
        loads[rank] += layer_cost(layers[index])
    return owners


def has_sharded_layers(layers: Sequence[LayerWeights]) -> bool:
    """True when some layer is a sharded placeholder that must be gathered (collectively) before its analysis.

    Example:
        >>> from ww_callbacks.layers import snapshot
        >>> has_sharded_layers(snapshot({"fc.weight": np.ones((20, 10))}))
        False
    """
    return any(_needs_gather(lw) for lw in layers)


def analyze_shared(
    layers: Sequence[LayerWeights] | None,
    *,
    rng: np.random.Generator | np.random.RandomState,
    opts: AnalysisOptions,
    collective: Collective,
    shard: bool = True,
    n_jobs: int | None = None,
) -> tuple[list[LayerResult], float]:
    """Analyze ``layers`` together with the other ranks: (every layer's result in order, the slowest rank's
    seconds), the same on every rank. A collective: every rank must call it at the same point.

    ``layers=None`` says this rank could not take its snapshot; then every rank raises ``RuntimeError`` (as do
    all of them when the ranks see different layers), so none is left waiting.

    Example::

        results, seconds = analyze_shared(snapshot(model), rng=np.random.default_rng(0),
                                          opts=AnalysisOptions(), collective=TorchCollective())
    """
    start = time.perf_counter()
    owners, legacy = _plan(layers, rng, collective, shard)
    assert layers is not None  # _plan raised otherwise
    rank = collective.rank
    if not has_sharded_layers(layers):
        mine = [i for i, owner in enumerate(owners) if owner == rank]
        if legacy:  # everything on rank 0, one layer after another
            local = analyze_layers(layers, rng=rng, opts=opts) if mine else []
        else:
            rngs = layer_rngs(rng, layers)
            local = analyze_with_generators(
                [layers[i] for i in mine], [rngs[i] for i in mine], opts=opts, n_jobs=n_jobs
            )
        results = dict(zip(mine, local, strict=True))
    else:
        rngs = layer_rngs(rng, layers)
        results = {}

        def analyze_own(index: int, layer: LayerWeights | LayerResult) -> None:
            # a failed gather is already a result; the gathered copy is analyzed at once (one held at a time)
            if isinstance(layer, LayerResult):
                results[index] = layer
            else:
                results[index] = analyze_layer(layer, rng=rngs[index], opts=opts)

        _walk_rounds(layers, owners, rank, analyze_own, in_order=legacy or not shard)
    return merge_shares(results, time.perf_counter() - start, collective=collective, total=len(layers))


def _plan(
    layers: Sequence[LayerWeights] | None, rng: Any, collective: Collective, shard: bool
) -> tuple[list[int], bool]:
    """(each layer's owner, whether the shuffles come from a legacy RandomState); every rank agrees."""
    _agree_on_layers(layers, collective)
    assert layers is not None  # _agree_on_layers raised otherwise
    legacy = isinstance(rng, np.random.RandomState)
    one_rank = legacy or not shard or collective.world_size == 1
    owners = [0] * len(layers) if one_rank else assign_layers(layers, collective.world_size)
    log.debug(
        "rank %d analyzes layers %s",
        collective.rank,
        [i for i, owner in enumerate(owners) if owner == collective.rank],
    )
    return owners, legacy


@dataclass
class LocalShare:
    """This rank's part of a shared analysis, ready for a worker: its layers (own copies), their generators,
    and the results known already (gathers that failed). `analyze` runs the part; `merge_shares` joins the parts.

    Example:
        >>> LocalShare(total=0).analyze(AnalysisOptions())
        {}
    """

    total: int
    indices: list[int] = field(default_factory=list)
    layers: list[LayerWeights] = field(default_factory=list)
    generators: list[Any] = field(default_factory=list)
    known: dict[int, LayerResult] = field(default_factory=dict)

    def analyze(self, opts: AnalysisOptions, n_jobs: int | None = None) -> dict[int, LayerResult]:
        """This rank's results, by layer index (no collective: safe on a worker thread)."""
        local = analyze_with_generators(self.layers, self.generators, opts=opts, n_jobs=n_jobs)
        return {**self.known, **dict(zip(self.indices, local, strict=True))}


def share_layers(
    layers: Sequence[LayerWeights] | None,
    *,
    rng: np.random.Generator,
    collective: Collective,
    shard: bool = True,
    copy: Any = None,
) -> LocalShare:
    """The collective first half of a background analysis: agree on the layers, assign them, and gather this
    rank's sharded layers (every rank takes part in every gather). ``copy`` (a function of a layer) makes the
    copies a worker may read while training goes on; gathered layers are this rank's own already.

    Example::

        share = share_layers(snapshot(model), rng=rng, collective=TorchCollective())   # all ranks, now
        part = share.analyze(opts)                                                      # each rank, later
        results, seconds = merge_shares(part, 0.0, collective=collective, total=share.total)  # all ranks
    """
    owners, _ = _plan(layers, rng, collective, shard)
    assert layers is not None
    share = LocalShare(total=len(layers))
    rngs = layer_rngs(rng, layers)

    def keep(index: int, layer: LayerWeights | LayerResult) -> None:
        if isinstance(layer, LayerResult):
            share.known[index] = layer
            return
        own = layer if copy is None or layer.extra.get("disposable") else copy(layer)
        share.indices.append(index)
        share.layers.append(own)
        share.generators.append(rngs[index])

    _walk_rounds(layers, owners, collective.rank, keep, in_order=not shard)
    return share


def merge_shares(
    part: dict[int, LayerResult], seconds: float, *, collective: Collective, total: int
) -> tuple[list[LayerResult], float]:
    """Every rank's results in layer order and the slowest rank's seconds, on every rank (a collective)."""
    parts = collective.all_gather_object((part, seconds))
    merged: dict[int, LayerResult] = {}
    for piece, _ in parts:
        merged.update(piece)
    return [merged[i] for i in range(total)], max(elapsed for _, elapsed in parts)


def _agree_on_layers(layers: Sequence[LayerWeights] | None, collective: Collective) -> None:
    mine = None if layers is None else [(lw.longname, tuple(lw.matrices.shape)) for lw in layers]
    seen = collective.all_gather_object(mine)
    failed = [rank for rank, found in enumerate(seen) if found is None]
    if failed:
        raise RuntimeError(f"the snapshot of the weights failed on rank(s) {failed}")
    differ = [rank for rank, found in enumerate(seen) if found != seen[0]]
    if differ:
        raise RuntimeError(
            f"rank(s) {differ} see other layers than rank 0: analyze the same model everywhere"
        )


def _largest_first(layers: Sequence[LayerWeights]) -> list[int]:
    return sorted(range(len(layers)), key=lambda i: (-layer_cost(layers[i]), i))


def _rounds(layers: Sequence[LayerWeights], owners: list[int], in_order: bool) -> list[list[int]]:
    """Groups of layers, at most one per rank, that every rank walks in the same order."""
    if in_order:
        return [[i] for i in range(len(layers))]
    queues: dict[int, list[int]] = {}
    for index in _largest_first(layers):  # each rank's layers, largest first: a round's layers cost alike
        queues.setdefault(owners[index], []).append(index)
    depth = max((len(q) for q in queues.values()), default=0)
    return [[q[k] for _, q in sorted(queues.items()) if k < len(q)] for k in range(depth)]


def _walk_rounds(
    layers: Sequence[LayerWeights],
    owners: list[int],
    rank: int,
    use: Any,
    *,
    in_order: bool,
) -> None:
    """Hand this rank's layers to ``use(index, layer)`` (a `LayerResult` when its gather failed), gathering the
    sharded layers of each round on every rank (keeping only this rank's): at most one gathered layer is held
    at a time here, besides what ``use`` keeps."""
    for group in _rounds(layers, owners, in_order):
        own: tuple[int, LayerWeights | LayerResult] | None = None
        for index in group:
            layer: LayerWeights | LayerResult = layers[index]
            if isinstance(layer, LayerWeights) and _needs_gather(layer):
                try:
                    layer = _gathered(layer)  # every rank takes part, even if not the owner
                except Exception as exc:
                    layer = _gather_failed(layers[index], exc)
            if owners[index] == rank:
                own = (index, layer)
            del layer
        if own is not None:
            use(*own)
        del own


def _needs_gather(lw: LayerWeights) -> bool:
    return "gather" in lw.extra


def _gathered(lw: LayerWeights) -> LayerWeights:
    """The placeholder ``lw`` with the gathered matrices (its labels, parity and ties stay as they are); they are
    this rank's own copy, which the analysis may shuffle in place (``disposable``: one float32 layer less)."""
    extra = {k: v for k, v in lw.extra.items() if k != "gather"}
    extra["disposable"] = True
    return dataclasses.replace(lw, matrices=lw.extra["gather"](), extra=extra)


def _gather_failed(lw: LayerWeights, exc: Exception) -> LayerResult:
    res = layer_result(lw)
    res.status, res.reason = STATUS_ERROR, f"gathering the sharded weight failed: {type(exc).__name__}: {exc}"
    return res


def refuse_unsupported_strategy(strategy: Any) -> None:
    """A Lightning strategy whose ranks hold flat local shards the analysis cannot gather (FSDP1, DeepSpeed
    ZeRO-3): a ``ValueError`` before training starts. Known by its class name: no Lightning import here."""
    name = type(strategy).__name__
    if name == "FSDPStrategy":
        raise ValueError(
            "WeightWatcherCallback does not support FSDPStrategy (FSDP1: flat sharded parameters); use "
            "ModelParallelStrategy with torch.distributed.fsdp.fully_shard (FSDP2) in configure_model"
        )
    if name == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False):
        raise ValueError(
            "WeightWatcherCallback does not support DeepSpeedStrategy with ZeRO stage 3 (partitioned "
            "parameters); use stage 1 or 2, or ModelParallelStrategy (FSDP2)"
        )

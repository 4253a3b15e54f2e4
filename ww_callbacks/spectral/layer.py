"""The per-layer pipeline: `LayerWeights` -> `LayerResult`, and the loop over layers."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import esd
from ._threads import AnalysisThreads
from .catalog import METRICS
from .marchenko_pastur import fit_marchenko_pastur
from .metrics import esd_statistics, jensen_shannon_distance, norm_metrics
from .options import AnalysisOptions
from .powerlaw import fit_power_law
from .report import (
    STATUS_ERROR,
    STATUS_FAILED,
    STATUS_NON_FINITE,
    STATUS_TOO_LARGE,
    STATUS_TOO_SMALL,
    STATUS_ZERO,
    LayerResult,
)
from .weights import LayerWeights

log = logging.getLogger(__name__)

_DEFAULT_OPTIONS = AnalysisOptions()

#: Below this many eigenvalues weightwatcher pools 5 shuffled replicas for max_rand_eval and the random MP fit.
FEW_EVALS = 100
REPLICAS_FEW_EVALS = 5
#: Thresholds of weightwatcher's over-/under-trained warning: the healthy alpha range of the metric table.
OVER_TRAINED, UNDER_TRAINED = METRICS["alpha"].healthy or (2.0, 6.0)


def _size_status(lw: LayerWeights, opts: AnalysisOptions) -> tuple[str, str] | None:
    n = lw.num_evals
    if opts.min_evals and n < opts.min_evals:
        return STATUS_TOO_SMALL, f"{n} eigenvalues, fewer than min_evals={opts.min_evals}"
    if opts.max_evals and n > opts.max_evals:
        return STATUS_TOO_LARGE, f"{n} eigenvalues, more than max_evals={opts.max_evals}"
    if opts.max_N and lw.N > opts.max_N:
        return STATUS_TOO_LARGE, f"N={lw.N} is larger than max_N={opts.max_N}"
    return None


def _warning(alpha: float) -> str:
    if alpha < OVER_TRAINED:
        return "over-trained"
    if alpha > UNDER_TRAINED:
        return "under-trained"
    return ""


def _top(slice_evals: np.ndarray, rank: int | None) -> np.ndarray:
    """The ``rank`` largest eigenvalues of each slice (all without a rank), ascending."""
    if not rank or rank >= slice_evals.shape[-1]:
        return slice_evals
    return np.sort(slice_evals, axis=-1)[..., -rank:]


def _pooled(slice_evals: np.ndarray, draws: int) -> np.ndarray:
    """Sorted pooled ESD of each of ``draws`` consecutive groups of slices: ``(draws, rf*k)``."""
    return np.sort(slice_evals.reshape(draws, -1), axis=1)


def _random_esds(lw: LayerWeights, rng: Any, opts: AnalysisOptions) -> tuple[np.ndarray | None, np.ndarray]:
    """Shuffled ESDs: (replicas pooled for max_rand_eval and the trap count, or None without ``traps``;
    ``(n_random, n)`` ESDs for the distance)."""
    replicas = (REPLICAS_FEW_EVALS if lw.num_evals < FEW_EVALS else 1) if opts.traps else 0
    if isinstance(rng, np.random.RandomState):
        # weightwatcher's order: the replicas first, then a fresh draw for the distance
        rep = None
        if replicas:
            first = esd.shuffled_copies_legacy(lw.matrices, rng, replicas)
            rep = esd.slice_eigenvalues(first, lw.scale, opts.eigen_dtype)
            del first
        second = esd.shuffled_copies_legacy(lw.matrices, rng, opts.n_random)
        dist = _pooled(esd.slice_eigenvalues(second, lw.scale, opts.eigen_dtype), opts.n_random)
    else:
        # any draw is as good as a fresh one: reuse the replicas for the distance (one shuffle per slice for
        # large layers, where the eigenvalues dominate the cost)
        draws = max(replicas, opts.n_random)
        # a gathered copy of a sharded layer (``extra["disposable"]``) is not needed after this: shuffle it
        disposable = bool(lw.extra.get("disposable"))
        evals = esd.shuffled_eigenvalues(
            lw.matrices, rng, draws, lw.scale, in_place=disposable, dtype=opts.eigen_dtype
        )
        rep = evals[: replicas * lw.matrices.shape[0]] if replicas else None
        dist = _pooled(evals, draws)[: opts.n_random]
    return (None if rep is None else np.sort(rep.ravel())), dist


def layer_result(lw: LayerWeights) -> LayerResult:
    """The result of ``lw`` before any analysis: its labels, every metric NaN.

    Example:
        >>> w = np.ones((1, 50, 20))
        >>> layer_result(LayerWeights(name="fc", longname="fc", kind="dense", layer_id=1, matrices=w, N=50, M=20)).Q
        2.5
    """
    return LayerResult(
        layer_id=lw.layer_id,
        name=lw.name,
        longname=lw.longname,
        layer_type=lw.kind,
        N=lw.N,
        M=lw.M,
        rf=lw.rf,
        Q=lw.Q,
        num_evals=lw.num_evals,
        ww_parity=lw.ww_parity,
    )


def analyze_layer(lw: LayerWeights, *, rng: Any, opts: AnalysisOptions) -> LayerResult:
    """Analyze one layer. Never raises: problems end up in ``status`` and ``reason``.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((1, 50, 20))
        >>> lw = LayerWeights(name="fc", longname="fc", kind="dense", layer_id=1, matrices=w, N=50, M=20)
        >>> analyze_layer(lw, rng=np.random.default_rng(0), opts=AnalysisOptions()).status
        'success'
    """
    res = layer_result(lw)
    size = _size_status(lw, opts)
    if size is not None:
        res.status, res.reason = size
        return res
    if getattr(lw.matrices, "is_meta", False):  # a sharded layer's placeholder: never analyze a shard
        res.status, res.reason = STATUS_ERROR, "sharded weight not gathered (analyze it on every rank)"
        return res
    try:
        matrices = esd.for_solver(lw.matrices, opts.eigensolver)
        if matrices is not lw.matrices:
            lw = dataclasses.replace(lw, matrices=matrices)
        _fill(res, lw, rng, opts)
    except Exception as exc:  # analysis must never take training down
        log.warning("analysis of layer %s failed: %r", lw.longname, exc)
        res.status, res.reason = STATUS_ERROR, f"{type(exc).__name__}: {exc}"
    return res


def _fill(res: LayerResult, lw: LayerWeights, rng: Any, opts: AnalysisOptions) -> None:
    if not esd.all_finite(lw.matrices):
        res.status, res.reason = STATUS_NON_FINITE, "weights contain NaN or Inf"
        return
    factors = lw.extra.get("factors")  # a low-rank update kept as its factors: its r eigenvalues directly
    if factors is not None and lw.rank and lw.rf == 1:
        left, right = factors
        slice_evals = esd.lowrank_eigenvalues(left, right, lw.scale)
    else:
        slice_evals = _top(esd.slice_eigenvalues(lw.matrices, lw.scale, opts.eigen_dtype), lw.rank)
    evals = np.sort(slice_evals.ravel())
    res.evals = evals
    res.num_evals = int(evals.size)
    res.has_esd = True
    for key, value in esd_statistics(slice_evals, lw.N).items():
        setattr(res, key, value)
    if not evals[-1] > 0:
        res.status, res.reason = STATUS_ZERO, "all weights are zero"
        return
    fit = fit_power_law(evals)
    if fit.ok:
        res.alpha, res.xmin, res.xmax, res.D, res.sigma = fit.alpha, fit.xmin, fit.xmax, fit.D, fit.sigma
        res.num_pl_spikes = fit.num_pl_spikes
        res.warning = _warning(fit.alpha)
    else:
        res.status, res.reason = STATUS_FAILED, fit.reason
    for key, value in norm_metrics(evals, res.alpha, lw.N).items():
        setattr(res, key, value)
    if opts.randomize:
        rand_evals, dist_evals = _random_esds(lw, rng, opts)
        if lw.rank:  # the same number of eigenvalues as the ESD they are compared with
            dist_evals = dist_evals[:, -lw.rank * lw.rf :]
            rand_evals = None if rand_evals is None else rand_evals[-lw.rank * lw.rf :]
        distances = [jensen_shannon_distance(evals, d) for d in dist_evals]
        res.rand_distance = distances[0] if len(distances) == 1 else float(np.mean(distances))
        res.rand_distance_std = float(np.std(distances, ddof=1)) if len(distances) > 1 else float("nan")
        rand_max = float(dist_evals[0, -1] if len(dist_evals) == 1 else np.mean(dist_evals[:, -1]))
        res.ww_softrank = rand_max / float(evals[-1])
        res.ww_maxdist = float(evals[-1]) - rand_max
        res.rand_evals = dist_evals[0] if rand_evals is None else rand_evals
        if rand_evals is not None:
            res.max_rand_eval = float(rand_evals[-1])
            mp = fit_marchenko_pastur(rand_evals, N=lw.N, M=lw.M)
            res.rand_num_spikes = res.num_traps = mp.num_spikes if not mp.reason else float("nan")
            res.rand_sigma_mp, res.rand_mp_softrank, res.rand_W_scale = (
                mp.sigma_mp,
                mp.mp_softrank,
                mp.W_scale,
            )
            res.rand_bulk_max, res.rand_bulk_min = mp.bulk_max, mp.bulk_min
    if opts.mp_fit:
        mp = fit_marchenko_pastur(evals, N=lw.N, M=lw.M)
        res.num_spikes = mp.num_spikes if not mp.reason else float("nan")
        res.sigma_mp, res.mp_softrank, res.W_scale = mp.sigma_mp, mp.mp_softrank, mp.W_scale
        res.bulk_max, res.bulk_min = mp.bulk_max, mp.bulk_min


#: Below this much work (weight entries times passes) starting threads costs more than it saves.
_THREADING_MIN_WORK = 250_000
#: Above this matrix side BLAS/LAPACK already use every core: threads over layers would oversubscribe them.
_THREADING_MAX_SIDE = 256


def _threads_pay(layers: Sequence[LayerWeights], opts: AnalysisOptions) -> bool:
    """Threads over layers help for many small matrices (single-threaded LAPACK calls, Python-bound fits)."""
    largest_side = max(min(lw.slice_shape) for lw in layers)
    return largest_side <= _THREADING_MAX_SIDE and _work(layers, opts) >= _THREADING_MIN_WORK


def _work(layers: Sequence[LayerWeights], opts: AnalysisOptions) -> int:
    """Rough cost of an analysis: entries of every layer times the number of eigenvalue passes over them."""
    total = 0
    for lw in layers:
        passes = 1
        if opts.randomize:
            replicas = REPLICAS_FEW_EVALS if opts.traps and lw.num_evals < FEW_EVALS else 1
            passes += max(replicas, opts.n_random) + (1 if opts.traps else 0)
        total += math.prod(lw.matrices.shape) * (passes + (1 if opts.mp_fit else 0))
    return total


def _default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def analyze_layers(
    layers: Sequence[LayerWeights],
    *,
    rng: np.random.Generator | np.random.RandomState,
    opts: AnalysisOptions = _DEFAULT_OPTIONS,
    n_jobs: int | None = None,
) -> list[LayerResult]:
    """Analyze every layer with the options ``opts``; results keep the input order.

    With a ``Generator`` each layer gets its own child generator (``rng.spawn``), so results do not depend on
    threading. With a legacy ``RandomState`` the layers run one after another and the layers weightwatcher analyzes
    (``ww_parity``) draw their shuffles from it in weightwatcher's order.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((1, 50, 20))
        >>> lw = LayerWeights(name="fc", longname="fc", kind="dense", layer_id=1, matrices=w, N=50, M=20)
        >>> [r.name for r in analyze_layers([lw], rng=np.random.default_rng(0))]
        ['fc']
    """
    if not layers:
        return []
    rngs = layer_rngs(rng, layers)
    if isinstance(rng, np.random.RandomState):  # one after another: the order of the draws matters
        return _run(layers, rngs, opts, jobs=1)
    return analyze_with_generators(layers, rngs, opts=opts, n_jobs=n_jobs)


def layer_rngs(rng: np.random.Generator | np.random.RandomState, layers: Sequence[LayerWeights]) -> list[Any]:
    """The random source of each layer.

    From a ``Generator``: one child per layer position (``rng.spawn``), so the shuffles of layer ``i`` depend on
    ``rng``'s seed and ``i`` only: not on the other layers, on threads or on which process analyzes the layer.
    From a legacy ``RandomState``: the layers weightwatcher analyzes (``ww_parity``) share it and must be
    analyzed one after another, in order, to draw its shuffles in weightwatcher's order; our extra layers draw
    from a generator derived from (not drawn from) its state, so the parity layers stay aligned.

    Example:
        >>> w = np.ones((1, 20, 10))
        >>> lws = [LayerWeights(name=n, longname=n, kind="dense", layer_id=1, matrices=w, N=20, M=10) for n in "ab"]
        >>> a = layer_rngs(np.random.default_rng(5), lws)[1].random()
        >>> a == layer_rngs(np.random.default_rng(5), lws + lws)[1].random()
        True
    """
    if isinstance(rng, np.random.RandomState):
        state = rng.get_state(legacy=True)
        assert isinstance(state, tuple)
        side = np.random.default_rng(np.asarray(state[1], dtype=np.uint32))
        return [rng if lw.ww_parity else side for lw in layers]
    return rng.spawn(len(layers))


def analyze_with_generators(
    layers: Sequence[LayerWeights],
    generators: Sequence[np.random.Generator],
    *,
    opts: AnalysisOptions = _DEFAULT_OPTIONS,
    n_jobs: int | None = None,
) -> list[LayerResult]:
    """Analyze ``layers[i]`` with ``generators[i]`` (from `layer_rngs`); threads over layers when they pay.

    Example:
        >>> w = np.random.default_rng(0).standard_normal((1, 50, 20))
        >>> lw = LayerWeights(name="fc", longname="fc", kind="dense", layer_id=1, matrices=w, N=50, M=20)
        >>> [r.status for r in analyze_with_generators([lw], layer_rngs(np.random.default_rng(0), [lw]))]
        ['success']
    """
    if not layers:
        return []
    jobs = n_jobs or (_default_jobs() if _threads_pay(layers, opts) else 1)
    return _run(layers, generators, opts, jobs)


def _run(
    layers: Sequence[LayerWeights], rngs: Sequence[Any], opts: AnalysisOptions, jobs: int
) -> list[LayerResult]:
    # One BLAS thread, except on layers large enough to use the user's own number (see `_threads`).
    with AnalysisThreads() as blas:
        if jobs <= 1 or len(layers) == 1:
            results = []
            for lw, r in zip(layers, rngs, strict=True):
                with blas.for_slices(lw.slice_shape):
                    results.append(analyze_layer(lw, rng=r, opts=opts))
            return results
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads over small layers, one BLAS thread each
            return list(
                pool.map(
                    lambda pair: analyze_layer(pair[0], rng=pair[1], opts=opts),
                    zip(layers, rngs, strict=True),
                )
            )

"""`analyze()`: the one call that runs the whole spectral analysis on a model or a state dict.

The functional half of the package (as in torchmetrics): the callbacks' engine (`ww_callbacks.engine`) calls
this function and adds only scheduling, state and logging.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .distributed import Collective, TorchCollective, analyze_shared, has_sharded_layers
from .io import is_model_directory, is_path, load_weights, open_layers
from .layers import LayerWeights, snapshot
from .layers.delta import delta_layers
from .spectral.layer import analyze_layers
from .spectral.options import AnalysisOptions
from .spectral.report import LayerResult, SpectralReport

log = logging.getLogger(__name__)

RandomSource = np.random.Generator | np.random.RandomState

_DEFAULTS = AnalysisOptions()  # the defaults below are read from here: one home


def analyze(
    model: Any,
    *,
    layers: Any = None,
    randomize: bool = _DEFAULTS.randomize,
    mp_fit: bool = _DEFAULTS.mp_fit,
    min_evals: int = _DEFAULTS.min_evals,
    max_evals: int = _DEFAULTS.max_evals,
    max_N: int = _DEFAULTS.max_N,
    seed: int | None = None,
    rng: RandomSource | None = None,
    n_random: int = _DEFAULTS.n_random,
    traps: bool = _DEFAULTS.traps,
    n_jobs: int | None = None,
    collective: Collective | None = None,
    shard_layers: bool = True,
    eigensolver: str = _DEFAULTS.eigensolver,
    eigen_dtype: str = _DEFAULTS.eigen_dtype,
    peft: str | bool = "auto",
    base_model: Any = None,
) -> SpectralReport:
    """Analyze the weight matrices of ``model`` and return a `SpectralReport`.

    Reproduces weightwatcher 0.7.7's per-layer metrics (``analyze(randomize=..., mp_fit=...)``) without any data.

    Args:
        model: a ``torch.nn.Module``, a Keras 3 ``Model``/``Layer``, a mapping of names to arrays or tensors
            (a state dict, or a checkpoint dict holding one under ``state_dict``, ``model``, ``module`` ...), a
            list of `LayerWeights` from `ww_callbacks.layers.snapshot`, the path of a model file
            (``.ckpt``, ``.pt``/``.pth``, ``.safetensors``, ``.keras``; read by `ww_callbacks.io.load_weights`),
            or of a model directory saved by ``save_pretrained`` (sharded or not), which is read one layer at a
            time (`ww_callbacks.io.ModelDirectory`): peak memory follows the largest layer, not the model.
            A path that cannot be read raises `ww_callbacks.io.WeightsFileError` (a ``ValueError``) naming the
            file.
        layers: keep only these layers: names, globs (``"encoder.*"``), compiled regexes, kinds (``"dense"``,
            ``"conv2d"``, ``"embedding"``), classes or layer ids; a leading ``-`` excludes.
        randomize: also compare each layer's ESD with that of its shuffled weights (``rand_distance`` ...).
        mp_fit: also fit the Marchenko-Pastur bulk (``num_spikes``, ``mp_softrank`` ...).
        min_evals, max_evals, max_N: layers with fewer than ``min_evals`` or more than ``max_evals``
            eigenvalues, or with ``N > max_N``, are not analyzed (their status says so).
        seed: seed for the shuffles (a fresh ``numpy.random.default_rng(seed)``); ignored when ``rng`` is given.
        rng: a ``numpy.random.Generator``, or a legacy ``numpy.random.RandomState``, whose shuffles are then
            drawn in weightwatcher's order so that a ``RandomState`` seeded like weightwatcher's global state
            gives its randomized columns exactly. The global RNGs are never touched.
        n_random: number of shuffles averaged into ``rand_distance`` (its std is ``rand_distance_std``).
        traps: with ``randomize``, also look for correlation traps as weightwatcher does: pool 5 shuffles for
            layers with fewer than 100 eigenvalues (``max_rand_eval``) and fit the MP bulk of the shuffled ESD
            (``rand_num_spikes``/``num_traps``, ``rand_*``). ``False`` skips that (about half the cost of
            randomizing; the callbacks' default) and leaves those columns NaN.
        n_jobs: threads over layers (default: up to 2, when the work is large enough to pay for them); a model
            directory is analyzed one layer at a time.
        collective, shard_layers: share the layers with the other ranks (`ww_callbacks.distributed`): a
            collective call, each rank gets the single-process report. DTensor weights (FSDP2, tensor parallel)
            take torch.distributed's world by default, like ``full_tensor()``; a shard is never analyzed.
        eigensolver: where the eigenvalues are computed: ``"numpy"`` (on the host: torch tensors are copied
            off their device), ``"torch"`` (``torch.linalg`` on the weights' own device, a GPU's included; numpy
            arrays become CPU tensors) or ``"auto"`` (the default: torch for tensors on an accelerator, numpy
            otherwise, which is faster on a CPU). Both give the same numbers (the same shuffles; eigenvalues
            equal to rounding).
        eigen_dtype: ``"float64"`` (default) or ``"float32"`` (torch only: faster on GPUs, eigenvalues to about
            1e-6 relative instead of 1e-15; see docs/benchmarks.md for the measured difference).
        peft: LoRA models: ``"adapters"`` (each update ``B @ A``; weightwatcher's ``peft=True``), ``"effective"``
            (``W + scaling * B @ A`` under the name without adapters), ``"auto"`` (adapters if any), ``"none"``.
        base_model: analyze ``W - W_base`` (matched by name): a model, state dict, layer list, file or directory.

    Example:
        >>> import numpy as np, ww_callbacks
        >>> w = np.random.default_rng(0).standard_normal((300, 100))
        >>> report = ww_callbacks.analyze({"fc.weight": w}, seed=0)
        >>> report.layers[0].status
        'success'
    """
    names = [f.name for f in dataclasses.fields(AnalysisOptions)]
    opts = AnalysisOptions(**{name: value for name, value in locals().items() if name in names})
    rng = np.random.default_rng(seed) if rng is None else rng
    if is_path(model) and is_model_directory(model) and base_model is None:
        return _analyze_stream(model, layers=layers, rng=rng, opts=opts)
    model = _prepared(load_weights(model) if is_path(model) else model, layers, peft, base_model)
    return _analyze_in_memory(model, layers, rng, opts, n_jobs, collective, shard_layers)


def _prepared(model: Any, layers: Any, peft: str | bool, base_model: Any) -> Any:
    """``model``, or its layers in the asked ``peft`` mode and/or as deltas from ``base_model``."""
    if base_model is None and peft == "auto":
        return model  # the snapshot's own default
    found = snapshot(model, layers=layers, copy=False, peft=peft)
    return found if base_model is None else delta_layers(found, base_layers(base_model, peft=peft))


def base_layers(base: Any, *, peft: str | bool = "auto") -> list[LayerWeights]:
    """The layers of a base model for `delta_layers`: a model, a state dict, a list of `LayerWeights`, or a
    model file or directory (read whole).

    Example:
        >>> import numpy as np
        >>> [lw.longname for lw in base_layers({"fc.weight": np.ones((20, 10))})]
        ['fc']
    """
    if is_path(base) and is_model_directory(base):
        return list(open_layers(base))
    return snapshot(load_weights(base) if is_path(base) else base, copy=False, peft=peft)


def _analyze_in_memory(
    model: Any,
    layers: Any,
    rng: RandomSource,
    opts: AnalysisOptions,
    n_jobs: int | None,
    collective: Collective | None,
    shard_layers: bool,
) -> SpectralReport:
    start = time.perf_counter()
    # No copy: the analysis runs now and never writes into the weights.
    found: Sequence[LayerWeights] = snapshot(model, layers=layers, copy=False)
    if not found:
        warnings.warn(
            f"no analyzable layer found in {type(model).__name__} (looked for dense, conv1d, conv2d and "
            "embedding layers)",
            RuntimeWarning,
            stacklevel=3,
        )
    results, shared = _analyze_found(found, rng, opts, collective, shard_layers=shard_layers, n_jobs=n_jobs)
    elapsed = (
        time.perf_counter() - start if shared is None else shared
    )  # shared: the slowest rank's, everywhere
    report = SpectralReport(layers=results, elapsed=elapsed, options=opts.as_dict())
    log.debug("analyzed %d layers in %.3fs", len(results), report.elapsed)
    return report


def _analyze_stream(path: Any, *, layers: Any, rng: RandomSource, opts: AnalysisOptions) -> SpectralReport:
    """A model directory, one layer at a time: each layer is read, analyzed and dropped before the next.

    ``analyze_layers`` on one layer at a time draws the same child generators (``rng.spawn``) or the same
    RandomState stream as on the whole list, so the report equals that of the fully loaded state dict.
    """
    start = time.perf_counter()
    results = []
    for lw in open_layers(path, layers=layers):
        results.extend(analyze_layers([lw], rng=rng, opts=opts, n_jobs=1))
        del lw  # before the next layer is read: one layer in memory at a time
    if not results:
        warnings.warn(f"no analyzable layer found in {path}", RuntimeWarning, stacklevel=3)
    report = SpectralReport(layers=results, elapsed=time.perf_counter() - start, options=opts.as_dict())
    log.debug("analyzed %d layers of %s in %.3fs", len(results), path, report.elapsed)
    return report


def _analyze_found(
    found: Sequence[LayerWeights],
    rng: RandomSource,
    opts: AnalysisOptions,
    collective: Collective | None,
    *,
    shard_layers: bool,
    n_jobs: int | None,
) -> tuple[list[LayerResult], float | None]:
    """In this process, or shared with the other ranks (always for DTensor weights: a collective); with the
    slowest rank's seconds when shared, so that every rank's report is the same."""
    if collective is None and has_sharded_layers(found):
        collective = TorchCollective()
    if collective is None:
        return analyze_layers(found, rng=rng, opts=opts, n_jobs=n_jobs), None
    return analyze_shared(found, rng=rng, opts=opts, collective=collective, shard=shard_layers, n_jobs=n_jobs)

"""`Analyzer`: one analysis of a model's weights, in the calling thread, never raising.

It snapshots the weights (`ww_callbacks.snapshot`, filtered by the ``layers`` option) and runs
`ww_callbacks.analyze` on them with the engine's options and the generator of that analysis; failures become
warnings and a None report, so training never dies because of the analysis. A background worker would keep
this interface: take a copied snapshot (``copy=True``) now, hand the report back later.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.engine.options import WatchOptions
    >>> analyzer = Analyzer(WatchOptions(), warn=print)
    >>> analyzer.analyze({"fc.weight": np.eye(30)}, rng=np.random.default_rng(0), epoch=0).layers[0].name
    'fc'
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..analysis import analyze as _analyze
from ..analysis import base_layers
from ..distributed import Collective, analyze_shared, has_sharded_layers
from ..layers import LayerWeights, snapshot
from ..layers.delta import delta_layers, host_copy
from ..spectral.layer import analyze_with_generators, layer_rngs
from ..spectral.options import AnalysisOptions
from ..spectral.report import LayerResult, SpectralReport
from .options import WatchOptions

__all__ = ["Analyzer", "is_layer_list"]

log = logging.getLogger(__name__)


def _own_copy(lw: LayerWeights) -> LayerWeights:
    """``lw`` with matrices of its own (training may write the originals while a worker reads the copy);
    sharded placeholders are gathered later, never copied here."""
    if lw.extra.get("gather") is not None:
        return lw
    matrices = lw.matrices
    clone = getattr(matrices, "clone", None)
    return dataclasses.replace(lw, matrices=clone() if clone is not None else np.array(matrices, copy=True))


def is_layer_list(obj: Any) -> bool:
    """True for a ready snapshot: a sequence of `LayerWeights` (analyzed as given).

    Example:
        >>> is_layer_list([]), is_layer_list("fc")
        (True, False)
    """
    return (
        isinstance(obj, Sequence)
        and not isinstance(obj, (str, bytes))
        and all(isinstance(item, LayerWeights) for item in obj)
    )


class Analyzer:
    """Snapshot and analyze with fixed options; ``analysis_time`` adds up the seconds spent.

    Args:
        options: the engine's `WatchOptions` (``layers``, ``randomize``, ``mp_fit``, ``n_random``,
            ``analyze_kwargs``).
        warn: how failures are reported.
    """

    def __init__(self, options: WatchOptions, *, warn: Callable[[str], None]) -> None:
        self.options = options
        self.analysis_time = 0.0
        #: Layers whose last result was reused, in the latest analysis (unchanged weights).
        self.reused: list[str] = []
        self._warn = warn
        self._warned: set[str] = set()
        self._base: list[LayerWeights] | None = None  # ``delta_from``: the base weights, on the host
        self._results: dict[str, tuple[Any, LayerResult]] = {}  # longname -> (weights' version, last result)

    def set_base(self, model: Any) -> None:
        """Fix the base of ``delta_from`` now: ``"init"`` takes ``model``'s weights as they are (fit start); a
        model, state dict or path is read. Kept on the host once (`ww_callbacks.layers.delta.host_copy`)."""
        source = self.options.delta_from
        if source is None:
            return
        try:
            found = (
                snapshot(model, copy=True, peft=self.options.peft)
                if isinstance(source, str) and source == "init"
                else base_layers(source, peft=self.options.peft)
            )
            self._base = host_copy(found)
            self._results.clear()
        except Exception as exc:
            self._base = None
            self._warn(f"delta_from: cannot read the base weights ({type(exc).__name__}: {exc}); no deltas")

    def forget(self) -> None:
        """Drop the reusable results (a new fit, new weights)."""
        self._results.clear()

    def snapshot(self, model: Any, *, copy: bool = False) -> list[LayerWeights] | None:
        """The analyzable weights of ``model`` (filtered by ``layers``); None (with a warning) on error."""
        start = time.perf_counter()
        try:
            found = list(model) if is_layer_list(model) else None
            if found is None:
                # Copies (background) only of what will be analyzed: a frozen layer whose result is reused
                # is never written by training, and its matrix is not read again.
                found = snapshot(model, layers=self.options.layers, copy=False, peft=self.options.peft)
                if self._base is not None:
                    found = delta_layers(found, self._base)
                if copy:
                    found = [lw if self._reusable(lw) else _own_copy(lw) for lw in found]
            return found
        except Exception as exc:
            self._warn(f"could not snapshot the weights ({type(exc).__name__}: {exc}); no spectral metrics")
            return None
        finally:
            self.analysis_time += time.perf_counter() - start

    def analysis_options(self) -> AnalysisOptions:
        """The options of `ww_callbacks.analyze` this engine analyzes with (``n_jobs`` aside).

        Example:
            >>> Analyzer(WatchOptions(randomize=False), warn=print).analysis_options().randomize
            False
        """
        opts = self.options
        fields = {f.name for f in dataclasses.fields(AnalysisOptions)}
        extra = {k: v for k, v in (opts.analyze_kwargs or {}).items() if k in fields}
        return AnalysisOptions(
            randomize=opts.randomize,
            mp_fit=opts.mp_fit,
            n_random=opts.n_random,
            eigensolver=opts.eigensolver,
            **extra,
        )

    def analyze(
        self, model: Any, *, rng: np.random.Generator, epoch: int, collective: Collective | None = None
    ) -> SpectralReport | None:
        """The report of ``model`` (a model, a mapping or a snapshot list); None (with a warning) on error.

        With a ``collective`` (a distributed run) this is a collective: every rank calls it at the same point and
        gets the same report (or None on every rank), even when its own snapshot failed.
        """
        layers = model if is_layer_list(model) else self.snapshot(model)
        if layers is None:
            if collective is not None:  # the other ranks wait for this one: tell them, they give up too
                with contextlib.suppress(RuntimeError):
                    analyze_shared(None, rng=rng, opts=AnalysisOptions(), collective=collective)
            return None
        opts = self.options
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # "no analyzable layer" would repeat every epoch; it is said once below instead.
                warnings.filterwarnings("ignore", message="no analyzable layer", category=RuntimeWarning)
                if (
                    collective is None
                    and isinstance(rng, np.random.Generator)
                    and not has_sharded_layers(layers)
                ):
                    report = self._analyze_reusing(layers, rng)
                else:
                    report = _analyze(
                        layers,
                        randomize=opts.randomize,
                        mp_fit=opts.mp_fit,
                        n_random=opts.n_random,
                        rng=rng,
                        collective=collective,
                        shard_layers=opts.shard_layers,
                        eigensolver=opts.eigensolver,
                        **(opts.analyze_kwargs or {}),
                    )
        except Exception as exc:
            self._warn(
                f"spectral analysis failed at epoch {epoch} ({type(exc).__name__}: {exc}); training goes on"
            )
            log.debug("analysis failure", exc_info=True)
            return None
        finally:
            self.analysis_time += time.perf_counter() - start
        self.review(report, epoch)
        return report

    def _reusable(self, lw: LayerWeights) -> bool:
        """Whether ``lw`` will get its last result again (unchanged weights: see `_analyze_reusing`)."""
        version, cached = lw.extra.get("version"), self._results.get(lw.longname)
        return version is not None and cached is not None and cached[0] == version

    def _analyze_reusing(self, layers: list[LayerWeights], rng: np.random.Generator) -> SpectralReport:
        """`ww_callbacks.analyze` of ``layers``, except that a layer whose weights have not changed since its
        last analysis (the same ``extra["version"]``: version counters of frozen torch tensors, a fingerprint of
        a frozen Keras layer) gets its last result again. The others are analyzed with the generator of their
        position, so their numbers are exactly those of a full analysis."""
        start = time.perf_counter()
        opts = self.analysis_options()
        generators = layer_rngs(rng, layers)
        results: list[LayerResult | None] = [None] * len(layers)
        todo = []
        for i, lw in enumerate(layers):
            if self._reusable(lw):
                results[i] = copy.copy(self._results[lw.longname][1])
            else:
                todo.append(i)
        jobs = (self.options.analyze_kwargs or {}).get("n_jobs")
        fresh = analyze_with_generators(
            [layers[i] for i in todo], [generators[i] for i in todo], opts=opts, n_jobs=jobs
        )
        for i, result in zip(todo, fresh, strict=True):
            results[i] = result
            version = layers[i].extra.get("version")
            if version is not None and result.status != "error":
                self._results[layers[i].longname] = (version, result)
        todo_set = set(todo)
        self.reused = [lw.longname for i, lw in enumerate(layers) if i not in todo_set]
        done = [r for r in results if r is not None]
        return SpectralReport(layers=done, elapsed=time.perf_counter() - start, options=opts.as_dict())

    def review(self, report: SpectralReport, epoch: int) -> None:
        """Say once what needs saying about a finished report: no layers found, diverged layers."""
        if not report.layers:
            self.warn_once("no-layers", "no analyzable layer (dense, conv1d, conv2d, embedding) was found")
        bad = [lr.longname for lr in report.nonfinite_layers]
        if bad:  # diverged weights: say which layers, once per set of layers
            self.warn_once(
                "non-finite:" + "\0".join(bad),
                f"epoch {epoch}: the weights of {len(bad)} of {len(report.layers)} layers hold NaN or Inf "
                f"({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}): training diverged; they are not "
                f"analyzed and are counted in {self.options.prefix}num_nonfinite_layers",
            )

    def warn_once(self, key: str, message: str) -> None:
        """Warn about ``key`` the first time only (things that would repeat every epoch)."""
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)

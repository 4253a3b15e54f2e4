"""The background analysis' two halves for a `SpectralMonitor`: what the training loop copies at the analysis
point (`prepare_background`), and what the worker thread then runs (the analysis, its record and its sinks; or,
under several ranks, this rank's share of the layers).

`ww_callbacks.engine.background.BackgroundAnalysis` calls ``prepare_background`` through the monitor, which it
knows only as the callable it was given: the worker never imports the monitor.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..distributed import Collective, LocalShare, share_layers
from ..layers import LayerWeights
from .background import host_copies
from .outcome import MonitorResult, SharedPart

__all__ = ["prepare_background"]


def prepare_background(
    self: Any,
    model: Any,
    *,
    epoch: int,
    step: int,
    is_last: bool,
    collective: Collective | None = None,
) -> Any:
    """At the analysis point: copy what the worker will analyze; the job to run there (None: no copy).

    One process: the job analyzes the copy, records and emits it, and returns its `MonitorResult`. With a
    ``collective`` (several ranks): the layers are shared now (collectively: agree, assign, gather) and the
    job analyzes only this rank's share, returning a `SharedPart` that the ranks merge later.
    """
    rng = self.rng_for(epoch, step)
    if collective is not None:
        layers = self.snapshot(model)
        try:
            share = share_layers(
                layers, rng=rng, collective=collective, shard=self.options.shard_layers, copy=_copied
            )
        except Exception as exc:  # every rank raises together (a snapshot failed somewhere)
            self.warn(f"background analysis at epoch {epoch} not started ({type(exc).__name__}: {exc})")
            return None
        opts = self.analyzer.analysis_options()
        return lambda: SharedPart(epoch, step, is_last, *_timed(share, opts))
    copied = self.snapshot(model, copy=True)
    if copied is None:
        return None
    # On the host (pinned, non-blocking), unless the torch eigensolver was asked for: then on the device.
    layers, ready = (copied, _now) if self.options.eigensolver == "torch" else host_copies(copied)
    return lambda: _background_job(self, layers, ready, rng, epoch, step, is_last)


def _background_job(
    self: Any,
    layers: list[LayerWeights],
    ready: Any,
    rng: Any,
    epoch: int,
    step: int,
    is_last: bool,
) -> MonitorResult:
    ready()
    report = self.analyzer.analyze(layers, rng=rng, epoch=epoch)
    with self.state.lock:  # history, rule and sinks, against state_dict() in the training thread
        result = self.record(report, epoch=epoch, step=step)
        if result.report is not None and self.background is not None:
            self.history[-1]["background_waits"] = self.background.worker.waits
        self.emit(result, epoch=epoch, step=step, is_last=is_last or result.stop)
    return result


def _copied(layer: LayerWeights) -> LayerWeights:
    """``layer`` with matrices the worker may read while training writes the weights (pinned host copies for
    CUDA, made without blocking; plain copies otherwise)."""
    copies, ready = host_copies([layer])
    if copies[0] is layer:
        return dataclasses.replace(layer, matrices=_plain_copy(layer.matrices))
    ready()
    return copies[0]


def _plain_copy(matrices: Any) -> Any:
    copy = getattr(matrices, "clone", None) or matrices.copy
    return copy()


def _timed(share: LocalShare, opts: Any) -> tuple[dict[int, Any], float, int]:
    start = time.perf_counter()
    results = share.analyze(opts)
    return results, time.perf_counter() - start, share.total


def _now() -> None:
    return None

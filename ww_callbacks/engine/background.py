"""Analysis off the training path: `BackgroundWorker` runs analyses on a daemon thread, one at a time, in order.

Why a thread and not a process: the analysis is mostly LAPACK (``eigvalsh`` of the Gram matrices, which releases
the GIL) and numpy array work; a process would have to receive every analyzed matrix (pickled or through shared
memory: another full copy, the cost this feature removes from the training loop) and would start a second
interpreter with its own BLAS threads. ``benchmarks/bench_background.py`` measures what the thread costs the
training loop (the power-law fits hold the GIL while they run; they are a small part of a large model's analysis).

While training runs the worker leaves the training threads their cores: its matrix products take at most the
cores torch does not use (`free_cores`; one on a machine whose cores torch all uses), through
`ww_callbacks.spectral._threads.capped_threads`. Only products are capped: their results do not depend on the
thread count, so a background analysis gives exactly the synchronous numbers; the eigensolvers keep the thread
count a synchronous analysis gives them (one below 2048 rows). Once the training loop waits for the worker
(`BackgroundAnalysis.finish`), the cap is lifted. Measured: a fit whose epochs last as long as an analysis takes
1.02x the synchronous fit's time (median of pairs; 1.32x with the worker's products on every core).

At most ``max_pending`` jobs are queued or running; `submit` on a full worker waits for the oldest to finish
(training blocks: counted in ``waits`` / ``wait_time``) rather than skipping an analysis, so a background run
analyzes exactly the same points as a synchronous one. The thread stays up between analyses (starting one at
every analysis point would cost the training loop milliseconds), exits when `wait_idle` finds nothing left,
and on its own after ``idle_exit`` seconds without work, so no thread outlives the work, even when the framework
never tells the callback that training died (Keras).
Waiting is done in short slices, so Ctrl-C (KeyboardInterrupt) still reaches the main thread.

`host_copies` turns a snapshot whose matrices are CUDA tensors into pinned host copies made with non-blocking
copies (the worker synchronizes before using them); on the CPU the snapshot's own ``copy=True`` is the copy.

Example:
    >>> worker = BackgroundWorker(max_pending=1)
    >>> out = []
    >>> worker.submit(lambda: out.append(1)); worker.wait_idle(timeout=5.0)
    True
    >>> out, worker.alive
    ([1], False)
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..layers import LayerWeights
from ..spectral._threads import capped_threads

__all__ = ["BackgroundAnalysis", "BackgroundWorker", "host_copies"]

log = logging.getLogger(__name__)

#: How long each wait slice lasts (seconds): short enough for Ctrl-C to be handled at once.
_SLICE = 0.05


class BackgroundWorker:
    """Run submitted callables in order on one daemon thread; at most ``max_pending`` queued or running.

    Args:
        max_pending: jobs queued or running at most; `submit` waits while that many are pending.
        name: the thread's name.
        idle_exit: seconds without work after which the thread exits (a later `submit` starts a new one).

    Attributes:
        waits: how many `submit` calls had to wait for the worker.
        wait_time: seconds `submit` spent waiting.
    """

    def __init__(
        self,
        *,
        max_pending: int = 1,
        name: str = "ww-callbacks-analysis",
        idle_exit: float = 2.0,
    ) -> None:
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self.name = name
        self.idle_exit = float(idle_exit)
        self._closing = False  # set by wait_idle: the thread leaves as soon as nothing is queued
        self.waits = 0
        self.wait_time = 0.0
        self._cond = threading.Condition()
        self._queue: collections.deque[Callable[[], Any]] = collections.deque()
        self._running = 0
        self._thread: threading.Thread | None = None
        self._leaving: threading.Thread | None = None  # a thread that found nothing to do and is returning

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + self._running

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (it exits when it has nothing left to do)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submit(self, job: Callable[[], Any], *, wait: bool = True) -> None:
        """Queue ``job``; waits first (in short slices) while ``max_pending`` jobs are pending (``wait=False``:
        queue it at once, for short follow-up work)."""
        with self._cond:
            if wait and len(self._queue) + self._running >= self.max_pending:
                self.waits += 1
                start = time.perf_counter()
                try:
                    while len(self._queue) + self._running >= self.max_pending:
                        self._cond.wait(_SLICE)
                finally:
                    self.wait_time += time.perf_counter() - start
            self._queue.append(job)
            self._closing = False
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending (at most ``timeout`` seconds); True when idle."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        with self._cond:
            while len(self._queue) + self._running:
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._closing = True
            self._cond.notify_all()
            threads = [t for t in (self._thread, self._leaving) if t is not None]
        for thread in threads:  # nothing pending: they are returning (bounded)
            thread.join(timeout=None if deadline is None else max(deadline - time.monotonic(), _SLICE))
        return True

    def drop_queued(self) -> int:
        """Forget the jobs not started yet (the running one finishes); returns how many were dropped."""
        with self._cond:
            dropped = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return dropped

    def _loop(self) -> None:
        while True:
            with self._cond:
                idle_since = time.monotonic()
                while not self._queue:
                    if self._closing or time.monotonic() - idle_since >= self.idle_exit:
                        self._thread, self._leaving = None, threading.current_thread()
                        self._cond.notify_all()
                        return
                    self._cond.wait(_SLICE)
                job = self._queue.popleft()
                self._running = 1
            try:
                job()
            except BaseException:  # a job never kills the worker (and the engine's jobs never raise)
                log.exception("background analysis job failed")
            finally:
                with self._cond:
                    self._running = 0
                    self._cond.notify_all()


def free_cores() -> int:
    """The cores training leaves free (the CPU count less torch's intra-op threads, when torch is loaded), at
    least 1: how many BLAS threads a background analysis takes while training runs."""
    torch = sys.modules.get("torch")
    busy = torch.get_num_threads() if torch is not None else 1
    return max(1, (os.cpu_count() or 1) - busy)


def host_copies(layers: list[LayerWeights]) -> tuple[list[LayerWeights], Callable[[], None]]:
    """(the layers with CUDA matrices copied into pinned host memory, a function that waits for those copies).

    The copies are non-blocking: the training loop goes on while they run, and the worker calls the returned
    function before it reads them. Matrices that are not CUDA tensors are returned as they are (the snapshot
    already copied them). Without torch or CUDA this is the identity.

    Example:
        >>> import numpy as np
        >>> from ww_callbacks.layers import snapshot
        >>> layers, ready = host_copies(snapshot({"fc.weight": np.eye(4)}))
        >>> ready(); type(layers[0].matrices).__name__
        'ndarray'
    """
    torch = sys.modules.get("torch")
    if torch is None or not any(_is_cuda(lw.matrices, torch) for lw in layers):
        return layers, _nothing
    out, events = [], []
    for lw in layers:
        matrices = lw.matrices
        if _is_cuda(matrices, torch):
            pinned = torch.empty(matrices.shape, dtype=matrices.dtype, device="cpu", pin_memory=True)
            pinned.copy_(matrices.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(matrices.device))
            events.append(event)
            lw = replace(lw, matrices=pinned)
        out.append(lw)

    def ready() -> None:
        for event in events:
            event.synchronize()

    return out, ready


def _is_cuda(matrices: Any, torch: Any) -> bool:
    return isinstance(matrices, torch.Tensor) and matrices.device.type == "cuda"


def _nothing() -> None:
    return None


class BackgroundAnalysis:
    """The engine's background part: copy now, analyze later on the worker, hand the results back.

    `submit` is all the training loop waits for: ``prepare(model, epoch=, step=, is_last=)`` (given by the
    engine) copies the analyzed matrices and returns the job to run on the worker, or None when the copy failed;
    with ``max_pending`` jobs still pending, `submit` first waits for the oldest. Whatever a job returns is
    kept, in order, for `collect` (the engine's jobs record and emit their result on the worker, so a finished
    analysis reaches the history file even if training dies before the callback hears of it). The callback
    acts on `collect`'s results at its next hook and calls `finish` (then `collect`) at the end of training.

    Attributes:
        worker: the `BackgroundWorker`.
        submitted: analyses submitted; ``copy_time``: seconds spent copying; ``blocked_time``: seconds the
            caller spent in `submit` (copy + waiting for the worker).
        finish_timeout: how long `finish` waits for pending analyses by default (seconds).
        interrupt_timeout: how long `finish(interrupted=True)` waits for the running analysis.

    Example:
        >>> import numpy as np
        >>> from ww_callbacks.engine import SpectralMonitor
        >>> monitor = SpectralMonitor(seed=0, background=True, metrics=("alpha",))
        >>> monitor.background.submit({"fc.weight": np.random.default_rng(0).normal(size=(80, 40))}, epoch=0)
        True
        >>> monitor.background.finish()
        True
        >>> [(r.epoch, sorted(r.metrics)) for r in monitor.background.collect()]
        [(0, ['ww/alpha'])]
    """

    finish_timeout = 600.0
    interrupt_timeout = 30.0

    def __init__(
        self,
        prepare: Callable[..., Callable[[], Any] | None],
        *,
        max_pending: int = 1,
        warn: Callable[[str], None],
    ) -> None:
        self._prepare = prepare
        self._warn = warn
        self.worker = BackgroundWorker(max_pending=max_pending)
        #: BLAS threads of the worker's matrix products while training runs (None: `free_cores` at each job);
        #: once the caller waits for the worker (`finish`), all of the user's.
        self.threads: int | None = None
        self.training = True
        self.submitted = 0
        self.copy_time = 0.0
        self.blocked_time = 0.0
        self._finished: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()

    def submit(self, model: Any, *, epoch: int, step: int = 0, is_last: bool = False, **context: Any) -> bool:
        """Copy ``model``'s analyzed matrices and queue their analysis; False (warned) if the copy failed.
        ``context`` goes to the engine's ``prepare`` (``collective``: the ranks to share the layers with)."""
        start = time.perf_counter()
        try:
            job = self._prepare(model, epoch=epoch, step=step, is_last=is_last, **context)
            if job is None:
                return False
            self.copy_time += time.perf_counter() - start
            self.training = True
            self.worker.submit(lambda: self._keep(self._run(job)))
            self.submitted += 1
            return True
        finally:
            self.blocked_time += time.perf_counter() - start

    def run_later(self, job: Callable[[], Any]) -> None:
        """Run ``job`` on the worker after what is queued, without waiting for a free place (its result is not
        kept): work that follows an analysis, such as writing the sinks."""
        self.worker.submit(job, wait=False)

    def _run(self, job: Callable[[], Any]) -> Any:
        cap = self.threads or free_cores()
        with capped_threads(lambda: cap if self.training else None):
            return job()

    def _keep(self, result: Any) -> None:
        with self._lock:
            self._finished.append(result)

    def collect(self) -> list[Any]:
        """What the jobs finished since the last call returned, oldest first."""
        with self._lock:
            out = list(self._finished)
            self._finished.clear()
        return out

    @property
    def pending(self) -> int:
        """Analyses queued or running."""
        return self.worker.pending

    def finish(self, timeout: float | None = None, *, interrupted: bool = False) -> bool:
        """Wait for the pending analyses (``interrupted``: drop the queued ones, wait only for the running one,
        at most `interrupt_timeout`); True when none is left. One left running is abandoned with a warning (its
        daemon thread never keeps the process alive); the finished ones are all kept already."""
        self.training = False  # the caller waits: the analysis may take every core now
        dropped = self.worker.drop_queued() if interrupted else 0
        if timeout is None:
            timeout = self.interrupt_timeout if interrupted else self.finish_timeout
        idle = self.worker.wait_idle(timeout)
        if dropped or not idle:
            running = "" if idle else f"; the running one was abandoned after {timeout:g} s"
            self._warn(f"background analysis: {dropped} queued analyses dropped{running}")
        return idle

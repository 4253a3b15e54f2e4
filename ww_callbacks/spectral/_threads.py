"""BLAS threads sized to the work, for exactly the duration of an analysis.

numpy's and scipy's BLAS (OpenBLAS in their wheels) keep thread pools of their own, separate from the training
framework's (torch's OpenMP, TensorFlow's Eigen, XLA). A multi-threaded call on a small matrix wakes those threads,
and after it they spin waiting for more work, on the very cores the training threads need: with OpenBLAS's Haswell
kernels (what AVX2 CPUs run) the callback made the rest of a small training run more than twice slower, while its
own hook took 10 ms per epoch. Small matrices do not pay for threads anyway, so the analysis runs with one BLAS
thread; a layer whose matrices are large enough (`threads_pay`) computes its Gram matrices in tiles on the user's
number of threads (each tile a single-threaded product: the same numbers on any number of threads, see
`ww_callbacks.spectral.esd`) and gives its eigensolver the user's BLAS threads from 2048 rows on, where they pay. Nothing global is left changed: the user's limits are restored when the analysis ends, and
an analysis never raises a limit above the user's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: A slice needs at least this smaller side, and `PARALLEL_MIN_FLOPS`, for more than one BLAS thread to pay.
PARALLEL_MIN_SIDE = 384
#: ... and this many flops (``rows * cols * min(rows, cols)``: its Gram matrix and diagonalization).
PARALLEL_MIN_FLOPS = 1 << 27

#: A symmetric eigensolver gets more than one thread only from this size on: below it threads gain little (768:
#: 1.15x, 1024: 1.4x on 2 cores) and, unlike products, its result depends on the thread count.
EIG_PARALLEL_MIN_SIDE = 2048

_lock = threading.Lock()
_controller: Any = None  # threadpoolctl controller of the BLAS libraries, built once; False if unavailable
_local = threading.local()  # per thread: the cap a background worker puts on its layers' threads


def _blas_controller() -> Any:
    """The threadpoolctl controller of the loaded BLAS libraries (numpy's, scipy's), or None.

    Built once per process (a scan of the loaded shared libraries costs milliseconds); numpy's and scipy's BLAS
    are loaded when the core is imported, so later libraries are not ours to limit.
    """
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                try:
                    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, which the core also calls)
                    from threadpoolctl import ThreadpoolController

                    _controller = ThreadpoolController().select(user_api="blas")
                except Exception as exc:  # an exotic platform: analyze with the BLAS settings as they are
                    log.debug("no BLAS thread control (%r)", exc)
                    _controller = False
    return _controller or None


@contextlib.contextmanager
def capped_threads(limit: Callable[[], int | None]) -> Iterator[None]:
    """Inside the block (in this thread), the Gram products of a layer run on at most ``limit()`` threads, asked
    again at each product (None: no cap). A background worker uses it to leave the training threads their cores
    while training runs, and to take them all once training waits for it. The numbers do not change: the products
    are computed in fixed tiles whatever the thread count (`ww_callbacks.spectral.esd`), and the eigensolvers keep
    the threads a synchronous analysis gives them (`for_eigensolver`).

    Example:
        >>> with capped_threads(lambda: 1):
        ...     product_threads()
        1
    """
    previous = getattr(_local, "cap", None)
    _local.cap = limit
    try:
        yield
    finally:
        _local.cap = previous


def layer_pays() -> bool:
    """Whether the current layer pays for threads (`AnalysisThreads.for_slices`): its Gram products are then
    computed in tiles, in a synchronous analysis and a background one alike, whatever the cap."""
    return getattr(_local, "layer_threads", 1) > 1


def product_threads() -> int:
    """How many threads the current layer's Gram products may use: the user's BLAS threads for a layer that
    `threads_pay`, else one; at most the cap of `capped_threads`."""
    threads = getattr(_local, "layer_threads", 1)
    cap = getattr(_local, "cap", None)
    most = None if cap is None else cap()
    return max(1, threads if most is None else min(threads, most))


@contextlib.contextmanager
def for_eigensolver(side: int) -> Iterator[None]:
    """Around a symmetric eigensolver (or SVD) of size ``side``: one BLAS thread below `EIG_PARALLEL_MIN_SIDE`,
    the user's threads from it on for a layer that `threads_pay`, in a synchronous analysis and a background one
    alike (the result depends on the thread count: both must give the same numbers)."""
    threads = getattr(_local, "layer_threads", 1)
    controller = _blas_controller()
    if side < EIG_PARALLEL_MIN_SIDE or controller is None or threads <= 1:
        yield
        return
    with controller.limit(limits=_local.user_limits):
        yield


def threads_pay(slice_shape: tuple[int, int]) -> bool:
    """True when a layer's slices are large enough for more than one BLAS thread to pay.

    Example:
        >>> threads_pay((64, 784)), threads_pay((4096, 4096))
        (False, True)
    """
    rows, cols = slice_shape
    side = min(rows, cols)
    return side >= PARALLEL_MIN_SIDE and rows * cols * side >= PARALLEL_MIN_FLOPS


class AnalysisThreads:
    """One BLAS thread while the block runs, the user's own number inside `for_slices` of large slices.

    Re-entrant within one thread and a no-op when threadpoolctl cannot control the BLAS; the limits found on
    entry are restored on exit. Example:

        >>> with AnalysisThreads() as threads:
        ...     with threads.for_slices((2048, 2048)):
        ...         pass
    """

    def __init__(self) -> None:
        self._controller = _blas_controller()
        self._limiter: Any = None
        self._user: dict[str, int] = {}

    def __enter__(self) -> AnalysisThreads:
        if self._controller is not None:
            self._user = {
                lib.filepath: n for lib in self._controller.lib_controllers if (n := lib.num_threads)
            }
            if any(n > 1 for n in self._user.values()):
                self._limiter = self._controller.limit(limits=1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._limiter is not None:
            self._limiter.__exit__(None, None, None)
            self._limiter = None

    @contextlib.contextmanager
    def for_slices(self, slice_shape: tuple[int, int]) -> Iterator[None]:
        """Inside the block, the layer may use the user's number of threads when `threads_pay` for its slices:
        its Gram products on that many threads (`product_threads`), its large eigensolvers with that many BLAS
        threads (`for_eigensolver`); BLAS itself stays on one thread otherwise."""
        if self._limiter is None or not threads_pay(slice_shape):
            yield
            return
        _local.layer_threads, _local.user_limits = max(self._user.values(), default=1), self._user
        try:
            yield
        finally:
            _local.layer_threads = 1

"""BLAS threads sized to the work, for exactly the duration of an analysis.

numpy's and scipy's BLAS (OpenBLAS in their wheels) keep thread pools of their own, separate from the training
framework's (torch's OpenMP, TensorFlow's Eigen, XLA). A multi-threaded call on a small matrix wakes those threads,
and after it they spin waiting for more work, on the very cores the training threads need: with OpenBLAS's Haswell
kernels (what AVX2 CPUs run) the callback made the rest of a small training run more than twice slower, while its
own hook took 10 ms per epoch. Small matrices do not pay for threads anyway, so the analysis runs with one BLAS
thread and gives a layer the user's own number of threads back only where its matrices are large enough to use
them (`threads_pay`). Nothing global is left changed: the user's limits are restored when the analysis ends, and
an analysis never raises a limit above the user's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: A slice needs at least this smaller side, and `PARALLEL_MIN_FLOPS`, for more than one BLAS thread to pay.
PARALLEL_MIN_SIDE = 384
#: ... and this many flops (``rows * cols * min(rows, cols)``: its Gram matrix and diagonalization).
PARALLEL_MIN_FLOPS = 1 << 27

_lock = threading.Lock()
_controller: Any = None  # threadpoolctl controller of the BLAS libraries, built once; False if unavailable


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
        """The user's number of BLAS threads inside the block when `threads_pay` for these slices."""
        if self._limiter is None or not threads_pay(slice_shape):
            yield
            return
        with self._controller.limit(limits=self._user):
            yield

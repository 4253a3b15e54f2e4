"""Eigenvalues of stacks of weight slices, and element shuffles of those slices.

Eigenvalues are squared singular values, computed in float64 (weightwatcher's convention, no normalization).
We take the Gram route: ``eigvalsh(WᵀW)`` on the smaller side, several times faster than an SVD. In float64 it
keeps every eigenvalue to about ``n·eps·lambda_max`` absolute, so the spectrum, the fit and the norms match an SVD
to ~1e-12; only the smallest singular values of ill-conditioned slices lose relative accuracy. Slices whose
smallest eigenvalue is within `RANK_DEFICIENT_MARGIN` of the Gram route's rounding noise (numerically
rank-deficient) are recomputed with an SVD, so ranks and ``sv_min`` stay right where they matter. Torch tensors stay on their device; only the
eigenvalues come back.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._threads import for_eigensolver, layer_pays, product_threads
from .frameworks import is_torch_tensor

#: Slices with at least this many entries take the blocked Gram route (no whole float64 copy).
BLOCKED_MIN_ENTRIES = 1 << 20
#: Size of one float64 block of rows in the blocked route.
BLOCK_BYTES = 32 << 20
#: Size of the float64 copy of one chunk of (small) slices in the batched route.
CHUNK_BYTES = 8 << 20
#: Slices whose smallest Gram eigenvalue is within this factor of the Gram route's rounding noise
#: (``n * eps * lambda_max``) are numerically rank-deficient and are recomputed with an SVD...
RANK_DEFICIENT_MARGIN = 10.0
#: ...unless their smaller side exceeds this: an SVD that large costs several Gram routes (13 s vs 4 s at 4096).
SVD_FALLBACK_MAX_SIDE = 2048
#: Height of the row tiles in which the Gram matrices of layers that pay for threads are computed.
GRAM_TILE = 256
_EPS = float(np.finfo(np.float64).eps)


#: The eigensolvers: numpy on the host, torch where the weights live, or torch only for accelerator tensors.
EIGENSOLVERS = ("auto", "numpy", "torch")


def for_solver(stack: Any, eigensolver: str = "auto") -> Any:
    """``stack`` in the library that computes its eigenvalues.

    ``"numpy"``: a numpy array on the host (a torch tensor is copied off its device). ``"torch"``: a torch tensor
    on the weights' own device (numpy arrays become CPU tensors without a copy). ``"auto"``: torch for tensors on
    an accelerator, numpy otherwise: a CPU torch tensor becomes a numpy view (numpy's LAPACK path is faster than
    torch's on the CPU, most of all for the many small matrices of typical layers).

    Example:
        >>> for_solver(np.eye(2)[None]).shape
        (1, 2, 2)
    """
    if eigensolver == "torch":
        if is_torch_tensor(stack):
            return stack.detach()
        import torch

        return torch.from_numpy(np.ascontiguousarray(stack))
    if is_torch_tensor(stack) and (eigensolver == "numpy" or stack.device.type == "cpu"):
        return stack.detach().cpu().numpy()
    return stack


def all_finite(stack: Any) -> bool:
    """True when every entry of the stack is finite (NaN/Inf weights are reported, not analyzed)."""
    if is_torch_tensor(stack):
        import torch

        return bool(torch.isfinite(stack).all().item())
    return bool(np.isfinite(stack).all())


def to_float64(stack: Any, scale: float = 1.0) -> Any:
    """The stack as float64 (same library and device), multiplied by ``scale``."""
    if is_torch_tensor(stack):
        import torch

        out = stack.to(dtype=torch.float64)
    else:
        out = np.asarray(stack, dtype=np.float64)
    if scale != 1.0:
        out = out * scale
    return out


def slice_eigenvalues(stack: Any, scale: float = 1.0, dtype: str = "float64") -> np.ndarray:
    """Eigenvalues of ``scale * slice`` for every slice of ``(rf, rows, cols)``: ``(rf, min(rows, cols))``, ascending.

    Computed in float64 whatever the input dtype (``dtype="float32"``: in float32, torch tensors only, returned
    as float64). numpy: large slices never exist in float64 as a whole: their Gram matrix is accumulated block by
    block (a symmetric rank-k update, half the flops of a matrix product) and diagonalized in place, so the peak
    memory is about one Gram matrix plus one block. torch: on the tensor's device; only the eigenvalues come back.

    Example:
        >>> slice_eigenvalues(np.diag([3.0, 4.0])[None])
        array([[ 9., 16.]])
    """
    rows, cols = int(stack.shape[-2]), int(stack.shape[-1])
    if is_torch_tensor(stack):
        evals = _torch_eigenvalues(stack, scale, dtype)
    elif rows * cols >= BLOCKED_MIN_ENTRIES:
        evals = np.stack([_blocked_gram_eigenvalues(np.asarray(s), scale) for s in stack])
        bad = _ill_conditioned(evals)
        for i in np.flatnonzero(bad):
            with for_eigensolver(min(rows, cols)):
                evals[i] = np.linalg.svd(to_float64(np.asarray(stack[i]), scale), compute_uv=False)[::-1] ** 2
    else:
        # batched over slices, a chunk at a time so that the float64 copies stay small
        per_chunk = max(1, CHUNK_BYTES // (8 * rows * cols))
        if len(stack) <= per_chunk:
            evals = _batched_eigenvalues(stack, scale)
        else:
            evals = np.concatenate(
                [
                    _batched_eigenvalues(stack[lo : lo + per_chunk], scale)
                    for lo in range(0, len(stack), per_chunk)
                ]
            )
    # rounding can leave tiny negative eigenvalues of (numerically) singular slices
    return np.maximum(np.asarray(evals, dtype=np.float64), 0.0)


def lowrank_eigenvalues(left: Any, right: Any, scale: float = 1.0) -> np.ndarray:
    """The nonzero eigenvalues of ``(scale * left @ right)^T (scale * left @ right)`` from the factors alone
    (``left``: rows x r, ``right``: r x cols), ``(1, r)`` ascending: the singular values of the r x r matrix
    ``R_left R_right^T`` of two thin QR factorizations, squared. A LoRA update ``B @ A`` of a 4096 x 4096 layer
    costs a few r x 4096 products this way instead of a 4096 x 4096 eigendecomposition.

    Example:
        >>> left, right = np.array([[1.0], [0.0]]), np.array([[0.0, 2.0, 0.0]])
        >>> lowrank_eigenvalues(left, right)
        array([[4.]])
    """
    b = np.asarray(left.detach().cpu() if hasattr(left, "detach") else left, dtype=np.float64)
    a = np.asarray(right.detach().cpu() if hasattr(right, "detach") else right, dtype=np.float64)
    r_b: np.ndarray = np.linalg.qr(b, mode="r")  # type: ignore[assignment]  # mode="r": R alone
    r_a: np.ndarray = np.linalg.qr(a.T, mode="r")  # type: ignore[assignment]
    singular = np.linalg.svd(np.asarray(r_b @ r_a.T, dtype=np.float64), compute_uv=False) * scale
    return np.sort(singular**2)[None, :]


def _torch_eigenvalues(stack: Any, scale: float, dtype: str) -> np.ndarray:
    """The Gram route in torch, on the tensor's device, in ``dtype``; numerically rank-deficient slices by SVD."""
    import torch

    rows, cols = int(stack.shape[-2]), int(stack.shape[-1])
    with torch.no_grad():
        w = stack.to(dtype=torch.float32 if dtype == "float32" else torch.float64)
        if scale != 1.0:
            w = w * scale
        gram = w.mT @ w if rows >= cols else w @ w.mT
        evals = torch.linalg.eigvalsh(gram).double().cpu().numpy()
        del gram
        bad = _ill_conditioned(evals, float(torch.finfo(w.dtype).eps))
        if bad.any():
            idx = torch.from_numpy(np.flatnonzero(bad)).to(w.device)
            evals[bad] = torch.linalg.svdvals(w[idx]).double().square().flip(-1).cpu().numpy()
    return evals


def _batched_eigenvalues(stack: Any, scale: float) -> np.ndarray:
    w = to_float64(np.asarray(stack), scale)
    rows, cols = w.shape[-2:]
    t = np.swapaxes(w, -1, -2)
    if not layer_pays():  # one BLAS thread, in every mode: one batched product
        gram = np.matmul(t, w) if rows >= cols else np.matmul(w, t)
    else:
        gram = _gram(w if rows >= cols else t)
    with for_eigensolver(gram.shape[-1]):
        evals = np.linalg.eigvalsh(gram)
        del gram
        bad = _ill_conditioned(evals)
        if bad.any():
            evals[bad] = np.linalg.svd(w[bad], compute_uv=False)[..., ::-1] ** 2
    return evals


def _blocked_gram_eigenvalues(w: np.ndarray, scale: float) -> np.ndarray:
    """Eigenvalues of the Gram matrix of one large slice, accumulated over row blocks in float64."""
    from scipy.linalg import eigh

    tall = w if w.shape[0] >= w.shape[1] else w.T  # the Gram matrix is on the smaller side
    k = tall.shape[1]
    gram = np.zeros((k, k), dtype=np.float64)
    step = max(1, BLOCK_BYTES // (8 * k))
    for start in range(0, tall.shape[0], step):
        block = np.array(tall[start : start + step], dtype=np.float64)
        if scale != 1.0:
            block *= scale
        _gram(
            block[None], out=gram[None], upper=True
        )  # gram += blockᵀ·block, upper triangle (what eigh reads)
    with for_eigensolver(k):
        return eigh(gram, lower=False, eigvals_only=True, overwrite_a=True, check_finite=False, driver="evd")


def _gram(tall: np.ndarray, *, out: np.ndarray | None = None, upper: bool = False) -> np.ndarray:
    """``tᵀ·t`` for every tall slice ``t`` of the stack ``tall`` (added to ``out`` when given; ``upper``: only the
    parts on and above the diagonal), by row tiles of `GRAM_TILE`, each one single-threaded product, run on
    `product_threads` threads.

    The tiles depend only on the shape, never on how many threads compute them: a synchronous analysis and one in
    a background worker (which leaves the training threads their cores) give the same numbers. A product split by
    BLAS itself is not so: OpenBLAS splits some products' sums among its threads.
    """
    count, _, k = tall.shape
    gram = np.empty((count, k, k)) if out is None else out

    def tile(index: int, lo: int, hi: int) -> None:  # rows lo:hi of the Gram matrix (contiguous in memory)
        columns = slice(lo, k) if upper else slice(0, k)
        if out is None:  # written in place: no temporary
            np.matmul(tall[index][:, lo:hi].T, tall[index], out=gram[index, lo:hi, :])
        else:
            gram[index, lo:hi, columns] += tall[index][:, lo:hi].T @ tall[index][:, columns]

    spans = [
        (lo, min(lo + GRAM_TILE, k)) for lo in range(0, k, GRAM_TILE)
    ]  # with ``upper``: the largest first
    jobs = [functools.partial(tile, index, lo, hi) for index in range(count) for lo, hi in spans]
    threads = min(product_threads(), len(jobs))
    if threads <= 1:
        for job in jobs:
            job()
    else:  # numpy releases the GIL in each product
        groups = [jobs[first::threads] for first in range(threads)]
        list(_tile_pool().map(lambda group: [job() for job in group], groups))
    return gram


@functools.lru_cache(maxsize=1)
def _tile_pool() -> ThreadPoolExecutor:
    """The threads the tiles of large Gram matrices run on, started once (at most one per CPU are ever busy)."""
    return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="ww-callbacks-gram")


def _ill_conditioned(evals: np.ndarray, eps: float = _EPS) -> np.ndarray:
    n = evals.shape[1]
    noise = n * eps * evals[:, -1]
    return (evals[:, 0] < RANK_DEFICIENT_MARGIN * noise) & (n <= SVD_FALLBACK_MAX_SIDE)


def shuffled_copies(stack: Any, rng: np.random.Generator, copies: int, *, in_place: bool = False) -> Any:
    """``copies`` independent element shuffles of every slice, stacked to ``(copies*rf, rows, cols)``.

    Each slice is permuted within itself in C order, so Σλ is preserved exactly. ``in_place`` (one copy of a
    numpy stack the caller no longer needs) shuffles the stack itself: the same permutations, no second copy.
    """
    rf, rows, cols = (int(s) for s in stack.shape)
    if is_torch_tensor(stack):
        import torch

        # The permutations numpy would apply, drawn from our generator and applied on the tensor's device: the
        # torch path shuffles exactly as the numpy path does (the draws depend on the generator and the slice size
        # only), so both give the same randomized columns.
        flat = stack.reshape(rf, rows * cols)
        order = np.broadcast_to(np.arange(rows * cols), (rf, rows * cols))
        out = [
            torch.gather(flat, 1, torch.from_numpy(rng.permuted(order, axis=1)).to(stack.device))
            for _ in range(copies)
        ]
        return torch.cat(out).reshape(copies * rf, rows, cols)
    flat = np.asarray(stack).reshape(rf, rows * cols)
    if in_place and copies == 1 and flat.flags.writeable:
        return rng.permuted(flat, axis=1, out=flat).reshape(rf, rows, cols)
    out_np = np.empty((copies, rf, rows * cols), dtype=flat.dtype)
    for c in range(copies):
        out_np[c] = rng.permuted(flat, axis=1)
    return out_np.reshape(copies * rf, rows, cols)


def shuffled_eigenvalues(
    stack: Any,
    rng: np.random.Generator,
    copies: int,
    scale: float = 1.0,
    *,
    in_place: bool = False,
    dtype: str = "float64",
) -> np.ndarray:
    """``slice_eigenvalues(shuffled_copies(stack, rng, copies), scale)``, the same numbers with less work.

    For numpy stacks of slices below the blocked route's size, each chunk of slices is shuffled inside its float64
    copy: no shuffled copy of the whole stack, no second conversion, and numpy shuffles 8-byte items faster than
    4-byte ones. The permutation drawn depends only on the generator and the slice size, not on the item type,
    so the shuffles are exactly those of `shuffled_copies`. ``in_place`` as there (large slices: no second copy).

    Example:
        >>> w = np.arange(6.0).reshape(1, 2, 3)
        >>> a = shuffled_eigenvalues(w, np.random.default_rng(0), 2)
        >>> b = slice_eigenvalues(shuffled_copies(w, np.random.default_rng(0), 2))
        >>> bool((a == b).all())
        True
    """
    rf, rows, cols = (int(s) for s in stack.shape)
    if is_torch_tensor(stack) or rows * cols >= BLOCKED_MIN_ENTRIES:
        return slice_eigenvalues(shuffled_copies(stack, rng, copies, in_place=in_place), scale, dtype)
    flat = np.asarray(stack).reshape(rf, rows * cols)
    per_chunk = max(1, CHUNK_BYTES // (8 * rows * cols))
    parts = []
    for _ in range(copies):  # copy after copy, slice after slice: the order of `shuffled_copies`' draws
        for lo in range(0, rf, per_chunk):
            chunk = np.array(flat[lo : lo + per_chunk], dtype=np.float64)  # always a copy: shuffled in place
            if scale != 1.0:
                chunk *= scale
            rng.permuted(chunk, axis=1, out=chunk)
            parts.append(_batched_eigenvalues(chunk.reshape(-1, rows, cols), 1.0))
    evals = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.maximum(evals, 0.0, out=evals)


def shuffled_copies_legacy(stack: Any, rng: np.random.RandomState, copies: int) -> Any:
    """As `shuffled_copies`, drawing each slice's permutation from a legacy ``RandomState`` in weightwatcher's order.

    weightwatcher shuffles each flattened slice in place with the global RandomState, slice after slice, replica
    after replica; ``rng.permutation(size)`` draws exactly the same permutation, so a RandomState in the same
    state reproduces its shuffles bit for bit.
    """
    rf, rows, cols = (int(s) for s in stack.shape)
    perms = np.stack([rng.permutation(rows * cols) for _ in range(copies * rf)])
    if is_torch_tensor(stack):
        import torch

        flat = stack.reshape(rf, rows * cols).repeat(copies, 1)
        idx = torch.from_numpy(perms).to(stack.device)
        return torch.gather(flat, 1, idx).reshape(copies * rf, rows, cols)
    flat = np.asarray(stack).reshape(rf, rows * cols)
    tiled = np.tile(flat, (copies, 1))
    return np.take_along_axis(tiled, perms, axis=1).reshape(copies * rf, rows, cols)

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

import sys
from typing import Any

import numpy as np

#: Slices whose smallest Gram eigenvalue is within this factor of the Gram route's rounding noise
#: (``n * eps * lambda_max``) are numerically rank-deficient and are recomputed with an SVD.
RANK_DEFICIENT_MARGIN = 1e3


def is_torch_tensor(obj: Any) -> bool:
    """True for a torch tensor, without importing torch when it was never imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def on_host_as_numpy(stack: Any) -> Any:
    """A CPU torch tensor as a numpy view (numpy's LAPACK path is faster than torch's on the CPU, most of all for
    the small matrices of typical layers); tensors on an accelerator stay where they are."""
    if is_torch_tensor(stack) and stack.device.type == "cpu":
        return stack.detach().numpy()
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


def slice_eigenvalues(stack: Any) -> np.ndarray:
    """Eigenvalues of every slice of a float64 stack ``(rf, rows, cols)``: array ``(rf, min(rows, cols))``, ascending.

    Example:
        >>> slice_eigenvalues(np.diag([3.0, 4.0])[None])
        array([[ 9., 16.]])
    """
    rows, cols = int(stack.shape[-2]), int(stack.shape[-1])
    if is_torch_tensor(stack):
        import torch

        with torch.no_grad():
            gram = stack.mT @ stack if rows >= cols else stack @ stack.mT
            evals = torch.linalg.eigvalsh(gram).cpu().numpy()
            del gram
            bad = _ill_conditioned(evals)
            if bad.any():
                idx = torch.from_numpy(np.flatnonzero(bad)).to(stack.device)
                evals[bad] = torch.linalg.svdvals(stack[idx]).square().flip(-1).cpu().numpy()
    else:
        t = np.swapaxes(stack, -1, -2)
        gram = np.matmul(t, stack) if rows >= cols else np.matmul(stack, t)
        evals = np.linalg.eigvalsh(gram)
        del gram
        bad = _ill_conditioned(evals)
        if bad.any():
            evals[bad] = np.linalg.svd(stack[bad], compute_uv=False)[..., ::-1] ** 2
    # rounding can leave tiny negative eigenvalues of (numerically) singular slices
    return np.maximum(np.asarray(evals, dtype=np.float64), 0.0)


def _ill_conditioned(evals: np.ndarray) -> np.ndarray:
    noise = evals.shape[1] * np.finfo(np.float64).eps * evals[:, -1]
    return evals[:, 0] < RANK_DEFICIENT_MARGIN * noise


def shuffled_copies(stack: Any, rng: np.random.Generator, copies: int) -> Any:
    """``copies`` independent element shuffles of every slice, stacked to ``(copies*rf, rows, cols)``.

    Each slice is permuted within itself in C order, so Σλ is preserved exactly.
    """
    rf, rows, cols = (int(s) for s in stack.shape)
    if is_torch_tensor(stack):
        import torch

        # a torch generator seeded from ours: reproducible, on the tensor's device, global RNG untouched
        gen = torch.Generator(device=stack.device)
        gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
        flat = stack.reshape(rf, rows * cols)
        out = []
        for _ in range(copies):
            for s in range(rf):
                perm = torch.randperm(rows * cols, generator=gen, device=stack.device)
                out.append(flat[s][perm])
        return torch.stack(out).reshape(copies * rf, rows, cols)
    flat = np.asarray(stack).reshape(rf, rows * cols)
    out_np = np.empty((copies, rf, rows * cols), dtype=flat.dtype)
    for c in range(copies):
        out_np[c] = rng.permuted(flat, axis=1)
    return out_np.reshape(copies * rf, rows, cols)


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

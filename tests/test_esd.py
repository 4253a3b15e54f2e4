"""Eigenvalue routes of the core: shuffling inside the float64 chunks gives exactly the shuffle-then-diagonalize
numbers, and never touches the weights."""

from __future__ import annotations

import numpy as np
import pytest

from ww_callbacks.spectral import esd


def _stacks():
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    return {
        "dense-float32": rng.standard_normal((1, 64, 784)).astype(np.float32),
        # float64 weights: shuffling a view instead of a copy would change them
        "dense-float64": rng.standard_normal((1, 50, 30)),
        "conv-view": np.transpose(conv, (2, 3, 0, 1)).reshape(9, 24, 16),
        "strided-view": rng.standard_normal((4, 40, 30)).astype(np.float32)[:, :, :20],
        "many-chunks": rng.standard_normal((40, 60, 50)).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(_stacks()))
@pytest.mark.parametrize("copies", [1, 5])
@pytest.mark.parametrize("scale", [1.0, 0.5**0.5])
def test_shuffled_eigenvalues_are_those_of_the_shuffled_copies(monkeypatch, name, copies, scale):
    monkeypatch.setattr(esd, "CHUNK_BYTES", 8 * 60 * 50 * 7)  # several chunks per copy for "many-chunks"
    stack = _stacks()[name]
    before = stack.copy()
    got = esd.shuffled_eigenvalues(stack, np.random.default_rng(5), copies, scale)
    expected = esd.slice_eigenvalues(esd.shuffled_copies(stack, np.random.default_rng(5), copies), scale)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(stack, before)


def test_shuffled_eigenvalues_of_torch_tensors_and_large_slices_take_the_general_route():
    torch = pytest.importorskip("torch")
    w = torch.randn(2, 30, 20, generator=torch.Generator().manual_seed(0))
    got = esd.shuffled_eigenvalues(w, np.random.default_rng(1), 2)
    expected = esd.slice_eigenvalues(esd.shuffled_copies(w, np.random.default_rng(1), 2))
    np.testing.assert_array_equal(got, expected)
    big = np.random.default_rng(2).standard_normal((1, 1100, 1000)).astype(np.float32)
    assert big.shape[1] * big.shape[2] >= esd.BLOCKED_MIN_ENTRIES
    got = esd.shuffled_eigenvalues(big, np.random.default_rng(3), 1, 0.5)
    expected = esd.slice_eigenvalues(esd.shuffled_copies(big, np.random.default_rng(3), 1), 0.5)
    np.testing.assert_array_equal(got, expected)

"""BLAS threads during an analysis: one for small layers, the user's own number only for large ones, and the
user's settings back afterwards (numpy's OpenBLAS pool spinning next to the training threads made training
slower outside the hook)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import ww_callbacks
from ww_callbacks.spectral import _threads, esd


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def _seed_mlp(seed: int = 0) -> dict[str, np.ndarray]:
    """The callbacks' seed model, MLP 784-64-64-10 (torch orientation)."""
    rng = np.random.default_rng(seed)
    shapes = {"fc1.weight": (64, 784), "fc2.weight": (64, 64), "fc3.weight": (10, 64)}
    return {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}


def _large_shape() -> tuple[int, int]:
    side = _threads.PARALLEL_MIN_SIDE
    rows = max(side, -(-_threads.PARALLEL_MIN_FLOPS // (side * side)))
    assert _threads.threads_pay((rows, side))
    return rows, side


@pytest.fixture
def two_blas_threads():
    """The user's own setting: two BLAS threads (also on a one-core runner, where OpenBLAS starts with one)."""
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == {2}
        yield


@pytest.fixture
def threads_seen(monkeypatch):
    """(slice shape, BLAS thread limits) at every eigenvalue computation of the analysis."""
    seen: list[tuple[tuple[int, int], set[int]]] = []

    def spying(real):
        def spy(w, scale):
            seen.append((tuple(int(s) for s in np.shape(w)[-2:]), _blas_threads()))
            return real(w, scale)

        return spy

    for name in ("_batched_eigenvalues", "_blocked_gram_eigenvalues"):
        monkeypatch.setattr(esd, name, spying(getattr(esd, name)))
    return seen


def test_small_layers_run_on_one_blas_thread_and_nothing_global_changes(two_blas_threads, threads_seen):
    np.random.seed(3)
    random.seed(3)
    expected = (np.random.random(), random.random())
    np.random.seed(3)
    random.seed(3)
    report = ww_callbacks.analyze(_seed_mlp(), seed=0, traps=False)  # the callbacks' configuration
    assert report.num_summarized == 3
    assert len(threads_seen) == 6  # each layer and its shuffled copy
    assert all(limits == {1} for _, limits in threads_seen)
    assert _blas_threads() == {2}
    assert (np.random.random(), random.random()) == expected


def test_large_layers_get_the_users_threads_back(two_blas_threads, threads_seen):
    rows, cols = _large_shape()
    rng = np.random.default_rng(0)
    weights = {"big.weight": rng.standard_normal((rows, cols)), "small.weight": rng.standard_normal((64, 32))}
    ww_callbacks.analyze(weights, randomize=False)
    assert dict(threads_seen) == {(rows, cols): {2}, (64, 32): {1}}
    assert _blas_threads() == {2}


def test_the_users_limit_is_never_raised(threads_seen):
    rows, cols = _large_shape()
    weights = {"big.weight": np.random.default_rng(0).standard_normal((rows, cols))}
    with threadpool_limits(limits=1, user_api="blas"):
        ww_callbacks.analyze(weights, randomize=False)
        assert _blas_threads() == {1}
    assert threads_seen == [((rows, cols), {1})]


@pytest.mark.parametrize(
    "options",
    [{"n_jobs": 2, "seed": 0}, {"rng": np.random.RandomState(0)}, {"mp_fit": True, "n_random": 2, "seed": 1}],
    ids=["threads-over-layers", "legacy-RandomState", "mp_fit"],
)
def test_every_path_restores_the_limits(two_blas_threads, threads_seen, options):
    rng = np.random.default_rng(1)
    weights = {f"fc{i}.weight": rng.standard_normal((200, 90 + i)) for i in range(6)}
    weights["bad.weight"] = np.full((30, 20), np.nan)
    report = ww_callbacks.analyze(weights, **options)
    assert report["bad"].status == "non-finite"
    assert threads_seen and all(limits == {1} for _, limits in threads_seen)
    assert _blas_threads() == {2}


def test_other_threads_can_still_set_limits_while_an_analyzing_thread_lives():
    """The analysis takes OpenBLAS's "controlling thread" only while it runs (threadpoolctl's rule)."""
    analyzed, release = threading.Event(), threading.Event()

    def worker():
        ww_callbacks.analyze(_seed_mlp(), seed=0)
        analyzed.set()
        release.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert analyzed.wait(60)
        with threadpool_limits(limits=2, user_api="blas"):
            assert _blas_threads() == {2}
            with threadpool_limits(limits=1, user_api="blas"):
                assert _blas_threads() == {1}
    finally:
        release.set()
        thread.join()


def test_without_thread_control_the_analysis_still_runs(monkeypatch, two_blas_threads):
    monkeypatch.setattr(_threads, "_controller", False)  # what an unsupported platform ends up with
    report = ww_callbacks.analyze(_seed_mlp(), seed=0)
    assert report.num_summarized == 3
    assert _blas_threads() == {2}


def test_results_do_not_depend_on_the_users_thread_setting():
    def rows(limit: int) -> list[dict]:
        with threadpool_limits(limits=limit, user_api="blas"):
            report = ww_callbacks.analyze(_seed_mlp(), seed=0)
        return [{k: str(v) for k, v in row.items()} for row in report.to_rows()]  # NaN == NaN as text

    assert rows(1) == rows(2)

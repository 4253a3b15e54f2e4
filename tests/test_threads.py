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
            # the BLAS threads, or, for a layer that pays for threads, the threads of its tiled Gram products
            threads = _blas_threads() if _threads.product_threads() == 1 else {_threads.product_threads()}
            seen.append((tuple(int(s) for s in np.shape(w)[-2:]), threads))
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
    # (for their Gram products, computed in tiles on that many threads; BLAS itself stays on one thread)
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


def _threads_at_calls(monkeypatch) -> dict[str, list]:
    """The threads each tiled Gram product (`product_threads`) and each eigensolver (BLAS threads) ran with."""
    seen: dict[str, list] = {"product": [], "eigensolver": []}
    gram, eigvalsh = esd._gram, np.linalg.eigvalsh

    def counted_gram(*args, **kwargs):
        seen["product"].append(_threads.product_threads())
        return gram(*args, **kwargs)

    def counted_eig(*args, **kwargs):
        seen["eigensolver"].append(_blas_threads())
        return eigvalsh(*args, **kwargs)

    monkeypatch.setattr(esd, "_gram", counted_gram)
    monkeypatch.setattr(esd.np.linalg, "eigvalsh", counted_eig)
    return seen


def test_a_background_cap_limits_only_the_products_and_changes_no_number(two_blas_threads, monkeypatch):
    rows, side = _large_shape()
    weights = {"big.weight": np.random.default_rng(4).standard_t(4, size=(rows, side))}
    free = ww_callbacks.analyze(weights, seed=0, traps=False)
    seen = _threads_at_calls(monkeypatch)
    with _threads.capped_threads(lambda: 1):
        capped = ww_callbacks.analyze(weights, seed=0, traps=False)
    # products capped to one thread; the eigensolver below EIG_PARALLEL_MIN_SIDE on one in both modes
    assert side < _threads.EIG_PARALLEL_MIN_SIDE
    assert seen["product"] and all(threads == 1 for threads in seen["product"])
    assert seen["eigensolver"] and all(threads == {1} for threads in seen["eigensolver"])
    np.testing.assert_equal(free.to_rows(), capped.to_rows())  # exactly the same numbers (NaN == NaN)
    assert _blas_threads() == {2}


def test_without_a_cap_large_layers_multiply_with_the_users_threads(two_blas_threads, monkeypatch):
    rows, side = _large_shape()
    seen = _threads_at_calls(monkeypatch)
    ww_callbacks.analyze({"big.weight": np.ones((rows, side)) + np.eye(rows, side)}, seed=0, traps=False)
    assert seen["product"] and all(threads == 2 for threads in seen["product"])
    assert all(threads == {1} for threads in seen["eigensolver"])  # the same as under a cap: the same numbers


def test_a_background_analysis_on_capped_threads_gives_the_synchronous_numbers():
    # (no limits context here: OpenBLAS 0.3.30 ignores limits set by the worker thread while another thread holds
    # one, which training never does)
    from ww_callbacks.engine import SpectralMonitor

    rows, side = _large_shape()
    weights = {"big.weight": np.random.default_rng(5).standard_normal((rows, side))}
    monitor = SpectralMonitor(seed=0, background=True, per_layer=True)
    monitor.background.threads = 1  # as on a machine whose cores torch all uses
    monitor.background.submit(weights, epoch=0)
    assert monitor.background.finish(timeout=120)
    assert monitor.background.training is False  # the caller waited: the cap is lifted
    sync = SpectralMonitor(seed=0, per_layer=True).run(weights, epoch=0)
    assert [r.metrics for r in monitor.background.collect()] == [sync.metrics]

"""Keras step schedules (``every_n_batches``) and background analysis in real ``model.fit`` runs (every backend)."""

from __future__ import annotations

import csv
import math
import time

import pytest

keras = pytest.importorskip("keras")

from _keras_utils import (  # noqa: E402
    SetKernel,
    compile_model,
    heavy_tailed,
    make_data,
    single_dense,
    tiny_mlp,
)
from test_background import SlowRule, analysis_threads, numbers  # noqa: E402

import ww_callbacks  # noqa: E402
from ww_callbacks.keras import WeightWatcherCallback  # noqa: E402

pytestmark = pytest.mark.keras

# 64 samples in batches of 16: 4 batches per epoch.
X, Y = make_data(64)


class BatchLogs(keras.callbacks.Callback):
    """Records (global batch number, ww/alpha) wherever a batch's logs carry it (put it after ours)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, float]] = []
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if logs and "ww/alpha" in logs:
            self.seen.append((self.count, float(logs["ww/alpha"])))


class RaiseAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, epoch: int, error: type[BaseException]) -> None:
        super().__init__()
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise self.error("stop here")


def test_every_n_batches_counts_batches_across_epochs(tmp_path):
    ww = WeightWatcherCallback(
        every_n_batches=3, seed=0, metrics=("alpha",), history_path=tmp_path / "h.jsonl"
    )
    batches = BatchLogs()
    model = compile_model(tiny_mlp())
    model.fit(
        X, Y, batch_size=16, epochs=3, verbose=0,
        callbacks=[ww, batches, keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))],
    )  # fmt: skip
    assert [(h["epoch"], h["step"]) for h in ww.history] == [(0, 3), (1, 6), (2, 9), (2, 12)]
    alphas = [h["alpha"] for h in ww.history]
    # the analyzed batches' logs carry the values (TensorBoard(update_freq=3) would see them there)
    assert batches.seen == [(3, pytest.approx(alphas[0])), (6, pytest.approx(alphas[1])),
                            (9, pytest.approx(alphas[2])), (12, pytest.approx(alphas[3]))]  # fmt: skip
    # CSVLogger: one row per epoch with the latest analysis of that epoch
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["ww/alpha"]) for r in rows] == pytest.approx([alphas[0], alphas[1], alphas[3]], rel=1e-6)
    history = ww_callbacks.load_history(tmp_path / "h.jsonl", as_pandas=False)
    assert sorted({(r["epoch"], r["step"]) for r in history}) == [(0, 3), (1, 6), (2, 9), (2, 12)]


def test_step_and_epoch_schedules_are_exclusive():
    with pytest.raises(ValueError, match="set one of every_n_epochs=1 / every_n_batches=4, not both"):
        WeightWatcherCallback(every_n_epochs=1, every_n_batches=4)


@pytest.mark.parametrize(
    "schedule", [{"every_n_epochs": 1}, {"every_n_batches": 3}], ids=["epochs", "batches"]
)
def test_background_gives_exactly_the_synchronous_numbers(schedule):
    # lr=0: only SetKernel changes the weights, so both runs see the same weights at every analysis.
    kernels = [heavy_tailed((120, 60), df, seed=i) for i, df in enumerate((3.0, 5.0, 8.0, 20.0))]
    x, y = make_data(64, d_in=120, d_out=60)
    histories, logged = {}, {}
    for background in (False, True):
        ww = WeightWatcherCallback(seed=5, per_layer=True, background=background, **schedule)
        model = compile_model(single_dense(), lr=0.0)
        h = model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[SetKernel("fc", kernels), ww])
        histories[background], logged[background] = ww.history, h.history["ww/alpha"]
        assert not analysis_threads()
    assert len(histories[False]) == (4 if "every_n_epochs" in schedule else 5)
    assert numbers(histories[True]) == numbers(histories[False])
    assert [h["background_waits"] >= 0 for h in histories[True]] == [True] * len(histories[True])
    # the logs: synchronous values at their epoch; background ones at a later epoch end (the first is waited for)
    sync_values, bg_values = logged[False], logged[True]
    if "every_n_epochs" in schedule:
        assert bg_values[0] == sync_values[0]
        for epoch, value in enumerate(bg_values[1:], start=1):
            assert math.isnan(value) or value in sync_values[:epoch]


def test_background_restores_the_same_best_weights_as_synchronous():
    # alpha falls, then rises: the best (lowest) alpha is at epoch 2; the weights kept are those analyzed then,
    # although the background result of epoch 2 arrives after training changed them again.
    kernels = [heavy_tailed((120, 60), df, seed=0) for df in (20.0, 6.0, 8.0, 3.0, 30.0)]
    alphas = [ww_callbacks.analyze({"fc.weight": k}, randomize=False).summary["alpha"] for k in kernels]
    assert min(range(5), key=alphas.__getitem__) == 2
    x, y = make_data(64, d_in=120, d_out=60)
    kept = {}
    for background in (False, True):
        rule = ww_callbacks.stopping.Plateau("alpha", mode="min", patience=10)
        ww = WeightWatcherCallback(
            seed=1, early_stopping=rule, restore_best_weights=True, background=background
        )
        model = compile_model(single_dense(), lr=0.0)
        model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[SetKernel("fc", kernels), ww])
        assert ww.best_epoch == 2
        kept[background] = model.get_layer("fc").kernel.numpy()
        assert not analysis_threads()
    assert (kept[True] == kernels[2]).all() and (kept[False] == kernels[2]).all()


def test_background_stop_reaches_the_model_at_a_later_hook():
    kernels = [heavy_tailed((120, 60), 3.0, seed=0)] * 6
    x, y = make_data(64, d_in=120, d_out=60)
    ww = WeightWatcherCallback(
        seed=0,
        background=True,
        early_stopping=ww_callbacks.stopping.Plateau("alpha", patience=1, min_delta=1.0),
    )
    model = compile_model(single_dense(), lr=0.0)
    h = model.fit(x, y, batch_size=16, epochs=6, verbose=0, callbacks=[SetKernel("fc", kernels), ww])
    # the second analysis (epoch 1) says stop; its result arrives at epoch 1's or epoch 2's end
    assert ww.stopped_epoch == 1 and len(h.history["loss"]) in (2, 3)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_fit_that_raises_mid_analysis_leaves_a_complete_history_and_no_thread(error, tmp_path):
    ww = WeightWatcherCallback(
        seed=0, background=True, early_stopping=SlowRule(1.0), history_path=tmp_path / "h.jsonl"
    )
    model = compile_model(tiny_mlp())
    with pytest.raises(error, match="stop here"):
        model.fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[ww, RaiseAtEpochEnd(1, error)])
    # Keras tells no callback that fit died: the analysis of epoch 1 (in its slow rule) finishes on its own.
    deadline = time.monotonic() + 60
    while analysis_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not analysis_threads()
    assert [h["epoch"] for h in ww.history] == [0, 1]
    rows = ww_callbacks.load_history(tmp_path / "h.jsonl", as_pandas=False)
    layers = {lw.longname for lw in ww.last_report.layers}
    assert [r["epoch"] for r in rows] == [0] * len(layers) + [1] * len(layers)
    assert {r["layer"] for r in rows} == layers and all("alpha" in r for r in rows)

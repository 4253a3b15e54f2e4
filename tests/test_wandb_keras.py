"""End to end: Keras ``model.fit`` with an offline W&B run, ``WandbMetricsLogger`` and the WeightWatcher callback.

The summary keys reach W&B through Keras ``logs`` and ``WandbMetricsLogger`` (as ``epoch/ww/...``), the
per-layer values, table, histograms and images through `WandbSink`; both are read back from the .wandb file.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import wandb
from _wandb_reader import read_run

from ww_callbacks.keras import WeightWatcherCallback

pytestmark = [pytest.mark.keras, pytest.mark.slow]

EPOCHS = 3
METRICS = ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance")


def _model() -> keras.Model:
    init = keras.initializers.GlorotUniform
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(48, activation="tanh", kernel_initializer=init(seed=1), name="hidden0"),
            keras.layers.Dense(32, activation="tanh", kernel_initializer=init(seed=2), name="hidden1"),
            keras.layers.Dense(4, kernel_initializer=init(seed=3), name="head"),  # 4 eigenvalues: too small
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    return model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from wandb.integration.keras import WandbMetricsLogger

    root = tmp_path_factory.mktemp("wandb_keras")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype("float32")
    y = rng.standard_normal((64, 4)).astype("float32")
    run = wandb.init(mode="offline", dir=root, project="ww-callbacks-tests")
    ww = WeightWatcherCallback(seed=0)
    try:
        _model().fit(x, y, epochs=EPOCHS, batch_size=16, verbose=0, callbacks=[ww, WandbMetricsLogger()])
    finally:
        run.finish()
    return ww, read_run(root)


def test_summary_keys_through_logs_equal_history(fitted):
    ww, run = fitted
    assert [h["epoch"] for h in ww.history] == list(range(EPOCHS))
    rows = run.rows_with("epoch/ww/alpha")
    assert [r["epoch/epoch"] for r in rows] == list(range(EPOCHS))
    for entry, row in zip(ww.history, rows, strict=True):
        for metric in METRICS:
            assert row[f"epoch/ww/{metric}"] == pytest.approx(entry[metric], rel=1e-12), metric
    # The sink does not log the summaries a second time.
    assert not run.rows_with("ww/alpha")


def test_per_layer_values_and_media_from_the_sink(fitted):
    ww, run = fitted
    layer_rows = run.rows_with("ww/layers")
    assert [r["epoch"] for r in layer_rows] == list(range(EPOCHS))  # step_metric "epoch", step = epoch
    assert run.metric("ww/*")["step_metric"] == "epoch"
    report = ww.last_report
    assert [layer.status for layer in report.layers][-1] == "too-small"
    last = layer_rows[-1]
    checked = 0
    for layer in report.layers:
        for metric in METRICS:
            value = getattr(layer, metric)
            key = f"ww/{layer.longname}/{metric}"
            if math.isfinite(value):
                assert last[key] == value, key
                checked += 1
            else:
                assert key not in last, key
    assert checked >= 2 * len(METRICS)
    first_layer = report.layers[0].longname
    images = run.rows_with(f"ww/{first_layer}/esd_plot")
    assert [r["epoch"] for r in images] == [0, EPOCHS - 1]  # first and last epoch (5 apart: none between)
    assert run.media_path(images[0][f"ww/{first_layer}/esd_plot"]).read_bytes()[:4] == b"\x89PNG"
    (final,) = run.rows_with("ww/alpha_heatmap")
    assert "ww/summary_plot" in final

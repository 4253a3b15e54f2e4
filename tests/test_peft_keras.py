"""Keras 3 LoRA (``Dense.enable_lora``): the effective kernel ``W + (lora_alpha / rank) A @ B`` and the adapter
update ``A @ B`` of rank ``rank``, against the same analysis of matrices built by hand with numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import ww_callbacks

pytestmark = pytest.mark.keras


def _lora_model() -> tuple[keras.Model, keras.layers.Dense]:
    dense = keras.layers.Dense(
        96, name="adapted", kernel_initializer=keras.initializers.GlorotUniform(seed=1)
    )
    model = keras.Sequential([keras.Input((128,)), dense, keras.layers.Dense(60, name="head")])
    dense.enable_lora(rank=4, lora_alpha=8)
    rng = np.random.default_rng(0)
    dense.lora_kernel_b.assign(rng.normal(scale=0.3, size=(4, 96)).astype("float32"))
    return model, dense


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def test_keras_lora_effective_and_adapters():
    model, dense = _lora_model()
    a, b = _numpy(dense.lora_kernel_a), _numpy(dense.lora_kernel_b)
    effective = _numpy(dense._kernel) + (8 / 4) * (a @ b)
    by_hand = ww_callbacks.analyze({"adapted.weight": effective}, randomize=False)["adapted"]
    ours = ww_callbacks.analyze(model, randomize=False, peft="effective")
    assert [lr.name for lr in ours.layers] == ["adapted", "head"]
    for column in ("alpha", "log_spectral_norm", "stable_rank", "log_norm"):
        assert getattr(ours["adapted"], column) == pytest.approx(getattr(by_hand, column), rel=1e-5)

    adapters = ww_callbacks.analyze(model, randomize=False)  # "auto": the adapters
    (update,) = adapters.layers
    assert update.longname.endswith("adapted.lora_BA") and update.num_evals == 4
    expected = ww_callbacks.analyze({"u.weight": a @ b}, randomize=False)["u"]
    assert update.log_spectral_norm == pytest.approx(expected.log_spectral_norm, rel=1e-6)
    assert update.stable_rank == pytest.approx(expected.stable_rank, rel=1e-6)


def test_keras_callback_delta_from_init():
    from _keras_utils import compile_model, make_data, single_dense

    from ww_callbacks.keras import WeightWatcherCallback

    x, y = make_data(d_in=120, d_out=60)
    model = compile_model(single_dense())
    start = {layer.name: _numpy(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")}
    ww = WeightWatcherCallback(delta_from="init", randomize=False, seed=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ww])
    moved = {f"{name}.weight": _numpy(model.get_layer(name).kernel) - w for name, w in start.items()}
    expected = ww_callbacks.analyze(moved, randomize=False)
    assert [lr.status for lr in expected.layers] == ["success"]
    for layer in expected.layers:
        ours = ww.last_report[layer.name]
        assert ours.log_spectral_norm == pytest.approx(layer.log_spectral_norm, rel=1e-5)
        assert ours.stable_rank == pytest.approx(layer.stable_rank, rel=1e-5)


def test_keras_frozen_layers_reuse_their_result_and_trainable_ones_never_do():
    from _keras_utils import make_data

    from ww_callbacks.engine.analyzer import Analyzer
    from ww_callbacks.engine.options import WatchOptions
    from ww_callbacks.keras import WeightWatcherCallback

    init = keras.initializers.GlorotUniform
    frozen = keras.layers.Dense(60, name="frozen", kernel_initializer=init(seed=1), trainable=False)
    model = keras.Sequential(
        [keras.Input((120,)), frozen, keras.layers.Dense(60, name="head", kernel_initializer=init(seed=2))]
    )
    model.compile(optimizer="adam", loss="mse")
    x, y = make_data(d_in=120, d_out=60)
    ww = WeightWatcherCallback(seed=0, history_path=False)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ww])
    assert ww.engine.analyzer.reused == ["frozen"]  # the trainable head is analyzed again at every epoch

    analyzer = Analyzer(WatchOptions(), warn=pytest.fail)
    first = analyzer.analyze(model, rng=np.random.default_rng(1), epoch=0)
    analyzer.analyze(model, rng=np.random.default_rng(2), epoch=1)
    assert analyzer.reused == ["frozen"]
    frozen.kernel.assign(frozen.kernel * 1.5)  # a frozen layer written by hand: analyzed again
    third = analyzer.analyze(model, rng=np.random.default_rng(3), epoch=2)
    assert analyzer.reused == []
    expected = ww_callbacks.analyze(model, rng=np.random.default_rng(3), traps=False)
    assert third["frozen"].rand_distance == expected["frozen"].rand_distance
    assert third["frozen"].log_spectral_norm != first["frozen"].log_spectral_norm

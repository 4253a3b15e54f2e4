"""The Keras 3 snapshot adapter, on whichever backend KERAS_BACKEND selects (tensorflow, torch, jax).

Run on each backend: ``KERAS_BACKEND=jax python -m pytest tests/test_layers_keras.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _layers_utils import (
    conv1d_pair,
    eigenvalues,
    embedding_model,
    keras_twin_of_cnn,
    keras_twin_of_embedding,
    small_cnn,
)

import ww_callbacks
from ww_callbacks.layers import CONV_SCALE, snapshot
from ww_callbacks.layers.keras import einsum_kernel_matrix, snapshot_keras
from ww_callbacks.layers.torch import snapshot_torch

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.keras

METRICS = ("alpha", "log_norm", "log_spectral_norm", "stable_rank")


def _kernel(layer) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(layer.kernel))


def _assert_same_analysis(keras_layers, torch_layers):
    """Same labels and eigenvalues per layer, and the same analyze() metrics."""
    assert [lw.longname for lw in keras_layers] == [lw.longname for lw in torch_layers]
    for k, t in zip(keras_layers, torch_layers, strict=True):
        assert (k.kind, k.N, k.M, k.rf, k.scale) == (t.kind, t.N, t.M, t.rf, t.scale), k.longname
        ours, theirs = eigenvalues(k), eigenvalues(t)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * theirs.max(), err_msg=k.longname)
    keras_report = ww_callbacks.analyze(keras_layers, randomize=False)
    torch_report = ww_callbacks.analyze(torch_layers, randomize=False)
    for k, t in zip(keras_report.layers, torch_report.layers, strict=True):
        assert k.status == t.status, k.longname
        for metric in METRICS:
            a, b = getattr(k, metric), getattr(t, metric)
            if np.isnan(b):
                assert np.isnan(a), (k.longname, metric)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-9, err_msg=f"{k.longname} {metric}")
    assert sum(r.status == "success" for r in keras_report.layers) >= len(keras_layers) // 2


def test_conv2d_and_dense_twins_match_torch():
    torch_model = small_cnn()
    keras_model = keras_twin_of_cnn(torch_model)
    # the twins compute the same function, so the weight mapping is the real one
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = torch_model(x).detach().numpy()
    got = keras.ops.convert_to_numpy(keras_model(x.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    keras_layers = snapshot_keras(keras_model)
    torch_layers = snapshot_torch(torch_model)
    _assert_same_analysis(keras_layers, torch_layers)
    for k, t in zip(keras_layers, torch_layers, strict=True):
        assert isinstance(k.matrices, np.ndarray)
        if k.kind == "conv2d":  # same slices, same orientation (tall), same scale
            assert k.scale == CONV_SCALE
            np.testing.assert_array_equal(k.matrices, t.matrices.numpy())
        else:  # Dense keeps Keras' (in, out) layout
            np.testing.assert_array_equal(k.matrices[0], t.matrices[0].numpy().T)
    by_name = {lw.name: lw for lw in keras_layers}
    assert by_name["conv1"].ww_parity is False  # weightwatcher's Keras reader labels this case otherwise
    assert by_name["conv4"].ww_parity and by_name["head"].ww_parity


def test_embedding_twin_matches_torch():
    torch_model = embedding_model()
    keras_model = keras_twin_of_embedding(torch_model)
    tokens = torch.randint(0, 200, (3, 7), generator=torch.Generator().manual_seed(1))
    expected = torch_model(tokens).detach().numpy()
    got = keras.ops.convert_to_numpy(keras_model(tokens.numpy().astype("int32")))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    keras_layers = snapshot(keras_model)
    assert [(lw.name, lw.kind) for lw in keras_layers] == [("embed", "embedding"), ("head", "dense")]
    np.testing.assert_array_equal(keras_layers[0].matrices[0], torch_model.embed.weight.detach().numpy())
    _assert_same_analysis(keras_layers, snapshot_torch(torch_model))


def test_conv1d_twin_matches_torch_conv1d():
    torch_model, keras_model = conv1d_pair()
    x = torch.randn(2, 16, 40, generator=torch.Generator().manual_seed(2))
    expected = torch_model(x).detach().numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras_model(x.numpy().transpose(0, 2, 1))), expected, rtol=1e-4, atol=1e-5
    )
    keras_layers = snapshot_keras(keras_model)
    torch_layers = snapshot_torch(torch_model)
    assert [(lw.kind, lw.rf, lw.ww_parity) for lw in keras_layers] == [
        ("conv1d", 3, False),
        ("conv1d", 5, False),
    ]
    for k, t in zip(keras_layers, torch_layers, strict=True):
        np.testing.assert_array_equal(k.matrices, t.matrices.numpy())
        assert (k.N, k.M, k.rf, k.scale) == (t.N, t.M, t.rf, t.scale)


def test_multi_head_attention_kernels_reshaped_and_analyzed_once():
    d_model, heads, head_dim = 24, 3, 8

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attn = keras.layers.MultiHeadAttention(heads, head_dim, name="attn")
            self.same_attn = self.attn  # a second reference to the same layer
            self.ffn = keras.layers.Dense(d_model, name="ffn")

        def call(self, x):
            return self.ffn(self.attn(x, x))

    inputs = keras.Input((5, d_model))
    outputs = Block(name="block")(inputs)
    model = keras.Model(inputs, outputs)
    layers = snapshot_keras(model)
    names = [lw.longname for lw in layers]
    assert names == [
        "block/attn/query",
        "block/attn/key",
        "block/attn/value",
        "block/attn/attention_output",
        "block/ffn",
    ]
    assert len(set(lw.layer_id for lw in layers)) == len(layers)
    attn = model.get_layer("block").attn
    by_name = {lw.name: lw for lw in layers}
    for proj in ("query", "key", "value"):
        lw = by_name[proj]
        assert (lw.kind, lw.module_type, lw.ww_parity) == ("dense", "EinsumDense", False)
        kernel = _kernel(getattr(attn, f"_{proj}_dense"))
        assert kernel.shape == (d_model, heads, head_dim)
        np.testing.assert_array_equal(lw.matrices[0], kernel.reshape(d_model, heads * head_dim))
    out = _kernel(attn._output_dense)
    assert out.shape == (heads, head_dim, d_model)
    np.testing.assert_array_equal(
        by_name["attention_output"].matrices[0], out.reshape(heads * head_dim, d_model)
    )
    # analyzable end to end
    report = ww_callbacks.analyze(model, randomize=False)
    assert [r.longname for r in report.layers] == names


def test_einsum_dense_equations():
    inputs = keras.Input((20,))
    plain = keras.layers.EinsumDense("ab,bc->ac", output_shape=12, name="plain")
    split = keras.layers.EinsumDense("ab,bcd->acd", output_shape=(4, 6), name="split")
    scale = keras.layers.EinsumDense("ab,b->ab", output_shape=20, name="scale")  # elementwise: not a matrix
    outputs = [plain(inputs), split(inputs), scale(inputs)]
    model = keras.Model(inputs, outputs)
    layers = {lw.name: lw for lw in snapshot_keras(model)}
    assert sorted(layers) == ["plain", "split"]
    np.testing.assert_array_equal(layers["plain"].matrices[0], _kernel(plain))
    np.testing.assert_array_equal(layers["split"].matrices[0], _kernel(split).reshape(20, 24))
    # the contracted axes become rows even when the kernel lists them last
    k = np.arange(2 * 3 * 5.0).reshape(2, 3, 5)
    np.testing.assert_array_equal(einsum_kernel_matrix(k, "abd,cbd->ac"), k.transpose(1, 2, 0).reshape(15, 2))
    assert einsum_kernel_matrix(k, "not an equation") is None


@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer:UserWarning")
def test_nested_models_custom_layers_and_fit():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.proj = keras.layers.Dense(16, name="proj")
            self.mlp = keras.Sequential(
                [keras.layers.Dense(32, name="up"), keras.layers.Dense(16, name="down")]
            )
            self.twin_a = keras.layers.Dense(16, name="twin")
            self.twin_b = keras.layers.Dense(16, name="twin")  # same name inside one layer
            self.unused = keras.layers.Dense(8, name="unused")  # never called, never built

        def call(self, x):
            return self.twin_b(self.twin_a(self.mlp(self.proj(x))))

    encoder = keras.Sequential([keras.layers.Dense(16, activation="relu", name="enc")], name="encoder")
    inputs = keras.Input((20,))
    x = encoder(inputs)
    x = Block(name="block")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    mlp_name = model.get_layer("block").mlp.name

    layers = snapshot(model)
    assert [lw.longname for lw in layers] == [
        "encoder/enc",
        "block/proj",
        f"block/{mlp_name}/up",
        f"block/{mlp_name}/down",
        "block/twin",
        "block/twin_1",
        "head",
    ]
    ids = [lw.layer_id for lw in layers]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    before = {lw.longname: lw.matrices.copy() for lw in layers}
    rng = np.random.default_rng(0)
    x_train, y_train = rng.standard_normal((64, 20)).astype("float32"), rng.integers(0, 3, 64)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1, batch_size=16, verbose=0)
    after = {lw.longname: lw for lw in snapshot(model)}
    head = model.get_layer("head")
    np.testing.assert_array_equal(after["head"].matrices[0], _kernel(head))
    assert not np.array_equal(after["head"].matrices, before["head"])  # training moved the weights
    # the earlier snapshot is a copy: training did not touch it
    assert all(not np.shares_memory(before[name], after[name].matrices) for name in before)


def test_snapshot_is_a_copy():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, name="fc")])
    (lw,) = snapshot_keras(model)
    original = lw.matrices.copy()
    layer = model.get_layer("fc")
    layer.kernel.assign(np.zeros((12, 10), dtype="float32"))
    np.testing.assert_array_equal(lw.matrices, original)
    assert float(np.abs(_kernel(layer)).sum()) == 0.0


def test_bfloat16_weights_become_float32_and_unbuilt_models_are_empty():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, dtype="bfloat16", name="fc")])
    (lw,) = snapshot_keras(model)
    assert lw.matrices.dtype == np.float32
    np.testing.assert_array_equal(lw.matrices[0], _kernel(model.get_layer("fc")).astype(np.float32))
    unbuilt = keras.Sequential([keras.layers.Dense(10), keras.layers.Dense(4)])
    assert snapshot_keras(unbuilt) == []


def test_a_bare_layer_and_non_keras_input():
    dense = keras.layers.Dense(8, name="solo")
    dense.build((None, 30))
    (lw,) = snapshot_keras(dense)
    assert (lw.layer_id, lw.name, lw.longname, lw.N, lw.M) == (0, "solo", "solo", 30, 8)
    with pytest.raises(TypeError, match="Keras"):
        snapshot_keras(np.ones((3, 3)))

"""The torch snapshot adapter: weightwatcher 0.7.7's layer selection and matrices, plus our extensions."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from _layers_utils import (
    TORCH_MODELS,
    attention_mix,
    eigenvalues,
    mnist_mlp,
    small_cnn,
    tiny_gpt2,
    ww_describe,
    ww_filter,
    ww_watcher,
)
from torch import nn

from ww_callbacks.layers import CONV_SCALE, snapshot
from ww_callbacks.layers.mapping import conv2d_labels
from ww_callbacks.layers.torch import snapshot_torch

DESCRIBE_COLUMNS = ("layer_id", "name", "longname", "layer_type", "N", "M", "rf", "Q", "num_evals")


def _ww_rows(model: nn.Module) -> dict[str, tuple]:
    df = ww_describe(model)
    return {
        row.longname: (
            int(row.layer_id),
            row["name"],
            row.longname,
            row.layer_type,
            int(row.N),
            int(row.M),
            int(row.rf),
            float(row.Q),
            int(row.num_evals),
        )
        for _, row in df.iterrows()
    }


def _our_row(lw) -> tuple:
    return (lw.layer_id, lw.name, lw.longname, lw.kind, lw.N, lw.M, lw.rf, lw.Q, lw.num_evals)


def _bare_linear() -> nn.Module:
    return nn.Linear(30, 20)


PARITY_MODELS = {**TORCH_MODELS, "bare_linear": _bare_linear}


@pytest.mark.parity
@pytest.mark.parametrize("model_name", list(PARITY_MODELS))
def test_selection_matches_weightwatcher_describe(model_name):
    model = PARITY_MODELS[model_name]()
    ww_rows = _ww_rows(model)
    ours = snapshot_torch(model)
    assert ours, "the snapshot found no layer"

    # Tied weights: weightwatcher lists every occurrence, we keep the first and name the others.
    tied = {name for lw in ours for name in lw.extra.get("tied", [])}
    for lw in ours:
        if lw.extra.get("tied"):
            assert _our_row(lw) == ww_rows[lw.longname]
            assert all(name in ww_rows for name in lw.extra["tied"])

    expected = [row for name, row in ww_rows.items() if name not in tied]
    got = [_our_row(lw) for lw in ww_filter(ours) if lw.ww_parity]
    assert got == expected
    # the extensions never replace a layer weightwatcher analyzes
    assert not {lw.longname for lw in ours if not lw.ww_parity} & (set(ww_rows) - tied)


@pytest.mark.parity
@pytest.mark.parametrize("model_name", ["mlp", "cnn", "embedding", "gpt2", "small_linear", "attention"])
def test_eigenvalues_match_weightwatcher_esd(model_name):
    model = PARITY_MODELS[model_name]()
    watcher = ww_watcher(model)
    layers = [lw for lw in ww_filter(snapshot_torch(model)) if lw.ww_parity or lw.extra.get("tied")]
    assert layers
    for lw in layers:
        reference = watcher.esd(lw.layer_id)
        if lw.kind == "conv2d":
            reference = reference * 0.5  # get_ESD leaves out the conv2d_norm factor that analyze applies
        ours = eigenvalues(lw)
        assert ours.shape == reference.shape, lw.longname
        np.testing.assert_allclose(
            ours, reference, rtol=1e-10, atol=1e-10 * reference.max(), err_msg=lw.longname
        )


def test_conv2d_slices_labels_and_scale():
    model = small_cnn()
    layers = {lw.longname: lw for lw in snapshot_torch(model)}
    for name, module in model.named_children():
        if not isinstance(module, nn.Conv2d):
            continue
        lw = layers[name]
        w = module.weight.detach()
        out, inp, kh, kw = w.shape
        assert (lw.kind, lw.rf, lw.scale, lw.ww_parity) == ("conv2d", kh * kw, CONV_SCALE, True)
        assert (lw.N, lw.M) == conv2d_labels(out, inp, kh, kw)
        for i in range(kh):
            for j in range(kw):
                expected = w[:, :, i, j] if out >= inp else w[:, :, i, j].T
                torch.testing.assert_close(lw.matrices[i * kw + j], expected, rtol=0, atol=0)
        assert lw.matrices.is_contiguous()
    # weightwatcher's labelling rules, case by case (spec section 1.4)
    assert (layers["conv1"].N, layers["conv1"].M) == (6, 1)  # 1 -> 6, 5x5: channel-mismatch branch, as is
    assert (layers["conv4"].N, layers["conv4"].M) == (32, 16)  # 32 -> 16, 3x3: odd rf, swapped
    assert (layers["conv5"].N, layers["conv5"].M) == (8, 16)  # 16 -> 8, 2x2: even rf, N < M quirk
    assert (layers["conv7"].N, layers["conv7"].M) == (16, 12)  # 16 -> 12, 1x1: odd rf, swapped


def test_dense_embedding_and_hf_conv1d_are_stored_as_is():
    model = tiny_gpt2()
    layers = {lw.longname: lw for lw in snapshot_torch(model)}
    c_attn = model.transformer.h[0].attn.c_attn
    lw = layers["transformer.h.0.attn.c_attn"]
    assert (lw.kind, lw.module_type, lw.rf, lw.scale, lw.ww_parity) == ("conv1d", "Conv1D", 1, 1.0, True)
    torch.testing.assert_close(lw.matrices[0], c_attn.weight.detach(), rtol=0, atol=0)  # (in, out)
    wpe = layers["transformer.wpe"]
    assert wpe.kind == "embedding"
    torch.testing.assert_close(wpe.matrices[0], model.transformer.wpe.weight.detach(), rtol=0, atol=0)
    # no layer norm, no attention bias buffer
    assert not any("ln_" in name for name in layers)


def test_tied_weights_are_analyzed_once():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    layers = snapshot_torch(model)
    names = [lw.longname for lw in layers]
    assert "transformer.wte" in names and "lm_head" not in names
    wte = layers[names.index("transformer.wte")]
    assert wte.extra["tied"] == ["lm_head"] and wte.ww_parity  # analyzed exactly as weightwatcher does
    assert sum(lw.extra.get("tied") is not None for lw in layers) == 1

    # untied: both appear, both at parity
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    untied = {lw.longname: lw for lw in snapshot_torch(model)}
    assert untied["lm_head"].ww_parity and untied["transformer.wte"].ww_parity
    assert "tied" not in untied["transformer.wte"].extra


def test_multihead_attention_in_proj_split():
    model = attention_mix()
    layers = {lw.longname: lw for lw in snapshot_torch(model)}
    ids = {name: i for i, (name, _) in enumerate(model.named_modules())}

    packed = model.attn.in_proj_weight.detach()
    for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        lw = layers[f"attn.{proj}"]
        assert (lw.name, lw.kind, lw.ww_parity, lw.layer_id) == (proj, "dense", False, ids["attn"])
        assert lw.module_type == "MultiheadAttention"
        assert tuple(lw.matrices.shape) == (1, 32, 32)
        torch.testing.assert_close(lw.matrices[0], packed[32 * k : 32 * (k + 1)], rtol=0, atol=0)
    # separate projection weights when kdim/vdim differ from embed_dim
    for proj, weight in (
        ("q_proj", model.cross.q_proj_weight),
        ("k_proj", model.cross.k_proj_weight),
        ("v_proj", model.cross.v_proj_weight),
    ):
        torch.testing.assert_close(layers[f"cross.{proj}"].matrices[0], weight.detach(), rtol=0, atol=0)
    assert (layers["cross.k_proj"].N, layers["cross.k_proj"].M) == (32, 16)
    # out_proj is what weightwatcher itself analyzes
    assert layers["attn.out_proj"].ww_parity and layers["attn.out_proj"].kind == "dense"
    # order: the projections come right before their out_proj
    names = list(layers)
    assert names.index("attn.v_proj") + 1 == names.index("attn.out_proj")


@pytest.mark.parametrize(("in_ch", "out_ch", "k"), [(8, 16, 3), (16, 4, 5), (6, 6, 2)])
def test_torch_conv1d_slices(in_ch, out_ch, k):
    conv = nn.Conv1d(in_ch, out_ch, k)
    model = nn.Sequential(conv, nn.ReLU())
    (lw,) = snapshot_torch(model)
    w = conv.weight.detach()
    assert (lw.kind, lw.rf, lw.scale, lw.ww_parity) == ("conv1d", k, CONV_SCALE, False)
    assert (lw.N, lw.M) == (max(in_ch, out_ch), min(in_ch, out_ch))
    for i in range(k):
        expected = w[:, :, i] if out_ch >= in_ch else w[:, :, i].T
        torch.testing.assert_close(lw.matrices[i], expected, rtol=0, atol=0)


def test_unsupported_layers_are_skipped_with_a_debug_line(caplog):
    model = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 3),
        nn.Conv3d(4, 8, 3),
        nn.LSTM(16, 32),
        nn.Bilinear(10, 12, 20),
        nn.LayerNorm(16),
        nn.BatchNorm2d(16),
        nn.LazyLinear(20),  # not materialized yet
        nn.Identity(),  # matches 'linear' (torch.nn.modules.linear) but has no weight
        nn.Linear(20, 30),
    )
    with caplog.at_level(logging.DEBUG, logger="ww_callbacks.layers.torch"):
        layers = snapshot_torch(model)
    assert [lw.longname for lw in layers] == ["8"]
    assert layers[0].layer_id == 9
    logged = caplog.text
    for name in (
        "0 (ConvTranspose2d)",
        "1 (Conv3d)",
        "2 (LSTM)",
        "3 (Bilinear)",
        "4 (LayerNorm)",
        "6 (LazyLinear)",
    ):
        assert name in logged


def test_filters_through_snapshot():
    cnn = small_cnn()
    convs = [f"conv{i}" for i in range(1, 8)]
    assert [lw.name for lw in snapshot(cnn, layers=[nn.Linear])] == ["head"]
    assert [lw.name for lw in snapshot(cnn, layers=[nn.Conv2d])] == convs
    assert [lw.name for lw in snapshot(cnn, layers="conv*")] == convs
    assert [lw.name for lw in snapshot(cnn, layers=["-head", "-conv1"])] == convs[1:]
    assert [lw.name for lw in snapshot(cnn, layers=re.compile(r"conv[23]$"))] == ["conv2", "conv3"]
    assert [lw.name for lw in snapshot(cnn, layers="dense")] == ["head"]
    assert [lw.name for lw in snapshot(mnist_mlp(), layers=[nn.Linear])] == ["1", "3", "5"]
    gpt = snapshot(tiny_gpt2(), layers="transformer.h.1.*")
    assert [lw.name for lw in gpt] == ["c_attn", "c_proj", "c_fc", "c_proj"]


def test_snapshot_is_a_copy_and_keeps_tensors():
    model = small_cnn()
    before = snapshot_torch(model)
    kept = [lw.matrices.clone() for lw in before]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for lw, original in zip(before, kept, strict=True):
        assert isinstance(lw.matrices, torch.Tensor) and not lw.matrices.requires_grad
        assert lw.matrices.dtype == torch.float32 and lw.matrices.device == torch.device("cpu")
        torch.testing.assert_close(lw.matrices, original, rtol=0, atol=0)
    # copy=False: dense matrices are views of the parameters (a cheap read for immediate analysis)
    view = {lw.longname: lw for lw in snapshot_torch(model, copy=False)}
    with torch.no_grad():
        model.head.weight.mul_(0)
    assert float(view["head"].matrices.abs().sum()) == 0.0


def test_half_precision_becomes_float32_and_double_stays():
    model = small_cnn()
    reference = snapshot_torch(model)
    for dtype in (torch.float16, torch.bfloat16):
        half = snapshot_torch(small_cnn().to(dtype))
        for lw, ref in zip(half, reference, strict=True):
            assert lw.matrices.dtype == torch.float32
            torch.testing.assert_close(lw.matrices, ref.matrices.to(dtype).float(), rtol=0, atol=0)
    double = snapshot_torch(small_cnn().double())
    assert all(lw.matrices.dtype == torch.float64 for lw in double)


def test_snapshot_leaves_global_rng_alone():
    model = attention_mix()
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002  (the global state is what we check)
    snapshot_torch(model)
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])  # noqa: NPY002


def test_trained_model_snapshot_matches_parameters():
    # a few real optimizer steps, then the snapshot must hold the current weights
    model = mnist_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 784, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    layers = snapshot_torch(model)
    for lw, linear in zip(layers, [m for m in model if isinstance(m, nn.Linear)], strict=True):
        torch.testing.assert_close(lw.matrices[0], linear.weight.detach(), rtol=0, atol=0)
        assert not lw.matrices.requires_grad


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        snapshot_torch({"a": 1})


def _described(layers) -> list[tuple]:
    return [(lw.layer_id, lw.name, lw.longname, lw.kind, lw.rf, lw.extra.get("tied")) for lw in layers]


@pytest.mark.parametrize("model_name", ["cnn", "gpt2", "attention"])
def test_walk_without_wrappers_is_named_modules(model_name):
    from ww_callbacks.layers.torch import _named_modules

    model = TORCH_MODELS[model_name]()
    assert list(_named_modules(model, torch)) == list(model.named_modules())


@pytest.fixture
def process_group(tmp_path):
    """A real one-process gloo group, so that DistributedDataParallel can wrap a CPU module."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_compiled_and_ddp_wrapped_modules_keep_the_users_names(process_group):
    """torch.compile adds `_orig_mod.` and DDP/DataParallel `module.` to every path: none of it is reported."""
    import ww_callbacks

    model = tiny_gpt2()  # tied lm_head: the wrappers must not change which occurrence is kept
    expected = _described(snapshot(model))
    state_dict_names = [lw.longname for lw in snapshot(model.state_dict())]
    ddp = nn.parallel.DistributedDataParallel(model)
    wrapped = {
        "compile": torch.compile(model),
        "ddp": ddp,
        "data_parallel": nn.DataParallel(model),
        "compile(ddp)": torch.compile(ddp),
        "ddp inside a module": nn.ModuleDict({"net": torch.compile(ddp)}),
    }
    for how, module in wrapped.items():
        got = _described(snapshot(module))
        if how == "ddp inside a module":  # the container's own path stays, its id shifts the others by one
            inside = [
                (i + 1, n, f"net.{ln}", k, rf, tied and [f"net.{t}" for t in tied])
                for i, n, ln, k, rf, tied in expected
            ]
            assert got == inside, how
            continue
        assert got == expected, how
        # the state dict of a wrapped model names its layers the same way
        assert [lw.longname for lw in snapshot(module.state_dict())] == state_dict_names, how
    # and what reaches the per-layer keys (ww/<longname>/alpha) is the user's names
    report = ww_callbacks.analyze(torch.compile(model), randomize=False)
    assert [lr.longname for lr in report] == [
        lr.longname for lr in ww_callbacks.analyze(model, randomize=False)
    ]
    assert not [
        lr.longname for lr in report if "_orig_mod" in lr.longname or lr.longname.startswith("module.")
    ]

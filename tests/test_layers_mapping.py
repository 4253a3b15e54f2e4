"""The mapping snapshot adapter: state dicts, Lightning checkpoints and plain dicts of arrays."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _layers_utils import eigenvalues, mnist_mlp, small_cnn, tiny_gpt2, ww_describe, ww_filter, ww_watcher

from ww_callbacks.layers import CONV_SCALE, snapshot
from ww_callbacks.layers.mapping import conv2d_labels, snapshot_mapping
from ww_callbacks.layers.torch import snapshot_torch


def _row(lw) -> tuple:
    return (lw.layer_id, lw.name, lw.longname, lw.kind, lw.N, lw.M, lw.rf, lw.num_evals)


def _ww_rows(state) -> list[tuple]:
    df = ww_describe(state)
    return [
        (
            int(r.layer_id),
            r["name"],
            r.longname,
            r.layer_type,
            int(r.N),
            int(r.M),
            int(r.rf),
            int(r.num_evals),
        )
        for _, r in df.iterrows()
    ]


@pytest.mark.parity
@pytest.mark.parametrize("build", [mnist_mlp, small_cnn, tiny_gpt2], ids=["mlp", "cnn", "gpt2"])
def test_state_dict_matches_weightwatcher(build):
    state = build().state_dict()
    ours = snapshot_mapping(state)
    tied = {name for lw in ours for name in lw.extra.get("tied", [])}
    expected = [row for row in _ww_rows(state) if row[2] not in tied]
    assert [_row(lw) for lw in ww_filter(ours) if lw.ww_parity] == expected

    watcher = ww_watcher(state)
    for lw in ww_filter(ours):
        reference = watcher.esd(lw.layer_id)
        if lw.kind == "conv2d":
            reference = reference * 0.5
        np.testing.assert_allclose(eigenvalues(lw), reference, rtol=1e-10, atol=1e-10 * reference.max())


def test_state_dict_gives_the_module_matrices():
    model = small_cnn()
    from_module = snapshot_torch(model)
    from_state = snapshot_mapping(model.state_dict())
    assert [lw.longname for lw in from_state] == [lw.longname for lw in from_module]
    for a, b in zip(from_state, from_module, strict=True):
        assert (a.N, a.M, a.rf, a.scale) == (b.N, b.M, b.rf, b.scale)
        torch.testing.assert_close(a.matrices, b.matrices, rtol=0, atol=0)
    # ids count the .weight keys from 1 (weightwatcher's state-dict reader), not the modules
    assert [lw.layer_id for lw in from_state] == list(range(1, len(from_state) + 1))


def test_numpy_state_dict_ids_names_and_kinds():
    rng = np.random.default_rng(0)
    state = OrderedDict(
        [
            ("enc.weight", rng.standard_normal((30, 50))),
            ("enc.bias", rng.standard_normal(30)),
            ("norm.weight", np.ones(30)),  # 1-D: takes an id, skipped
            ("conv.weight", rng.standard_normal((8, 16, 3, 3)).astype(np.float32)),
            ("seq.weight", rng.standard_normal((4, 5, 6))),  # 3-D: takes an id, skipped
            ("head.weight", rng.standard_normal((10, 30)).astype(np.float16)),
            ("step", 7),
        ]
    )
    layers = snapshot_mapping(state)
    assert [(lw.layer_id, lw.name, lw.longname, lw.kind) for lw in layers] == [
        (1, "enc", "enc", "dense"),
        (3, "conv", "conv", "conv2d"),
        (5, "head", "head", "dense"),
    ]
    enc, conv, head = layers
    np.testing.assert_array_equal(enc.matrices[0], state["enc.weight"])
    assert (enc.N, enc.M) == (50, 30)
    w = state["conv.weight"]
    assert (conv.rf, conv.scale, (conv.N, conv.M)) == (9, CONV_SCALE, conv2d_labels(8, 16, 3, 3))
    np.testing.assert_array_equal(conv.matrices[5], w[:, :, 1, 2].T)  # out < in: tall slices
    assert head.matrices.dtype == np.float32
    np.testing.assert_array_equal(head.matrices[0], state["head.weight"].astype(np.float32))


def test_mapping_without_weight_keys_uses_every_array():
    rng = np.random.default_rng(1)
    state = {"fc1": rng.standard_normal((20, 10)), "scale": np.ones(20), "fc2": rng.standard_normal((10, 20))}
    layers = snapshot(state)
    assert [(lw.layer_id, lw.name) for lw in layers] == [(1, "fc1"), (3, "fc2")]
    assert snapshot_mapping({"note": "hello", "epoch": 3, "bias": np.ones(4)}) == []


def test_lightning_checkpoint(tmp_path):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mnist_mlp()

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(64, 784, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    )
    module = Module()
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert "state_dict" in checkpoint and "epoch" in checkpoint

    layers = snapshot(checkpoint)
    assert [lw.name for lw in layers] == ["net.1", "net.3", "net.5"]
    for lw, linear in zip(layers, [m for m in module.net if isinstance(m, torch.nn.Linear)], strict=True):
        assert isinstance(lw.matrices, torch.Tensor)
        torch.testing.assert_close(lw.matrices[0], linear.weight.detach(), rtol=0, atol=0)


def test_tied_state_dict_entries_appear_once():
    state = tiny_gpt2().state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    layers = snapshot_mapping(state)
    names = [lw.name for lw in layers]
    assert "lm_head" not in names
    assert layers[names.index("transformer.wte")].extra["tied"] == ["lm_head"]
    # numpy views of one buffer are tied too; equal copies are not
    w = np.random.default_rng(0).standard_normal((30, 20))
    assert [lw.name for lw in snapshot_mapping({"a.weight": w, "b.weight": w[:]})] == ["a"]
    assert [lw.name for lw in snapshot_mapping({"a.weight": w, "b.weight": w.copy()})] == ["a", "b"]


def test_first_dimension_below_two_is_analyzed_without_parity():
    rng = np.random.default_rng(2)
    state = {"one.weight": rng.standard_normal((1, 30, 3, 3)), "two.weight": rng.standard_normal((12, 30))}
    layers = snapshot_mapping(state)
    assert [(lw.name, lw.ww_parity) for lw in layers] == [("one", False), ("two", True)]
    # weightwatcher types a value with shape[0] < 2 as unknown and leaves it out
    assert [r[1] for r in _ww_rows(state)] == ["two"]


def test_copy_semantics_for_arrays_and_tensors():
    w = np.random.default_rng(3).standard_normal((20, 12))
    t = torch.randn(20, 12, generator=torch.Generator().manual_seed(3))
    (copied_np,) = snapshot_mapping({"fc.weight": w})
    (copied_t,) = snapshot_mapping({"fc.weight": t})
    (view_np,) = snapshot_mapping({"fc.weight": w}, copy=False)
    assert isinstance(copied_t.matrices, torch.Tensor) and isinstance(copied_np.matrices, np.ndarray)
    assert not np.shares_memory(copied_np.matrices, w)
    assert copied_t.matrices.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    assert np.shares_memory(view_np.matrices, w)
    w_before, t_before = w.copy(), t.clone()
    w *= 2
    t.mul_(2)
    np.testing.assert_array_equal(copied_np.matrices[0], w_before)
    torch.testing.assert_close(copied_t.matrices[0], t_before, rtol=0, atol=0)


def test_importing_the_adapters_imports_no_framework():
    code = (
        "import sys, ww_callbacks, ww_callbacks.layers.torch, ww_callbacks.layers.keras, "
        "ww_callbacks.layers.mapping\n"
        "bad = [m for m in ('torch', 'keras', 'tensorflow', 'jax', 'lightning', 'wandb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]

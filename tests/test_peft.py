"""Fine-tuning: LoRA adapters (PEFT and Keras), deltas from a base model, unchanged layers analyzed once.

Oracles: weightwatcher 0.7.7's ``analyze(peft=True)`` for the adapters, and the same analysis of matrices built
by hand with numpy (``W + scaling * B @ A``, ``W - W_base``) for the effective weights and the deltas."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.engine.analyzer import Analyzer
from ww_callbacks.engine.options import WatchOptions

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm", "stable_rank", "entropy", "xmin", "D")
TARGETS = ("q_proj", "v_proj")


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    return LlamaForCausalLM(config)


def _peft_llama(*, rslora: bool = False, seed: int = 0):
    model = get_peft_model(
        _llama(seed), LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), use_rslora=rslora)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # B starts at zero: give the adapters an update to measure
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def _lora_modules(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def _by_hand(model) -> dict[str, np.ndarray]:
    """``model.layers...q_proj.weight`` -> W + scaling * B @ A, with PEFT's scaling, in float64."""
    out = {}
    for path, module in _lora_modules(model).items():
        w = module.base_layer.weight.detach().double().numpy()
        a = module.lora_A["default"].weight.detach().double().numpy()
        b = module.lora_B["default"].weight.detach().double().numpy()
        out[path.removeprefix("base_model.model.") + ".weight"] = w + module.scaling["default"] * (b @ a)
    return out


@pytest.mark.parity
def test_adapters_equal_weightwatcher_peft_true():
    weightwatcher = pytest.importorskip("weightwatcher")
    model = _peft_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = weightwatcher.WeightWatcher(model=model).analyze(peft=True, randomize=False)
    ours = ww_callbacks.analyze(model, randomize=False, peft="adapters")
    assert ww_callbacks.analyze(model, randomize=False).to_rows() == ours.to_rows()  # "auto" = adapters
    assert [lr.longname for lr in ours.layers] == list(theirs["longname"])
    assert all(".lora_BA.default" in lr.longname for lr in ours.layers) and len(ours.layers) == 4
    for layer, (_, row) in zip(ours.layers, theirs.iterrows(), strict=True):
        assert (layer.layer_id, layer.name, layer.N, layer.M) == (row.layer_id, row["name"], row.N, row.M)
        assert layer.num_evals == row.num_evals == 8  # the LoRA rank
        for column in (*COLUMNS, "matrix_rank", "num_pl_spikes"):
            assert getattr(layer, column) == pytest.approx(row[column], rel=1e-7, abs=1e-12), column


@pytest.mark.parametrize("rslora", [False, True])
def test_effective_weights_equal_w_plus_scaled_ba(rslora):
    model = _peft_llama(rslora=rslora)
    modules = _lora_modules(model)
    scaling = next(iter(modules.values())).scaling["default"]
    assert scaling == pytest.approx(16 / 8**0.5 if rslora else 16 / 8)
    ours = ww_callbacks.analyze(model, randomize=False, peft="effective")
    base_names = [n.removeprefix("base_model.model.") for n in modules]
    names = [lr.longname for lr in ours.layers]
    assert set(base_names) <= set(names) and not any("lora" in n or "base_layer" in n for n in names)
    expected = ww_callbacks.analyze(_by_hand(model), randomize=False)
    for layer in expected.layers:
        for column in COLUMNS:
            assert getattr(ours[layer.longname], column) == pytest.approx(getattr(layer, column), rel=1e-9)
    # every other layer: as in the model without adapters, under the same name
    plain = ww_callbacks.analyze(_llama(), randomize=False)
    for layer in plain.layers:
        if layer.longname not in base_names:
            assert ours[layer.longname].alpha == pytest.approx(layer.alpha, rel=1e-12)


def test_effective_weights_of_disabled_and_merged_adapters():
    model = _peft_llama()
    by_hand = ww_callbacks.analyze(_by_hand(model), randomize=False)
    plain = ww_callbacks.analyze(_llama(), randomize=False)
    with model.disable_adapter():  # the model uses W alone
        disabled = ww_callbacks.analyze(model, randomize=False, peft="effective")
    for layer in by_hand.layers:
        assert disabled[layer.longname].alpha == pytest.approx(plain[layer.longname].alpha, rel=1e-12)
    model.merge_adapter()  # W now holds the update (in float32): counted once, not twice
    merged = ww_callbacks.analyze(model, randomize=False, peft="effective")
    for layer in by_hand.layers:
        assert merged[layer.longname].alpha == pytest.approx(layer.alpha, rel=1e-4)
    # histories line up with the merged model: the same names
    unloaded = ww_callbacks.analyze(model.merge_and_unload(), randomize=False)
    assert [lr.longname for lr in unloaded.layers] == [lr.longname for lr in merged.layers]


def test_peft_modes_are_checked():
    with pytest.raises(ValueError, match="peft must be one of"):
        ww_callbacks.analyze(_llama(), peft="both")
    with pytest.raises(ValueError, match="peft must be one of"):
        WatchOptions(peft="both")


# ---------------------------------------------------------------------- deltas
def test_deltas_equal_the_analysis_of_w_minus_w_base():
    base, tuned = _llama(0), _llama(0)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    ours = ww_callbacks.analyze(tuned, base_model=base.state_dict(), randomize=False)
    differences = {
        name: (value.double() - base.state_dict()[name].double()).numpy()
        for name, value in tuned.state_dict().items()
        if name.endswith(".weight") and value.ndim == 2
    }
    expected = ww_callbacks.analyze(differences, randomize=False)
    assert [lr.longname for lr in ours.layers] == [lr.longname for lr in expected.layers]
    for layer in expected.layers:
        for column in COLUMNS:
            assert getattr(ours[layer.longname], column) == pytest.approx(getattr(layer, column), rel=1e-5)
    assert ww_callbacks.analyze(base, base_model=base, randomize=False).layers[0].status == "zero"


def test_delta_shape_mismatch_is_a_clear_error():
    a = {"fc.weight": np.ones((30, 20))}
    with pytest.raises(ValueError, match=r"delta of layer fc: shape \(1, 30, 20\) but the base layer has"):
        ww_callbacks.analyze(a, base_model={"fc.weight": np.ones((20, 30))})
    with pytest.raises(ValueError, match="no layer of the model matches the base"):
        ww_callbacks.analyze(a, base_model={"other.weight": np.ones((30, 20))})


# ---------------------------------------------------------------------- unchanged layers analyzed once
def _same_row(a, b) -> bool:
    from _sinks_utils import same

    row_a, row_b = a.to_row(), b.to_row()
    return row_a.keys() == row_b.keys() and all(same(row_a[k], row_b[k]) for k in row_a)


def test_unchanged_layers_reuse_their_result_and_the_others_are_exact():
    net = torch.nn.Sequential(torch.nn.Linear(80, 120), torch.nn.Linear(120, 60), torch.nn.Linear(60, 50))
    net[0].requires_grad_(False)  # frozen
    analyzer = Analyzer(WatchOptions(), warn=pytest.fail)
    first = analyzer.analyze(net, rng=np.random.default_rng(1), epoch=0)
    with torch.no_grad():
        net[1].weight.mul_(1.5)  # a step on the second layer only; the third is trainable but unchanged
    second = analyzer.analyze(net, rng=np.random.default_rng(2), epoch=1)
    # trainable weights are always analyzed again: fused optimizers do not bump the version counter
    assert analyzer.reused == ["0"]
    assert _same_row(second["0"], first["0"])  # the last result, first shuffle included
    full = ww_callbacks.analyze(net, rng=np.random.default_rng(2), traps=False)  # the engine's options
    assert _same_row(second["1"], full["1"])  # exactly the numbers of a full analysis
    assert not _same_row(second["1"], first["1"])
    assert not _same_row(second["2"], first["2"])  # a new shuffle for the unchanged trainable layer
    net.load_state_dict(copy.deepcopy(net.state_dict()))  # written into in place: analyzed again
    analyzer.analyze(net, rng=np.random.default_rng(3), epoch=2)
    assert analyzer.reused == []


# ---------------------------------------------------------------------- the callbacks
def test_lightning_delta_from_init_and_frozen_layer_reuse(tmp_path):
    from _lightning_utils import make_model, make_trainer, namespace_modules

    _, mod = namespace_modules("lightning.pytorch")
    model = make_model()
    model.fc1.requires_grad_(False)  # a frozen layer: analyzed once
    init = copy.deepcopy(model.state_dict())
    ww = mod.WeightWatcherCallback(delta_from="init", randomize=False, history_path=False)
    make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww]).fit(model)

    assert ww.engine.analyzer.reused == ["fc1"]
    assert ww.last_report["fc1"].status == "zero"  # a frozen layer never moves from init
    moved = {"fc2.weight": (model.fc2.weight.detach().double() - init["fc2.weight"].double()).numpy()}
    expected = ww_callbacks.analyze(moved, randomize=False)["fc2"]
    for column in COLUMNS:
        ours, theirs = getattr(ww.last_report["fc2"], column), getattr(expected, column)
        assert ours == pytest.approx(theirs, rel=1e-5, nan_ok=True), column
    assert ww.last_report["fc2"].log_spectral_norm == pytest.approx(expected.log_spectral_norm, rel=1e-5)


@pytest.mark.slow
def test_trainer_fine_tuning_a_peft_model_logs_the_adapters(tmp_path):
    pytest.importorskip("accelerate")
    from _hf_trainer_utils import TokenData, training_args
    from transformers import Trainer, TrainerCallback

    from ww_callbacks.transformers import WeightWatcherCallback

    class Oracle(TrainerCallback):  # the same weights, analyzed by hand right after the callback
        reports: dict[int, object] = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % 4 == 0:
                self.reports[state.global_step] = ww_callbacks.analyze(
                    model, randomize=False, peft="adapters"
                )

    model = _peft_llama()
    ww = WeightWatcherCallback(every_n_steps=4, metrics=("alpha",), per_layer=True, randomize=False, seed=0)
    oracle = Oracle()
    trainer = Trainer(
        model=model, args=training_args(tmp_path), train_dataset=TokenData(), callbacks=[ww, oracle]
    )
    trainer.train()

    names = [lr.longname for lr in ww.last_report.layers]
    assert len(names) == 4 and all(".lora_BA.default" in n for n in names)
    logged = [e for e in trainer.state.log_history if "ww/alpha" in e]
    assert [e["step"] for e in logged] == [4, 8]
    for entry in logged:
        for layer in oracle.reports[entry["step"]].layers:
            assert entry[f"ww/{layer.longname}/alpha"] == pytest.approx(layer.alpha, rel=1e-9)
    rows = ww_callbacks.load_history(tmp_path / "ww_history.jsonl", as_pandas=False)
    assert {r["layer"] for r in rows} == set(names)


def test_background_reuses_frozen_layers_with_the_numbers_of_synchronous_analysis(tmp_path):
    from _lightning_utils import make_model, make_trainer, namespace_modules

    _, mod = namespace_modules("lightning.pytorch")
    histories = {}
    for background in (False, True):
        torch.manual_seed(0)
        model = make_model()
        model.fc1.requires_grad_(False)
        ww = mod.WeightWatcherCallback(seed=0, background=background, history_path=False)
        make_trainer("lightning.pytorch", tmp_path, max_epochs=3, callbacks=[ww]).fit(model)
        histories[background] = ww.history
        assert ww.engine.analyzer.reused == ["fc1"]
    for key in ("alpha", "rand_distance", "log_spectral_norm"):
        assert [h[key] for h in histories[True]] == [h[key] for h in histories[False]]


def test_a_copied_snapshot_leaves_out_the_layers_that_will_be_reused():
    net = torch.nn.Sequential(torch.nn.Linear(80, 120), torch.nn.Linear(120, 60))
    net[0].requires_grad_(False)
    analyzer = Analyzer(WatchOptions(), warn=pytest.fail)
    before = analyzer.snapshot(net, copy=True)  # nothing analyzed yet: everything copied
    assert [lw.matrices.data_ptr() == m.weight.data_ptr() for lw, m in zip(before, net, strict=True)] == [
        False,
        False,
    ]
    analyzer.analyze(net, rng=np.random.default_rng(0), epoch=0)
    after = analyzer.snapshot(net, copy=True)  # the frozen layer is read in place, the other copied
    assert [lw.matrices.data_ptr() == m.weight.data_ptr() for lw, m in zip(after, net, strict=True)] == [
        True,
        False,
    ]


def test_low_rank_eigenvalues_from_the_factors_equal_the_full_decomposition():
    from ww_callbacks.spectral.esd import lowrank_eigenvalues, slice_eigenvalues

    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(300, 12)), rng.normal(size=(12, 200))
    full = slice_eigenvalues((left @ right)[None], scale=0.7)[0][-12:]
    np.testing.assert_allclose(lowrank_eigenvalues(left, right, 0.7)[0], full, rtol=1e-10)

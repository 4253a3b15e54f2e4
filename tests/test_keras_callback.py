"""The Keras 3 callback with real ``model.fit`` runs, on the backend KERAS_BACKEND selects.

Run it once per backend::

    KERAS_BACKEND=tensorflow python -m pytest tests/test_keras_callback.py -q
    KERAS_BACKEND=torch python -m pytest tests/test_keras_callback.py -q
    KERAS_BACKEND=jax python -m pytest tests/test_keras_callback.py -q

Most stopping tests use a one-layer model whose kernel a callback placed before ours sets at each epoch end
(`SetKernel`): the analyzed weights, hence the metric trajectory, are then known in advance, and each expected
stop epoch is derived from independently computed metrics with the rule's documented semantics.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from _keras_utils import (  # noqa: E402
    BACKEND,
    OnEpochEnd,
    RecordWeights,
    SetKernel,
    compile_model,
    heavy_tailed,
    make_data,
    single_dense,
    tiny_mlp,
    weights_equal,
)

import ww_callbacks  # noqa: E402
from ww_callbacks.keras import WeightWatcherCallback  # noqa: E402
from ww_callbacks.layers.keras import snapshot_keras  # noqa: E402
from ww_callbacks.stopping import (  # noqa: E402
    AllOf,
    AlphaBelow,
    AnyOf,
    NonFinite,
    Plateau,
    StopDecision,
    StoppingRule,
)

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parents[1]
SHAPE = (120, 60)  # the kernel of `single_dense`: (in, out)


def _fit(model, callbacks, *, epochs, x=None, y=None, **kwargs):
    if x is None:
        x, y = make_data(n=32, d_in=model.inputs[0].shape[-1], d_out=model.outputs[0].shape[-1])
    return model.fit(
        x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks, **kwargs
    )


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[tuple[float, np.ndarray], ...]:
    """Heavy-tailed (120, 60) kernels sorted by their alpha, computed without Keras."""
    found = []
    for df in (1.3, 1.6, 2.0, 3.0, 5.0):
        for seed in range(3):
            kernel = heavy_tailed(SHAPE, df, seed)
            report = ww_callbacks.analyze({"fc.weight": kernel}, randomize=False)
            assert report.layers[0].status == "success"
            found.append((float(report.summary["alpha"]), kernel))
    found.sort(key=lambda item: item[0])
    return tuple(found)


def _schedule(ranks):
    """Kernels and their alphas, picked by rank in the sorted pool."""
    pool = _pool()
    return [pool[r][1] for r in ranks], [pool[r][0] for r in ranks]


# Ranks in the pool per epoch: falls, rises for two epochs, drops low, rises within the low band, ...
RANKS = (11, 6, 9, 10, 2, 3, 8, 1)


def _threshold() -> float:
    pool = _pool()
    return (pool[3][0] + pool[4][0]) / 2  # ranks 0-3 are below it


def _plateau_signals(values, patience):
    """Plateau(mode="min", min_delta=0) semantics: per epoch, whether wait_count >= patience."""
    best, wait, out = None, 0, []
    for v in values:
        if best is None or v < best:
            best, wait = v, 0
        else:
            wait += 1
        out.append(wait >= patience)
    return out


def _first(flags):
    return next((i for i, flag in enumerate(flags) if flag), None)


def _scheduled_run(rule, *, restore=False, extra_callbacks=(), every_n_epochs=1):
    kernels, alphas = _schedule(RANKS)
    model = compile_model(single_dense(*SHAPE), lr=0.01)
    ww = WeightWatcherCallback(
        metrics=("alpha",),
        randomize=False,
        seed=0,
        early_stopping=rule,
        restore_best_weights=restore,
        every_n_epochs=every_n_epochs,
    )
    recorder = RecordWeights()
    history = _fit(model, [SetKernel("fc", kernels), ww, *extra_callbacks, recorder], epochs=len(kernels))
    return model, ww, history, recorder, kernels, alphas


# ---------------------------------------------------------------------------------------------- logs


def test_keys_every_epoch_in_history_csv_and_history_file(tmp_path):
    csv_path, jsonl_path = tmp_path / "log.csv", tmp_path / "ww.jsonl"
    model = compile_model(tiny_mlp(seed=1))
    ww = WeightWatcherCallback(every_n_epochs=3, per_layer=True, seed=3, history_path=jsonl_path)
    recorder = RecordWeights()
    history = _fit(model, [ww, keras.callbacks.CSVLogger(str(csv_path)), recorder], epochs=4)

    metrics = ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance")
    layer_names = [lw.longname for lw in snapshot_keras(model)]
    assert layer_names == ["hidden0", "hidden1", "head"]
    keys = [f"ww/{m}" for m in metrics] + [f"ww/{n}/{m}" for n in layer_names for m in metrics]
    for key in keys:
        assert len(history.history[key]) == 4, key

    # Epochs 0 (the first of fit) and 2 (every_n_epochs=3) are analyzed, 1 and 3 are NaN.
    assert [h["epoch"] for h in ww.history] == [0, 2]
    for epoch in (1, 3):
        assert all(math.isnan(history.history[key][epoch]) for key in keys)
    for entry in ww.history:
        for metric in metrics:
            assert history.history[f"ww/{metric}"][entry["epoch"]] == entry[metric]

    # The values are those of an independent analysis of the weights at that epoch's end.
    for epoch in (0, 2):
        twin = tiny_mlp(seed=1)
        twin.set_weights(recorder.weights[epoch])
        expected = ww_callbacks.analyze(snapshot_keras(twin), rng=ww.engine.rng_for(epoch))
        for layer in expected.layers:
            for metric in metrics:
                got = history.history[f"ww/{layer.longname}/{metric}"][epoch]
                want = getattr(layer, metric)
                assert (
                    (math.isnan(got) and math.isnan(want))
                    if not layer.ok
                    else got == pytest.approx(want, rel=1e-12)
                )
        assert history.history["ww/alpha"][epoch] == pytest.approx(expected.summary["alpha"], rel=1e-12)
    # The head (4 eigenvalues < min_evals) has NaN metrics, the hidden layers finite ones.
    assert ww.last_report["head"].status == "too-small"
    assert math.isnan(history.history["ww/head/alpha"][2])
    assert math.isfinite(history.history["ww/hidden0/alpha"][2])

    # CSVLogger fixed its columns at epoch 0 and got the same values.
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    for key in keys:
        assert key in rows[0]
        for epoch, row in enumerate(rows):
            logged = history.history[key][epoch]
            assert (row[key] == "nan") if math.isnan(logged) else float(row[key]) == logged

    # The history file: one row per layer per analyzed epoch.
    rows = ww_callbacks.load_history(jsonl_path, as_pandas=False)
    assert sorted({r["epoch"] for r in rows}) == [0, 2]
    last = [r for r in rows if r["epoch"] == 2]
    assert [r["layer"] for r in last] == layer_names
    assert last[0]["alpha"] == pytest.approx(ww.last_report["hidden0"].alpha, rel=1e-12)


@pytest.mark.parametrize("every_n_epochs", [1, 2])
def test_stock_early_stopping_and_model_checkpoint_follow_a_ww_metric(tmp_path, every_n_epochs):
    # With every_n_epochs=2 the NaN epochs count towards patience but never improve, and the first epoch is
    # analyzed, so neither callback starts from a NaN "best".
    ckpt = tmp_path / "best.weights.h5"
    patience = 2
    stopper = keras.callbacks.EarlyStopping(monitor="ww/alpha", mode="min", patience=patience)
    saver = keras.callbacks.ModelCheckpoint(
        str(ckpt), monitor="ww/alpha", mode="min", save_best_only=True, save_weights_only=True
    )
    model, ww, history, recorder, kernels, alphas = _scheduled_run(
        None, extra_callbacks=(stopper, saver), every_n_epochs=every_n_epochs
    )
    analyzed = [e == 0 or (e + 1) % every_n_epochs == 0 for e in range(len(alphas))]
    alphas = [a if on else math.nan for a, on in zip(alphas, analyzed, strict=True)]

    # Keras' EarlyStopping: wait += 1 each epoch, reset on improvement, stop when wait >= patience.
    best, wait, expected_stop = None, 0, None
    for epoch, value in enumerate(alphas):
        wait += 1
        if best is None or value < best:
            best, wait = value, 0
        elif wait >= patience:
            expected_stop = epoch
            break
    assert expected_stop is not None and expected_stop < len(alphas) - 1
    ran = expected_stop + 1
    assert len(history.history["loss"]) == ran
    assert stopper.stopped_epoch == expected_stop
    assert history.history["ww/alpha"] == pytest.approx(alphas[:ran], rel=1e-12, nan_ok=True)
    assert ww.stopped_epoch is None  # our callback had no rule: Keras stopped

    best_epoch = int(np.nanargmin(alphas[:ran]))
    assert best_epoch not in (0, expected_stop)
    twin = compile_model(single_dense(*SHAPE))
    twin.load_weights(str(ckpt))
    np.testing.assert_array_equal(twin.get_weights()[0], kernels[best_epoch])
    assert weights_equal(twin.get_weights(), recorder.weights[best_epoch])


# ---------------------------------------------------------------------------------------------- rules


def _expected_stop(kind, alphas, threshold):
    below = [a < threshold for a in alphas]
    if kind == "alpha_below":
        return _first(below)
    if kind == "plateau":
        return _first(_plateau_signals(alphas, 2))
    if kind == "any_of":
        return _first([b or p for b, p in zip(below, _plateau_signals(alphas, 2), strict=True)])
    if kind == "all_of":
        return _first([b and p for b, p in zip(below, _plateau_signals(alphas, 1), strict=True)])
    raise AssertionError(kind)


def _rule(kind, threshold):
    return {
        "alpha_below": lambda: AlphaBelow(threshold),
        "plateau": lambda: Plateau("alpha", mode="min", patience=2),
        "any_of": lambda: AnyOf(AlphaBelow(threshold), Plateau("alpha", mode="min", patience=2)),
        "all_of": lambda: AllOf(AlphaBelow(threshold), Plateau("alpha", mode="min", patience=1)),
    }[kind]()


@pytest.mark.parametrize("kind", ["alpha_below", "plateau", "any_of", "all_of"])
def test_each_rule_stops_at_the_epoch_it_should(kind):
    threshold = _threshold()
    _, alphas = _schedule(RANKS)
    expected = _expected_stop(kind, alphas, threshold)
    assert expected is not None and 0 < expected < len(alphas) - 1, (
        "the schedule must make the rule fire mid-run"
    )

    model, ww, history, _, _, _ = _scheduled_run(_rule(kind, threshold))

    assert ww.stopped_epoch == expected
    assert len(history.history["loss"]) == expected + 1
    assert model.stop_training is True
    assert [h["epoch"] for h in ww.history] == list(range(expected + 1))
    assert [h["alpha"] for h in ww.history] == pytest.approx(alphas[: expected + 1], rel=1e-12)
    assert ww.stop_reason and ww.stop_reason == ww.early_stopping.last_decision.reason


def test_schedule_separates_the_rules():
    # Guards the test above: the four rules must not all stop at the same epoch.
    _, alphas = _schedule(RANKS)
    stops = {
        kind: _expected_stop(kind, alphas, _threshold()) for kind in ("alpha_below", "plateau", "all_of")
    }
    assert len(set(stops.values())) == 3, stops


def test_custom_rule_subclass_stops_training():
    class StopAtSecondAnalysis(StoppingRule):
        def check(self, report, *, epoch):
            return StopDecision(self.num_checks >= 1, f"second analysis at epoch {epoch}")

    model = compile_model(tiny_mlp())
    ww = WeightWatcherCallback(
        every_n_epochs=3, randomize=False, seed=0, early_stopping=StopAtSecondAnalysis()
    )
    history = _fit(model, [ww], epochs=6)
    assert ww.stopped_epoch == 2  # analyses at epochs 0 (the first of fit) and 2
    assert len(history.history["loss"]) == 3
    assert ww.stop_reason == "second analysis at epoch 2"


@pytest.mark.parametrize("kind", ["alpha_below", "plateau"])
def test_restore_best_weights(kind):
    threshold = _threshold()
    _, alphas = _schedule(RANKS)
    stop = _expected_stop(kind, alphas, threshold)
    seen = alphas[: stop + 1]
    if kind == "alpha_below":
        # The best epoch is the lowest mean alpha still at or above the threshold.
        candidates = [(a, e) for e, a in enumerate(seen) if a >= threshold]
        expected_best = min(candidates)[1]
    else:
        expected_best = int(np.argmin(seen))
    assert expected_best != stop

    model, ww, history, recorder, kernels, _ = _scheduled_run(_rule(kind, threshold), restore=True)

    assert len(history.history["loss"]) == stop + 1
    assert ww.best_epoch == expected_best == ww.early_stopping.best_epoch(ww.history)
    np.testing.assert_array_equal(model.get_weights()[0], kernels[expected_best])
    assert weights_equal(model.get_weights(), recorder.weights[expected_best])
    assert not weights_equal(model.get_weights(), recorder.weights[-1])


def test_without_restore_the_last_weights_stay():
    threshold = _threshold()
    model, ww, history, recorder, kernels, _ = _scheduled_run(_rule("alpha_below", threshold))
    assert ww.best_weights is None
    assert weights_equal(model.get_weights(), recorder.weights[-1])
    np.testing.assert_array_equal(model.get_weights()[0], kernels[ww.stopped_epoch])


# ---------------------------------------------------------------------------------------------- robustness


def test_nan_weights_mid_training_do_not_crash_fit():
    poisoned: list[str] = []

    def poison(model, epoch, logs):
        # At the end of epoch 1, the hidden layer with the larger alpha turns NaN: the summary of the others
        # then looks better (lower) than before, which must not make that epoch the one to restore.
        if epoch == 1:
            report = ww_callbacks.analyze(snapshot_keras(model), randomize=False)
            name = max(("hidden0", "hidden1"), key=lambda n: report[n].alpha)
            layer = model.get_layer(name)
            layer.kernel.assign(np.full(tuple(layer.kernel.shape), np.nan, dtype="float32"))
            poisoned.append(name)

    model = compile_model(tiny_mlp(seed=2), lr=0.001)
    rule = Plateau("alpha", mode="min", patience=10)  # never stops this run, only picks the epoch to restore
    ww = WeightWatcherCallback(per_layer=True, seed=0, early_stopping=rule, restore_best_weights=True)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        history = _fit(model, [OnEpochEnd(poison), ww], epochs=4)

    assert len(history.history["loss"]) == 4  # fit ran to the end
    assert [h["epoch"] for h in ww.history] == [0, 1, 2, 3]
    (bad,) = poisoned
    good = "hidden1" if bad == "hidden0" else "hidden0"
    # Epoch 1: the NaN layer is left out of the summary, the other hidden layer still counts.
    assert math.isnan(history.history[f"ww/{bad}/alpha"][1])
    assert history.history["ww/alpha"][1] == pytest.approx(history.history[f"ww/{good}/alpha"][1], rel=1e-12)
    assert ww.history[1]["num_summarized"] == 1
    assert ww.history[1]["alpha"] < ww.history[0]["alpha"]  # so a NaN-blind "best" would pick epoch 1
    # Then NaN spreads through training: every layer is non-finite and the summary is NaN, not an error.
    assert ww.last_report[bad].status == "non-finite"
    assert ww.stopped_epoch is None
    # An epoch with a non-finite layer is never "best": the restored weights are epoch 0's, all finite.
    assert ww.best_epoch == 0
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_non_finite_rule_stops_a_diverging_fit_at_its_first_nan_epoch():
    """A real divergence: SGD whose learning rate grows 100x per epoch until the weights overflow."""
    finite: list[bool] = []  # per epoch end, before our callback: every weight finite?
    model = compile_model(tiny_mlp(seed=1), lr=0.01)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 100.0**epoch)
    record = OnEpochEnd(
        lambda m, epoch, logs: finite.append(all(np.isfinite(w).all() for w in m.get_weights()))
    )
    ww = WeightWatcherCallback(early_stopping=NonFinite(), seed=0)
    x, y = make_data(n=64, d_in=16, d_out=4)
    with pytest.warns(RuntimeWarning, match=r"layers hold NaN or Inf \(hidden0"):
        history = _fit(model, [schedule, record, ww], epochs=12, x=x, y=y)

    assert False in finite, "the fit was expected to diverge"
    first_bad = finite.index(False)
    assert first_bad >= 1  # lr 0.01 in epoch 0 cannot blow up: the rule really waited for the divergence
    assert ww.stopped_epoch == first_bad and len(history.history["loss"]) == first_bad + 1
    assert "training diverged" in ww.stop_reason
    logged = history.history["ww/num_nonfinite_layers"]
    assert logged[:first_bad] == [0.0] * first_bad and logged[first_bad] >= 1
    assert [h["num_nonfinite_layers"] for h in ww.history] == logged


def test_multi_head_attention_and_einsum_dense_layers():
    inputs = keras.Input((6, 16))
    init = keras.initializers.GlorotUniform(seed=0)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, kernel_initializer=init, name="mha")(
        inputs, inputs
    )
    mixed = keras.layers.EinsumDense(
        "abc,cd->abd", output_shape=(None, 24), kernel_initializer=init, name="mix"
    )(attended)
    pooled = keras.layers.GlobalAveragePooling1D()(mixed)
    outputs = keras.layers.Dense(4, kernel_initializer=init, name="head")(pooled)
    model = compile_model(keras.Model(inputs, outputs))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, 16)).astype("float32")
    y = rng.standard_normal((32, 4)).astype("float32")

    ww = WeightWatcherCallback(per_layer=True, seed=0)
    history = _fit(model, [ww], epochs=2, x=x, y=y)

    names = [layer.longname for layer in ww.last_report.layers]
    assert len(names) == len(set(names))  # every kernel analyzed once
    mha = [n for n in names if n.startswith("mha")]
    assert len(mha) == 4, names  # query, key, value, attention output
    assert "mix" in names and "head" in names
    for name in mha + ["mix"]:
        assert ww.last_report[name].N == (24 if name == "mix" else 16)
        assert len(history.history[f"ww/{name}/alpha"]) == 2
    assert all(math.isfinite(v) for v in history.history["ww/alpha"])
    expected = ww_callbacks.analyze(snapshot_keras(model), rng=ww.engine.rng_for(1))
    assert history.history["ww/alpha"][1] == pytest.approx(expected.summary["alpha"], rel=1e-12)


def test_layer_filter():
    model = compile_model(tiny_mlp())
    ww = WeightWatcherCallback(layers=["hidden*"], per_layer=True, randomize=False, seed=0)
    history = _fit(model, [ww], epochs=1)
    assert [layer.longname for layer in ww.last_report.layers] == ["hidden0", "hidden1"]
    assert "ww/hidden1/alpha" in history.history
    assert not [key for key in history.history if key.startswith("ww/head/")]


def test_keras_and_torch_models_with_the_same_weights_log_the_same_metrics():
    torch = pytest.importorskip("torch")
    init = keras.initializers.GlorotUniform(seed=4)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.Conv2D(16, 3, kernel_initializer=init, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(12, kernel_initializer=init, name="fc"),
        ]
    )
    compile_model(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 10, 10, 3)).astype("float32")
    y = rng.standard_normal((32, 12)).astype("float32")
    metrics = ("alpha", "alpha_weighted", "log_spectral_norm")
    ww = WeightWatcherCallback(metrics=metrics, per_layer=True, randomize=False, seed=0)
    history = _fit(model, [ww], epochs=2, x=x, y=y)

    conv_kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)  # (kh, kw, in, out)
    fc_kernel = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)  # (in, out)
    twin = torch.nn.Sequential()
    twin.add_module("conv", torch.nn.Conv2d(3, 16, 3))
    twin.add_module("flatten", torch.nn.Flatten())
    twin.add_module("fc", torch.nn.Linear(fc_kernel.shape[0], 12))
    with torch.no_grad():
        twin.conv.weight.copy_(torch.from_numpy(conv_kernel.transpose(3, 2, 0, 1).copy()))
        twin.fc.weight.copy_(torch.from_numpy(fc_kernel.T.copy()))
    expected = ww_callbacks.analyze(twin, randomize=False)

    assert [layer.longname for layer in expected.layers] == ["conv", "fc"]
    for layer in expected.layers:
        assert layer.ok
        for metric in metrics:
            assert history.history[f"ww/{layer.longname}/{metric}"][-1] == pytest.approx(
                getattr(layer, metric), rel=1e-9
            )
    for metric in metrics:
        assert history.history[f"ww/{metric}"][-1] == pytest.approx(expected.summary[metric], rel=1e-9)


@pytest.mark.slow
@pytest.mark.tensorflow_only  # deselected by the torch/JAX runs (noxfile): MirroredStrategy is TensorFlow's
@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute.MirroredStrategy needs the TensorFlow backend"
)
def test_mirrored_strategy_runs_once_with_the_same_metrics(tmp_path):
    out = tmp_path / "mirrored.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_keras_mirrored_script.py"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    single, mirrored = result["single"], result["mirrored"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    # Once per epoch, in the main thread, reading mirrored variables.
    for run, variable in ((single, "ResourceVariable"), (mirrored, "MirroredVariable")):
        assert [c["epoch"] for c in run["calls"]] == [0, 1, 2]
        assert all(c["main_thread"] for c in run["calls"])
        assert {c["variable"] for c in run["calls"]} == {variable}
        assert [h["epoch"] for h in run["ww_history"]] == [0, 1, 2]
    # Same training (up to float summation order across replicas), so the same metrics.
    for a, b in zip(single["weights"], mirrored["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    ww_keys = [k for k in single["logs"] if k.startswith("ww/")]
    assert set(ww_keys) == {k for k in mirrored["logs"] if k.startswith("ww/")}
    assert "ww/hidden0/alpha" in ww_keys
    for key in ww_keys:
        np.testing.assert_allclose(mirrored["logs"][key], single["logs"][key], rtol=1e-5, equal_nan=True)
        assert np.isfinite(single["logs"][key]).all() == (not key.startswith("ww/head/"))


@pytest.mark.slow
def test_a_wandb_run_it_starts_gets_the_values_and_is_finished(tmp_path):
    wandb = pytest.importorskip("wandb")
    from _wandb_reader import read_run

    model = compile_model(tiny_mlp())
    init = {"mode": "offline", "dir": str(tmp_path), "project": "ww-keras-test"}
    ww = WeightWatcherCallback(seed=0, wandb_init_kwargs=init, media_every_n_epochs=0)
    history = _fit(model, [ww], epochs=2)
    assert wandb.run is None  # the callback finished the run it started

    run = read_run(tmp_path)
    rows = run.rows_with("ww/alpha")  # our own run: the callback logs the summaries itself
    assert [row["epoch"] for row in rows] == [0, 1]
    assert [row["ww/alpha"] for row in rows] == pytest.approx(history.history["ww/alpha"], rel=1e-12)
    assert run.values("ww/hidden0/alpha")[-1] == pytest.approx(ww.last_report["hidden0"].alpha, rel=1e-12)


# ---------------------------------------------------------------------------------------------- lifecycle


def test_reuse_resets_and_loaded_state_continues():
    model = compile_model(tiny_mlp())
    ww = WeightWatcherCallback(randomize=False, seed=0, early_stopping=Plateau("alpha", patience=5))
    _fit(model, [ww], epochs=2)
    assert [h["epoch"] for h in ww.history] == [0, 1]
    _fit(model, [ww], epochs=2)  # reused like Keras' EarlyStopping: starts afresh
    assert [h["epoch"] for h in ww.history] == [0, 1]
    state = json.loads(json.dumps(ww.state_dict()))  # plain values only
    wait = ww.early_stopping.wait_count

    resumed = WeightWatcherCallback(randomize=False, early_stopping=Plateau("alpha", patience=5))
    resumed.load_state_dict(state)
    assert resumed.seed == 0 and resumed.early_stopping.wait_count == wait
    history = _fit(model, [resumed], epochs=4, initial_epoch=2)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert len(history.history["ww/alpha"]) == 2
    assert resumed.early_stopping.num_checks == 4


def test_argument_errors():
    with pytest.raises(ValueError, match="restore_best_weights"):
        WeightWatcherCallback(restore_best_weights=True)

    class NoMetric(StoppingRule):
        def check(self, report, *, epoch):
            return False

    with pytest.raises(ValueError, match="monitors a metric"):
        WeightWatcherCallback(early_stopping=NoMetric(), restore_best_weights=True)
    with pytest.raises(ValueError, match="unknown metric"):
        WeightWatcherCallback(metrics=("alpah",))
    with pytest.raises(ValueError, match="randomize"):
        WeightWatcherCallback(metrics=("rand_distance",), randomize=False)
    with pytest.raises(ValueError, match="every_n_epochs"):
        WeightWatcherCallback(every_n_epochs=0)
    with pytest.raises(TypeError, match="StoppingRule"):
        WeightWatcherCallback(early_stopping="alpha")
    assert isinstance(WeightWatcherCallback(), keras.callbacks.Callback)


def test_history_path_has_one_meaning_and_bad_values_fail_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default file would land here
    model = compile_model(tiny_mlp())
    for no_file in (None, False):  # Keras has no log directory: no default file
        ww = WeightWatcherCallback(history_path=no_file, randomize=False, seed=0)
        _fit(model, [ww], epochs=1)
        assert len(ww.history) == 1
    assert not list(tmp_path.rglob("*.jsonl"))
    ww = WeightWatcherCallback(history_path=tmp_path / "h.jsonl", randomize=False, seed=0)
    _fit(model, [ww], epochs=1)
    assert (tmp_path / "h.jsonl").exists()
    for bad in (3, ["h.jsonl"], b"h.jsonl"):
        with pytest.raises(TypeError, match="history_path must be None, False, True or a path"):
            WeightWatcherCallback(history_path=bad)
    with pytest.raises(ValueError, match="Keras has no log directory"):
        WeightWatcherCallback(history_path=True)
    with pytest.raises(ValueError, match="empty path"):
        WeightWatcherCallback(history_path="")

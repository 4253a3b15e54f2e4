"""`WeightWatcherCallback` in real `Trainer.fit` runs (tiny CPU models), in both Lightning namespaces."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")

from _lightning_utils import (
    HIDDEN,
    IN,
    NAMESPACES,
    make_model,
    make_trainer,
    namespace_modules,
    power_law_matrix,
)

import ww_callbacks
from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau

DEFAULT_KEYS = ("ww/alpha", "ww/alpha_weighted", "ww/log_spectral_norm", "ww/rand_distance")


def alphas_logged(callback) -> list[float]:
    return [entry["alpha"] for entry in callback.history]


def test_power_law_matrix_controls_alpha():
    # The precondition of the stopping tests: the fitted alpha follows the alpha we build in.
    for target in (1.5, 3.0, 5.0):
        report = ww_callbacks.analyze({"fc.weight": power_law_matrix(target, HIDDEN, IN, seed=1)}, seed=0)
        assert report.layers[0].alpha == pytest.approx(target, abs=0.1)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_metrics_reach_callback_metrics_csv_tensorboard_and_history(namespace, tmp_path):
    pl, mod = namespace_modules(namespace)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ww = mod.WeightWatcherCallback(per_layer=True, seed=0)
    assert isinstance(ww, pl.Callback)
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    tb_logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    model = make_model(namespace)
    trainer = make_trainer(namespace, tmp_path, max_epochs=2, callbacks=[ww], logger=[csv_logger, tb_logger])
    trainer.fit(model)

    assert [h["epoch"] for h in ww.history] == [0, 1]
    last = ww.history[-1]
    report = ww.last_report
    assert report is not None and report.num_summarized == 2
    metrics = trainer.callback_metrics
    for key in DEFAULT_KEYS:
        metric = key.removeprefix("ww/")
        assert float(metrics[key]) == pytest.approx(last[metric], rel=1e-6)
        for layer in ("fc1", "fc2"):
            assert float(metrics[f"ww/{layer}/{metric}"]) == pytest.approx(
                getattr(report[layer], metric), rel=1e-6
            )
    # what the epoch-end hooks after ours saw (EarlyStopping / ModelCheckpoint run there)
    assert model.seen[0]["ww/alpha"] == pytest.approx(ww.history[0]["alpha"], rel=1e-6)

    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("ww/alpha")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["ww/alpha"]) for r in rows] == pytest.approx(alphas_logged(ww), rel=1e-6)
    assert float(rows[-1]["ww/fc2/log_spectral_norm"]) == pytest.approx(
        report["fc2"].log_spectral_norm, rel=1e-6
    )

    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    assert set(DEFAULT_KEYS) <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("ww/alpha")] == pytest.approx(alphas_logged(ww), rel=1e-6)

    # history file: <trainer.log_dir>/ww_history.jsonl, one line per layer per analyzed epoch
    rows = ww_callbacks.load_history(f"{csv_logger.log_dir}/ww_history.jsonl", as_pandas=False)
    assert [(r["epoch"], r["layer"]) for r in rows] == [(0, "fc1"), (0, "fc2"), (1, "fc1"), (1, "fc2")]
    assert rows[-1]["alpha"] == pytest.approx(report["fc2"].alpha)


def test_stock_early_stopping_and_model_checkpoint_monitor_ww_metric(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ww = mod.WeightWatcherCallback(metrics=("alpha",), seed=0)
    stopper = EarlyStopping(monitor="ww/alpha", mode="min", patience=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="ww/alpha", mode="min", save_top_k=1)
    model = make_model(alpha_schedule=[5.0, 4.0, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5])
    # EarlyStopping listed first on purpose: Lightning runs monitoring callbacks after ours anyway.
    trainer = make_trainer(
        "lightning.pytorch", tmp_path, max_epochs=8, callbacks=[stopper, ckpt, ww], enable_checkpointing=True
    )
    trainer.fit(model)
    # best at epoch 2 (alpha 3), no improvement at 3 and 4: patience 2 runs out at epoch 4
    assert stopper.stopped_epoch == 4
    assert [h["epoch"] for h in ww.history] == [0, 1, 2, 3, 4]
    assert float(ckpt.best_model_score) == pytest.approx(ww.history[2]["alpha"], rel=1e-6)
    assert "epoch=2" in ckpt.best_model_path
    assert ww.stopped_epoch is None  # our own rule was not involved


def test_alpha_below_stops_at_the_first_over_trained_epoch(tmp_path, caplog):
    _, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(early_stopping=AlphaBelow(2.0), seed=0)
    model = make_model(alpha_schedule=[5.0, 4.0, 3.0, 1.6, 1.5])
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=10, callbacks=[ww])
    with caplog.at_level("INFO"):
        trainer.fit(model)
    assert ww.stopped_epoch == 3 and trainer.current_epoch == 4  # current_epoch counts completed epochs
    assert "below 2" in ww.stop_reason and "over-trained" in ww.stop_reason
    assert any("stopping at epoch 3" in r.getMessage() for r in caplog.records)
    assert len(ww.history) == 4

    # min_epochs wins: the rule fires at 3 and 4, training goes on until epoch 5 completes the 6 epochs
    ww = mod.WeightWatcherCallback(early_stopping=AlphaBelow(2.0), seed=0)
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=10, min_epochs=6, callbacks=[ww])
    trainer.fit(make_model(alpha_schedule=[5.0, 4.0, 3.0, 1.6, 1.5]))
    assert ww.stopped_epoch == 5 and trainer.current_epoch == 6


def test_plateau_counts_analyses_and_respects_every_n_epochs(tmp_path):
    _, mod = namespace_modules("lightning.pytorch")
    schedule = [6.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    ww = mod.WeightWatcherCallback(early_stopping=Plateau("alpha", mode="min", patience=2), seed=0)
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=10, callbacks=[ww])
    trainer.fit(make_model(alpha_schedule=schedule))
    assert ww.stopped_epoch == 4  # best at 2, same alpha at 3 and 4
    assert "did not improve" in ww.stop_reason and "at epoch 2" in ww.stop_reason

    # analyses at epochs 1, 3, 5, 7: best at 3, no improvement at 5 and 7
    ww = mod.WeightWatcherCallback(
        every_n_epochs=2, early_stopping=Plateau("alpha", mode="min", patience=2), seed=0
    )
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=10, callbacks=[ww])
    model = make_model(alpha_schedule=schedule)
    trainer.fit(model)
    assert [h["epoch"] for h in ww.history] == [1, 3, 5, 7]
    assert ww.stopped_epoch == 7
    assert "ww/alpha" not in model.seen[0] and "ww/alpha" in model.seen[1]


def test_any_of_alpha_below_and_plateau_stops_on_alpha_and_feeds_both(tmp_path):
    _, mod = namespace_modules("lightning.pytorch")
    rule = AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3))
    ww = mod.WeightWatcherCallback(early_stopping=rule, seed=0)
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=6, callbacks=[ww])
    trainer.fit(make_model(alpha_schedule=[5.0, 4.0, 3.0, 1.6]))
    assert ww.stopped_epoch == 3 and ww.stop_reason.startswith("AlphaBelow: ")
    assert rule.rules[1].num_checks == 4  # the plateau rule saw every report too


def _resume_run(tmp_path, ckpt_path=None, *, max_epochs):
    _, mod = namespace_modules("lightning.pytorch")
    patient = mod.WeightWatcherCallback(early_stopping=Plateau("alpha", mode="min", patience=3))
    other = mod.WeightWatcherCallback(prefix="ww2/", metrics=("alpha",), randomize=False, seed=123)
    trainer = make_trainer(
        "lightning.pytorch",
        tmp_path,
        max_epochs=max_epochs,
        callbacks=[patient, other],
        enable_checkpointing=False,
    )
    trainer.fit(make_model(alpha_schedule=[6.0, 5.0, 4.0, 4.0]), ckpt_path=ckpt_path)
    return trainer, patient, other


def test_resume_from_checkpoint_continues_patience_and_history(tmp_path):
    trainer, first, first_other = _resume_run(tmp_path, max_epochs=4)
    assert first.stopped_epoch is None and first.early_stopping.wait_count == 1  # best at 2, wait 1 at 3
    ckpt_path = tmp_path / "after-4.ckpt"
    trainer.save_checkpoint(ckpt_path)

    trainer, resumed, resumed_other = _resume_run(tmp_path, ckpt_path=str(ckpt_path), max_epochs=12)
    # a fresh rule would stop at epoch 6 (best at 3 after restart); the resumed one waits 2 more: epoch 5
    assert resumed.stopped_epoch == 5
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4, 5]
    assert resumed.history[:4] == first.history
    assert resumed.seed == first.seed  # the seed came from the checkpoint
    assert resumed_other.seed == 123 and [h["epoch"] for h in resumed_other.history] == [0, 1, 2, 3, 4, 5]
    assert resumed.state_key != resumed_other.state_key


def test_sanity_check_fast_dev_run_and_validate_are_skipped(tmp_path):
    _, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(run_on="validation_epoch_end", seed=0)
    model = make_model(with_validation=True)
    trainer = make_trainer(
        "lightning.pytorch",
        tmp_path,
        max_epochs=2,
        callbacks=[ww],
        num_sanity_val_steps=2,
        val_check_interval=0.5,
    )
    trainer.fit(model)
    assert [h["epoch"] for h in ww.history] == [0, 1]  # once per epoch, though validation ran twice
    assert "ww/alpha" in model.seen[0]  # logged at validation end, before the train epoch end
    trainer.validate(model, verbose=False)
    assert len(ww.history) == 2

    fast = mod.WeightWatcherCallback(seed=0, history_path=tmp_path / "never.jsonl")
    trainer = make_trainer("lightning.pytorch", tmp_path, fast_dev_run=True, callbacks=[fast])
    model = make_model()
    trainer.fit(model)
    assert fast.history == [] and not any(k.startswith("ww/") for k in trainer.callback_metrics)
    assert not (tmp_path / "never.jsonl").exists()


def test_layer_turning_nan_mid_training_does_not_crash(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(per_layer=True, early_stopping=AlphaBelow(2.0), seed=0)
    model = make_model(nan_from_epoch=1)
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=3, callbacks=[ww], logger=csv_logger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    assert trainer.current_epoch == 3 and [h["num_summarized"] for h in ww.history] == [3, 2, 2]
    assert ww.last_report["spare"].status == "non-finite"
    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("ww/alpha")]
    assert [bool(r["ww/spare/alpha"]) for r in rows] == [True, False, False]
    assert all(math.isfinite(float(r["ww/alpha"])) for r in rows)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_non_finite_rule_stops_a_diverging_fit_at_its_first_nan_epoch(namespace, tmp_path):
    """A real divergence: SGD whose learning rate grows 100x per epoch until the weights overflow."""
    import torch
    from torch import nn

    pl, mod = namespace_modules(namespace)

    class Diverging(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8)
            )
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(128, 32, generator=g), torch.randn(128, 8, generator=g)
            self.finite: list[bool] = []  # per epoch end: every weight finite? (what the callback analyzed)

        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.01)
            return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=100.0)]

        def on_train_epoch_end(self) -> None:
            self.finite.append(all(bool(torch.isfinite(p).all()) for p in self.parameters()))

        def train_dataloader(self):
            from torch.utils.data import DataLoader, TensorDataset

            return DataLoader(TensorDataset(self.x, self.y), batch_size=32)

    torch.manual_seed(0)
    model = Diverging()
    ww = mod.WeightWatcherCallback(early_stopping=ww_callbacks.NonFinite(), seed=0)
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(namespace, tmp_path, max_epochs=12, callbacks=[ww], logger=csv_logger)
    with pytest.warns(RuntimeWarning, match=r"layers hold NaN or Inf \(net\.") as caught:
        trainer.fit(model)

    assert False in model.finite, "the fit was expected to diverge"
    first_bad = model.finite.index(False)
    assert first_bad >= 1  # lr 0.01 in epoch 0 cannot blow up: the rule really waited for the divergence
    assert ww.stopped_epoch == first_bad and trainer.current_epoch == first_bad + 1
    assert "hold NaN or Inf weights at epoch" in ww.stop_reason and "training diverged" in ww.stop_reason
    counts = [h["num_nonfinite_layers"] for h in ww.history]
    assert counts[:first_bad] == [0] * first_bad and counts[first_bad] >= 1 and len(counts) == first_bad + 1
    assert len([w for w in caught if "hold NaN or Inf" in str(w.message)]) == 1
    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as f:
        logged = [
            float(r["ww/num_nonfinite_layers"]) for r in csv.DictReader(f) if r.get("ww/num_nonfinite_layers")
        ]
    assert logged == counts


def test_callback_options_are_validated():
    _, mod = namespace_modules("lightning.pytorch")
    with pytest.raises(ValueError, match="run_on"):
        mod.WeightWatcherCallback(run_on="batch_end")
    with pytest.raises(ValueError, match="randomize=True"):
        mod.WeightWatcherCallback(randomize=False, early_stopping=Plateau("rand_distance"))


def test_state_survives_torch_save_and_json(tmp_path):
    import torch

    _, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(early_stopping=Plateau("alpha"), seed=0)
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww])
    trainer.fit(make_model())
    state = ww.state_dict()
    json.dumps(state)  # plain values only
    torch.save(state, tmp_path / "s.pt")
    clone = mod.WeightWatcherCallback(early_stopping=Plateau("alpha"))
    clone.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert clone.history == ww.history and clone.seed == 0
    assert clone.last_report.summary["alpha"] == pytest.approx(ww.last_report.summary["alpha"])
    assert np.isfinite(clone.early_stopping.best_score)


_IMPORT_CHECK = """
import sys
{imports}
loaded = sorted(n for n in ("lightning", "pytorch_lightning", "torch", "keras", "wandb") if n in sys.modules)
print("loaded:" + ",".join(loaded))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("imports", "must", "must_not"),
    [
        (
            "import ww_callbacks, ww_callbacks.stopping",
            set(),
            {"lightning", "pytorch_lightning", "torch", "wandb"},
        ),
        ("from ww_callbacks.lightning import WeightWatcherCallback", {"lightning"}, {"pytorch_lightning"}),
        (
            "from ww_callbacks.pytorch_lightning import WeightWatcherCallback",
            {"pytorch_lightning"},
            {"lightning"},
        ),
    ],
)
def test_imports_stay_in_their_namespace(imports, must, must_not):
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK.format(imports=imports)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("loaded:"))
    loaded = set(filter(None, line.removeprefix("loaded:").split(",")))
    assert must <= loaded and not (must_not & loaded), loaded


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_history_path_has_one_meaning_and_bad_values_fail_at_construction(namespace, tmp_path):
    _, mod = namespace_modules(namespace)
    for bad in (3, ["h.jsonl"], b"h.jsonl"):
        with pytest.raises(TypeError, match="history_path must be None, False, True or a path"):
            mod.WeightWatcherCallback(history_path=bad)
    with pytest.raises(ValueError, match="empty path"):
        mod.WeightWatcherCallback(history_path="")
    # None and True: the trainer's log directory; False: no file; a path: that file.
    callbacks = {
        "none": mod.WeightWatcherCallback(seed=0, randomize=False),
        "true": mod.WeightWatcherCallback(prefix="t/", history_path=True, seed=0, randomize=False),
        "false": mod.WeightWatcherCallback(prefix="f/", history_path=False, seed=0, randomize=False),
        "path": mod.WeightWatcherCallback(prefix="p/", history_path=tmp_path / "mine.jsonl", randomize=False),
    }
    trainer = make_trainer(namespace, tmp_path, max_epochs=1, callbacks=list(callbacks.values()))
    trainer.fit(make_model(namespace))
    assert all(len(cb.history) == 1 for cb in callbacks.values())
    default = tmp_path / "ww_history.jsonl"  # logger=False: the log directory is default_root_dir
    assert sorted(p.name for p in tmp_path.rglob("*.jsonl")) == ["mine.jsonl", "ww_history.jsonl"]
    rows = [json.loads(line) for line in default.read_text().splitlines()]
    assert len(rows) == 2 * len(callbacks["none"].last_report.layers)  # "none" and "true" share the file


def test_same_class_contract_in_both_namespaces():
    _, light = namespace_modules("lightning.pytorch")
    _, classic = namespace_modules("pytorch_lightning")
    a, b = light.WeightWatcherCallback(seed=1), classic.WeightWatcherCallback(seed=1)
    assert (
        type(a).__module__ == "ww_callbacks.lightning"
        and type(b).__module__ == "ww_callbacks.pytorch_lightning"
    )
    assert a.state_key == b.state_key == "WeightWatcherCallback{'prefix': 'ww/'}"
    assert "pytorch_lightning" in type(b).__mro__[1].__module__
    assert type(a).__mro__[1].__module__.startswith("lightning.pytorch")


@pytest.mark.slow
def test_wandb_logger_gets_summaries_once_and_the_sink_the_rest(tmp_path):
    pytest.importorskip("wandb")
    from _wandb_reader import read_run

    pl, mod = namespace_modules("lightning.pytorch")
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="ww-test")
    ww = mod.WeightWatcherCallback(seed=0, media_every_n_epochs=0)
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww], logger=logger)
    trainer.fit(make_model())
    logger.experiment.finish()
    run = read_run(tmp_path)
    # summaries come through the Lightning logger, once per analyzed epoch
    assert run.values("ww/alpha") == pytest.approx(alphas_logged(ww), rel=1e-6)
    # per-layer scalars and the layer table come from the sink (per_layer=False here: no duplicate)
    history = ww_callbacks.load_history(f"{tmp_path}/ww_history.jsonl", as_pandas=False)
    fc1 = [row["alpha"] for row in history if row["layer"] == "fc1"]
    assert len(fc1) == 2 and run.values("ww/fc1/alpha") == pytest.approx(fc1, rel=1e-6)
    assert len(run.rows_with("ww/layers")) == 2


@pytest.mark.slow
def test_wandb_init_kwargs_starts_and_finishes_a_run(tmp_path):
    pytest.importorskip("wandb")
    from _wandb_reader import read_run

    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(
        seed=0, media_every_n_epochs=0, wandb_init_kwargs={"mode": "offline", "dir": str(tmp_path / "wb")}
    )
    csv_logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww], logger=csv_logger)
    trainer.fit(make_model())
    run = read_run(tmp_path / "wb")  # complete: the callback finished the run it started
    assert run.values("ww/alpha") == pytest.approx(alphas_logged(ww), rel=1e-6)
    assert len(run.values("ww/fc2/rand_distance")) == 2

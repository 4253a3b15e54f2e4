"""Lightning step schedules (``every_n_train_steps``) and background analysis in real ``Trainer.fit`` runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading

import pytest

pytest.importorskip("torch")

import torch
from _lightning_utils import NAMESPACES, make_model, make_trainer, namespace_modules
from test_background import NOT_NUMBERS, analysis_threads, numbers

import ww_callbacks
from ww_callbacks.stopping import Plateau

# ScheduledNet: 64 samples in batches of 16 -> 4 optimizer steps per epoch.
STEPS_PER_EPOCH = 4


def csv_rows(logger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def fit(namespace, tmp_path, ww, *, model=None, **trainer_kwargs):
    pl, _ = namespace_modules(namespace)
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    torch.manual_seed(0)  # the same initial weights in runs that are compared
    model = model if model is not None else make_model(namespace, step_loss=True)
    trainer_kwargs.setdefault("max_epochs", 3)
    trainer = make_trainer(namespace, tmp_path, callbacks=[ww], logger=logger, **trainer_kwargs)
    trainer.fit(model)
    return trainer, logger


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("log_every_n_steps", [1, 5])
def test_every_n_train_steps_logs_at_those_steps_next_to_the_training_loss(
    namespace, log_every_n_steps, tmp_path
):
    _, mod = namespace_modules(namespace)
    ww = mod.WeightWatcherCallback(every_n_train_steps=3, seed=0, metrics=("alpha", "rand_distance"))
    trainer, logger = fit(namespace, tmp_path, ww, log_every_n_steps=log_every_n_steps)

    # Global steps 3, 6, 9, 12 -> the loggers' steps 2, 5, 8, 11 (Lightning's loggers count from 0).
    assert [(h["epoch"], h["step"]) for h in ww.history] == [(0, 2), (1, 5), (2, 8), (2, 11)]
    rows = csv_rows(logger)
    ww_rows = [r for r in rows if r.get("ww/alpha")]
    assert [int(r["step"]) for r in ww_rows] == [2, 5, 8, 11]  # whatever log_every_n_steps is
    assert [float(r["ww/alpha"]) for r in ww_rows] == pytest.approx(
        [h["alpha"] for h in ww.history], rel=1e-6
    )
    loss_steps = {int(r["step"]) for r in rows if r.get("train_loss_step")}
    if log_every_n_steps == 1:  # the training loss of the analyzed batch is logged at the same step
        assert {2, 5, 8, 11} <= loss_steps
    assert float(trainer.callback_metrics["ww/alpha"]) == pytest.approx(ww.history[-1]["alpha"], rel=1e-6)
    # the history file carries the same steps and epochs
    history = ww_callbacks.load_history(f"{trainer.log_dir}/ww_history.jsonl", as_pandas=False)
    assert sorted({(r["epoch"], r["step"]) for r in history}) == [(0, 2), (1, 5), (2, 8), (2, 11)]


def test_step_and_epoch_schedules_are_exclusive():
    _, mod = namespace_modules("lightning.pytorch")
    with pytest.raises(ValueError, match="set one of every_n_epochs=2 / every_n_train_steps=10"):
        mod.WeightWatcherCallback(every_n_epochs=2, every_n_train_steps=10)
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        mod.WeightWatcherCallback(every_n_train_steps=0)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    _, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(every_n_train_steps=2, seed=0, metrics=("alpha",))
    trainer, _ = fit("lightning.pytorch", tmp_path, ww, accumulate_grad_batches=2)
    assert trainer.global_step == 6  # 2 optimizer steps per epoch
    assert [h["epoch"] for h in ww.history] == [0, 1, 2]  # after global steps 2, 4, 6: once each


def test_rules_count_analyses_and_stock_checkpoint_sees_each_step(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    # Frozen power-law weights: alpha never improves, so Plateau(patience=2) stops at the third analysis.
    ww = mod.WeightWatcherCallback(
        every_n_train_steps=3, seed=0, early_stopping=Plateau("alpha", mode="min", patience=2, min_delta=0.5)
    )
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="ww/alpha", mode="min", every_n_train_steps=3, save_top_k=-1
    )
    model = make_model("lightning.pytorch", alpha_schedule=[3.0], step_loss=True)
    trainer = make_trainer(
        "lightning.pytorch", tmp_path, max_epochs=5, callbacks=[ww, checkpoint], enable_checkpointing=True
    )
    trainer.fit(model)
    assert len(ww.history) == 3 and trainer.global_step == 9
    assert ww.stopped_epoch == 2 and "in the last 2 analyses" in ww.stop_reason
    # ModelCheckpoint (run after ours) saved at every analyzed step, scored with that step's analysis.
    scores = sorted(float(v) for v in checkpoint.best_k_models.values())
    assert scores == pytest.approx(sorted(h["alpha"] for h in ww.history), rel=1e-6)


@pytest.mark.parametrize(
    "schedule", [{"every_n_train_steps": 3}, {"every_n_epochs": 1}], ids=["steps", "epochs"]
)
def test_background_logs_exactly_the_synchronous_numbers_at_the_same_steps(schedule, tmp_path):
    _, mod = namespace_modules("lightning.pytorch")
    runs = {}
    for background in (False, True):
        ww = mod.WeightWatcherCallback(seed=3, per_layer=True, background=background, **schedule)
        trainer, logger = fit("lightning.pytorch", tmp_path / str(background), ww)
        rows = [r for r in csv_rows(logger) if r.get("ww/alpha")]
        runs[background] = (
            ww,
            [(r["step"], r["ww/alpha"], r["ww/fc1/rand_distance"]) for r in rows],
            trainer,
        )
    (sync, sync_rows, _), (bg, bg_rows, trainer) = runs[False], runs[True]
    assert len(sync.history) in (3, 4) and numbers(bg.history) == numbers(sync.history)
    if "every_n_train_steps" in schedule:
        assert bg_rows == sync_rows  # same steps, same printed values
    else:  # synchronous epoch values go through pl_module.log (float32 tensors), background ones as floats
        assert [s for s, _, _ in bg_rows] == [s for s, _, _ in sync_rows]
        assert [float(a) for _, a, _ in bg_rows] == pytest.approx(
            [float(a) for _, a, _ in sync_rows], rel=1e-6
        )
    assert bg.engine.background.submitted == len(bg.history)
    assert float(trainer.callback_metrics["ww/alpha"]) == pytest.approx(bg.history[-1]["alpha"], rel=1e-6)
    assert all(set(h) - set(NOT_NUMBERS) == set(sync.history[0]) - {"elapsed"} for h in bg.history)
    assert not analysis_threads()


def test_background_stop_takes_effect_one_analysis_later(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    stops = {}
    for background in (False, True):
        rule = GatedPlateau("alpha", mode="min", patience=1, min_delta=0.5)
        ww = mod.WeightWatcherCallback(
            every_n_train_steps=2, seed=0, background=background, early_stopping=rule
        )
        model = make_model("lightning.pytorch", alpha_schedule=[3.0], step_loss=True)
        # The analysis after step 4 says stop; in background its rule finishes only when step 6 is done, before
        # our hook at step 6 (callbacks run in list order): its decision arrives there, one analysis later.
        release = ReleaseAtStep(pl, rule, step=6)
        trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=5, callbacks=[release, ww])
        trainer.fit(model)
        stops[background] = trainer.global_step
    assert stops[False] == 4  # the second analysis says stop
    assert stops[True] == 6


class GatedPlateau(Plateau):
    """Plateau whose second check (the analysis after step 4) waits until ``release`` is set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def check(self, report, *, epoch):
        if self.num_checks == 1 and threading.current_thread().name == "ww-callbacks-analysis":
            assert self.release.wait(120), "never released"
        return super().check(report, epoch=epoch)


def ReleaseAtStep(pl, rule: GatedPlateau, step: int):  # noqa: N802 - builds a callback of the namespace
    class Release(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= step:
                rule.release.set()

    return Release()


SCRIPT = r"""
import json, sys, threading
sys.path.insert(0, "tests")
import conftest, torch
from _lightning_utils import make_model, make_trainer
from test_background import SlowRule
from ww_callbacks.lightning import WeightWatcherCallback

class Boom(make_model("lightning.pytorch", step_loss=True).__class__):
    def training_step(self, batch, batch_idx):
        if self.global_step == 4:  # the analysis after step 3 is still in its (slow) rule
            raise {error}("stop here")
        return super().training_step(batch, batch_idx)

ww = WeightWatcherCallback(every_n_train_steps=3, seed=0, background=True, early_stopping=SlowRule(1.0),
                           history_path=sys.argv[1])
trainer = make_trainer("lightning.pytorch", sys.argv[2], max_epochs=3, callbacks=[ww])
try:
    trainer.fit(Boom(step_loss=True))
    outcome = "finished"
except BaseException as exc:
    outcome = type(exc).__name__
live = [t.name for t in threading.enumerate() if t.name == "ww-callbacks-analysis"]
print(json.dumps({{"outcome": outcome, "live": live, "history": [h["step"] for h in ww.history]}}))
"""


@pytest.mark.parametrize(
    ("error", "outcome"), [("RuntimeError", "RuntimeError"), ("KeyboardInterrupt", "SystemExit")]
)
def test_fit_that_raises_mid_analysis_leaves_a_complete_history_and_no_thread(error, outcome, tmp_path):
    # In a subprocess: Lightning answers KeyboardInterrupt with sys.exit(1) and ignores SIGINT afterwards.
    history_path = tmp_path / "h.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(error=error), str(history_path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == outcome
    assert result["live"] == []
    assert result["history"] == [2]  # the analysis in flight when training died was finished and recorded
    rows = ww_callbacks.load_history(history_path, as_pandas=False)
    assert [(r["step"], r["layer"]) for r in rows] == [(2, "fc1"), (2, "fc2")]
    assert threading.active_count() >= 1  # (the parent process is untouched)

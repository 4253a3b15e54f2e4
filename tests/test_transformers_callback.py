"""The Hugging Face ``Trainer`` callback end to end: tiny random-init BERT and GPT-2 on synthetic tokens, the real
``Trainer``, real TensorBoard event files and offline W&B runs read back, checkpoints resumed, 2 processes (gloo).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _hf_trainer_utils import TokenData, tiny_bert, tiny_gpt2, training_args  # noqa: E402
from transformers import Trainer  # noqa: E402
from transformers.integrations import TensorBoardCallback  # noqa: E402

from ww_callbacks.sinks.history import load_history  # noqa: E402
from ww_callbacks.stopping import Plateau  # noqa: E402
from ww_callbacks.transformers import WeightWatcherCallback  # noqa: E402

pytestmark = pytest.mark.slow

SUMMARY = ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance")


def _ww_entries(trainer):
    return [entry for entry in trainer.state.log_history if "ww/alpha" in entry]


def _tensorboard_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # One run: every event file in one directory (the sink's end figures come in a file of their own there,
    # written after the Trainer closed its writer).
    runs = {path.parent for path in root.rglob("events.out.tfevents.*")}
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs.pop()), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---------------------------------------------------------------------- logging, whatever the order
@pytest.mark.parametrize("order", ["integrations_first", "ww_first", "added_after_init"])
def test_values_reach_tensorboard_and_log_history_once_at_their_step(tmp_path, order):
    ww = WeightWatcherCallback(every_n_steps=3, seed=0)
    tensorboard = TensorBoardCallback()
    callbacks = {"integrations_first": [tensorboard, ww], "ww_first": [ww, tensorboard]}.get(
        order, [tensorboard]
    )
    args = training_args(tmp_path, max_steps=9)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenData(), callbacks=callbacks)
    if order == "added_after_init":
        trainer.add_callback(ww)  # never saw on_init_end
    trainer.train()

    steps = [3, 6, 9]
    assert [h["step"] for h in ww.history] == steps
    # log_history: one entry per analysis, at its step, with the history's values
    entries = _ww_entries(trainer)
    assert [e["step"] for e in entries] == steps
    for entry, h in zip(entries, ww.history, strict=True):
        assert {k: entry[f"ww/{k}"] for k in SUMMARY} == {k: h[k] for k in SUMMARY}
    # the Trainer's own loss log is untouched: every step still has its loss
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == list(range(1, 10))
    # TensorBoard (the integration's "train/" naming): each value once, at the step it was computed for
    scalars = _tensorboard_scalars(tmp_path)
    for metric in SUMMARY:
        logged = scalars[f"train/ww/{metric}"]
        assert [s for s, _ in logged] == steps, metric
        for (_, value), h in zip(logged, ww.history, strict=True):
            assert value == pytest.approx(h[metric], rel=1e-6)  # float32 in the event file
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 10))
    # default history file: in args.output_dir
    rows = load_history(tmp_path / "ww_history.jsonl", as_pandas=False)
    assert sorted({r["step"] for r in rows}) == steps


def test_epoch_schedule_logs_at_the_epoch_end_step(tmp_path):
    # 64 samples / batch 8 = 8 steps per epoch; analyses at the end of epochs 1 and 3 (every_n_epochs=2)
    ww = WeightWatcherCallback(every_n_epochs=2, metrics=("alpha",), seed=0, per_layer=True)
    args = training_args(
        tmp_path, max_steps=-1, num_train_epochs=4, logging_steps=8, report_to=["tensorboard"]
    )
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=[ww])
    trainer.train()
    assert [(h["epoch"], h["step"]) for h in ww.history] == [(1, 16), (3, 32)]
    assert [e["step"] for e in _ww_entries(trainer)] == [16, 32]
    scalars = _tensorboard_scalars(tmp_path)
    layer = ww.last_report.layers[0].longname
    assert [s for s, _ in scalars[f"train/ww/{layer}/alpha"]] == [16, 32]
    assert scalars[f"train/ww/{layer}/alpha"][-1][1] == pytest.approx(
        ww.last_report.layers[0].alpha, rel=1e-6
    )


def test_values_reach_wandb_offline_once_at_their_step(tmp_path, monkeypatch):
    import wandb
    from _wandb_reader import read_run

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "ww-callbacks-tests")
    ww = WeightWatcherCallback(every_n_steps=2, seed=0, media_every_n_epochs=0)
    args = training_args(tmp_path / "out", max_steps=6, report_to=["wandb"])
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=[ww])
    trainer.train()
    # the run's own folder: wandb keeps the settings (WANDB_DIR) of the first run of the process
    run_folder = Path(wandb.run.dir).parent
    wandb.finish()
    run = read_run(run_folder)
    rows = run.rows_with("train/ww/alpha")
    assert [r["train/global_step"] for r in rows] == [2, 4, 6]  # once per analysis
    for row, h in zip(rows, ww.history, strict=True):
        for metric in SUMMARY:
            assert row[f"train/ww/{metric}"] == pytest.approx(h[metric], rel=1e-12)
    # the sink's per-layer table and values share the Trainer's step axis
    assert [r["train/global_step"] for r in run.rows_with("ww/layers")] == [2, 4, 6]
    assert not run.rows_with("ww/alpha")  # the summaries are not logged a second time by the sink


def test_background_gives_the_synchronous_numbers_logged_at_their_steps(tmp_path):
    histories, entries, scalars = [], [], []
    for background in (False, True):
        out = tmp_path / ("bg" if background else "sync")
        ww = WeightWatcherCallback(every_n_steps=3, seed=0, background=background)
        trainer = Trainer(
            model=tiny_bert(),
            args=training_args(out, max_steps=9),
            train_dataset=TokenData(),
            callbacks=[TensorBoardCallback(), ww],
        )
        trainer.train()
        histories.append([{k: h[k] for k in ("epoch", "step", *SUMMARY)} for h in ww.history])
        entries.append([(e["step"], e["ww/alpha"]) for e in _ww_entries(trainer)])
        scalars.append(_tensorboard_scalars(out)["train/ww/alpha"])
        rows = load_history(out / "ww_history.jsonl", as_pandas=False)
        assert sorted({r["step"] for r in rows}) == [3, 6, 9]
    assert histories[0] == histories[1] and [h["step"] for h in histories[1]] == [3, 6, 9]
    # logged once each, at the step the analysis belongs to, even when it finished later
    assert entries[0] == entries[1] and [step for step, _ in entries[1]] == [3, 6, 9]
    assert scalars[0] == scalars[1] and [step for step, _ in scalars[1]] == [3, 6, 9]


def test_background_stop_takes_effect_one_analysis_late_at_most(tmp_path):
    ww = WeightWatcherCallback(every_n_steps=1, seed=0, background=True, early_stopping=_never_improves())
    trainer = Trainer(
        model=tiny_gpt2(),
        args=training_args(tmp_path, max_steps=20),
        train_dataset=TokenData(n=320),
        callbacks=[ww],
    )
    trainer.train()
    # the rule fires on the 4th analysis (step 4); its result is acted on at a later step end, at most one later
    assert ww.stopped_step == 4 and trainer.state.global_step in (4, 5)


# ---------------------------------------------------------------------- stopping and resuming
def _never_improves():
    # min_delta larger than any change: the first analysis is the best, each later one waits; stops at the 4th
    return Plateau("alpha", mode="min", patience=3, min_delta=100.0)


def test_rule_stops_training(tmp_path):
    ww = WeightWatcherCallback(every_n_steps=2, seed=0, early_stopping=_never_improves())
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(tmp_path, max_steps=20),
        train_dataset=TokenData(n=160),
        callbacks=[ww],
    )
    trainer.train()
    assert trainer.state.global_step == ww.stopped_step == 8
    assert "did not improve" in ww.stop_reason or "3 analyses" in ww.stop_reason
    assert [h["step"] for h in ww.history] == [2, 4, 6, 8]


def test_resume_from_checkpoint_continues_patience(tmp_path):
    def run(resume=None):
        ww = WeightWatcherCallback(
            every_n_steps=1, seed=0, metrics=("alpha",), early_stopping=_never_improves()
        )
        args = training_args(tmp_path, max_steps=12, save_strategy="steps", save_steps=2)
        trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(n=96), callbacks=[ww])
        trainer.train(resume_from_checkpoint=resume)
        return ww, trainer

    first, trainer = run()
    assert trainer.state.global_step == first.stopped_step == 4
    saved = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["WeightWatcherCallback[ww/]"]["rule"]["wait_count"] == 1

    resumed, trainer = run(resume=str(tmp_path / "checkpoint-2"))
    # patience carried over: stops at step 4 again (a fresh count would stop at step 6)
    assert trainer.state.global_step == resumed.stopped_step == 4
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["alpha"] for h in resumed.history] == pytest.approx(
        [h["alpha"] for h in first.history], rel=1e-9
    )
    assert resumed.seed == first.seed == 0


# ---------------------------------------------------------------------- best model by ww/alpha
def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_best_model_by_alpha_without_eval_set(tmp_path):
    from safetensors.torch import load_file

    ww = WeightWatcherCallback(every_n_steps=1, seed=0, metrics=("alpha",))
    args = training_args(
        tmp_path,
        max_steps=8,
        learning_rate=3e-2,
        save_strategy="best",
        metric_for_best_model="ww/alpha",
        greater_is_better=False,
        load_best_model_at_end=True,
    )
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(), callbacks=[ww])
    trainer.train()
    alphas = {h["step"]: h["alpha"] for h in ww.history}
    best_step = min(alphas, key=alphas.get)
    assert best_step != 8, alphas  # the test needs a best that is not the last step
    assert trainer.state.best_global_step == best_step
    assert trainer.state.best_metric == alphas[best_step]
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    # checkpoints only where alpha improved on every earlier value
    improving = [s for s in alphas if alphas[s] == min(alphas[t] for t in alphas if t <= s)]
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == improving
    # load_best_model_at_end loaded exactly the best checkpoint's weights
    saved = load_file(str(tmp_path / f"checkpoint-{best_step}" / "model.safetensors"))
    loaded = _weights(trainer.model)
    assert saved and all(bool((loaded[k] == v).all()) for k, v in saved.items())


def test_best_model_by_alpha_with_evaluations(tmp_path):
    ww = WeightWatcherCallback(every_n_steps=2, seed=0, metrics=("alpha",))
    args = training_args(
        tmp_path,
        max_steps=8,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="ww/alpha",
        greater_is_better=False,
        load_best_model_at_end=True,
    )
    trainer = Trainer(
        model=tiny_bert(),
        args=args,
        train_dataset=TokenData(),
        eval_dataset=TokenData(n=8, seed=1),
        callbacks=[ww],
    )
    trainer.train()
    alphas = {h["step"]: h["alpha"] for h in ww.history}
    best_step = min(alphas, key=alphas.get)
    assert best_step != 8, alphas  # the test needs a best that is not the last step
    assert trainer.state.best_global_step == best_step
    assert trainer.state.best_metric == alphas[best_step]
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]


# ---------------------------------------------------------------------- two processes
@pytest.mark.ddp
def test_two_processes_stop_at_the_same_step(tmp_path):
    script = Path(__file__).with_name("_hf_ddp_script.py")
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["world_size"] == one["world_size"] == 2
    # the rule fired on rank 1 only; the reduced decision stops both after the same step
    assert zero["global_step"] == one["global_step"] == zero["stopped_step"] == one["stopped_step"] == 6
    assert (
        one["stop_reason"].startswith("rank 1 says stop") and zero["stop_reason"] == "another process's rule"
    )
    # each process analyzes its share of the layers, merged everywhere: same seed, history and log entries
    assert zero["seed"] == one["seed"]
    assert zero["history"] == one["history"] and [h["step"] for h in zero["history"]] == [2, 4, 6]
    assert zero["ww_logs"] == one["ww_logs"] and len(zero["ww_logs"]) == 3
    assert zero["analysis_time"] > 0 and one["analysis_time"] > 0
    assert zero["shares"] and one["shares"] and all(line.startswith("rank 1 ") for line in one["shares"])
    assert any(line != "rank 1 analyzes layers []" for line in one["shares"])
    # the history file is written by the main process only: each analysis once
    rows = load_history(tmp_path / "ww_history.jsonl", as_pandas=False)
    assert [r["step"] for r in rows] == [
        s for s in (2, 4, 6) for _ in range(zero["history"][0]["num_layers"])
    ]
    assert all(math.isfinite(h["alpha"]) for h in zero["history"])


@pytest.mark.ddp
def test_two_processes_in_background_share_the_layers_and_stop_together(tmp_path):
    script = Path(__file__).with_name("_hf_ddp_script.py")
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(script), str(tmp_path), "background"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # the analysis after step 6 says stop (rank 1); its shares are merged at step 6 if both workers were done by
    # then, else at the next analysis point (step 8): on both processes at the same step either way
    assert zero["stopped_step"] == one["stopped_step"] == 6  # the step of the analysis that fired
    assert zero["global_step"] == one["global_step"] in (6, 8)
    assert zero["stop_reason"] == "another process's rule" and one["stop_reason"].startswith(
        "rank 1 says stop"
    )
    # each process's worker analyzed its share, every analysis: nothing in line, nothing on rank 0 alone
    assert zero["submitted"] == one["submitted"] == zero["global_step"] // 2
    assert any(line != "rank 1 analyzes layers []" for line in one["shares"])
    assert zero["history"] == one["history"]
    assert [h["step"] for h in zero["history"]] == list(range(2, zero["global_step"] + 1, 2))
    assert zero["ww_logs"] == one["ww_logs"] and len(zero["ww_logs"]) == len(zero["history"])


# ---------------------------------------------------------------------- hooks called without a Trainer
def _bare_hooks(tmp_path, **overrides):
    from transformers import TrainerControl, TrainerState

    args = training_args(tmp_path, **overrides)
    state = TrainerState()
    state.max_steps, state.is_world_process_zero = 4, True
    return args, state, TrainerControl()


def test_without_a_callback_handler_values_still_reach_log_history(tmp_path):
    ww = WeightWatcherCallback(every_n_steps=1, seed=0, metrics=("alpha",), history_path=False)
    args, state, control = _bare_hooks(tmp_path)
    with pytest.warns(RuntimeWarning, match="callback handler"):
        ww.on_train_begin(args, state, control)
    state.global_step, state.epoch = 1, 0.25
    ww.on_step_end(args, state, control, model=tiny_gpt2())
    assert state.log_history == [{"ww/alpha": ww.history[0]["alpha"], "epoch": 0.25, "step": 1}]
    assert state.stateful_callbacks["WeightWatcherCallback[ww/]"]["history"] == ww.history


def test_evaluation_before_the_first_analysis_gets_nan_not_a_key_error(tmp_path):
    ww = WeightWatcherCallback(every_n_steps=5, seed=0)
    args, state, control = _bare_hooks(tmp_path, metric_for_best_model="ww/alpha", greater_is_better=False)
    metrics = {"eval_loss": 1.0}
    ww.on_evaluate(args, state, control, metrics=metrics)
    assert math.isnan(metrics["eval_ww/alpha"])


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="every_n_steps"):
        WeightWatcherCallback(every_n_steps=0)
    with pytest.raises(TypeError, match="history_path"):
        WeightWatcherCallback(history_path=3)

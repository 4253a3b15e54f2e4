"""Does acting on the spectra help here? Baseline vs TempBalance vs AlphaDecay, paired over training seeds.

Three tasks that run on a CPU in seconds (the papers' settings are far larger: CIFAR-100 ResNets and VGGs for 200
epochs for TempBalance, LLaMa pre-training on C4 for AlphaDecay):

* ``cnn``: a small CNN (three convolutions, two linear layers) on 2000 of the packaged MNIST images, SGD with
  momentum 0.9, weight decay 5e-4 and a cosine schedule: TempBalance's setting scaled down;
* ``noisy_mlp``: an MLP 784-256-256-256-10 on 2000 images with 30% of the training labels replaced at random, same
  optimizer and schedule;
* ``grok``: modular addition mod 47 (half the pairs for training), embedding + four linear layers, full-batch AdamW
  with weight decay 1, 100 epochs of 50 steps: the grokking task, where weight decay decides when validation
  accuracy jumps. Reported: the first epoch with validation accuracy >= 0.95.

Every variant trains with the same callback (``WeightWatcherCallback(seed=s)``, an analysis after every epoch), so
the difference between variants is the balancing alone; a seed fixes the initial weights and the batch order of all
three variants. Keras is not in the table: its optimizers have one learning rate and one weight decay for all
variables, and the callback refuses ``balance=`` there.

Run ``python benchmarks/balance/bench_balance.py`` (about 15 minutes on 2 cores; ``--seeds``, ``--tasks`` and
``--jobs`` to change). The table goes to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

VARIANTS = ("baseline", "tempbalance", "alphadecay")
TASKS = ("cnn", "noisy_mlp", "grok")
GROK_P, GROK_STEPS = 47, 50


def _model(task: str) -> Any:
    import torch
    from torch import nn

    from ww_callbacks._training import mlp

    if task == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
    if task == "noisy_mlp":
        return mlp((784, 256, 256, 256, 10))

    class ModAdd(nn.Module):
        def __init__(self, dim: int = 64, width: int = 128) -> None:
            super().__init__()
            self.embed = nn.Embedding(GROK_P, dim)
            widths = (2 * dim, width, width, width, GROK_P)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

        def forward(self, pairs: torch.Tensor) -> torch.Tensor:
            x = self.embed(pairs).flatten(1)
            for layer in self.layers[:-1]:
                x = torch.relu(layer(x))
            return self.layers[-1](x)

    return ModAdd()


def _data(task: str, seed: int) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ww_callbacks._data import mnist_split, modular_addition
    from ww_callbacks._training import loaders

    if task == "grok":
        x_train, y_train, x_val, y_val = modular_addition(GROK_P, 0.5)
        full = (torch.from_numpy(x_train), torch.from_numpy(y_train))
        # One epoch = GROK_STEPS full-batch steps.
        train = DataLoader([full] * GROK_STEPS, batch_size=None, shuffle=False)
        val = DataLoader(
            TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val)), batch_size=len(x_val)
        )
        return train, val
    return loaders(mnist_split(2000, 0.3 if task == "noisy_mlp" else 0.0), 64, seed=seed)


def _optimizer(task: str, epochs: int) -> Any:
    import torch

    def make(params: Any) -> Any:
        if task == "grok":
            return torch.optim.AdamW(params, lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98))
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    return make


def _balance(variant: str) -> Any:
    from ww_callbacks.balance import AlphaDecay, TempBalance

    return {"baseline": None, "tempbalance": TempBalance(), "alphadecay": AlphaDecay()}[variant]


def train(task: str, variant: str, seed: int, epochs: int) -> dict[str, Any]:
    """One fit; the validation accuracy of every epoch, the fit's wall time and the callback's analysis time."""
    import lightning as L
    import torch

    from ww_callbacks._training import classifier_module, lightning_trainer, quiet_frameworks
    from ww_callbacks.lightning import WeightWatcherCallback

    quiet_frameworks()
    torch.set_num_threads(1)  # small models: one thread each, runs side by side
    L.seed_everything(seed, verbose=False)
    module = classifier_module(_model(task), _optimizer(task, epochs))
    train_loader, val_loader = _data(task, seed)
    accuracies: list[float] = []

    class Recorder(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            accuracies.append(pl_module.val["val_acc"])

    callback = WeightWatcherCallback(seed=seed, log_wandb=False, balance=_balance(variant))
    start = time.perf_counter()
    lightning_trainer(epochs, [callback, Recorder()]).fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - start
    hyperparameter = "weight_decay" if variant == "alphadecay" else "lr"
    balanced = callback.engine.state.factors.get(hyperparameter, {})
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "val_acc": accuracies,
        "seconds": seconds,
        "analysis_seconds": callback.engine.analysis_time,
        "analyses": len(callback.history),
        "balanced_layers": len(balanced),
    }


def _grok_epoch(accuracies: list[float]) -> float:
    hits = [i + 1 for i, a in enumerate(accuracies) if a >= 0.95]
    return float(hits[0]) if hits else math.inf


def _paired(diffs: list[float]) -> str:
    """Mean difference and its 95% t interval."""
    from scipy import stats

    finite = [d for d in diffs if math.isfinite(d)]
    if len(finite) < 2:
        return "n/a"
    mean, sem = statistics.fmean(finite), statistics.stdev(finite) / math.sqrt(len(finite))
    half = float(stats.t.ppf(0.975, len(finite) - 1)) * sem
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table: per task and variant the mean final validation accuracy (grok: the epoch of >= 0.95),
    the paired difference to the baseline with its 95% interval, and the time."""
    lines = [
        "| task | variant | seeds | mean val acc (final) | paired diff vs baseline [95% CI] | grok: epoch acc >= 0.95 "
        "| fit s (median) | balancing cost per analysis, ms [95% CI] | analysis ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["task"], r["variant"], r["seed"]): r for r in runs}
    for task in TASKS:
        seeds = sorted({s for (t, v, s) in by if t == task and v == "baseline"})
        if not seeds:
            continue
        for variant in VARIANTS:
            paired = [s for s in seeds if (task, variant, s) in by]
            if not paired:
                continue
            rows = [by[(task, variant, s)] for s in paired]
            base = [by[(task, "baseline", s)] for s in paired]
            acc = [r["val_acc"][-1] for r in rows]
            diff = _paired([r["val_acc"][-1] - b["val_acc"][-1] for r, b in zip(rows, base, strict=True)])
            grok = ""
            if task == "grok":
                epochs = [_grok_epoch(r["val_acc"]) for r in rows]
                shown = ", ".join("never" if math.isinf(e) else f"{e:.0f}" for e in epochs)
                grok = f"{shown} (diff {_paired([e - _grok_epoch(b['val_acc']) for e, b in zip(epochs, base, strict=True)])})"
            cost = "-"
            if variant != "baseline":
                per = [
                    1e3 * (r["seconds"] - b["seconds"]) / r["analyses"]
                    for r, b in zip(rows, base, strict=True)
                ]
                cost = _paired(per).replace("+", "")
            analysis = statistics.median(1e3 * r["analysis_seconds"] / r["analyses"] for r in rows)
            lines.append(
                f"| {task} | {variant} | {len(rows)} | {statistics.fmean(acc):.4f} | "
                f"{'-' if variant == 'baseline' else diff} | {grok or '-'} | "
                f"{statistics.median(r['seconds'] for r in rows):.1f} | {cost} | {analysis:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--epochs", type=int, default=0, help="override every task's epochs (0: 15 CNN/MLP, 100 grok)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--save", help="write every run (JSON) here")
    args = parser.parse_args()
    # Variants of one seed next to each other, so machine noise hits them alike.
    work = [
        (task, variant, seed, args.epochs or (100 if task == "grok" else 15))
        for task in args.tasks
        for seed in range(args.seeds)
        for variant in VARIANTS
    ]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(train, *zip(*work, strict=True)))
    if args.save:
        with open(args.save, "w") as f:
            json.dump(runs, f)
    print(table(runs))
    layers = {(r["task"], r["variant"]): r["balanced_layers"] for r in runs if r["variant"] != "baseline"}
    print("\nlayers balanced:", ", ".join(f"{t}/{v}: {n}" for (t, v), n in sorted(layers.items())))
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()

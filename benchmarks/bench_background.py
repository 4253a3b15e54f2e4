"""Analysis off the training path: how long the training loop is blocked per analysis, background vs synchronous.

A hand-written torch training loop (random-init models, no download: BERT-base shapes from ``bench_core`` and the
seed's MNIST MLP on random data) analyzes its weights every ``N`` optimizer steps with the engine the callbacks
use (`ww_callbacks.engine.SpectralMonitor`, the callbacks' options), in three modes, interleaved round by round:

* ``none``: no analysis (the reference wall-clock time);
* ``sync``: ``monitor.run(model, ...)`` at each analysis point (what ``background=False`` does);
* ``background``: ``monitor.background.submit(model, ...)`` (``background=True``): copy now, analyze in the
  worker thread while training goes on; pending work is finished at the end (counted in the wall time).

It prints, per model: the time the loop is blocked per analysis (medians over analyses and rounds; the max too),
the time to copy the analyzed weights alone (``snapshot(copy=True)``), the ratio blocked/copy (target <= 2x),
the wall-clock overhead of each mode over ``none`` (the worker competes with training for the CPUs), whether
background and synchronous runs gave the same numbers, and what a process worker would pay on top to receive
the matrices (pickling the snapshot) -- the measurement behind choosing a thread.

Run: ``python benchmarks/bench_background.py`` (BERT-base: several minutes on 2 cores);
``--models mlp --rounds 3`` is quick. Check the machine's load (``uptime``) first: the numbers are only as quiet
as the machine.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from bench_core import bert_base, mnist_mlp  # noqa: E402
from torch import nn  # noqa: E402

from ww_callbacks.engine import SpectralMonitor  # noqa: E402

MODES = ("none", "sync", "background")


@dataclass
class Setup:
    """A model, one training step on random data, and the analysis spacing."""

    build: Callable[[], nn.Module]
    step: Callable[[nn.Module, torch.optim.Optimizer, torch.Generator], None]
    every_n_steps: int
    analyses: int


def _mlp_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(32, 784, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _bert_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    ids = torch.randint(0, 30522, (4, 64), generator=gen)
    loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


SETUPS = {
    "mlp": Setup(mnist_mlp, _mlp_step, every_n_steps=10, analyses=10),
    "bert-base": Setup(bert_base, _bert_step, every_n_steps=10, analyses=3),
}


@dataclass
class Run:
    wall: float = 0.0
    blocked: list[float] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    waits: int = 0


def _train(setup: Setup, mode: str) -> Run:
    torch.manual_seed(0)  # the same weights and data in every mode: background must match sync exactly
    model = setup.build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    monitor = SpectralMonitor(seed=0, background=mode == "background", log_wandb=False, history_path=False)
    run = Run()
    start = time.perf_counter()
    for step in range(1, setup.every_n_steps * setup.analyses + 1):
        setup.step(model, opt, gen)
        if mode != "none" and step % setup.every_n_steps == 0:
            t0 = time.perf_counter()
            if monitor.background is None:
                monitor.run(model, epoch=0, step=step)
            else:
                monitor.background.submit(model, epoch=0, step=step)
            run.blocked.append(time.perf_counter() - t0)
    if monitor.background is not None:
        monitor.background.finish()
        run.waits = monitor.background.worker.waits
    run.wall = time.perf_counter() - start
    run.alphas = [entry["alpha"] for entry in monitor.history]
    return run


def _copy_and_pickle_times(setup: Setup, repeats: int) -> tuple[float, float, float]:
    """(median seconds of snapshot(copy=True), median seconds to pickle that snapshot, its size in MiB)."""
    model = setup.build()
    monitor = SpectralMonitor(seed=0)
    copies, pickles = [], []
    size = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        layers = monitor.snapshot(model, copy=True)
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        blob = pickle.dumps(layers, protocol=pickle.HIGHEST_PROTOCOL)
        pickles.append(time.perf_counter() - t0)
        size = len(blob)
    return statistics.median(copies), statistics.median(pickles), size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three modes")
    parser.add_argument("--every", type=int, default=None, help="analyze every N steps (default: per model)")
    parser.add_argument("--analyses", type=int, default=None, help="analyses per run (default: per model)")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
        f"load average before: {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds"
    )
    header = (
        f"{'model':10} {'every':>5} {'copy s':>8} {'sync s':>8} {'bg s':>8} {'bg max':>8} {'bg/copy':>8} "
        f"{'sync/bg':>8} {'wall none':>9} {'sync +%':>8} {'bg +%':>8} {'waits':>5} {'same':>5} "
        f"{'pickle s':>8} {'MiB':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        setup = SETUPS[name]
        setup = Setup(
            setup.build, setup.step, args.every or setup.every_n_steps, args.analyses or setup.analyses
        )
        copy_s, pickle_s, mib = _copy_and_pickle_times(setup, repeats=5)
        runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(_train(setup, mode))
                print(f"  {name} {mode}: {runs[mode][-1].wall:.1f} s", file=sys.stderr, flush=True)
        wall = {mode: statistics.median(r.wall for r in runs[mode]) for mode in MODES}
        sync = statistics.median(t for r in runs["sync"] for t in r.blocked)
        bg_all = [t for r in runs["background"] for t in r.blocked]
        bg = statistics.median(bg_all)
        same = all(b.alphas == s.alphas for b, s in zip(runs["background"], runs["sync"], strict=True))
        print(
            f"{name:10} {setup.every_n_steps:>5} {copy_s:8.4f} {sync:8.4f} {bg:8.4f} {max(bg_all):8.4f} "
            f"{bg / copy_s:7.2f}x {sync / bg:7.0f}x {wall['none']:9.2f} "
            f"{100 * (wall['sync'] / wall['none'] - 1):7.1f}% {100 * (wall['background'] / wall['none'] - 1):7.1f}% "
            f"{max(r.waits for r in runs['background']):>5} {'yes' if same else 'NO':>5} {pickle_s:8.4f} {mib:6.1f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

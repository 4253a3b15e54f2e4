"""Background analysis: does it hide the analysis' cost instead of adding to it?

The setting of issue 19: a model with BERT-sized layers (blocks of 768x768 x4 and 768x3072, 3072x768, as in a BERT
encoder layer), trained with a hand-written torch loop for ``--epochs`` epochs of ``--steps`` steps, analyzed at
every epoch end by the engine the callbacks use (`ww_callbacks.engine.SpectralMonitor`, the callbacks' options:
``traps=False``). The model is sized so that one epoch of training lasts about as long as one analysis (the
hardest case for a background worker: it has to keep up while training uses the CPUs). Two modes, in interleaved
pairs:

* ``sync``: ``monitor.run(model, ...)`` at each epoch end (``background=False``);
* ``background``: ``monitor.background.submit(model, ...)`` (``background=True``, ``max_pending=4``); the pending
  work is finished at the end of training, inside the measured fit time.

Per pair it prints the fit wall time of each mode and their ratio, and over all pairs: the median and the largest
ratio (targets: median <= 1.10, no 2x tail), the time the loop is blocked at an analysis point in background
against the synchronous hook (target <= 0.15), and whether both modes gave exactly the same numbers.

Run: ``python benchmarks/bench_background.py`` (8 pairs, a few minutes on 2 cores); ``--pairs 2`` is quick.
Check the machine's load (``uptime``) first: the numbers are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ww_callbacks.engine import SpectralMonitor  # noqa: E402


class Blocks(nn.Module):
    """``blocks`` encoder-layer-shaped blocks: q, k, v, o (768x768), intermediate (768->3072), output (3072->768)."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            block = nn.ModuleDict({name: nn.Linear(768, 768) for name in ("q", "k", "v", "o")})
            block["up"], block["down"] = nn.Linear(768, 3072), nn.Linear(3072, 768)
            self.blocks.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            attention = block["o"](torch.tanh(block["q"](x)) * block["k"](x) + block["v"](x))
            x = x + attention
            x = x + block["down"](torch.relu(block["up"](x)))
        return x


@dataclass
class Run:
    wall: float = 0.0
    blocked: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    waits: int = 0


def train(mode: str, args: argparse.Namespace) -> Run:
    torch.manual_seed(0)  # the same weights and data in every mode: background must match sync exactly
    model = Blocks(args.blocks)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    monitor = SpectralMonitor(
        seed=0, background=mode == "background", max_pending=4, log_wandb=False, history_path=False
    )
    run = Run()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for _ in range(args.steps):
            x = torch.randn(args.batch, 768, generator=gen)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        if monitor.background is None:
            monitor.run(model, epoch=epoch, step=(epoch + 1) * args.steps)
        else:
            monitor.background.submit(model, epoch=epoch, step=(epoch + 1) * args.steps)
        run.blocked.append(time.perf_counter() - t0)
    if monitor.background is not None:
        monitor.background.finish()
        run.waits = monitor.background.worker.waits
    run.wall = time.perf_counter() - start
    run.history = [
        {k: v for k, v in h.items() if k not in ("elapsed", "background_waits")} for h in monitor.history
    ]
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="interleaved (sync, background) pairs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per epoch")
    parser.add_argument("--blocks", type=int, default=2, help="encoder-layer-shaped blocks of the model")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    train("sync", args)  # warm-up: imports, first-call allocations, thread pools
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; {args.blocks} "
        f"blocks of 768/3072 layers ({6 * args.blocks} layers), {args.epochs} epochs of {args.steps} steps, batch "
        f"{args.batch}; load average {os.getloadavg()[0]:.2f} at the start"
    )
    header = f"{'pair':>4} {'sync fit s':>10} {'bg fit s':>9} {'bg/sync':>8} {'sync hook s':>11} {'bg blocked s':>12}"
    print(header)
    print("-" * len(header))
    ratios, hooks, blocked, same, waits = [], [], [], True, 0
    for pair in range(args.pairs):
        order = ("sync", "background") if pair % 2 == 0 else ("background", "sync")
        runs = {mode: train(mode, args) for mode in order}
        sync, bg = runs["sync"], runs["background"]
        ratios.append(bg.wall / sync.wall)
        hooks += sync.blocked
        blocked += bg.blocked
        same = same and bg.history == sync.history
        waits = max(waits, bg.waits)
        print(
            f"{pair:>4} {sync.wall:>10.2f} {bg.wall:>9.2f} {ratios[-1]:>8.3f} {statistics.median(sync.blocked):>11.3f} "
            f"{statistics.median(bg.blocked):>12.4f}",
            flush=True,
        )
    hook, block = statistics.median(hooks), statistics.median(blocked)
    print(
        f"fit wall background/sync: median {statistics.median(ratios):.3f}, largest {max(ratios):.3f}; blocked in "
        f"background {block:.4f} s vs the synchronous hook {hook:.3f} s = {block / hook:.3f}x (largest "
        f"{max(blocked):.3f} s); worker waits {waits}; same numbers: {'yes' if same else 'NO'}; load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()

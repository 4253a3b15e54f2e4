"""Watching a LoRA fine-tune: the cost of an analysis per epoch, with and without reusing unchanged layers.

A Llama-shaped model (random init, no download; ``--hidden 1024`` and two blocks by default: per block four
``hidden x hidden`` attention matrices and three ``hidden x 2.6875 hidden`` MLP matrices, the 7B proportions at a
size a CPU analyzes in seconds) gets PEFT LoRA adapters (r=16) on ``q_proj`` and ``v_proj``; its base is frozen, as
in any LoRA run. Each epoch is one real training step of the adapters (AdamW, the Trainer's default optimizer)
followed by the analysis the callbacks run (``randomize=True``, ``traps=False``), timed. Variants:

* ``effective, reuse``: ``peft="effective"`` (every matrix as the model uses it); the frozen layers keep their
  last result (the default);
* ``effective, no reuse``: the same analysis, every layer recomputed every epoch (what any analysis cost before);
* ``adapters``: ``peft="adapters"`` (the default for a model with adapters): only the updates ``B @ A``, rank 16;
* ``modules as they are``: ``peft="none"``: base layers, ``lora_A`` and ``lora_B`` as unrelated layers.

Reported: the median seconds of the analyses after the first, the layers analyzed / reused per epoch, and the
share of the eigenvalue work (sum of ``N * M^2`` over layers) in the layers that change. Target: with reuse, the
cost follows what changed.

Run: ``python benchmarks/bench_peft.py`` (about 3 minutes on 2 cores); ``--hidden 512 --epochs 3`` is quicker.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ww_callbacks.engine.analyzer import Analyzer  # noqa: E402
from ww_callbacks.engine.options import WatchOptions  # noqa: E402
from ww_callbacks.engine.schedule import rng_for  # noqa: E402
from ww_callbacks.layers import snapshot  # noqa: E402


def llama_with_lora(hidden: int, blocks: int, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=blocks,
        num_attention_heads=max(1, hidden // 128),
        num_key_value_heads=max(1, hidden // 128),
    )
    return get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    )


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    ids = torch.randint(0, 2048, (2, 32), generator=generator)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def work(layers: list) -> float:
    return float(sum(lw.N * lw.M * lw.M * lw.rf for lw in layers))


def run(variant: str, peft: str, reuse: bool, args: argparse.Namespace) -> dict[str, object]:
    model = llama_with_lora(args.hidden, args.blocks, args.rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    analyzer = Analyzer(WatchOptions(peft=peft, analyze_kwargs={"traps": False}), warn=logging.warning)
    seconds, counts = [], []
    for epoch in range(args.epochs):
        train_step(model, optimizer, generator)
        if not reuse:
            analyzer.forget()
        start = time.perf_counter()
        report = analyzer.analyze(model, rng=rng_for(0, epoch), epoch=epoch)
        seconds.append(time.perf_counter() - start)
        assert report is not None
        counts.append((len(report.layers) - len(analyzer.reused), len(analyzer.reused)))
    layers = snapshot(model, copy=False, peft=peft)
    frozen = [lw for lw in layers if lw.extra.get("version") is not None]
    changing_share = 1 - work(frozen) / work(layers) if layers else float("nan")
    return {
        "variant": variant,
        "first": seconds[0],
        "later": statistics.median(seconds[1:]),
        "analyzed": counts[-1][0],
        "reused": counts[-1][1],
        "changing_share": changing_share,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    variants = [
        ("effective, reuse", "effective", True),
        ("effective, no reuse", "effective", False),
        ("adapters", "adapters", True),
        ("modules as they are", "none", True),
    ]
    rows = [run(name, peft, reuse, args) for name, peft, reuse in variants]
    print(
        f"Llama-shaped, hidden {args.hidden}, {args.blocks} blocks, LoRA r={args.rank} on q/v; "
        f"{args.epochs} epochs of one AdamW step + one analysis (randomize=True, traps=False); {os.cpu_count()} CPUs"
    )
    print(
        f"{'variant':<22} {'1st analysis s':>15} {'later, median s':>16} {'analyzed':>9} {'reused':>7} {'changing work':>14}"
    )
    for row in rows:
        print(
            f"{row['variant']:<22} {row['first']:>15.3f} {row['later']:>16.3f} {row['analyzed']:>9} "
            f"{row['reused']:>7} {row['changing_share']:>13.1%}"
        )
    base = next(r for r in rows if r["variant"] == "effective, no reuse")
    reuse = next(r for r in rows if r["variant"] == "effective, reuse")
    print(
        f"\nreuse / no reuse, later analyses: {reuse['later'] / base['later']:.3f} (changing work share {reuse['changing_share']:.1%})"
    )
    np.set_printoptions()


if __name__ == "__main__":
    main()

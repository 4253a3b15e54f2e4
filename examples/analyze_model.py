"""Post-hoc analysis of a trained model, like weightwatcher's ``analyze()``: no data needed, only the weights.

Trains a small CNN on 1000 MNIST images for a few epochs, then analyzes it (and, for contrast, the same network
before training) with `ww_callbacks.analyze` and prints the per-layer table. It also saves the weights and one
ESD plot, and shows the same analysis from the command line.

Run:
    python examples/analyze_model.py --epochs 3 --out outputs/analyze_model
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ww_callbacks
from ww_callbacks._data import load_mnist
from ww_callbacks.plots import plot_esd

# weightwatcher's column names: the same table a weightwatcher user reads.
COLUMNS = ["layer_id", "name", "layer_type", "N", "M", "rf", "alpha", "alpha_weighted", "log_spectral_norm",
           "stable_rank", "rand_distance", "status", "warning"]  # fmt: skip


def make_cnn() -> nn.Module:
    """A LeNet-style CNN; named layers so that the table reads conv1, conv2, fc1, fc2."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, kernel_size=5),  # 28x28 -> 24x24
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # -> 12x12
            conv2=nn.Conv2d(16, 32, kernel_size=5),  # -> 8x8
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # -> 4x4
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 4 * 4, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, 10),
        )
    )


def train(model: nn.Module, epochs: int, seed: int) -> float:
    """Plain torch training loop (Adam, batch 32); returns the validation accuracy."""
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=1000, n_val=1000, seed=seed)
    x_train_t = torch.from_numpy(x_train).reshape(-1, 1, 28, 28)
    y_train_t = torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train_t), generator=generator)
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            loss = nn.functional.cross_entropy(model(x_train_t[idx]), y_train_t[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x_val).reshape(-1, 1, 28, 28))
    return float((logits.argmax(1).numpy() == y_val).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    parser.add_argument("--out", type=Path, default=Path("outputs/analyze_model"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)  # a small model trains faster on one thread than on two
    torch.manual_seed(args.seed)  # the initial weights
    model = make_cnn()
    before = ww_callbacks.analyze(model, seed=args.seed)
    accuracy = train(model, args.epochs, args.seed)

    start = time.perf_counter()
    report = ww_callbacks.analyze(model, seed=args.seed)
    elapsed = time.perf_counter() - start

    table = report.to_pandas()[COLUMNS]
    print(f"CNN trained {args.epochs} epochs on 1000 MNIST images: validation accuracy {accuracy:.3f}\n")
    print("per-layer analysis (no data used):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nanalyzed {len(report)} layers in {elapsed:.2f} s")

    print("\nsummary (mean over layers whose fit succeeded), before -> after training:")
    for metric, value in report.summary.items():
        if metric not in ww_callbacks.SUMMARY_METRICS:  # num_nonfinite_layers is a count, not a mean
            continue
        print(f"  {metric:<18} {before.summary[metric]:8.4f} -> {value:8.4f}")

    weights_path = args.out / "cnn.pt"
    torch.save(model.state_dict(), weights_path)
    # The layer with the largest rand_distance: the one training changed most from random.
    fitted = [lr for lr in report.layers if lr.ok]
    layer = max(fitted, key=lambda lr: np.nan_to_num(lr.rand_distance, nan=-1.0))
    plot_path = args.out / f"esd_{layer.name}.png"
    plot_esd(layer).savefig(plot_path, dpi=100)
    table.to_csv(args.out / "layers.csv", index=False)

    print(f"\nsaved the weights to {weights_path}, the table to {args.out / 'layers.csv'}")
    print(f"ESD of layer {layer.name} (largest rand_distance) saved to {plot_path}")
    print(f"the same analysis from the command line: ww-callbacks analyze {weights_path}")


if __name__ == "__main__":
    main()

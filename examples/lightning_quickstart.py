"""Quickstart: WeightWatcher metrics and data-free early stopping in a Lightning training loop.

Trains a small MLP on 1000 MNIST images. After every epoch the callback analyzes the weights (no data), logs
``ww/alpha``, ``ww/rand_distance`` ... to the trainer's loggers (here a CSV file) and asks a data-free rule
whether to stop.

Run:
    python examples/lightning_quickstart.py --epochs 5 --out outputs/lightning_quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ww_callbacks._data import load_mnist
from ww_callbacks.cli import format_report
from ww_callbacks.lightning import WeightWatcherCallback
from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau


class MLP(L.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/lightning_quickstart"))
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=1000, n_val=1000)
    train = DataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)), batch_size=32, shuffle=True
    )
    val = DataLoader(TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val)), batch_size=1000)

    ww = WeightWatcherCallback(
        # Stop when the layers look over-trained (mean alpha < 2), or when rand_distance stops growing.
        early_stopping=AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3)),
        seed=0,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[ww],
        logger=CSVLogger(args.out, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(MLP(), train, val)

    print("\nepoch  alpha  rand_distance")
    for entry in ww.history:
        print(f"{entry['epoch']:>5}  {entry['alpha']:.3f}  {entry['rand_distance']:.4f}")
    if ww.stopped_epoch is not None:
        print(f"\nthe data-free rule stopped training at epoch {ww.stopped_epoch}: {ww.stop_reason}")
    else:
        print(f"\nno data-free stop within {args.epochs} epochs")
    print(f"validation accuracy at the end: {float(trainer.callback_metrics['val_acc']):.3f}")
    print("\nthe last analysis, layer by layer:")
    print(format_report(ww.last_report))
    print(f"\nmetrics (ww/* next to val_loss) in {Path(trainer.logger.log_dir) / 'metrics.csv'}")
    print(f"per-layer history in {Path(trainer.log_dir) / 'ww_history.jsonl'}")


if __name__ == "__main__":
    main()

"""WeightWatcher metrics in Weights & Biases, offline: Lightning + ``WandbLogger``, no account or network needed.

The callback finds the ``WandbLogger`` among the trainer's loggers: the summary metrics (``ww/alpha`` ...) go
through the logger next to ``val_loss``, and the callback adds per-layer values, a per-layer table, ESD
histograms and ESD plots to the same run. The run is written to disk; ``wandb sync`` uploads it later.

Run:
    python examples/wandb_offline.py --epochs 3 --out outputs/wandb_offline
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ww_callbacks._data import load_mnist
from ww_callbacks.lightning import WeightWatcherCallback


class MLP(L.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/wandb_offline"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=1000, n_val=1000)
    train = DataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)), batch_size=32, shuffle=True
    )
    val = DataLoader(TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val)), batch_size=1000)

    logger = WandbLogger(project="ww-callbacks-examples", save_dir=str(args.out), offline=True)
    # per_layer=True also sends ww/<layer>/<metric> through the logger; ESD plots every epoch.
    ww = WeightWatcherCallback(per_layer=True, media_every_n_epochs=1, seed=0)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[ww],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(MLP(), train, val)
    run_dir = Path(logger.experiment.dir).parent  # .../wandb/offline-run-<time>-<id>
    summary = {k: v for k, v in ww.history[-1].items() if k in ("alpha", "rand_distance")}
    wandb.finish()

    print(f"\nlast epoch: {', '.join(f'ww/{k} = {v:.4f}' for k, v in summary.items())}")
    print(f"the offline W&B run is in {run_dir}")
    print(f"  its data: {next(run_dir.glob('run-*.wandb'), run_dir)}")
    print(f"  upload it with: wandb sync {run_dir}")
    print(f"per-layer history in {Path(trainer.log_dir or args.out) / 'ww_history.jsonl'}")


if __name__ == "__main__":
    main()

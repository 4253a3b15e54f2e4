"""Tiny Lightning models for the callback tests, in either namespace, with weights whose alpha we choose.

`power_law_matrix(alpha)` builds a matrix whose ESD is an exact power law (Pareto quantiles), so the fitted
alpha is close to ``alpha`` (checked by `test_power_law_matrix_controls_alpha`). A `ScheduledNet` with an
``alpha_schedule`` sets its two analyzed layers to such matrices at the start of every epoch (frozen weights;
only a scalar is trained), which lets a test know in advance at which epoch a rule must stop.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
CALLBACK_MODULES = {
    "lightning.pytorch": "ww_callbacks.lightning",
    "pytorch_lightning": "ww_callbacks.pytorch_lightning",
}

IN, HIDDEN, OUT = 80, 120, 40  # fc1.weight: (120, 80), fc2.weight: (40, 120)


def power_law_matrix(alpha: float, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A ``rows x cols`` matrix (rows >= cols) whose squared singular values are Pareto(alpha) quantiles."""
    rng = np.random.default_rng(seed)
    q = (np.arange(cols) + 0.5) / cols
    evals = (1.0 - q) ** (-1.0 / (alpha - 1.0))
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (u * np.sqrt(evals)) @ v.T


def namespace_modules(namespace: str) -> tuple[Any, Any]:
    """(the Lightning namespace module, ww_callbacks' callback module for it)."""
    return importlib.import_module(namespace), importlib.import_module(CALLBACK_MODULES[namespace])


@functools.cache
def scheduled_net_class(namespace: str) -> tuple[type, type]:
    import torch
    from torch import nn

    pl = importlib.import_module(namespace)

    class ScheduledNet(pl.LightningModule):
        """MLP 80-120-40 on random data; optional alpha schedule and a layer that turns NaN."""

        def __init__(
            self,
            alpha_schedule: Sequence[float] | None = None,
            nan_from_epoch: int | None = None,
            data_seed: int = 0,
            step_loss: bool = False,
        ) -> None:
            super().__init__()
            self.alpha_schedule = list(alpha_schedule) if alpha_schedule is not None else None
            self.nan_from_epoch = nan_from_epoch
            self.step_loss = step_loss  # also log the training loss at every step (train_loss_step)
            self.fc1 = nn.Linear(IN, HIDDEN)
            self.fc2 = nn.Linear(HIDDEN, OUT)
            self.scale = nn.Parameter(torch.ones(()))
            if nan_from_epoch is not None:
                self.spare = nn.Linear(50, 60)  # analyzed, never used in forward
            if self.alpha_schedule is not None:
                for p in (*self.fc1.parameters(), *self.fc2.parameters()):
                    p.requires_grad_(False)
            g = torch.Generator().manual_seed(data_seed)
            self._x = torch.randn(64, IN, generator=g)
            self._y = torch.randn(64, 1, generator=g)
            #: ww-prefixed values in trainer.callback_metrics at each epoch end (after the WeightWatcher callback).
            self.seen: dict[int, dict[str, float]] = {}

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x))).mean(dim=1, keepdim=True) * self.scale

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, on_step=self.step_loss, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)

        def on_train_epoch_start(self) -> None:
            epoch = self.current_epoch
            with torch.no_grad():
                if self.alpha_schedule is not None:
                    alpha = self.alpha_schedule[min(epoch, len(self.alpha_schedule) - 1)]
                    w1 = power_law_matrix(alpha, HIDDEN, IN, seed=1)  # (120, 80)
                    w2 = power_law_matrix(alpha, HIDDEN, OUT, seed=2).T  # (40, 120)
                    self.fc1.weight.copy_(torch.as_tensor(w1, dtype=torch.float32))
                    self.fc2.weight.copy_(torch.as_tensor(w2, dtype=torch.float32))
                if self.nan_from_epoch is not None and epoch >= self.nan_from_epoch:
                    self.spare.weight[0, 0] = float("nan")

        def on_train_epoch_end(self) -> None:
            metrics = self.trainer.callback_metrics
            self.seen[self.current_epoch] = {k: float(v) for k, v in metrics.items() if k.startswith("ww")}

        def _loader(self):
            from torch.utils.data import DataLoader, TensorDataset

            return DataLoader(TensorDataset(self._x, self._y), batch_size=16)

        def train_dataloader(self):
            return self._loader()

    class ScheduledNetWithValidation(ScheduledNet):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def val_dataloader(self):
            return self._loader()

    return ScheduledNet, ScheduledNetWithValidation


def make_model(namespace: str = "lightning.pytorch", *, with_validation: bool = False, **kwargs: Any) -> Any:
    """A `ScheduledNet` of ``namespace`` (with a validation loop when asked)."""
    plain, validated = scheduled_net_class(namespace)
    return (validated if with_validation else plain)(**kwargs)


def make_trainer(namespace: str, root: Any, **kwargs: Any) -> Any:
    """A small, quiet CPU Trainer; keyword arguments override the defaults."""
    pl = importlib.import_module(namespace)
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "default_root_dir": str(root),
    }
    options.update(kwargs)
    return pl.Trainer(**options)

"""The small training set-ups the examples and the benchmarks share (private: not part of the API).

One MLP, one Lightning classifier module, one quiet ``Trainer``, one Keras MLP and the loaders of the bundled MNIST
split (`ww_callbacks._data`), so that ``examples/seed_experiment.py``, ``benchmarks/stopping/`` and the overhead
benchmarks train exactly the same way. Frameworks are imported inside the functions.

Example:
    >>> import numpy as np
    >>> net = mlp((6, 4, 3))
    >>> [tuple(p.shape) for p in net.parameters()][:2]
    [(4, 6), (4,)]
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SEED_HIDDEN",
    "classifier_module",
    "keras_mlp",
    "lightning_trainer",
    "loaders",
    "mlp",
    "quiet_frameworks",
]

#: The original experiment's hidden layers: an MLP 784-64-64-10.
SEED_HIDDEN = (64, 64)

_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*You are using a CUDA device.*",
)


def quiet_frameworks() -> None:
    """No framework banners: Lightning's "GPU/TPU available", logger tips and "`Trainer.fit` stopped" lines,
    TensorFlow's start-up logs, and the warnings tiny CPU runs always trigger."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Lightning resets its package loggers to INFO when it is imported; the loggers its banners go through
    # (``rank_zero``) keep what is set here, before or after that import.
    for package in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        for name in (package, f"{package}.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def mlp(widths: Sequence[int] = (784, *SEED_HIDDEN, 10)) -> Any:
    """A torch MLP ``Linear -> ReLU -> ... -> Linear`` through ``widths`` (input, hidden..., classes)."""
    from torch import nn

    layers: list[Any] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def loaders(
    data: Any, batch_size: int, *, seed: int | None = None, val_batch: int | None = None
) -> tuple[Any, Any]:
    """torch DataLoaders of ``((x_train, y_train), (x_val, y_val))`` numpy arrays: shuffled training batches and
    one validation batch. The shuffles come from a generator of their own seeded with ``seed``, or (None) from
    torch's global generator, which ``seed_everything`` seeds."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    (x_train, y_train), (x_val, y_val) = data
    train = DataLoader(
        TensorDataset(torch.as_tensor(x_train), torch.as_tensor(y_train)),
        batch_size=batch_size,
        shuffle=True,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )
    val = DataLoader(
        TensorDataset(torch.as_tensor(x_val), torch.as_tensor(y_val)), batch_size=val_batch or len(x_val)
    )
    return train, val


def classifier_module(
    net: Any, make_optimizer: Callable[[Any], Any], *, log_train_loss: bool = False, track_train: bool = False
) -> Any:
    """A ``lightning.pytorch.LightningModule`` training ``net`` with cross-entropy.

    ``make_optimizer(parameters)`` gives the optimizer (or Lightning's optimizer/scheduler configuration).
    Validation logs ``val_loss`` and ``val_acc`` (so ``trainer.callback_metrics`` has them) and keeps them in
    ``module.val``. ``track_train``: ``module.train_sums`` holds (loss x n, correct, n) over the epoch's training
    batches (a host sync per step). ``log_train_loss`` also logs the epoch's mean training loss.
    """
    import lightning as L
    import torch
    from torch import nn

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.train_sums = np.zeros(3)
            self.val: dict[str, float] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def on_train_epoch_start(self) -> None:
            self.train_sums[:] = 0

        def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.net(x)
            loss = nn.functional.cross_entropy(logits, y)
            if track_train:
                with torch.no_grad():
                    self.train_sums += (float(loss) * len(y), float((logits.argmax(1) == y).sum()), len(y))
            if log_train_loss:
                self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
            x, y = batch
            logits = self.net(x)
            loss, acc = nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()
            self.val = {"val_loss": float(loss), "val_acc": float(acc)}
            self.log("val_loss", loss)
            self.log("val_acc", acc)

        def configure_optimizers(self) -> Any:
            return make_optimizer(self.parameters())

    return Classifier()


def lightning_trainer(
    max_epochs: int, callbacks: Sequence[Any], root: str | Path | None = None, **kwargs: Any
) -> Any:
    """A quiet CPU ``lightning.pytorch.Trainer``: no logger, checkpoints, progress bar, summary or sanity check
    unless ``kwargs`` say otherwise."""
    import lightning as L

    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": list(callbacks),
    }
    if root is not None:
        options["default_root_dir"] = str(root)
    options.update(kwargs)
    return L.Trainer(**options)


def keras_mlp(widths: Sequence[int] = (784, *SEED_HIDDEN, 10), *, lr: float = 1e-3) -> Any:
    """A compiled Keras MLP (layers ``fc1``, ``fc2`` ...), Adam, sparse cross-entropy on logits, accuracy."""
    import keras

    model = keras.Sequential(
        [keras.Input((widths[0],))]
        + [
            keras.layers.Dense(width, activation="relu" if i < len(widths) - 2 else None, name=f"fc{i + 1}")
            for i, width in enumerate(widths[1:])
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model

"""Helpers for the command-line and example tests: seeded weights, real model files, and subprocess runs.

Weights come from ``numpy.random.default_rng`` (no global RNG); every model file is written by the real
library that owns the format (torch.save, Lightning's Trainer, safetensors, Keras).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

#: (name, out_features, in_features) of the test MLP: every layer has at least 8 eigenvalues.
MLP_SHAPES = (("fc1", 48, 32), ("fc2", 40, 48), ("fc3", 16, 40))


def mlp_weights(seed: int = 0, df: float = 3.0) -> dict[str, np.ndarray]:
    """A torch-style state dict (``fcN.weight`` as (out, in), ``fcN.bias``) of heavy-tailed float32 weights."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, n_out, n_in in MLP_SHAPES:
        weights[f"{name}.weight"] = (rng.standard_t(df, size=(n_out, n_in)) / math.sqrt(n_in)).astype(
            np.float32
        )
        weights[f"{name}.bias"] = np.zeros(n_out, dtype=np.float32)
    return weights


def torch_state_dict(seed: int = 0) -> dict[str, object]:
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in mlp_weights(seed).items()}


def save_torch(path: Path, obj: object) -> Path:
    import torch

    torch.save(obj, path)
    return path


def save_safetensors(path: Path, weights: Mapping[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(dict(weights), str(path))
    return path


def make_lightning_checkpoint(directory: Path, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """Train the MLP for one short epoch with a real ``Trainer.fit`` and save a Lightning checkpoint.

    Returns the checkpoint path and the trained weights (``model.fcN.weight`` keys, as in the checkpoint).
    """
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Sequential()
            for name, n_out, n_in in MLP_SHAPES:
                self.model.add_module(name, torch.nn.Linear(n_in, n_out))
            # Seeded weights without the global RNG.
            self.model.load_state_dict(torch_state_dict(seed))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.fc3(torch.relu(self.model.fc2(torch.relu(self.model.fc1(x)))))

        def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((64, 32)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 16, size=64))
    module = MLP()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(directory),
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    path = directory / "mlp.ckpt"
    trainer.save_checkpoint(path)
    trained = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    return path, trained


def make_keras_model_file(directory: Path, seed: int = 0) -> Path:
    """A small functional Keras model with the MLP's dense layers, saved as ``.keras``."""
    import keras

    weights = mlp_weights(seed)
    inputs = keras.Input((MLP_SHAPES[0][2],))
    x = inputs
    for name, n_out, _ in MLP_SHAPES:
        x = keras.layers.Dense(n_out, activation="relu" if name != "fc3" else None, name=name)(x)
    model = keras.Model(inputs, x)
    for name, _, _ in MLP_SHAPES:
        # Keras kernels are (in, out): the transpose of the torch weight.
        model.get_layer(name).set_weights([weights[f"{name}.weight"].T, weights[f"{name}.bias"]])
    path = directory / "mlp.keras"
    model.save(path)
    return path


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: the repo importable, offline, quiet, CPU only."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_python(
    args: Sequence[str], *, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a child process with `subprocess_env` and capture its text output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=str(cwd or REPO_ROOT),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(stderr: str) -> str:
    """The CLI's contract for bad input: exactly one non-empty stderr line, an error, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ww-callbacks: error: "), stderr
    return lines[0]


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
